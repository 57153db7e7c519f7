"""Where a stage runs, as the pipeline YAML says it: ``spark:`` (an embedded session or a cluster
through an Airflow Spark connection) and ``kubernetes:`` (namespace, image, GPU nodes, volumes,
secrets by reference, and the timeouts that bound pods and API calls). ``spec.models`` re-exports
them (a documented import path)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator
from pydantic_core import PydanticCustomError

from airflow_mlops._core.units import Duration, memory_problem
from airflow_mlops.spec.base import Strict


class SparkSettings(Strict):
    """Where Spark stages run: an embedded session in the worker (default), or a cluster through an
    Airflow Spark connection, with spark-submit running the package's own runtime."""

    conn_id: str | None = Field(None, description="Airflow Spark connection; unset: embedded session in the worker.")
    master: str = Field("local[*]", description="Master of the embedded session.")
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict, description="Spark configuration.")
    connect_timeout: Duration = Field(timedelta(seconds=60), description="How long a spark:// or sc:// master may not answer.")


class Toleration(Strict):
    key: str | None = Field(None, description="The taint's key (none: every taint).")
    operator: Literal["Exists", "Equal"] = Field("Exists", description="Exists: any value; Equal: the value below.")
    value: str | None = Field(None, description="The taint's value, with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect tolerated (none: every effect).")


class VolumeMount(Strict):
    """A PersistentVolumeClaim mounted into the stage's pod (training data, model output)."""

    claim: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="PVC name.")
    mount_path: str = Field(..., pattern=r"^/", description="Absolute path in the container.")
    read_only: bool = Field(False, description="Mount it read-only.")
    size: str = Field("10Gi", description="Size requested when `airflow-mlops manifests` renders the PVC.")
    storage_class: str | None = Field(None, description="The PVC's storage class when `airflow-mlops manifests` "
                                      "renders it (default: the cluster's).")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if memory_problem(v, "size"):
            raise PydanticCustomError("memory", "{problem}", {"problem": memory_problem(v, "size")})
        return v


def _named(what: str, *, label: bool = False) -> Any:
    """A string the API server takes as the name of ``what`` (``_core.names.name_problem``)."""
    def check(value: str) -> str:
        from airflow_mlops._core.names import name_problem

        if not isinstance(value, str) or "{{" in value:  # a template: checked by the API server once rendered
            return value
        problem = name_problem(value, what, label=label)
        if problem:
            raise PydanticCustomError("k8s_name", "{problem}", {"problem": problem})
        return value
    return AfterValidator(check)


def _selector(v: dict[str, str]) -> dict[str, str]:
    from airflow_mlops._core.names import label_problem

    for key, value in v.items():
        problem = label_problem(key, value)
        if problem:
            raise PydanticCustomError("node_selector", "{problem}", {"problem": problem.replace("label", "node selector", 1)})
    return v


NamespaceName = Annotated[str, _named("namespace", label=True)]
SecretName = Annotated[str, _named("Secret")]
ServiceAccountName = Annotated[str, _named("ServiceAccount")]
NodeSelector = Annotated[dict[str, str], AfterValidator(_selector)]


class SecretEnv(Strict):
    """An environment variable taken from a Kubernetes Secret: the value never appears in the
    spec, the rendered pod template or the logs."""

    secret: SecretName = Field(..., description="Secret name.")
    key: str = Field(..., description="Key in the Secret.")


class KubernetesSettings(Strict):
    """How a stage's pod is made. Set once for the pipeline; a stage's own ``kubernetes:`` overrides
    the fields it sets."""

    image: str | None = Field(None, description="Container image with airflow-mlops installed.")
    namespace: NamespaceName = Field("default", description="The namespace the stage's pods run in.")
    conn_id: str | None = Field(None, description="Airflow Kubernetes connection (default: kubernetes_default).")
    config_file: str | None = Field(None, description="A kubeconfig file, instead of a connection.")
    service_account: ServiceAccountName | None = Field(None, description="The pods' service account (default: the "
                                                       "namespace's).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="When the kubelet pulls the image (default: Kubernetes' own rule).")
    image_pull_secrets: list[SecretName] = Field(
        default_factory=list, description="Secrets (docker-registry type) the image is pulled with, by name.")
    node_selector: NodeSelector = Field(default_factory=dict, description="Node labels every stage pod must match.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints every stage pod tolerates.")
    gpu_node_selector: NodeSelector = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}, description="Added when the stage asks for GPUs."
    )
    gpu_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        description="Added when the stage asks for GPUs.",
    )
    volumes: list[VolumeMount] = Field(default_factory=list, description="PersistentVolumeClaims mounted into "
                                       "the pods.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the pods.")
    secret_env: dict[str, SecretEnv] = Field(default_factory=dict, description="ENV_NAME → {secret, key}.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels added to the pods (and the "
                                   "Deployments of online serving).")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        from airflow_mlops._core.names import label_problem

        for key, value in v.items():  # the API server would refuse the pod at run time
            if label_problem(key, value):
                raise PydanticCustomError("labels", "{problem}", {"problem": label_problem(key, value)})
        return v
    startup_timeout: Duration = Field(timedelta(minutes=2), description="How long a started pod may take to run.")
    schedule_timeout: Duration = Field(timedelta(minutes=5), description="How long a pod may wait to be scheduled.")
    api_timeout: Duration = Field(timedelta(seconds=60), description="How long the API server may fail before the task does.")



def image_problem(kubernetes: KubernetesSettings | None, how: str) -> str | None:
    """The one rule "a kubernetes stage needs an image": None when ``kubernetes`` (the settings a
    pod is made with, a stage's own merged over the pipeline's) names an image; else ``"the
    kubernetes backend needs an image with airflow-mlops installed: <how>"``, ``how`` saying where
    the caller's user sets it. Read by the YAML checks (``backends.problems``), GpuTrainOperator
    (``backends.kubernetes.problems``) and every Kubernetes operator's constructor."""
    if kubernetes is not None and kubernetes.image:
        return None
    return f"the kubernetes backend needs an image with airflow-mlops installed: {how}"
