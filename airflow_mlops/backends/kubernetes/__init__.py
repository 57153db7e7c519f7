"""kubernetes: the stage runs in a pod requesting its resource profile; the pod runs the same
stage code through the package's runtime. Every pod the package makes (stage pods, GPU training
pods, the model server's Deployment) comes from one builder, ``build_pod`` (podspec.py); a
command runs in a pod through ``stage_pod_operator`` and ``run_pod_operator`` (pod.py), and the
MLflow connection's credentials reach pods through a Secret (credentials.py)."""

from __future__ import annotations

from typing import Any

from airflow_mlops.backends import stage_operator_args
from airflow_mlops.backends.kubernetes._podspec import build_pod
from airflow_mlops.backends.kubernetes.pod import KubernetesStageOperator, run_pod_operator, stage_pod_operator
from airflow_mlops.spec.load import effective_kubernetes
from airflow_mlops.stages import registry

__all__ = ["KubernetesStageOperator", "build", "build_pod", "problems", "run_pod_operator", "stage_pod_operator", "training"]


def build(*, stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> KubernetesStageOperator:
    if registry.runs_as_server(stage):
        from airflow_mlops.backends.kubernetes.serving import KubernetesModelServerOperator

        operator: Any = KubernetesModelServerOperator
    else:
        operator = KubernetesStageOperator
    return operator(
        **stage_operator_args(stage, stage_name, plan),
        kubernetes=effective_kubernetes(plan.pipeline, stage),
        **task_args,
    )


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
            secret_env=mlflow_secret_env(k, kwargs["pipeline_id"], kwargs["mlflow"]))
    from airflow_mlops.backends.kubernetes.pod_training import PodTraining

    return PodTraining(job, **kwargs)


def problems(kubernetes: Any) -> str | None:
    """What this backend lacks to run an operator's work (GpuTrainOperator's ``kubernetes=``)."""
    if kubernetes is None or not kubernetes.image:
        return "backend='kubernetes' needs kubernetes={'image': ...} (an image with airflow-mlops installed)"
    return None
