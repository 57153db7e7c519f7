"""batch: the stage's code runs inside the Airflow worker process."""

from __future__ import annotations

from typing import Any

from airflow_mlops.backends import stage_operator_args
from airflow_mlops.backends.stage import StageOperator


def call(*, stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """The worker's StageOperator and its arguments (``backends.stage_task_call``)."""
    return StageOperator, {**stage_operator_args(stage, stage_name, plan), **task_args}


# The extra GpuTrainOperator's work needs here: NVML picks and measures the worker's GPUs.
TRAINING_EXTRA = "gpu"


def training(job: Any, *, log: Any = None, on_run: Any = None, **_: Any) -> Any:
    """GpuTrainOperator's job in the worker: a ``TrainingRun`` (``.run()``, ``.kill()``)."""
    from airflow_mlops.stages.train.measure import TrainingRun

    return TrainingRun(job, log=log, on_run=on_run)


def problems(kubernetes: Any) -> str | None:
    """Nothing: the worker runs anything."""
    del kubernetes
    return None
