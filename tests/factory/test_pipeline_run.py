"""The example pipeline end to end through Airflow (dag.test) with a real SQLite MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import extra_links, write
from tests.kafka_helpers import config, headers, read_all, shared_broker


def run_dag(dag):
    from airflow.utils.state import DagRunState

    dr = dag.test()
    return dr, dr.state == DagRunState.SUCCESS


def task_states(dr) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


def test_breast_cancer_pipeline_end_to_end_then_streaming_with_its_champion(airflow_db, mlops_home,
                                                                            example_dags_folder, monkeypatch):
    """What the demo does with the example pipelines (but Spark's): breast_cancer end to end,
    then breast_cancer_stream scoring records on Kafka with the champion it made. One test,
    because Airflow ties an Asset name to one URI (here under this test's data folder)."""
    import mlflow
    import pandas as pd

    from airflow_mlops import load_pipelines
    from airflow_mlops.telemetry.cost import report

    # A price of the pipeline's own on top of the folder's _defaults.yaml ones.
    with open(example_dags_folder / "breast_cancer.yaml", "a") as f:
        f.write("prices: {cpu_hour: 0.4}\n")
    dag = load_pipelines(folder=example_dags_folder)["breast_cancer"]
    dr, ok = run_dag(dag)
    assert ok, task_states(dr)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'breast_cancer_classifier'")
    assert [str(v.version) for v in versions] == ["1"]
    champion = client.get_model_version_by_alias("breast_cancer_classifier", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["airflow_mlops.validation"] == "passed"
    assert champion.tags["airflow.dag_id"] == "breast_cancer"
    run = client.get_run(champion.run_id)
    assert run.data.metrics["accuracy"] >= 0.9
    assert run.data.params["n_estimators"] == "100"
    # Artifacts land beside the SQLite store, not in the worker's current directory.
    assert (mlops_home / "mlartifacts").is_dir()

    # serve wrote predictions for every held-out row (25 % of the 569 rows, stratified).
    serve_ti = next(ti for ti in dr.get_task_instances() if ti.task_id == "serve.run")
    result = serve_ti.xcom_pull(task_ids="serve.run")
    predictions = pd.read_parquet(result["predictions_path"])
    assert len(predictions) == result["rows"] == 143
    assert set(predictions["prediction"].unique()) <= {0, 1}
    accuracy = (predictions["prediction"] == predictions["target"]).mean()
    assert accuracy == pytest.approx(run.data.metrics["accuracy"])
    assert Path(result["predictions_path"]).is_relative_to(mlops_home / "data" / "breast_cancer" / "serve")

    # The train stage trained without a GPU (its cpu-train profile asks for none), said so, and
    # billed that profile (2 CPUs, 4Gi) for its wall-clock time at these prices.
    assert run.data.tags["airflow_mlops.gpu.available"] == "false"
    assert run.data.tags["airflow_mlops.gpu.reason"] == "the stage's resources ask for no GPU"
    assert champion.tags["airflow_mlops.gpu.available"] == "false"
    hours = run.data.metrics["cost/wall_seconds"] / 3600
    assert hours > 0
    assert run.data.metrics["cost/gpu_hours"] == 0
    assert run.data.metrics["cost/cpu"] == pytest.approx(2 * hours * 0.4)
    assert run.data.metrics["cost/memory"] == pytest.approx(4 * hours * 0.05)
    train = dr.get_task_instance("train.run").xcom_pull(task_ids="train.run")
    assert train["cost"]["total"] == pytest.approx(run.data.metrics["cost/total"])
    assert train["gpu"] == {"available": False, "ids": [], "names": [], "reason": run.data.tags["airflow_mlops.gpu.reason"]}
    (row,) = report(dr.run_id, tracking_uri=client.tracking_uri, dag_id="breast_cancer")
    assert (row.stage, row.tasks, row.runs) == ("train", ["train.run"], 1)
    assert row.total == pytest.approx(run.data.metrics["cost/total"])
    url = f"http://localhost:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert extra_links("breast_cancer", dr.run_id, "train.run") == {"MLflow run": url}
    assert extra_links("breast_cancer", dr.run_id, "preprocess.run") == {"MLflow run": None}  # no run, no link

    stream_with_the_champion(load_pipelines(folder=example_dags_folder)["breast_cancer_stream"], monkeypatch)


def stream_with_the_champion(dag, monkeypatch) -> None:
    """demo_stream.py puts tumour records (and a garbled one) on 'tumours'; the pipeline's serve
    stage (mode: stream) scores them with the champion on the embedded broker."""
    from airflow_mlops.kafka.lag import group_lag

    broker = shared_broker()
    for name, partitions in (("tumours", 2), ("tumours.scored", 2), ("tumours.dlq", 1)):
        broker.create_topic(name, partitions)
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps({"conn_type": "kafka", "host": broker.bootstrap_servers}))
    demo = [sys.executable, str(REPO / "scripts" / "demo_stream.py")]
    subprocess.run([*demo, "produce", broker.bootstrap_servers], check=True, timeout=300)

    dr, ok = run_dag(dag)
    assert ok, task_states(dr)
    summary = dr.get_task_instance("serve.run").xcom_pull(task_ids="serve.run")
    assert (summary["records_in"], summary["predictions_out"], summary["dead_letters"]) == (301, 300, 1)
    assert summary["model_uri"] == "models:/breast_cancer_classifier/1"  # the alias, resolved once

    scored = read_all(broker, "tumours.scored")
    values = [json.loads(r.value) for r in scored]
    assert sorted(r.key.decode() for r in scored) == sorted(v["id"] for v in values)  # keyed like the input
    assert len({v["id"] for v in values}) == 300 and {v["prediction"] for v in values} <= {0, 1}
    assert {headers(r)["model_version"] for r in scored} == {"1"}
    (letter,) = read_all(broker, "tumours.dlq")
    assert (letter.key, letter.value, headers(letter)["error_type"]) == (b"tumour-garbled", b"{not json", "DecodeError")
    assert group_lag(config(broker), "airflow-mlops.breast_cancer_stream.serve", ["tumours"]).total == 0

    report = subprocess.run([*demo, "report", broker.bootstrap_servers], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "300 on 'tumours.scored' (model version 1)" in report.stdout


def test_failed_threshold_fails_validate_with_the_numbers(airflow_db, mlops_home, dags_folder):
    import mlflow

    from airflow_mlops import load_pipelines

    write(dags_folder, "strict.yaml", """
        id: strict_iris
        stages:
          preprocess:
            input: {sklearn_dataset: iris}
          train:
            estimator: sklearn.linear_model.LogisticRegression
            params: {max_iter: 200}
            target: target
            metrics: [accuracy]
          validate:
            thresholds:
              accuracy: {min: 1.01}
          serve: {}
        """)
    dag = load_pipelines(folder=dags_folder)["strict_iris"]
    dr, ok = run_dag(dag)
    states = task_states(dr)
    assert not ok
    assert states["train.run"] == "success"
    assert states["validate.run"] == "failed"
    assert states["serve.run"] == "upstream_failed"

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    version = client.get_model_version("strict_iris", "1")
    assert version.tags["airflow_mlops.validation"] == "failed"
    assert "champion" not in (version.aliases or [])


def test_stage_operator_in_a_hand_written_dag(airflow_db, mlops_home, dags_folder):
    """The README's Python usage: StageOperator with spec objects, no YAML involved."""
    import mlflow

    write(dags_folder, "hand_written.py", """
        from airflow.sdk import DAG
        from airflow_mlops import StageOperator
        from airflow_mlops.spec.models import DataInput, PreprocessStage, TrainStage, ValidateStage

        with DAG("hand_written", schedule=None) as dag:
            prep = StageOperator(task_id="prep", stage_name="prep", pipeline_id="hand_written",
                                 stage=PreprocessStage(input=DataInput(sklearn_dataset="wine")))
            train = StageOperator(
                task_id="train", stage_name="train", pipeline_id="hand_written",
                stage=TrainStage(estimator="sklearn.tree.DecisionTreeClassifier", target="target",
                                 params={"random_state": 0}),
                upstream_tasks=[("prep", "prep")],
            )
            check = StageOperator(task_id="check", stage_name="check", pipeline_id="hand_written",
                                  stage=ValidateStage(thresholds={"accuracy": {"min": 0.5}}, alias="candidate"),
                                  upstream_tasks=[("train", "train"), ("prep", "prep")])
            prep >> train >> check
        """)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dr, ok = run_dag(bag.dags["hand_written"])
    assert ok, task_states(dr)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("hand_written", "candidate").version) == "1"


def test_scoring_pipeline_serves_the_registered_champion_and_follows_a_promotion(airflow_db, mlops_home, dags_folder):
    """Issue 19, item 8: train weekly, score daily. A scoring-only pipeline (no train stage)
    serves the pipeline's registered model at 'champion', resolved once per run and recorded in
    its result; after a new training run promotes version 2, the next scoring run uses it."""
    import mlflow
    import pandas as pd
    from sklearn.datasets import load_wine

    from airflow_mlops import load_pipelines

    new_rows = load_wine(as_frame=True).data.sample(20, random_state=3)
    new_rows.to_csv(dags_folder / "todays_rows.csv", index=False)
    write(dags_folder, "wine_train.yaml", """
        id: wine_train
        mlflow: {registered_model: wine_model}
        stages:
          preprocess:
            input: {sklearn_dataset: wine}
          train:
            estimator: sklearn.tree.DecisionTreeClassifier
            target: target
          validate:
            thresholds: {accuracy: {min: 0.5}}
        """)
    write(dags_folder, "wine_score.yaml", f"""
        id: wine_score
        mlflow: {{registered_model: wine_model}}
        stages:
          serve:
            input: {{path: {dags_folder / 'todays_rows.csv'}}}
        """)
    write(dags_folder, "wine_score_pinned.yaml", f"""
        id: wine_score_pinned
        stages:
          serve:
            model: models:/wine_model/1
            input: {{path: {dags_folder / 'todays_rows.csv'}}}
        """)
    write(dags_folder, "wine_score_typo.yaml", f"""
        id: wine_score_typo
        stages:
          serve:
            model: models:/wine_modle@champion
            input: {{path: {dags_folder / 'todays_rows.csv'}}}
        """)

    def run(dag_id: str):
        dags = load_pipelines(folder=dags_folder)
        dr, ok = run_dag(dags[dag_id])
        ti = next(ti for ti in dr.get_task_instances() if ti.task_id == "serve.run") if dag_id != "wine_train" else None
        return ok, (ti.xcom_pull(task_ids="serve.run") if ti is not None and ok else None), dr

    ok, _, dr = run("wine_train")
    assert ok, task_states(dr)
    ok, result, dr = run("wine_score")
    assert ok, task_states(dr)
    assert result["model_uri"] == "models:/wine_model/1" and result["model_ref"] == "models:/wine_model@champion"
    assert result["rows"] == 20
    predictions = pd.read_parquet(result["predictions_path"])
    assert len(predictions) == 20 and predictions["prediction"].notna().all()

    ok, _, dr = run("wine_train")  # next week's training: version 2 passes and becomes champion
    assert ok, task_states(dr)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("wine_model", "champion").version) == "2"
    ok, result, dr = run("wine_score")
    assert ok, task_states(dr)
    assert result["model_uri"] == "models:/wine_model/2" and result["model_version"] == "2"
    ok, result, dr = run("wine_score_pinned")
    assert ok and result["model_uri"] == "models:/wine_model/1", task_states(dr)
    # The aliases pipelines serve through are recorded for retention to protect.
    assert "champion" in client.get_registered_model("wine_model").tags["airflow_mlops.serving_aliases"]

    ok, _, dr = run("wine_score_typo")
    assert not ok
    ti = next(ti for ti in dr.get_task_instances() if ti.task_id == "serve.run")
    assert ti.state == "failed" and ti.try_number == 1
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops.stages.serve.model import serving_model

    ctx = StageContext(pipeline_id="wine_score_typo", stage_name="serve", run_key="r", data_dir=str(mlops_home),
                       mlflow=MlflowTarget(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}",
                                           experiment="x", registered_model="wine_score_typo"))
    with pytest.raises(StageFailed, match=r"cannot serve models:/wine_modle@champion: there is no registered model "
                                          r"named 'wine_modle' \(did you mean 'wine_model'\?\)"):
        serving_model("models:/wine_modle@champion", ctx)
    with pytest.raises(StageFailed, match="model 'wine_model' has no alias 'staging'"):
        serving_model("models:/wine_model@staging", ctx)
