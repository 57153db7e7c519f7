"""Where a stage runs. Each backend turns a stage into the task(s) of its task group; the task
whose id is ``RESULT_TASK`` returns the stage's references through XCom."""

from __future__ import annotations

import importlib
from typing import Any, Iterator

from airflow_mlops.spec.backend_settings import image_problem
from airflow_mlops.spec.load import effective_kubernetes, resolve_resources
from airflow_mlops.spec.models import AVAILABLE_BACKENDS
from airflow_mlops.spec.operator_args import RESULT_TASK
from airflow_mlops.stages import registry

__all__ = ["AVAILABLE_BACKENDS", "RESULT_TASK", "build_stage_tasks", "problems", "stage_operator_args", "stage_task_call"]


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


def stage_task_call(backend: str, *, stage: Any, plan: Any, **kwargs: Any) -> tuple[type, dict[str, Any]]:
    """``(operator class, keyword arguments)`` of a stage's result task on ``backend``, given
    ``stage``, ``stage_name``, ``plan`` and ``task_args``: what ``build_stage_tasks`` constructs, and
    what ``airflow-mlops render`` writes out as Python. A server mode (serve, online) on a backend
    that hosts servers of its own (``Pipeline.hosts_server``) is the backend module's
    ``server_call``, anything else its ``call``."""
    module = importlib.import_module(f"airflow_mlops.backends.{backend}")
    call = module.server_call if registry.runs_as_server(stage) and plan.pipeline.hosts_server(stage) else module.call
    return call(stage=stage, plan=plan, **kwargs)


def build_stage_tasks(backend: str, **kwargs: Any) -> Any:
    """The stage's result task on ``backend``, constructed (inside the current task group)."""
    operator, arguments = stage_task_call(backend, **kwargs)
    return operator(**arguments)


def problems(stage: Any, backend: str, pipeline: Any) -> Iterator[tuple[str | None, str]]:
    """What ``backend`` needs of a stage before it can run it (None: the fault is the backend
    setting itself), for ``airflow-mlops validate`` and the dags-folder loader."""
    if backend == "kubernetes" and not registry.runs_users_operator(stage):
        lacking = image_problem(effective_kubernetes(pipeline, stage), "set kubernetes.image on the pipeline or the stage")
        if lacking:
            yield None, lacking
