"""Test session set-up: a throw-away Airflow home (SQLite) and MLflow store for the whole run.

Airflow reads its configuration when first imported, so the environment is set here, at import
of this conftest, before any test module imports Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.kube.plugin"]  # kube_cluster / kube_namespace: a real control plane

REPO = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="airflow-mlops-tests-"))
os.environ.update(
    AIRFLOW_HOME=str(_HOME / "airflow"),
    AIRFLOW_MLOPS_HOME=str(_HOME / "mlops"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
)
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite), once per test run."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture
def mlops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MLflow store and data folder for one test."""
    home = tmp_path / "mlops"
    monkeypatch.setenv("AIRFLOW_MLOPS_HOME", str(home))
    return home


@pytest.fixture
def dags_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An Airflow dags folder holding the loader, for pipelines a test writes there.

    ``dag.test()`` syncs DAGs from the configured bundle, so a DAG must live in the dags folder
    Airflow is configured with; Airflow reads ``AIRFLOW__CORE__*`` variables on every lookup.
    """
    folder = tmp_path / "dags"
    folder.mkdir()
    # Airflow's safe mode only parses files that mention both "airflow" and "dag".
    (folder / "pipelines.py").write_text(
        "# Airflow DAGs from the pipeline YAMLs in this folder\n"
        "from airflow_mlops import load_pipelines\n\nload_pipelines(globals())\n"
    )
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
    bundle = {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
              "kwargs": {"path": str(folder)}}
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([bundle]))
    return folder


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for the whole run (the JVM takes ~30 s to start here)."""
    from airflow_mlops.stages.spark.session import get_session

    session = get_session("local[2]", {"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    shutil.rmtree(_HOME, ignore_errors=True)
