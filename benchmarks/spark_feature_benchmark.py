"""A Spark feature stage against the same SQL in a plain PySpark script.

    python benchmarks/spark_feature_benchmark.py [--rows N] [--repeats R]

Method: generate ``orders`` (N rows) and ``customers`` (N/40 rows) as Parquet. In one process and
one local SparkSession (both sides share the JVM, so neither pays its start-up), alternate R times:
(a) the plain script — ``spark.read.parquet`` both inputs, register them as views, run the SQL,
write Parquet; (b) the airflow-mlops preprocess stage on the spark backend with the same inputs,
SQL and output format, called through ``run_stage`` as the operator calls it. A warm-up round of
each is not counted. Prints both medians and the ratio; goal: stage ≤ 1.1× the plain script.
A third line times the stage with data-quality gates, for information (it is more work).
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
SQL = """
SELECT c.customer_id, c.segment, COUNT(*) AS n_orders, SUM(o.amount) AS spend,
       AVG(o.amount) AS mean_amount, MAX(o.amount) AS max_amount,
       SUM(CASE WHEN o.returned THEN 1 ELSE 0 END) / COUNT(*) AS return_rate
FROM orders o JOIN customers c ON o.customer_id = c.customer_id
GROUP BY c.customer_id, c.segment
"""


def generate(spark, folder: Path, rows: int) -> dict[str, str]:
    from pyspark.sql import functions as F

    customers = max(rows // 40, 1)
    orders = spark.range(rows).select(
        F.col("id").alias("order_id"),
        (F.col("id") * 7919 % customers).alias("customer_id"),
        (F.rand(1) * 200).alias("amount"),
        (F.rand(2) < 0.05).alias("returned"),
    )
    people = spark.range(customers).select(
        F.col("id").alias("customer_id"), F.element_at(F.array(*map(F.lit, ["retail", "business", "new"])),
                                                        (F.col("id") % 3 + 1).cast("int")).alias("segment"))
    paths = {"orders": str(folder / "orders.parquet"), "customers": str(folder / "customers.parquet")}
    orders.write.mode("overwrite").parquet(paths["orders"])
    people.write.mode("overwrite").parquet(paths["customers"])
    return paths


def plain(spark, paths: dict[str, str], out: str) -> None:
    for name, path in paths.items():
        spark.read.parquet(path).createOrReplaceTempView(name)
    spark.sql(SQL).write.mode("overwrite").parquet(out)


def stage(paths: dict[str, str], out: Path, gates: dict | None = None) -> None:
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import DataInput, PreprocessStage
    from airflow_mlops.stages import run_stage

    spec = PreprocessStage(inputs={n: DataInput(path=p) for n, p in paths.items()}, sql=SQL, split=None,
                           output=str(out), quality=gates)
    ctx = StageContext(pipeline_id="bench", stage_name="features", run_key="r", data_dir=str(out),
                       mlflow=MlflowTarget("sqlite:////dev/null", "e", "m"), engine="spark",
                       spark={"master": "local[*]", "conf": {}})
    run_stage(spec, ctx)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from airflow_mlops.stages.spark_session import get_session

    spark = get_session("local[*]", {"spark.sql.shuffle.partitions": "8", "spark.ui.showConsoleProgress": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    folder = Path(tempfile.mkdtemp(prefix="spark-bench-"))
    try:
        paths = generate(spark, folder, args.rows)
        gates = {"row_count": {"min": 1}, "max_null_fraction": {"spend": 0.0}, "unique": ["customer_id"]}
        plain(spark, paths, str(folder / "warm-plain"))
        stage(paths, folder / "warm-stage")
        times: dict[str, list[float]] = {"plain": [], "stage": [], "gated": []}
        for i in range(args.repeats):
            times["plain"].append(timed(plain, spark, paths, str(folder / f"plain-{i}")))
            times["stage"].append(timed(stage, paths, folder / f"stage-{i}"))
            times["gated"].append(timed(stage, paths, folder / f"gated-{i}", gates))
            print(f"  run {i + 1}/{args.repeats}: plain {times['plain'][-1]:.2f} s, stage {times['stage'][-1]:.2f} s, "
                  f"stage + gates {times['gated'][-1]:.2f} s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["stage"] / med["plain"]
        print(f"{args.rows:,} orders, {max(args.rows // 40, 1):,} customers, median of {args.repeats}:")
        print(f"  plain PySpark script:         {med['plain']:.2f} s")
        print(f"  airflow-mlops feature stage:  {med['stage']:.2f} s")
        print(f"  stage with quality gates:     {med['gated']:.2f} s (for information: one more Spark job)")
        print(f"ratio stage / plain: {ratio:.2f}x")
        print(f"goal: stage <= {GOAL}x plain: {'MET' if ratio <= GOAL else 'NOT MET'}")
    finally:
        spark.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
