"""The one pod builder of the kubernetes backend. Every pod the package starts is made here: a
stage's pod, a GPU training pod (``GpuTrainOperator(backend="kubernetes")``) and the model
server's Deployment template, so they all get the same treatment:

- requests = limits = the resources held (cpu, memory, whole ``nvidia.com/gpu``);
- when GPUs are asked for, ``gpu_node_selector`` and ``gpu_tolerations`` on top of the
  pipeline's own node selector and tolerations;
- the labels of ``_core.names.pod_labels`` on top of ``kubernetes.labels``;
- the service account, image pull secrets, volumes and their mounts;
- environment: plain ``kubernetes.env`` values, and secrets only by reference (``secret_env``,
  and the credentials Secret of ``credentials.py``): no secret value is ever written into a pod.

The Kubernetes client is imported inside the functions: DAG files import this module's callers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_mlops._core.names import MAX_POD_NAME, object_name, pod_labels
from airflow_mlops.spec.models import KubernetesSettings, Resources, SecretEnv

GPU_RESOURCE = "nvidia.com/gpu"


def pod_name(pipeline_id: str, stage_name: str) -> str:
    """``<pipeline>-<stage>`` as a DNS name short enough for KubernetesPodOperator's random suffix."""
    return object_name(pipeline_id or "stage", stage_name, max_len=MAX_POD_NAME)


def quantities(resources: Resources | None) -> dict[str, str]:
    """``{"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}``: what a container requests,
    and equally its limits (GPUs must have requests = limits). Unset fields and 0 GPUs are left out."""
    if resources is None:
        return {}
    values = (("cpu", resources.cpu), ("memory", resources.memory), (GPU_RESOURCE, resources.gpu or None))
    return {name: str(value) for name, value in values if value is not None}


def build_pod(
    k: KubernetesSettings,
    resources: Resources | None,
    *,
    pipeline_id: str,
    stage_name: str,
    command: list[str],
    args: list[str],
    container_name: str = "base",
    env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, SecretEnv] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Any:
    """A ``kubernetes.client.V1Pod`` (metadata: namespace and labels; no name) with one container.

    :param k: the stage's effective Kubernetes settings.
    :param resources: what the container holds (requests = limits); GPUs bring the GPU node
        selector and tolerations.
    :param env: plain values the caller adds (``PYTHONPATH``, ``MLFLOW_TRACKING_URI``); a name
        set in ``k.env`` keeps the user's value.
    :param secret_env: ENV_NAME → {secret, key} references the caller adds (the credentials
        Secret); a name set in ``k.secret_env`` keeps the user's reference. A name given both
        as a plain value and as a reference gets the reference only.
    :param labels: extra labels (the model server's ``app.kubernetes.io/name``).
    """
    from kubernetes.client import models as k8s

    wants_gpu = bool(resources and resources.gpu)
    plain = {**(env or {}), **k.env}
    refs = {**(secret_env or {}), **k.secret_env}
    variables = [k8s.V1EnvVar(name=name, value=value) for name, value in plain.items() if name not in refs]
    variables += [
        k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=ref.secret, key=ref.key)))
        for name, ref in refs.items()
    ]
    wanted = quantities(resources)
    container = k8s.V1Container(
        name=container_name,
        image=k.image,
        image_pull_policy=k.image_pull_policy,
        command=list(command),
        args=list(args),
        env=variables or None,
        resources=k8s.V1ResourceRequirements(requests=wanted, limits=dict(wanted)) if wanted else None,
        volume_mounts=[k8s.V1VolumeMount(name=f"data-{i}", mount_path=v.mount_path, read_only=v.read_only)
                       for i, v in enumerate(k.volumes)] or None,
    )
    tolerations = [k8s.V1Toleration(**t.model_dump(exclude_none=True))
                   for t in [*k.tolerations, *(k.gpu_tolerations if wants_gpu else [])]]
    spec = k8s.V1PodSpec(
        containers=[container],
        service_account_name=k.service_account,
        node_selector={**k.node_selector, **(k.gpu_node_selector if wants_gpu else {})} or None,
        tolerations=tolerations or None,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=name) for name in k.image_pull_secrets] or None,
        volumes=[k8s.V1Volume(name=f"data-{i}", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=v.claim, read_only=v.read_only)) for i, v in enumerate(k.volumes)] or None,
    )
    metadata = k8s.V1ObjectMeta(namespace=k.namespace,
                                labels={**k.labels, **(labels or {}), **pod_labels(pipeline_id, stage_name)})
    return k8s.V1Pod(metadata=metadata, spec=spec)


def kubernetes_hook(k: KubernetesSettings) -> Any:
    """The cncf-kubernetes provider's KubernetesHook for ``k.conn_id`` (or ``k.config_file``): the
    cluster KubernetesPodOperator uses too."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    from airflow_mlops._core.connections import check

    check(k.conn_id, "kubernetes.conn_id", instead="kubernetes_default or the in-cluster configuration")
    return KubernetesHook(conn_id=k.conn_id or "kubernetes_default", config_file=k.config_file,
                          in_cluster=False if k.config_file else None)


def api_client(k: KubernetesSettings) -> Any:
    """The ``kubernetes_hook(k)``'s ApiClient, bounded by ``k.api_timeout`` (``api.bound_api_client``)."""
    from airflow_mlops.backends.kubernetes.api import bound_api_client

    return bound_api_client(kubernetes_hook(k).api_client, k.api_timeout.total_seconds())


def as_dict(obj: Any) -> Any:
    """A client model as the plain dict the API takes (camelCase keys, no None values)."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)
