"""What each stage kind does, written once and backend-agnostic. Heavy libraries (pandas,
scikit-learn, MLflow) are imported inside the stage functions, never at parse time."""

from __future__ import annotations

import importlib
from typing import Any

from airflow_mlops.stages.context import StageContext, StageFailed, StageSkipped

__all__ = ["StageContext", "StageFailed", "StageSkipped", "run_stage"]


def run_stage(spec: Any, ctx: StageContext) -> dict[str, Any]:
    """Run a built-in stage (preprocess, train, validate, serve) and return its references.

    The engine follows the backend: Spark stages live in ``stages/spark/``, the rest run pandas
    code. Whether Spark is embedded or a cluster is the backend's business, not the stage's.
    """
    package = "airflow_mlops.stages.spark" if ctx.backend == "spark" else "airflow_mlops.stages"
    module = importlib.import_module(f"{package}.{spec.kind}")
    result = module.run(spec, ctx)
    return _jsonable(result)


def _jsonable(value: Any) -> Any:
    """References only, as plain JSON types, so they travel through XCom and pod logs alike."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value
