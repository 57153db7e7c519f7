"""Where a stage runs. Each backend turns a stage into the task(s) of its task group; the task
whose id is ``RESULT_TASK`` returns the stage's references through XCom."""

from __future__ import annotations

import importlib
from typing import Any, Iterator

from airflow_mlops.spec.load import resolve_resources
from airflow_mlops.spec.models import AVAILABLE_BACKENDS
from airflow_mlops.spec.operator_args import RESULT_TASK

__all__ = ["AVAILABLE_BACKENDS", "RESULT_TASK", "build_stage_tasks", "problems", "stage_operator_args"]


def stage_operator_args(stage: Any, stage_name: str, plan: Any) -> dict[str, Any]:
    """What every backend's result task is given: the stage, where it writes, what it reads,
    what it holds and what that costs."""
    return {
        "task_id": RESULT_TASK,
        "stage": stage,
        "stage_name": stage_name,
        "pipeline_id": plan.pipeline.id,
        "mlflow": plan.pipeline.mlflow,
        "data_dir": plan.data_dir,
        "data_conn_id": plan.pipeline.data_conn_id,
        "upstream_tasks": plan.upstream_tasks(stage_name),
        "stage_resources": resolve_resources(plan.pipeline, stage.resources),
        "prices": plan.pipeline.prices,
        "gpu_metrics": plan.pipeline.gpu_metrics,
    }


def build_stage_tasks(backend: str, **kwargs: Any) -> Any:
    return importlib.import_module(f"airflow_mlops.backends.{backend}").build(**kwargs)


def problems(stage: Any, backend: str, pipeline: Any) -> Iterator[tuple[str | None, str]]:
    """What ``backend`` needs of a stage before it can run it (None: the fault is the backend
    setting itself), for ``airflow-mlops validate`` and the dags-folder loader."""
    if backend == "kubernetes" and stage.kind != "custom":
        if not (stage.kubernetes and stage.kubernetes.image) and not pipeline.kubernetes.image:
            yield None, ("the kubernetes backend needs an image with airflow-mlops installed: "
                         "set kubernetes.image on the pipeline or the stage")
