"""Spark ML training on the spark backend, on a real Spark: local[2] (the session shared by the test
run) and a standalone master with two workers started here. The stage's metrics must equal, exactly,
those of the same model trained in a plain pyspark script; the version is gated (champion vs
challenger) and scored in batch on Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_mlops._core.context import MlflowTarget, StageContext
from airflow_mlops.spec.models import ServeStage, TrainStage, ValidateStage
from airflow_mlops.stages import StageFailed, run_stage
from airflow_mlops.stages.data import read_dataset
from tests.helpers import write

REPO = Path(__file__).resolve().parents[3]  # tests/stages/train/ → the repository
FEATURES = ["a", "b", "c"]
METRICS = ["accuracy", "f1", "precision", "recall", "roc_auc", "log_loss"]


def make_data(folder: Path, rows: int = 600) -> dict[str, str]:
    """A binary label that depends on a and b (noisy), written as train/test Parquet files."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, 3))
    label = ((x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.7, size=rows)) > 0).astype(int)
    frame = pd.DataFrame(x, columns=FEATURES).assign(label=label)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train_path": str(folder / "train.parquet"), "test_path": str(folder / "test.parquet")}
    frame.iloc[: rows * 3 // 4].to_parquet(paths["train_path"], index=False)
    frame.iloc[rows * 3 // 4:].to_parquet(paths["test_path"], index=False)
    return paths


def plain_pyspark(spark, train_path: str, test_path: str, params: dict) -> tuple[dict[str, float], list[float]]:
    """The same training written as a plain pyspark script: (metrics, test predictions in file order)."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler

    train, test = spark.read.parquet(train_path), spark.read.parquet(test_path)
    model = Pipeline(stages=[VectorAssembler(inputCols=FEATURES, outputCol="v"),
                             LogisticRegression(featuresCol="v", labelCol="label", **params)]).fit(train)
    scored = model.transform(test).withColumn("label", test["label"].cast("double"))
    multi = {"accuracy": "accuracy", "f1": "fMeasureByLabel", "precision": "precisionByLabel",
             "recall": "recallByLabel", "log_loss": "logLoss"}
    metrics = {name: MulticlassClassificationEvaluator(labelCol="label", metricName=m, metricLabel=1.0).evaluate(scored)
               for name, m in multi.items()}
    metrics["roc_auc"] = BinaryClassificationEvaluator(labelCol="label").evaluate(scored)
    return metrics, [r.prediction for r in scored.select("prediction").collect()]


def context(tmp_path: Path, stage: str, upstream, spark_settings: dict | None, engine: str = "spark") -> StageContext:
    target = MlflowTarget(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e", registered_model="churn",
                          artifact_location=str(tmp_path / "artifacts"))
    return StageContext(pipeline_id="p", stage_name=stage, run_key="r1", data_dir=str(tmp_path / "data"), mlflow=target,
                        upstream=list(upstream), engine=engine, spark=spark_settings)


def test_spark_ml_stage_equals_plain_pyspark_then_gated_and_served(spark, tmp_path):
    import mlflow

    paths = make_data(tmp_path / "in")
    settings = {"master": "local[2]", "conf": {}}
    params = {"maxIter": 25, "regParam": 0.01}
    spec = TrainStage(estimator="pyspark.ml.classification.LogisticRegression", params=params, target="label",
                      metrics=METRICS, backend="spark")
    first = run_stage(spec, context(tmp_path, "train", [("prep", paths)], settings))
    expected, predictions = plain_pyspark(spark, paths["train_path"], paths["test_path"], params)
    assert first["metrics"] == expected  # exactly: the same Spark computation
    assert first["model_version"] == "1" and first["features"] == FEATURES

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.get_model_version("churn", "1")
    assert version.run_id == first["run_id"]
    gate = ValidateStage(thresholds={"accuracy": {"min": 0.5}}, compare={"roc_auc": {}})
    passed = run_stage(gate, context(tmp_path, "validate", [("train", first)], None, "pandas"))
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1" and passed["model_version"] == "1"

    # A challenger that must lose: it sees only the noise column c.
    weak = TrainStage(estimator="pyspark.ml.classification.LogisticRegression", target="label", metrics=METRICS,
                      features=["c"], params={"maxIter": 5})
    second = run_stage(weak, context(tmp_path, "train2", [("prep", paths)], settings))
    assert second["model_version"] == "2" and second["metrics"]["roc_auc"] < first["metrics"]["roc_auc"]
    with pytest.raises(StageFailed, match="stays on version 1"):
        run_stage(gate, context(tmp_path, "validate2", [("train", second)], None, "pandas"))

    served = run_stage(ServeStage(input={"path": paths["test_path"]}),
                       context(tmp_path, "serve", [("validate", passed)], settings))
    scored = read_dataset(served["predictions_path"])
    assert served["rows"] == 150 and served["model_version"] == "1"
    assert sorted(scored.columns) == sorted([*FEATURES, "label", "prediction"])
    # the same rows, in file order, as the plain script's transform
    merged = read_dataset(paths["test_path"]).merge(scored, on=[*FEATURES, "label"])
    assert merged["prediction"].tolist() == predictions

    # The pyfunc flavour scores pandas frames like the Spark model does (what pandas serving uses).
    pyfunc = _pyfunc(tmp_path, "models:/churn/1")
    head = read_dataset(paths["test_path"]).head(20)
    assert list(pyfunc.predict(head[FEATURES])) == predictions[:20]


def pipeline_of(train, test, features, target, params, spark):
    """A train callable returning an unfitted Spark ML Pipeline: the stage fits and scores it."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    del train, test, spark
    return Pipeline(stages=[VectorAssembler(inputCols=features, outputCol="v"),
                            LogisticRegression(featuresCol="v", labelCol=target, **params)])


def test_a_callable_may_return_an_unfitted_pipeline(spark, tmp_path):
    paths = make_data(tmp_path / "in")
    params = {"maxIter": 10}
    spec = TrainStage(callable="tests.stages.train.test_train_spark_ml:pipeline_of", params=params, target="label",
                      metrics=METRICS, backend="spark")
    result = run_stage(spec, context(tmp_path, "train", [("prep", paths)], {"master": "local[2]", "conf": {}}))
    assert result["metrics"] == plain_pyspark(spark, paths["train_path"], paths["test_path"], params)[0]
    with pytest.raises(StageFailed, match="a Pipeline's stages are objects"):
        run_stage(TrainStage(estimator="pyspark.ml.Pipeline", target="label", backend="spark"),
                  context(tmp_path, "train2", [("prep", paths)], {"master": "local[2]", "conf": {}}))


def _pyfunc(tmp_path: Path, uri: str):
    from airflow_mlops._core.mlflow import use_store

    use_store(context(tmp_path, "x", [], None).mlflow)
    import mlflow

    return mlflow.pyfunc.load_model(uri)


def test_estimator_and_backend_mismatches_are_yaml_errors_at_their_line(tmp_path):
    base = """
        id: p
        stages:
          preprocess:
            input: {{path: /data/x.csv}}
          train:
            backend: {backend}
            estimator: {estimator}
            target: y
        """
    cases = {
        ("batch", "pyspark.ml.classification.LogisticRegression"): "is a Spark ML estimator: it trains on Spark",
        ("spark", "sklearn.linear_model.LogisticRegression"): "pyspark.ml.classification.LogisticRegression",
    }
    for (backend, estimator), message in cases.items():
        path = write(tmp_path, f"{backend}.yaml", base.format(backend=backend, estimator=estimator))
        proc = subprocess.run([str(Path(sys.executable).parent / "airflow-mlops"), "validate", str(path)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode != 0, proc.stdout
        out = proc.stdout + proc.stderr
        assert message in out, out
        assert f"{path}:7:" in out, out  # the estimator's line


STANDALONE_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.stages.train.test_train_spark_ml import context, plain_pyspark, METRICS
from airflow_mlops.spec.models import TrainStage
from airflow_mlops.stages import run_stage
from airflow_mlops.stages.spark_session import get_session
tmp, paths, master = Path({tmp!r}), {paths!r}, {master!r}
settings = {{"master": master, "conf": {{"spark.executor.memory": "512m", "spark.cores.max": "2",
             "spark.sql.shuffle.partitions": "4"}}}}
spec = TrainStage(estimator="pyspark.ml.classification.LogisticRegression", params={{"maxIter": 25}},
                  target="label", metrics=METRICS, backend="spark")
result = run_stage(spec, context(tmp, "train", [("prep", paths)], settings))
spark = get_session(master)
expected, _ = plain_pyspark(spark, paths["train_path"], paths["test_path"], {{"maxIter": 25}})
executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
print("RESULT " + json.dumps({{"stage": result["metrics"], "plain": expected, "executors": executors,
                               "master": spark.sparkContext.master}}))
"""


@pytest.fixture
def standalone_cluster(tmp_path):
    """A Spark standalone master and two workers (1 core, 768 MiB each) on 127.0.0.1, from the pyspark install."""
    from tests.servers import SparkStandalone

    cluster = SparkStandalone(tmp_path, workers=2, cores=1, memory="768m")
    try:
        yield cluster.start().url
    finally:
        cluster.stop_all()


def test_spark_ml_stage_on_a_standalone_cluster_with_two_workers(standalone_cluster, tmp_path):
    # A process of its own: this test run's local[2] session would otherwise be the active one.
    paths = make_data(tmp_path / "in")
    script = STANDALONE_SCRIPT.format(repo=str(REPO), tmp=str(tmp_path), paths=paths, master=standalone_cluster)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert got["master"] == standalone_cluster and got["executors"] == 2
    assert got["stage"] == got["plain"]
    assert got["stage"]["accuracy"] > 0.6


def test_yaml_pipeline_trains_gates_and_serves_with_spark_ml_through_airflow(spark, airflow_db, mlops_home,
                                                                             dags_folder):
    import mlflow
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, "tumours.yaml", """
        id: tumours_spark_ml
        spark: {master: "local[2]"}
        stages:
          preprocess:
            backend: spark
            inputs:
              tumours: {sklearn_dataset: breast_cancer}
            sql: |
              SELECT `mean radius` AS radius, `mean texture` AS texture, `mean smoothness` AS smoothness,
                     `worst concavity` AS concavity, target FROM tumours
            split: {test_fraction: 0.25, seed: 7}
          train:
            backend: spark
            estimator: pyspark.ml.classification.LogisticRegression
            params: {maxIter: 50, regParam: 0.01}
            target: target
            metrics: [accuracy, f1, roc_auc]
          validate:
            thresholds: {roc_auc: {min: 0.9}}
            compare: {roc_auc: {}}
          serve: {backend: spark}
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dag = bag.dags["tumours_spark_ml"]
    assert type(dag.get_task("train.run")).__name__ == "SparkStageOperator"
    dr = dag.test()
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert {k: ti.state for k, ti in tis.items()} == dict.fromkeys(tis, "success")
    train = tis["train.run"].xcom_pull(task_ids="train.run")
    serve = tis["serve.run"].xcom_pull(task_ids="serve.run")
    assert train["metrics"]["roc_auc"] > 0.9 and serve["rows"] > 100
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("tumours_spark_ml", "champion")
    assert str(champion.version) == train["model_version"] == "1"
    assert "spark" in mlflow.models.get_model_info(f"{champion.source}").flavors
    predictions = read_dataset(serve["predictions_path"])
    assert set(predictions["prediction"].unique()) <= {0.0, 1.0}
