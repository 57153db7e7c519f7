"""The SparkSession a Spark stage runs on."""

from __future__ import annotations

import os
import sys
from typing import Any


def get_session(master: str | None = "local[*]", conf: dict[str, Any] | None = None, app_name: str = "airflow-mlops") -> Any:
    """The active session, or a new one.

    ``master=None`` means the launcher (spark-submit) already decided, so nothing overrides it.
    Python workers run this interpreter: Spark otherwise starts ``python3`` from PATH, which may
    lack pandas and MLflow.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    if master:
        # Embedded in a worker: no web UI to serve, and no progress bars in the task log.
        builder = builder.master(master).config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()


def session_for(ctx: Any) -> Any:
    settings = ctx.spark
    if settings is None:  # under spark-submit
        return get_session(master=None, app_name=f"airflow-mlops {ctx.pipeline_id}.{ctx.stage_name}")
    return get_session(settings.get("master"), settings.get("conf"), f"airflow-mlops {ctx.pipeline_id}.{ctx.stage_name}")


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
