"""spark: the stage's Spark code runs on an embedded session inside the worker (default), or on a
cluster through an Airflow Spark connection: spark-submit runs ``airflow_mlops/runtime.py`` with
the stage spec, and the result comes back through a JSON file beside the stage's outputs."""

from __future__ import annotations

from typing import Any

from airflow_mlops.backends import RESULT_TASK
from airflow_mlops.operators.spark import SparkStageOperator


def build(*, stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> SparkStageOperator:
    return SparkStageOperator(
        task_id=RESULT_TASK,
        stage=stage,
        stage_name=stage_name,
        pipeline_id=plan.pipeline.id,
        mlflow=plan.pipeline.mlflow,
        data_dir=plan.data_dir,
        upstream_tasks=plan.upstream_tasks(stage_name),
        spark=stage.spark or plan.pipeline.spark,
        **task_args,
    )
