"""The Spark ML train stage against the same training in a plain pyspark script.

    python benchmarks/spark_ml_train_benchmark.py [--rows N] [--repeats R] [--master local[2]]

Method: generate N rows (5 numeric features, a binary label) as train/test Parquet (3:1). In one
process and one SparkSession (both sides share the JVM, so neither pays its start-up), alternate R
times: (a) the plain script — read both Parquet files, ``Pipeline([VectorAssembler,
LogisticRegression])`` fit on train, transform test, accuracy/f1/roc_auc with
``pyspark.ml.evaluation``; (b) the airflow-mlops train stage on the spark backend with the same
estimator and params, through ``run_stage`` as the operator calls it — which also records the run,
the cost and the model (Spark flavour) in a SQLite MLflow store and registers a version. A warm-up
round of each is not counted. Prints both medians and the ratio; goal: stage ≤ 1.1× the plain script.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL = 1.1
FEATURES = [f"x{i}" for i in range(5)]
PARAMS = {"maxIter": 30, "regParam": 0.01}


def generate(spark, folder: Path, rows: int) -> dict[str, str]:
    from pyspark.sql import functions as F

    cols = [F.randn(i).alias(name) for i, name in enumerate(FEATURES)]
    frame = spark.range(rows).select("id", *cols)
    frame = frame.withColumn("label", ((F.col("x0") + 0.5 * F.col("x1") - F.col("x3") + F.randn(9)) > 0).cast("int"))
    paths = {"train_path": str(folder / "train.parquet"), "test_path": str(folder / "test.parquet")}
    frame.where(F.col("id") % 4 != 0).drop("id").write.mode("overwrite").parquet(paths["train_path"])
    frame.where(F.col("id") % 4 == 0).drop("id").write.mode("overwrite").parquet(paths["test_path"])
    return paths


def plain(spark, paths: dict[str, str]) -> dict[str, float]:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler

    train, test = spark.read.parquet(paths["train_path"]), spark.read.parquet(paths["test_path"])
    model = Pipeline(stages=[VectorAssembler(inputCols=FEATURES, outputCol="v"),
                             LogisticRegression(featuresCol="v", labelCol="label", **PARAMS)]).fit(train)
    scored = model.transform(test).withColumn("label", test["label"].cast("double"))
    return {
        "accuracy": MulticlassClassificationEvaluator(labelCol="label", metricName="accuracy").evaluate(scored),
        "f1": MulticlassClassificationEvaluator(labelCol="label", metricName="fMeasureByLabel",
                                                metricLabel=1.0).evaluate(scored),
        "roc_auc": BinaryClassificationEvaluator(labelCol="label").evaluate(scored),
    }


def stage(paths: dict[str, str], store: Path, master: str, n: int) -> dict[str, float]:
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import TrainStage
    from airflow_mlops.stages import run_stage

    spec = TrainStage(estimator="pyspark.ml.classification.LogisticRegression", params=PARAMS, target="label",
                      metrics=["accuracy", "f1", "roc_auc"], backend="spark")
    target = MlflowTarget(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", experiment="bench",
                          registered_model="bench", artifact_location=str(store / "artifacts"))
    ctx = StageContext(pipeline_id="bench", stage_name="train", run_key=f"r{n}", data_dir=str(store / "data"),
                       mlflow=target, upstream=[("prep", paths)], engine="spark", spark={"master": master, "conf": {}})
    return run_stage(spec, ctx)["metrics"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    from airflow_mlops.stages.spark_session import get_session

    spark = get_session(args.master, {"spark.sql.shuffle.partitions": "4"})
    spark.sparkContext.setLogLevel("ERROR")
    folder = Path(tempfile.mkdtemp(prefix="spark-ml-bench-"))
    try:
        paths = generate(spark, folder, args.rows)
        times: dict[str, list[float]] = {"plain": [], "stage": []}
        for round_ in range(args.repeats + 1):
            for side in ("plain", "stage"):
                started = time.perf_counter()
                metrics = plain(spark, paths) if side == "plain" else stage(paths, folder, args.master, round_)
                took = time.perf_counter() - started
                if round_:  # round 0 warms both up
                    times[side].append(took)
                if round_ == args.repeats:
                    print(f"{side:>5} metrics: {metrics}")
        p, s = statistics.median(times["plain"]), statistics.median(times["stage"])
        print(f"rows: {args.rows:,} (train {args.rows * 3 // 4:,}), master {args.master}, {args.repeats} repeats")
        print(f"plain pyspark script: {p:.2f} s (median)")
        print(f"airflow-mlops train stage: {s:.2f} s (median)")
        ratio = s / p
        print(f"ratio: {ratio:.2f}x (goal <= {GOAL}x) {'OK' if ratio <= GOAL else 'OVER GOAL'}")
        return 0
    finally:
        spark.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
