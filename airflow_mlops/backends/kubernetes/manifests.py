"""What a pipeline needs in its Kubernetes namespace(s), ready for ``kubectl apply -f``.

Per namespace its Kubernetes stages use: a ResourceQuota sized for one run with every Kubernetes
stage running at once (an upper bound: stages that depend on each other never overlap); a Role
and RoleBinding giving Airflow's worker just what it needs: KubernetesPodOperator's pods, their
logs and events, plus the MLflow credentials Secret when the tracking URI comes from an Airflow
connection, and the model server's objects where one runs; a NetworkPolicy that lets nothing in
to the pipeline's pods (they only call out: MLflow, storage); the pods' ServiceAccount (no API
token mounted: stage code never calls the Kubernetes API); and the PersistentVolumeClaims the
stages mount.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from airflow_mlops._core.names import object_name, pod_labels
from airflow_mlops._core.units import format_cpu, format_memory, parse_quantity
from airflow_mlops.backends.kubernetes.credentials import credentials_connection
from airflow_mlops.spec.load import LoadedPipeline, effective_kubernetes, resolve_resources
from airflow_mlops.stages import registry

# What applying a model server takes (create, or merge-patch what exists).
_SERVING_RULES = [
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["get", "create", "patch"]},
]


def render(loaded: LoadedPipeline, launcher: tuple[str, str] = ("airflow", "airflow-worker")) -> list[dict[str, Any]]:  # noqa: C901
    """The manifests, as dicts. ``launcher`` is (namespace, service account) of Airflow's worker."""
    p = loaded.pipeline
    label = pod_labels(p.id)  # what the stage pods carry: the NetworkPolicy selects them by it
    by_namespace: dict[str, list] = defaultdict(list)
    serving: set[str] = set()  # namespaces with a model server: the worker applies its objects there
    for stage in p.stages.values():
        if p.backend_of(stage) == "kubernetes" and not registry.runs_users_operator(stage):
            settings = effective_kubernetes(p, stage)
            by_namespace[settings.namespace].append((settings, resolve_resources(p, stage.resources)))
            if registry.runs_as_server(stage):
                serving.add(settings.namespace)
    extra_rules = []
    # The worker writes the MLflow credentials Secret, and a stream stage's Kafka config Secret.
    if credentials_connection(p.mlflow) or any(p.backend_of(stage) == "kubernetes" and getattr(stage, "kafka_conn_id", None)
                                               for stage in p.stages.values()):
        extra_rules.append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"]})
    docs: list[dict[str, Any]] = []
    for namespace, stages in sorted(by_namespace.items()):
        meta = lambda name: {"name": name, "namespace": namespace, "labels": label}  # noqa: E731
        totals = {"cpu": Decimal(0), "memory": Decimal(0), "nvidia.com/gpu": Decimal(0)}
        for _settings, resources in stages:
            if resources:
                totals["cpu"] += parse_quantity(resources.cpu) if resources.cpu else 0
                totals["memory"] += parse_quantity(resources.memory) if resources.memory else 0
                totals["nvidia.com/gpu"] += resources.gpu or 0
        hard = {"pods": str(len(stages))}
        if totals["cpu"]:
            hard["requests.cpu"] = hard["limits.cpu"] = format_cpu(totals["cpu"])
        if totals["memory"]:
            hard["requests.memory"] = hard["limits.memory"] = format_memory(totals["memory"])
        hard["requests.nvidia.com/gpu"] = str(int(totals["nvidia.com/gpu"]))
        docs.append({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta(object_name(p.id, "quota")),
                     "spec": {"hard": hard}})
        for account in sorted({s.service_account for s, _ in stages if s.service_account}):
            docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(account),
                         "automountServiceAccountToken": False})
        launcher_role = object_name(p.id, "launcher")
        docs.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(launcher_role),
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete", "patch"]},
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
                *extra_rules,
                *(_SERVING_RULES if namespace in serving else []),
            ],
        })
        docs.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(launcher_role),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": launcher_role},
            "subjects": [{"kind": "ServiceAccount", "namespace": launcher[0], "name": launcher[1]}],
        })
        docs.append({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(object_name(p.id, "pods")),
            "spec": {"podSelector": {"matchLabels": label}, "policyTypes": ["Ingress"], "ingress": []},
        })
        claims = {v.claim: v for s, _ in stages for v in s.volumes}
        for claim, volume in sorted(claims.items()):
            spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": volume.size}}}
            if volume.storage_class:
                spec["storageClassName"] = volume.storage_class
            docs.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(claim), "spec": spec})
    return docs
