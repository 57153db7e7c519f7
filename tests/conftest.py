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
    # Shared, busy CI machines: Airflow's default 30 s for importing a DAG file is too tight.
    AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="600",
)


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")
for _name in _MLFLOW_ENV:
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _mlflow_state_reset():
    """MLflow keeps its tracking/registry URIs and active run process-wide, and exports them as
    environment variables. Every test starts from none of them, so no test writes into another
    test's store (or reads a registry another test pointed at). With none set, MLflow falls back
    to ./mlflow.db: a test after which that store appears has found code that lost its URI."""

    def reset():
        mlflow = sys.modules.get("mlflow")
        if mlflow is not None:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)
        for name in _MLFLOW_ENV:
            os.environ.pop(name, None)

    reset()
    stray = [Path.cwd() / name for name in ("mlflow.db", "mlruns")]
    there = {path for path in stray if path.exists()}
    yield
    reset()
    created = [path for path in stray if path.exists() and path not in there]
    for path in created:  # so that the next test is judged on its own
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if created:
        pytest.fail(f"MLflow's default store appeared in the current directory ({', '.join(map(str, created))}): "
                    "something reached MLflow without a tracking URI")


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
    from airflow_mlops.stages.spark_session import get_session

    session = get_session("local[2]", {"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


@pytest.fixture
def example_dags_folder(dags_folder: Path) -> Path:
    """The shipped example pipelines (and their _defaults.yaml), copied as they are into a dags
    folder that dag.test() syncs from."""
    for path in (REPO / "example_configs").glob("*.yaml"):
        shutil.copy(path, dags_folder / path.name)
    return dags_folder


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One S3-protocol server (moto's) for the test run; tests make their own buckets."""
    from tests.s3_helpers import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory):
    """One real deployment (api-server, scheduler with LocalExecutor, dag-processor, triggerer as
    separate processes; tests/airflow_stack.py) shared by every test that needs one."""
    from tests.airflow_stack import AirflowStack

    stack = AirflowStack(tmp_path_factory.mktemp("airflow-stack"))
    try:
        yield stack.start()
    finally:
        stack.stop()
