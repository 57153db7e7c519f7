"""batch: the stage's code runs inside the Airflow worker process."""

from __future__ import annotations

from typing import Any

from airflow_mlops.backends import stage_operator_args
from airflow_mlops.backends.stage import StageOperator


def build(*, stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> StageOperator:
    return StageOperator(
        **stage_operator_args(stage, stage_name, plan),
        **task_args,
    )
