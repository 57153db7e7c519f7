"""What each stage kind does, written once and backend-agnostic. Heavy libraries (pandas,
scikit-learn, MLflow) are imported inside the stage functions, never at parse time."""

from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from airflow_mlops.stages.context import StageContext, StageFailed, StageSkipped, environ_kept

__all__ = ["StageContext", "StageFailed", "StageSkipped", "run_stage"]


def run_stage(spec: Any, ctx: StageContext) -> dict[str, Any]:
    """Run a built-in stage (preprocess, train, validate, serve) and return its references.

    A train stage runs with NVML telemetry and records its cost (``airflow_mlops.gpu.stage``),
    wherever it runs: in the worker, or in a pod, where the GPUs are.
    """
    if spec.kind == "train":
        from airflow_mlops.gpu.stage import run_train_stage

        return run_train_stage(spec, ctx)
    return run_stage_code(spec, ctx)


def run_stage_code(spec: Any, ctx: StageContext) -> dict[str, Any]:
    """The stage's own code. The engine follows the backend: Spark stages live in
    ``stages/spark/``, the rest run pandas code. Whether Spark is embedded or a cluster is the
    backend's business, not the stage's."""
    package = "airflow_mlops.stages.spark" if ctx.backend == "spark" else "airflow_mlops.stages"
    module = importlib.import_module(f"{package}.{spec.kind}")
    with _mlflow_left_as_found():
        result = module.run(spec, ctx)
    return _jsonable(result)


@contextmanager
def _mlflow_left_as_found() -> Iterator[None]:
    """Stages point MLflow at their store with ``mlflow.set_tracking_uri``, which also exports
    ``MLFLOW_TRACKING_URI`` (and the registry's) into the process environment. Left there, the
    next stage in the same process would take it for the user's setting and use the wrong store;
    so both MLflow's globals and the environment are put back as they were."""
    tracking, registry = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")
    with environ_kept("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        try:
            yield
        finally:
            mlflow = sys.modules.get("mlflow")
            if mlflow is not None:
                mlflow.set_tracking_uri(tracking)
                mlflow.set_registry_uri(registry)


def _jsonable(value: Any) -> Any:
    """References only, as plain JSON types, so they travel through XCom and pod logs alike."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value
