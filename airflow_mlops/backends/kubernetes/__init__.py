"""kubernetes: the stage runs in a pod requesting its resource profile; the pod runs the same
stage code through the package's runtime. Every pod the package makes (stage pods, GPU training
pods, the model server's Deployment) comes from one builder, ``build_pod`` (podspec.py); a
command runs in a pod through ``stage_pod_operator`` and ``run_pod_operator`` (pod.py), and the
MLflow connection's credentials reach pods through a Secret (credentials.py)."""

from __future__ import annotations

from typing import Any

from airflow_mlops.backends import stage_operator_args
from airflow_mlops.backends.kubernetes._podspec import build_pod
from airflow_mlops.backends.kubernetes.pod import (
    KWARG_IMAGE,
    KubernetesStageOperator,
    run_pod_operator,
    stage_pod_operator,
)
from airflow_mlops.spec.backend_settings import image_problem
from airflow_mlops.spec.load import effective_kubernetes

__all__ = ["TRAINING_EXTRA", "KubernetesStageOperator", "build_pod", "call", "problems", "run_pod_operator",
           "server_call", "stage_pod_operator", "training"]


def call(*, stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """The stage in a pod running the package's runtime: its operator and arguments
    (``backends.stage_task_call``)."""
    return KubernetesStageOperator, _arguments(stage, stage_name, plan, task_args)


def server_call(*, stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """A server mode (serve, online) as a model server Deployment of its own (``serving.py``):
    this backend is in ``spec.models.SERVER_BACKENDS``."""
    from airflow_mlops.backends.kubernetes.serving import KubernetesModelServerOperator

    return KubernetesModelServerOperator, _arguments(stage, stage_name, plan, task_args)


def _arguments(stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> dict[str, Any]:
    return {**stage_operator_args(stage, stage_name, plan), "kubernetes": effective_kubernetes(plan.pipeline, stage),
            **task_args}


# The extra GpuTrainOperator's work needs here (NVML runs in the pod's image).
TRAINING_EXTRA = "cncf-kubernetes"


def training(job: Any, *, distributed: Any = None, **kwargs: Any) -> Any:
    """GpuTrainOperator's job in a GPU pod (``training.PodTraining``), or with ``distributed``
    as a torchrun group of pods (``distributed.DistributedTraining``): ``.run()``, ``.kill()``."""
    if distributed is not None:
        from airflow_mlops.backends.kubernetes.credentials import mlflow_secret_env
        from airflow_mlops.backends.kubernetes.distributed import DistributedTraining
        from airflow_mlops.backends.kubernetes.pod_training import pod_resources_of

        k = kwargs["kubernetes"]
        return DistributedTraining(
            job, distributed=distributed, kubernetes=k, resources=pod_resources_of(job, kwargs.get("held_resources")),
            pipeline_id=kwargs["pipeline_id"], stage_name=kwargs["task_id"], log=kwargs["log"],
            env={"PYTHONPATH": ":".join(job.python_path)} if job.python_path else None,
            secret_env=mlflow_secret_env(k, kwargs["pipeline_id"], kwargs["mlflow"], job.credentials))
    from airflow_mlops.backends.kubernetes.pod_training import PodTraining

    return PodTraining(job, **kwargs)


def problems(kubernetes: Any) -> str | None:
    """What this backend lacks to run an operator's work (GpuTrainOperator's ``kubernetes=``)."""
    return image_problem(kubernetes, KWARG_IMAGE)
