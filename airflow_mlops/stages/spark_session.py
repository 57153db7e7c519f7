"""The SparkSession a Spark stage runs on."""

from __future__ import annotations

import os
import sys
from typing import Any

from airflow_mlops._core.errors import StageFailed


def get_session(master: str | None = "local[*]", conf: dict[str, Any] | None = None, app_name: str = "airflow-mlops",
                connect_timeout: float = 60.0) -> Any:
    """The active session, or a new one.

    ``master=None`` means the launcher (spark-submit) already decided, so nothing overrides it.
    ``sc://host[:port]`` is a Spark Connect server (a remote session). A master with an address
    (``spark://``, ``sc://``) must accept a connection within ``connect_timeout`` seconds
    (``spark_master.check_master``), else ``DependencyFailed`` (retryable); a master URL Spark
    cannot parse raises it not retryable. Python workers run this interpreter: Spark otherwise
    starts ``python3`` from PATH, which may lack pandas and MLflow.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from airflow_mlops.stages.spark_master import check_master, master_unreachable, unreachable

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    during = f"creating the Spark session '{app_name}'"
    kept = "nothing ran on Spark: the stage wrote no output"
    if master:
        check_master(master, connect_timeout, during=during, kept=kept)
    builder = SparkSession.builder.appName(app_name)
    if master and master.startswith("sc://"):
        builder = builder.remote(master)
    elif master:
        # Embedded in a worker: no web UI to serve, and no progress bars in the task log.
        builder = builder.master(master).config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    try:
        return builder.getOrCreate()
    except Exception as exc:
        # The master went away between the check and the registration (Spark gave up after its
        # own retries): say so, as a retryable failure, rather than the JVM's error.
        if master and master_unreachable(master):
            raise unreachable(master, connect_timeout, exc, during=during, kept=kept) from exc
        raise


def session_for(ctx: Any) -> Any:
    settings = ctx.spark
    if settings is None:  # under spark-submit
        return get_session(master=None, app_name=f"airflow-mlops {ctx.pipeline_id}.{ctx.stage_name}")
    return get_session(settings.get("master"), settings.get("conf"), f"airflow-mlops {ctx.pipeline_id}.{ctx.stage_name}",
                       connect_timeout=settings.get("connect_timeout", 60.0))


def read(spark: Any, path: str, fmt: str | None) -> Any:
    """``path`` (a local path or a URI; ``s3://`` is read as Spark's ``s3a://``) as a DataFrame."""
    from airflow_mlops.stages.data import infer_format

    fmt = infer_format(path, fmt)
    path = readable_by(spark, path)
    if fmt == "csv":
        return spark.read.option("header", True).option("inferSchema", True).csv(path)
    return spark.read.parquet(path)


def write(df: Any, path: str, fmt: str) -> str:
    """Write ``df`` to ``path`` (a folder of part files; ``s3://`` written as ``s3a://``); returns
    ``path`` as given, the location downstream stages read."""
    writer = df.write.mode("overwrite")
    target = readable_by(df.sparkSession, path)
    if fmt == "csv":
        writer.option("header", True).csv(target)
    else:
        writer.parquet(target)
    return path


def readable_by(spark: Any, location: str) -> str:
    """``location`` as Spark names it (``_core.storage.spark_uri``), once the session is known to
    have a Hadoop filesystem for its scheme. Raises StageFailed before any job runs when it has
    none, naming what to add (the Hadoop connector's package and its credentials)."""
    from airflow_mlops._core.storage import scheme_of, spark_uri

    uri = spark_uri(location)
    scheme = scheme_of(uri)
    if scheme in (None, "file") or scheme in _CHECKED:
        return uri
    try:  # a Spark Connect session has no JVM here: the server reports a missing filesystem itself
        jvm, hadoop = spark.sparkContext._jvm, spark.sparkContext._jsc.hadoopConfiguration()
    except Exception:  # noqa: BLE001
        return uri
    try:
        jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(scheme, hadoop)
    except Exception as exc:  # Py4J: UnsupportedFileSystemException, ClassNotFoundException
        first = str(exc).strip().splitlines()
        why = next((line for line in first if "Exception" in line), first[0] if first else type(exc).__name__)
        package = _CONNECTORS.get(scheme, "the Hadoop connector for this scheme")
        raise StageFailed(
            f"this Spark session cannot read or write {location} ({scheme}://: {why.strip()[:300]}): add {package} "
            f"and its credentials (spark.hadoop.fs.{scheme}.* settings) to the stage's spark.conf or the cluster's "
            "configuration, e.g. spark.jars.packages") from None
    _CHECKED.add(scheme)
    return uri


# What Spark needs for each object store (docs: "Running on your deployment").
_CONNECTORS = {
    "s3a": "org.apache.hadoop:hadoop-aws (the version of Spark's Hadoop, 3.4.x for Spark 4)",
    "gs": "com.google.cloud.bigdataoss:gcs-connector",
    "abfs": "org.apache.hadoop:hadoop-azure",
    "abfss": "org.apache.hadoop:hadoop-azure",
}
_CHECKED: set[str] = set()
