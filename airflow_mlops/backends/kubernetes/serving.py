"""Online serving on Kubernetes: a Deployment running the MLflow model server for the validated
version, a Service in front of it and a HorizontalPodAutoscaler. Applying it again for a newer
version changes the pod template, so Kubernetes rolls the Deployment over to it."""

from __future__ import annotations

from typing import Any

from airflow_mlops._core.names import object_name, pod_labels
from airflow_mlops.backends.kubernetes.pod import KubernetesBackedOperator
from airflow_mlops.spec.models import KubernetesSettings, Resources

SERVER_PORT = 8080


class KubernetesModelServerOperator(KubernetesBackedOperator):
    ui_color = "#fff3cd"

    def run(self, ctx: Any, context: Any = None) -> dict[str, Any]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        from airflow_mlops.stages.serve.model import serving_model

        served = serving_model(self.stage.model, ctx)
        model_uri = served["model_uri"]
        docs = render_model_server(ctx.pipeline_id, self.stage_name, model_uri, self.stage, self.kubernetes,
                                   self.stage_resources, ctx.mlflow.tracking_uri)
        hook = KubernetesHook(conn_id=self.kubernetes.conn_id or "kubernetes_default",
                              config_file=self.kubernetes.config_file, in_cluster=False if self.kubernetes.config_file else None)
        for doc in docs:
            action = apply(hook.api_client, doc)
            self.log.info("%s %s %s/%s", action, doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])
        name = docs[0]["metadata"]["name"]
        return {"deployment": name, "namespace": self.kubernetes.namespace, **served,
                "endpoint": f"http://{name}.{self.kubernetes.namespace}.svc/invocations"}


def render_model_server(pipeline_id: str, stage_name: str, model_uri: str, spec: Any, k: KubernetesSettings,
                        resources: Resources | None, tracking_uri: str) -> list[dict[str, Any]]:
    name = object_name(pipeline_id, stage_name)
    labels = {**k.labels, "app.kubernetes.io/name": name, **pod_labels(pipeline_id)}
    quantities = {key: str(value) for key, value in (("cpu", resources and resources.cpu), ("memory", resources and resources.memory),
                                                      ("nvidia.com/gpu", resources and resources.gpu or None)) if value}
    env = [{"name": "MLFLOW_TRACKING_URI", "value": tracking_uri}, *({"name": n, "value": v} for n, v in k.env.items()),
           *({"name": n, "valueFrom": {"secretKeyRef": {"name": r.secret, "key": r.key}}} for n, r in k.secret_env.items())]
    container = {
        "name": "model-server",
        "image": k.image,
        "command": ["mlflow", "models", "serve"],
        "args": ["-m", model_uri, "--env-manager", "local", "-h", "0.0.0.0", "-p", str(SERVER_PORT), "-w", str(spec.workers)],
        "ports": [{"containerPort": SERVER_PORT, "name": "http"}],
        "env": env,
        "readinessProbe": {"httpGet": {"path": "/ping", "port": SERVER_PORT}, "initialDelaySeconds": 5, "periodSeconds": 5},
        "resources": {"requests": quantities, "limits": quantities} if quantities else {},
    }
    template_spec: dict[str, Any] = {"containers": [container]}
    if k.service_account:
        template_spec["serviceAccountName"] = k.service_account
    if k.node_selector:
        template_spec["nodeSelector"] = k.node_selector
    if k.tolerations:
        template_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in k.tolerations]
    meta = {"name": name, "namespace": k.namespace, "labels": labels}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": spec.replicas, "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                  "template": {"metadata": {"labels": labels, "annotations": {"airflow-mlops/model-uri": model_uri}},
                               "spec": template_spec}}},
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
