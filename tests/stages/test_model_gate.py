"""Champion vs challenger through Airflow, on a real SQLite MLflow store: the first model becomes
champion, a better one is promoted (the old one kept for rollback), a worse one is rejected, and
the CLI rolls champion back."""

from __future__ import annotations

import logging
import sys

import pytest

from tests.helpers import write

GATE = """
    id: gate
    stages:
      preprocess:
        input: {{sklearn_dataset: breast_cancer}}
        split: {{test_fraction: 0.3, seed: 1, stratify: target}}
      train:
        estimator: {estimator}
        target: target
        metrics: [accuracy, log_loss]
      validate:
        thresholds: {{accuracy: {{min: {min_accuracy}}}}}
        compare:
          accuracy: {{direction: higher, min_improvement: 0.01}}
          log_loss: {{direction: lower, min_improvement: 0.05, relative: true}}
        on_reject: {on_reject}
      serve: {{}}
    """
WEAK = "sklearn.dummy.DummyClassifier"
STRONG = "sklearn.linear_model.LogisticRegression"


LAST_RUN: dict = {}  # run_gate's last run: {"run_id", "note", "ti_notes": {task_id: note}}, as the DB holds them


def run_gate(dags_folder, estimator: str, on_reject: str = "fail", min_accuracy: float = 0.5):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session

    write(dags_folder, "gate.yaml", GATE.format(estimator=estimator, on_reject=on_reject, min_accuracy=min_accuracy))
    dr = DagBag(dag_folder=str(dags_folder)).dags["gate"].test()
    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id="gate", run_id=dr.run_id).one()
        tis = session.query(TaskInstance).filter_by(dag_id="gate", run_id=dr.run_id).all()
        LAST_RUN.update(run_id=dr.run_id, note=run.note, ti_notes={ti.task_id: ti.note for ti in tis})
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


@pytest.fixture
def registry(mlops_home):
    import mlflow

    def client():
        return mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")

    return client


def aliases(client) -> dict[str, str]:
    return {alias: str(client.get_model_version_by_alias("gate", alias).version)
            for alias in ("champion", "previous-champion")
            if _has(client, alias)}


def _has(client, alias) -> bool:
    import mlflow

    try:
        client.get_model_version_by_alias("gate", alias)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def test_first_better_worse_and_rollback(airflow_db, mlops_home, dags_folder, registry, capfd):
    from airflow_mlops.cli import main

    # 1. The first model that passes the thresholds becomes champion, whatever its quality.
    assert set(run_gate(dags_folder, WEAK).values()) == {"success"}
    client = registry()
    assert aliases(client) == {"champion": "1"}
    assert client.get_model_version("gate", "1").tags["airflow_mlops.decision_detail"] == "first version to pass"

    # 2. A better challenger takes over; the old champion stays reachable.
    assert set(run_gate(dags_folder, STRONG).values()) == {"success"}
    assert aliases(client) == {"champion": "2", "previous-champion": "1"}
    v1, v2 = client.get_model_version("gate", "1"), client.get_model_version("gate", "2")
    assert (v1.tags["airflow_mlops.decision"], v2.tags["airflow_mlops.decision"]) == ("replaced", "promoted")
    assert "accuracy" in v2.tags["airflow_mlops.decision_detail"] and ": ok" in v2.tags["airflow_mlops.decision_detail"]

    # 3. A worse challenger is rejected: the task fails naming each metric and both values.
    states = run_gate(dags_folder, WEAK)
    assert states["validate.run"] == "failed" and states["serve.run"] == "upstream_failed"
    assert aliases(client) == {"champion": "2", "previous-champion": "1"}
    v3 = client.get_model_version("gate", "3")
    assert v3.tags["airflow_mlops.decision"] == "rejected"
    assert client.get_model_version("gate", "2").tags["airflow_mlops.decision"] == "defended"
    detail = v3.tags["airflow_mlops.decision_detail"]
    assert detail.startswith("version 3 vs champion 2: accuracy ")
    assert "not enough" in detail and "log_loss" in detail
    sys.stdout.flush()
    task_log = capfd.readouterr().out  # dag.test() prints the task logs
    assert "failed validation" not in task_log  # it passed the thresholds; it lost the comparison
    assert "'champion' stays on version 2" in task_log

    # 4. With on_reject: skip, a losing challenger skips serving instead of failing the run.
    validate_log = logging.getLogger("airflow_mlops.stages.validate")  # the stage's ctx.log
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = seen.append
    level = validate_log.level
    validate_log.addHandler(handler)
    validate_log.setLevel(logging.INFO)
    try:
        states = run_gate(dags_folder, WEAK, on_reject="skip")
    finally:
        validate_log.removeHandler(handler)
        validate_log.setLevel(level)
    assert (states["validate.run"], states["serve.run"]) == ("skipped", "skipped")
    assert aliases(client) == {"champion": "2", "previous-champion": "1"}
    # The reason is in the open log at INFO, not only in Airflow's collapsed groups.
    assert [r.levelname for r in seen
            if r.getMessage().startswith("Challenger rejected: model 'gate' version 4 vs champion 2: ")] == ["INFO"]
    # ... and on the run's page: the skipped task's note and the run's note say why (the listener).
    assert LAST_RUN["ti_notes"]["validate.run"].startswith("Skipped: model 'gate' version 4 vs champion 2: ")
    assert LAST_RUN["ti_notes"]["serve.run"] is None  # skipped because validate was: no reason of its own
    assert LAST_RUN["note"].startswith("Skipped: validate.run: model 'gate' version 4 vs champion 2: ")

    # A version below its thresholds is recorded as rejected, with the failing thresholds.
    states = run_gate(dags_folder, WEAK, min_accuracy=0.99)
    assert states["validate.run"] == "failed"
    v5 = client.get_model_version("gate", "5")
    assert (v5.tags["airflow_mlops.validation"], v5.tags["airflow_mlops.decision"]) == ("failed", "rejected")
    assert v5.tags["airflow_mlops.decision_detail"].startswith("failed its thresholds: accuracy = 0.6")
    assert "is below the minimum 0.99" in v5.tags["airflow_mlops.decision_detail"]
    assert aliases(client) == {"champion": "2", "previous-champion": "1"}

    # 5. Rollback: champion goes back to version 1; a second rollback would undo it.
    assert main(["rollback", "gate", "--tracking-uri", f"sqlite:///{mlops_home / 'mlflow.db'}"]) == 0
    assert "moved from version 2 back to version 1" in capfd.readouterr().out
    assert aliases(client) == {"champion": "1", "previous-champion": "2"}
