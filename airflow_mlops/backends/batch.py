"""batch: the stage's code runs inside the Airflow worker process."""

from __future__ import annotations

from typing import Any

from airflow_mlops.backends import RESULT_TASK
from airflow_mlops.operators.stage import StageOperator


def build(*, stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> StageOperator:
    return StageOperator(
        task_id=RESULT_TASK,
        stage=stage,
        stage_name=stage_name,
        pipeline_id=plan.pipeline.id,
        mlflow=plan.pipeline.mlflow,
        data_dir=plan.data_dir,
        upstream_tasks=plan.upstream_tasks(stage_name),
        **task_args,
    )
