"""Runs a stage kind's engine: ``stages/<kind>/spark.py`` for the spark engine, else the kind's
pandas code in ``stages/<kind>/__init__.py``; MLflow's process-wide settings are put back after.
An MLflow tracking server failing under it ends it with ``DependencyFailed``."""

from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.paths import environ_kept
from airflow_mlops.stages.registry import engine_module


def run_stage_code(spec: Any, ctx: StageContext) -> dict[str, Any]:
    """The stage's own code, on the engine the backend chose (``ctx.engine``): a kind's Spark engine
    is ``stages/<kind>/spark.py``, its pandas engine ``stages/<kind>/__init__.py``. Whether Spark is
    embedded or a cluster is the backend's business, not the stage's."""
    from airflow_mlops._core.mlflow_faults import tracking_server

    module = importlib.import_module(engine_module(spec.kind, ctx.engine))
    # A tracking server failing under the stage: one message, then DependencyFailed (retryable
    # when it is unreachable or erroring). Stages that know more of what was kept (train) say it.
    during = f"stage '{ctx.stage_name}' ({spec.kind}) of pipeline '{ctx.pipeline_id}'"
    with _mlflow_left_as_found(), tracking_server(ctx.mlflow.tracking_uri, during, logger=ctx.log):
        result = module.run(spec, ctx)
    return _jsonable(result)


@contextmanager
def _mlflow_left_as_found() -> Iterator[None]:
    """Stages point MLflow at their store with ``mlflow.set_tracking_uri``, which also exports
    ``MLFLOW_TRACKING_URI`` (and the registry's) into the process environment. Left there, the
    next stage in the same process would take it for the user's setting and use the wrong store;
    so both MLflow's globals and the environment are put back as they were."""
    tracking, registry = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")
    # set_experiment exports MLFLOW_EXPERIMENT_ID the same way: kept too.
    with environ_kept("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
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
