"""spark: the stage's Spark code runs on an embedded session inside the worker (default), or on a
cluster through an Airflow Spark connection: spark-submit runs ``airflow_mlops/runtime.py`` with
the stage spec, and the result comes back through a JSON file beside the stage's outputs."""

from __future__ import annotations

from typing import Any

from airflow_mlops.backends import stage_operator_args
from airflow_mlops.backends.spark.operator import SparkStageOperator


def call(*, stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """SparkStageOperator and its arguments (``backends.stage_task_call``)."""
    return SparkStageOperator, {**stage_operator_args(stage, stage_name, plan),
                                "spark": stage.spark or plan.pipeline.spark, **task_args}
