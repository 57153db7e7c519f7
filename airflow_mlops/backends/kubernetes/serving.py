"""Online serving on Kubernetes: a Deployment running the MLflow model server for the validated
version, a Service in front of it and a HorizontalPodAutoscaler. Applying it again for a newer
version changes the pod template, so Kubernetes rolls the Deployment over to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_mlops._core.names import object_name
from airflow_mlops._core.outcome import for_airflow
from airflow_mlops.backends.kubernetes._podspec import api_client, as_dict, build_pod
from airflow_mlops.backends.kubernetes.api import api_address, api_failure
from airflow_mlops.backends.kubernetes.credentials import mlflow_secret_env
from airflow_mlops.backends.kubernetes.pod import KubernetesBackedOperator
from airflow_mlops.spec.models import KubernetesSettings, Resources, SecretEnv

SERVER_PORT = 8080


class KubernetesModelServerOperator(KubernetesBackedOperator):
    ui_color = "#fff3cd"

    def run(self, ctx: Any, context: Any = None) -> dict[str, Any]:
        from airflow_mlops.stages.serve.model import serving_model

        served = serving_model(self.stage.model, ctx)
        model_uri = served["model_uri"]
        secret_env = mlflow_secret_env(self.kubernetes, ctx.pipeline_id, self.mlflow, ctx.mlflow.credentials)
        docs = render_model_server(ctx.pipeline_id, self.stage_name, model_uri, self.stage, self.kubernetes,
                                   self.stage_resources, ctx.mlflow.tracking_uri, secret_env=secret_env)
        name = docs[0]["metadata"]["name"]
        client = None
        applied: list[str] = []
        try:
            client = api_client(self.kubernetes)
            for doc in docs:
                action = apply(client, doc)
                applied.append(f"{doc['kind']} {action}")
                self.log.info("%s %s %s/%s", action, doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])
        except Exception as exc:
            failed = api_failure(
                exc, address=api_address(client), api_timeout=self.kubernetes.api_timeout.total_seconds(),
                during=f"applying the model server {self.kubernetes.namespace}/{name} of stage '{self.stage_name}' "
                       f"({model_uri})",
                kept=(f"applied before the failure: {', '.join(applied) or 'nothing'}; "
                      + ("the Deployment was not changed: it still serves the version it served; "
                         if not applied else "")
                      + "model versions and aliases are unchanged; a rerun applies the Deployment, Service and "
                        "HorizontalPodAutoscaler again under the same names (created or updated, never duplicated)"))
            if failed is None:
                raise
            raise for_airflow(failed, self.log) from exc
        return {"deployment": name, "namespace": self.kubernetes.namespace, **served,
                "endpoint": f"http://{name}.{self.kubernetes.namespace}.svc/invocations"}


def render_model_server(pipeline_id: str, stage_name: str, model_uri: str, spec: Any, k: KubernetesSettings,
                        resources: Resources | None, tracking_uri: str,
                        secret_env: Mapping[str, SecretEnv] | None = None) -> list[dict[str, Any]]:
    """[Deployment, Service, HorizontalPodAutoscaler] as dicts, all named ``<pipeline>-<stage>``.
    The Deployment's pod comes from ``build_pod`` like every other pod (requests = limits, GPU
    node selector and tolerations when ``resources`` has GPUs); ``secret_env`` adds references
    to the MLflow credentials Secret."""
    from kubernetes.client import models as k8s

    name = object_name(pipeline_id, stage_name)
    pod = build_pod(k, resources, pipeline_id=pipeline_id, stage_name=stage_name, container_name="model-server",
                    command=["mlflow", "models", "serve"],
                    args=["-m", model_uri, "--env-manager", "local", "-h", "0.0.0.0", "-p", str(SERVER_PORT),
                          "-w", str(spec.workers)],
                    env={"MLFLOW_TRACKING_URI": tracking_uri}, secret_env=secret_env,
                    labels={"app.kubernetes.io/name": name})
    container = pod.spec.containers[0]
    container.ports = [k8s.V1ContainerPort(container_port=SERVER_PORT, name="http")]
    container.readiness_probe = k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path="/ping", port=SERVER_PORT),
                                            initial_delay_seconds=5, period_seconds=5)
    labels = pod.metadata.labels
    meta = {"name": name, "namespace": k.namespace, "labels": labels}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": spec.replicas, "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                  "template": {"metadata": {"labels": labels, "annotations": {"airflow-mlops/model-uri": model_uri}},
                               "spec": as_dict(pod.spec)}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": {"app.kubernetes.io/name": name},
                  "ports": [{"name": "http", "port": 80, "targetPort": SERVER_PORT}]}},
        # autoscaling/v1: understood by every Kubernetes version we meet, old and new.
        {"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": meta,
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                  "minReplicas": spec.replicas, "maxReplicas": max(spec.max_replicas, spec.replicas),
                  "targetCPUUtilizationPercentage": spec.target_cpu_percent}},
    ]


def apply(api_client: Any, doc: dict[str, Any]) -> str:
    """Create, or merge-patch what exists (like ``kubectl apply`` for objects we own)."""
    from kubernetes import client, utils
    from kubernetes.client.exceptions import ApiException

    try:
        utils.create_from_dict(api_client, doc)
        return "created"
    except utils.FailToCreateError as exc:
        if not all(isinstance(e, ApiException) and e.status == 409 for e in exc.api_exceptions):
            raise
    name, namespace = doc["metadata"]["name"], doc["metadata"]["namespace"]
    patch = {
        "Deployment": client.AppsV1Api(api_client).patch_namespaced_deployment,
        "Service": client.CoreV1Api(api_client).patch_namespaced_service,
        "HorizontalPodAutoscaler": client.AutoscalingV1Api(api_client).patch_namespaced_horizontal_pod_autoscaler,
    }[doc["kind"]]
    # An explicit content type: kubernetes client 36 picks json-patch for a dict body.
    patch(name, namespace, doc, _content_type="application/merge-patch+json")
    return "updated"
