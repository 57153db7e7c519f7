"""kubernetes: the stage runs in a pod requesting its resource profile (see
operators/kubernetes.py); the pod runs the same stage code through the package's runtime."""

from __future__ import annotations

from typing import Any

from airflow_mlops.backends import stage_operator_args
from airflow_mlops.backends.kubernetes.pod import KubernetesStageOperator
from airflow_mlops.spec.load import effective_kubernetes
from airflow_mlops.stages import registry


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
