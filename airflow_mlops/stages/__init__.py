"""What each stage kind does, written once and backend-agnostic. Heavy libraries (pandas,
scikit-learn, MLflow) are imported inside the stage functions, never at parse time."""

from __future__ import annotations

from typing import Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed, StageSkipped
from airflow_mlops.stages._engine import run_stage_code

__all__ = ["StageContext", "StageFailed", "StageSkipped", "run_stage", "run_stage_code"]


def run_stage(spec: Any, ctx: StageContext) -> dict[str, Any]:
    """Run a built-in stage (preprocess, train, validate, serve) and return its references.

    A train stage runs with NVML telemetry and records its cost (``airflow_mlops.stages.train.measure``),
    wherever it runs: in the worker, or in a pod, where the GPUs are.
    """
    return run_stage_code(spec, ctx)
