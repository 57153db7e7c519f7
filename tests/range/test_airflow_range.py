"""What every supported Airflow release must do with this package (README "Installing into an
existing Airflow 3"): the package registered as a provider, ``airflow info`` clean, the example
pipelines parsed, a batch pipeline end to end through ``dag.test()``, a pipeline or operator that
needs a missing extra refused with the command that installs it, and installing it moved nothing.

Where it runs:
- the main suite runs this file on the newest release (``constraints.txt``, every extra installed);
- ``scripts/test-airflow-range.sh`` runs it in a virtualenv per older release pinned under
  ``constraints/`` with **only the core** installed (non-editable, from a folder outside the
  checkout, so the installed copy is what runs), together with the import-cost check of
  ``tests/factory/test_dags_folder.py``. It sets ``AIRFLOW_MLOPS_RANGE_AIRFLOW`` (the release) and
  ``AIRFLOW_MLOPS_RANGE_BEFORE`` (``pip freeze`` of the Airflow deployment before
  ``pip install airflow-mlops``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from airflow_mlops._core import extras
from tests.conftest import REPO

RANGE = bool(os.environ.get("AIRFLOW_MLOPS_RANGE_AIRFLOW"))
# Which example pipeline needs which extra (the others need only the core).
EXAMPLE_EXTRAS = {"iris_spark": ("apache-spark", "stages.preprocess.backend"),
                  "breast_cancer_stream": ("apache-kafka", "stages.serve.mode")}


def airflow(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def dagbag_class() -> type:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag
    return DagBag


def pinned_airflow() -> str:
    if RANGE:
        return os.environ["AIRFLOW_MLOPS_RANGE_AIRFLOW"]
    return re.search(r"^apache-airflow==(\S+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)


def test_airflow_is_the_release_under_test_and_installing_the_package_moved_nothing():
    assert version("apache-airflow") == pinned_airflow()
    if not RANGE:
        return
    import airflow_mlops

    assert Path(airflow_mlops.__file__).resolve().parent != REPO / "airflow_mlops"  # the installed copy runs
    # `pip install airflow-mlops` (no constraints) into the deployment: every distribution the
    # deployment had is still at its version; Airflow above all.
    before = dict(line.split("==") for line in Path(os.environ["AIRFLOW_MLOPS_RANGE_BEFORE"]).read_text().split()
                  if "==" in line)
    from importlib.metadata import distributions

    now = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions()}
    moved = {name: (was, now.get(name.lower().replace("_", "-"))) for name, was in before.items()
             if now.get(name.lower().replace("_", "-")) != was}
    assert moved == {}
    assert before["apache-airflow"] == pinned_airflow()


def test_the_provider_is_registered_with_the_state_of_its_extras():
    (info,) = json.loads(airflow("providers", "get", "airflow-mlops", "--full", "-o", "json"))
    assert info["package-name"] == "airflow-mlops" and info["versions"] == [version("airflow-mlops")]
    state = extras.state()
    assert {name: e["installed"] in (True, "True") for name, e in info["extras"].items()} == state
    lacking = [name for name, ok in state.items() if not ok]
    assert f"not installed: {', '.join(lacking) or 'none'}" in info["description"]
    if lacking:
        assert f"pip install 'airflow-mlops[{','.join(lacking)}]'" in info["description"]
    listed = {p["package_name"]: p for p in json.loads(airflow("providers", "list", "-o", "json"))}
    assert listed["airflow-mlops"]["version"] == version("airflow-mlops")


def test_airflow_info_shows_nothing_broken(airflow_db):
    out = subprocess.run([sys.executable, "-m", "airflow", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^airflow-mlops\s+\|\s+" + re.escape(version("airflow-mlops")), out.stdout, re.M), out.stdout
    assert not re.search(r"Traceback|ERROR|Failed to import|cannot import", out.stdout + out.stderr), out.stderr


def test_the_example_pipelines_parse_and_those_lacking_an_extra_say_what_to_install():
    bag = dagbag_class()(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["breast_cancer", "breast_cancer_stream", "iris_spark", "mlops_maintenance"]
    for dag_id, dag in bag.dags.items():
        extra, line = EXAMPLE_EXTRAS.get(dag_id, (None, None))
        if extra is None or extras.installed(extra):
            assert "invalid-pipeline" not in dag.tags, dag.doc_md
        else:
            assert "invalid-pipeline" in dag.tags
            assert f"{line}: " in dag.doc_md and f"pip install 'airflow-mlops[{extra}]'" in dag.doc_md, dag.doc_md


def test_the_operators_of_a_missing_extra_fail_at_construction_the_others_do_not():
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.operators.retention import RetentionCleanupOperator
    from airflow_mlops.operators.spark import SparkFeatureOperator
    from airflow_mlops.sensors.kafka import KafkaLagSensor

    RetentionCleanupOperator(task_id="retention", policies=[{"kind": "files", "root": "/tmp/x", "keep_last": 1}])
    made = {
        "apache-spark": lambda: SparkFeatureOperator(task_id="f", inputs={"a": "/a.csv"}, output="/out", sql="SELECT 1"),
        "apache-kafka": lambda: KafkaLagSensor(task_id="lag", topics="t", group_id="g"),
        "gpu": lambda: GpuTrainOperator(task_id="fit", entrypoint="json:loads"),
    }
    for extra, make in made.items():
        if extras.installed(extra):
            make()
        else:
            with pytest.raises(ImportError, match=re.escape(f"pip install 'airflow-mlops[{extra}]'")):
                make()


def test_a_batch_pipeline_runs_end_to_end_through_dag_test(airflow_db, mlops_home, dags_folder):
    from airflow.utils.state import DagRunState

    from airflow_mlops import load_pipelines

    (dags_folder / "flowers.yaml").write_text(
        "id: flowers\n"
        "stages:\n"
        "  preprocess: {input: {sklearn_dataset: iris}, split: {test_fraction: 0.3, seed: 1}}\n"
        "  train: {estimator: sklearn.linear_model.LogisticRegression, params: {max_iter: 300}, target: target}\n"
        "  validate: {thresholds: {accuracy: {min: 0.8}}}\n"
        "  serve: {mode: batch}\n")
    # Airflow 3.1.0's dag.test() runs only a DAG already in the metadata database (3.1.x later syncs it).
    airflow("dags", "reserialize")
    dag = load_pipelines(folder=dags_folder)["flowers"]
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == DagRunState.SUCCESS, states
    assert {states[f"{stage}.run"] for stage in ("preprocess", "train", "validate", "serve")} == {"success"}
    assert len(list((mlops_home / "data" / "flowers" / "serve").glob("*/predictions.parquet"))) == 1
