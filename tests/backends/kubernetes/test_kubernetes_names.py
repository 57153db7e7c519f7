"""Names and labels of everything the package puts on a cluster, judged by a real kube-apiserver
(1.20.2, see tests/kube/): a 120-character pipeline id with dots and underscores, stage names
ending in '_', and two ids that differ only past the 63rd character."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from airflow_mlops._core.names import LABEL_VALUE, label_value, object_name
from tests.conftest import REPO
from tests.helpers import write

# 120 characters; cut at 63 it ends in '.', which the API server refuses in a label value.
LONG_ID = ("team_a.fraud_scoring." * 6)[:120]
# The same first 110 characters: names and labels must still differ.
TWIN_ID = LONG_ID[:110] + "_v2.shadow"


def pipeline(cluster, namespace: str, pipeline_id: str) -> str:
    return f"""
        id: {pipeline_id}
        kubernetes:
          image: python:3.11
          namespace: {namespace}
          config_file: {cluster.kubeconfig}
        stages:
          preprocess:
            input: {{sklearn_dataset: iris}}
          train_:
            kind: train
            backend: kubernetes
            resources: {{cpu: 100m, memory: 64Mi}}
            estimator: sklearn.linear_model.LogisticRegression
            target: target
          serve_:
            kind: serve
            backend: kubernetes
            mode: online
            resources: {{cpu: 100m, memory: 64Mi}}
        """


def test_names_and_labels_are_valid_unique_and_stable():
    for value in (LONG_ID, TWIN_ID, "train_", "___", "a" * 200, "ok-label"):
        label = label_value(value)
        assert len(label) <= 63 and LABEL_VALUE.match(label), (value, label)
        assert label_value(value) == label  # the same every time: selectors keep matching
    assert label_value("ok-label") == "ok-label" and label_value("churn_v2.1") == "churn_v2.1"
    assert label_value(LONG_ID) != label_value(TWIN_ID)
    assert object_name("churn_k8s", "serve") == "churn-k8s-serve"  # short ones stay readable
    assert object_name(LONG_ID, "serve_") != object_name(TWIN_ID, "serve_")
    assert object_name("2024_churn", "serve") == "mlops-2024-churn-serve"  # a Service name starts with a letter
    assert len(object_name(LONG_ID, "train_", max_len=54)) == 54


def test_the_api_server_accepts_every_object_made_for_a_long_pipeline_id(kube_cluster, kube_namespace, tmp_path):
    """Before: labels cut at 63 characters ended in '.', and the API server refused the pods,
    the Deployment, the Service and the manifests' NetworkPolicy and quota (422 Invalid)."""
    from kubernetes import client as k8s
    from kubernetes import utils

    from airflow_mlops._core.names import pod_labels
    from airflow_mlops.backends.kubernetes.serving import apply, render_model_server
    from airflow_mlops.factory._build import build_dag
    from airflow_mlops.factory.pipelines import read_pipeline

    api = kube_cluster.api_client()
    core = k8s.CoreV1Api(api)
    created: dict[str, dict[str, str]] = {}
    paths = {}
    for pipeline_id in (LONG_ID, TWIN_ID):
        path = paths[pipeline_id] = write(tmp_path / pipeline_id[-6:], "p.yaml",
                                          pipeline(kube_cluster, kube_namespace, pipeline_id))
        dag = build_dag(read_pipeline(path))

        # The stage pod, as KubernetesPodOperator builds it, created for real (it stays Pending:
        # no toleration for the fake node's taint, so nothing runs).
        train = dag.get_task("train_.run")
        arguments = ["-m", "airflow_mlops.runtime", "--payload", "e30="]
        pod = train.pod_operator(arguments, pipeline_id).build_pod_request_obj()
        created_pod = core.create_namespaced_pod(kube_namespace, pod)
        assert created_pod.metadata.labels["airflow-mlops/pipeline"] == label_value(pipeline_id)
        assert created_pod.metadata.labels["airflow-mlops/stage"] == label_value("train_")

        # The model server: Deployment, Service and autoscaler, applied like the operator does.
        serve = dag.get_task("serve_.run")
        docs = render_model_server(pipeline_id, "serve_", "models:/fraud/1", serve.stage, serve.kubernetes,
                                   serve.stage_resources, "http://mlflow:5000")
        for doc in docs:
            assert apply(api, doc) == "created"
        name = docs[0]["metadata"]["name"]

        # A ConfigMap with the same name and labels.
        core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": object_name(pipeline_id, "train_"),
                                                                        "labels": pod_labels(pipeline_id, "train_")}})
        created[pipeline_id] = {"deployment": name, "pod": created_pod.metadata.name}

    # `airflow-mlops manifests` of both, applied as `kubectl apply -f -` would (after the pods:
    # each quota admits one run of its own pipeline).
    for pipeline_id, path in paths.items():
        out = subprocess.run([sys.executable, "-m", "airflow_mlops.cli", "manifests", str(path), "--launcher",
                              "kube-system/airflow-worker"], cwd=REPO, capture_output=True, text=True, check=True)
        manifests = list(yaml.safe_load_all(out.stdout))
        for doc in manifests:
            utils.create_from_dict(api, doc)
        policy = next(d for d in manifests if d["kind"] == "NetworkPolicy")
        selector = ",".join(f"{k}={v}" for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
        selected = core.list_namespaced_pod(kube_namespace, label_selector=selector).items
        assert created[pipeline_id]["pod"] in {p.metadata.name for p in selected}  # the policy covers the stage pod

    # The Deployment's own pods were made by the controllers with its labels (they would not be
    # with an invalid one).
    deadline = time.monotonic() + 60
    while True:
        pods = core.list_namespaced_pod(
            kube_namespace, label_selector=f"app.kubernetes.io/name={created[LONG_ID]['deployment']}").items
        if pods or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert pods and pods[0].metadata.labels["airflow-mlops/pipeline"] == label_value(LONG_ID)
    assert created[LONG_ID]["deployment"] != created[TWIN_ID]["deployment"]
    assert len(k8s.AppsV1Api(api).list_namespaced_deployment(kube_namespace).items) == 2
    assert len(core.list_namespaced_resource_quota(kube_namespace).items) == 2  # one per pipeline, no clash


@pytest.mark.parametrize(("setting", "expected"), [
    ("namespace: ML_Churn", "3:14 kubernetes.namespace: 'ML_Churn' is not a valid namespace name for Kubernetes: at "
                            "most 63 characters of lower-case letters, digits and '-', alphanumeric at both ends "
                            "(e.g. 'ml-churn')"),
    ("service_account: Churn_Runner", "3:20 kubernetes.service_account: 'Churn_Runner' is not a valid ServiceAccount "
                                      "name for Kubernetes"),
    ("image_pull_secrets: [Registry_Creds]", "3:24 kubernetes.image_pull_secrets.0: 'Registry_Creds' is not a valid "
                                             "Secret name for Kubernetes"),
    ("secret_env: {DB_URL: {secret: Churn_DB, key: url}}", "3:33 kubernetes.secret_env.DB_URL.secret: 'Churn_DB' is "
                                                           "not a valid Secret name for Kubernetes"),
    ("node_selector: {pool: gpu a100}", "3:18 kubernetes.node_selector: node selector value 'gpu a100' of 'pool' is "
                                        "not valid"),
])
def test_names_the_api_server_refuses_are_refused_at_their_line(tmp_path, capsys, setting, expected):
    """Before: each of these passed validate and `airflow-mlops manifests`; the API server refused
    the pod or the manifest at run time."""
    from airflow_mlops.cli import main
    from tests.helpers import write

    path = write(tmp_path, "k.yaml", f"id: k\nkubernetes:\n  {setting}\n  image: img\n"
                                     "stages:\n  preprocess: {backend: kubernetes, input: {sklearn_dataset: iris}}\n")
    assert main(["validate", str(path)]) == 1
    assert f"{path}:{expected}" in capsys.readouterr().out
    assert main(["manifests", str(path), "-o", str(tmp_path / "out")]) != 0
