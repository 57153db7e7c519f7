"""The SparkSession a Spark stage runs on."""

from __future__ import annotations

import os
import sys
from typing import Any


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
    from airflow_mlops.stages.data import infer_format

    fmt = infer_format(path, fmt)
    if fmt == "csv":
        return spark.read.option("header", True).option("inferSchema", True).csv(path)
    return spark.read.parquet(path)


def write(df: Any, path: str, fmt: str) -> str:
    writer = df.write.mode("overwrite")
    if fmt == "csv":
        writer.option("header", True).csv(path)
    else:
        writer.parquet(path)
    return path
