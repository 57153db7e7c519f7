"""The kubernetes backend against a real control plane (kube-apiserver, scheduler and
controller-manager 1.20.2 built from Debian's source; see tests/kube/). The stand-in kubelet
really runs each pod's command here, so the stage code in the pod executes for real."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from tests.helpers import extra_links, write


def pipeline_yaml(cluster, namespace: str, train_extra: str = "", resources: str = "{cpu: 1, memory: 1Gi, gpu: 1}") -> str:
    return f"""
        id: {namespace.replace('-', '_')}
        kubernetes:
          image: python:3.11
          namespace: {namespace}
          config_file: {cluster.kubeconfig}
          schedule_timeout: 20s
          env: {{PYTHONPATH: {REPO}}}   # the "image" has this repository's test code
        stages:
          preprocess:
            input: {{sklearn_dataset: iris}}
          train:
            backend: kubernetes
            resources: {resources}
            target: target
            {train_extra or "estimator: sklearn.linear_model.LogisticRegression"}
          validate:
            thresholds: {{accuracy: {{min: 0.8}}}}
        """


def run(dags_folder, name: str, text: str):
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, f"{name}.yaml", text)
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dag = next(d for d in bag.dags.values() if d.dag_id != "invalid")
    dr = dag.test()
    return dag, dr, {ti.task_id: ti.state for ti in dr.get_task_instances()}


def test_train_stage_runs_in_a_gpu_pod_and_registers_its_model(kube_cluster, kube_namespace, airflow_db, mlops_home, dags_folder):
    import mlflow

    dag, dr, states = run(dags_folder, "k8s_train", pipeline_yaml(kube_cluster, kube_namespace))
    assert states == {"preprocess.run": "success", "train.run": "success", "validate.run": "success"}, states
    assert type(dag.get_task("train.run")).__name__ == "KubernetesStageOperator"
    model = kube_namespace.replace("-", "_")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    version = client.get_model_version_by_alias(model, "champion")
    assert str(version.version) == "1"
    assert version.tags["airflow.task_id"] == "train.run"
    train = next(ti for ti in dr.get_task_instances() if ti.task_id == "train.run").xcom_pull(task_ids="train.run")
    assert train["model_uri"] == f"models:/{model}/1"
    assert train["metrics"]["accuracy"] >= 0.8
    # The stage in the pod sampled NVML there (no driver on this stand-in node) and billed the
    # pod's profile: 1 GPU, 1 CPU, 1Gi for its wall-clock time, at the default prices.
    logged = client.get_run(version.run_id)
    assert train["gpu"]["available"] is False and logged.data.tags["airflow_mlops.gpu.available"] == "false"
    hours = train["cost"]["wall_seconds"] / 3600
    assert train["cost"]["gpu_hours"] == train["cost"]["cpu_hours"] == train["cost"]["memory_gib_hours"] == hours
    assert logged.data.metrics["cost/total"] == train["cost"]["total"] == pytest.approx(hours * (2.5 + 0.1 + 0.05))
    url = f"http://localhost:5000/#/experiments/{logged.info.experiment_id}/runs/{logged.info.run_id}"
    assert extra_links(dag.dag_id, dr.run_id, "train.run") == {"MLflow run": url}


def test_failing_pod_fails_the_task_with_its_log_tail(kube_cluster, kube_namespace, airflow_db, mlops_home, dags_folder, capfd):
    text = pipeline_yaml(kube_cluster, kube_namespace, train_extra="callable: tests.fixtures_code:broken_trainer")
    _, _, states = run(dags_folder, "k8s_fail", text)
    log = capfd.readouterr().out  # dag.test() prints the task logs
    assert states["train.run"] == "failed"
    assert states["validate.run"] == "upstream_failed"
    assert "failed in pod" in log
    assert "last log lines" in log
    assert "ZeroDivisionError: the trainer broke on purpose" in log


def test_pod_asking_for_more_gpus_than_the_cluster_has_times_out_with_the_scheduler_reason(
    kube_cluster, kube_namespace, airflow_db, mlops_home, dags_folder, capfd
):
    too_many = kube_cluster.gpus + 6
    text = pipeline_yaml(kube_cluster, kube_namespace, resources=f"{{cpu: 1, memory: 1Gi, gpu: {too_many}}}")
    _, _, states = run(dags_folder, "k8s_pending", text)
    log = capfd.readouterr().out
    assert states["train.run"] == "failed"
    assert "was never scheduled within 20s" in log
    assert "Insufficient nvidia.com/gpu" in log


def test_invalid_spec_is_refused_before_anything_is_submitted(kube_cluster, kube_namespace, dags_folder):
    from airflow.dag_processing.dagbag import DagBag
    from kubernetes import client as k8s

    text = pipeline_yaml(kube_cluster, kube_namespace, resources="{gpu: 0.5}")
    write(dags_folder, "k8s_invalid.yaml", text)
    bag = DagBag(dag_folder=str(dags_folder))
    dag = bag.dags[kube_namespace.replace("-", "_")]
    assert "invalid-pipeline" in dag.tags
    assert "stages.train.resources.gpu: expected a whole number of GPUs, got 0.5" in dag.doc_md
    dag.test()  # the placeholder's task fails; nothing reaches the cluster
    pods = k8s.CoreV1Api(kube_cluster.api_client()).list_namespaced_pod(kube_namespace).items
    assert pods == []


def test_rendered_namespace_manifests_are_accepted_by_the_api_server(kube_cluster, kube_namespace, tmp_path):
    from kubernetes import client as k8s
    from kubernetes import utils

    from airflow_mlops.backends.kubernetes.manifests import render
    from airflow_mlops.factory.pipelines import read_pipeline

    text = pipeline_yaml(kube_cluster, kube_namespace).replace(
        "          schedule_timeout: 20s",
        "          schedule_timeout: 20s\n          service_account: runner\n"
        "          volumes: [{claim: training-data, mount_path: /data, size: 5Gi}]",
    )
    docs = render(read_pipeline(write(tmp_path, "p.yaml", text)), ("kube-system", "airflow-worker"))
    api = kube_cluster.api_client()
    for doc in docs:
        utils.create_from_dict(api, doc)
    quota = k8s.CoreV1Api(api).read_namespaced_resource_quota(f"{kube_namespace}-quota".replace("_", "-"), kube_namespace)
    assert quota.spec.hard == {"pods": "1", "requests.cpu": "1", "limits.cpu": "1", "requests.memory": "1Gi",
                               "limits.memory": "1Gi", "requests.nvidia.com/gpu": "1"}
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["NetworkPolicy", "PersistentVolumeClaim", "ResourceQuota", "Role", "RoleBinding", "ServiceAccount"]
    assert k8s.CoreV1Api(api).read_namespaced_persistent_volume_claim("training-data", kube_namespace).spec.resources.requests == {"storage": "5Gi"}
    assert k8s.RbacAuthorizationV1Api(api).read_namespaced_role_binding(
        next(d["metadata"]["name"] for d in docs if d["kind"] == "RoleBinding"), kube_namespace
    ).subjects[0].name == "airflow-worker"


def test_online_serving_deploys_the_champion_and_a_new_one_rolls_the_deployment(
    kube_cluster, kube_namespace, airflow_db, mlops_home, dags_folder
):
    from kubernetes import client as k8s

    serve = "          serve: {backend: kubernetes, mode: online, resources: {cpu: 500m, memory: 1Gi}}\n"
    text = pipeline_yaml(kube_cluster, kube_namespace).rstrip(" ") + serve
    apps = k8s.AppsV1Api(kube_cluster.api_client())
    name = f"{kube_namespace}-serve".replace("_", "-")
    for version in ("1", "2"):
        _, dr, states = run(dags_folder, "k8s_online", text)
        assert set(states.values()) == {"success"}, states
        deployment = apps.read_namespaced_deployment(name, kube_namespace)
        args = deployment.spec.template.spec.containers[0].args
        model = kube_namespace.replace("-", "_")
        assert args[:2] == ["-m", f"models:/{model}/{version}"]
        assert deployment.spec.template.spec.containers[0].readiness_probe.http_get.path == "/ping"
        assert deployment.spec.template.spec.containers[0].resources.requests == {"cpu": "500m", "memory": "1Gi"}
        assert deployment.metadata.generation == int(version)  # a new champion changed the pod template: a rollout
    assert k8s.CoreV1Api(kube_cluster.api_client()).read_namespaced_service(name, kube_namespace).spec.ports[0].target_port == 8080
    hpa = k8s.AutoscalingV1Api(kube_cluster.api_client()).read_namespaced_horizontal_pod_autoscaler(name, kube_namespace)
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas, hpa.spec.target_cpu_utilization_percentage) == (1, 3, 70)


def test_online_serving_that_asks_for_gpus_is_scheduled_on_the_gpu_node(kube_cluster, kube_namespace, tmp_path):
    """Before: the model server's Deployment asked for nvidia.com/gpu without the GPU node
    selector and toleration every other pod gets, so on a tainted GPU pool it stayed Pending."""
    import time

    from kubernetes import client as k8s

    from airflow_mlops.backends.kubernetes.serving import apply, render_model_server
    from airflow_mlops.factory._build import build_dag
    from airflow_mlops.spec.load import read_pipeline

    path = write(tmp_path, "p.yaml", f"""
        id: gpu_online
        kubernetes: {{image: python:3.11, namespace: {kube_namespace}, config_file: {kube_cluster.kubeconfig}}}
        stages:
          serve:
            backend: kubernetes
            mode: online
            model: models:/fraud/1
            resources: {{cpu: 100m, memory: 64Mi, gpu: 1}}
        """)
    serve = build_dag(read_pipeline(path)).get_task("serve.run")
    api = kube_cluster.api_client()
    # No such model in this empty store: once scheduled, the server exits without serving.
    docs = render_model_server("gpu_online", "serve", "models:/fraud/1", serve.stage, serve.kubernetes,
                               serve.stage_resources, f"sqlite:///{tmp_path / 'empty.db'}")
    for doc in docs:
        apply(api, doc)
    name = docs[0]["metadata"]["name"]
    template = k8s.AppsV1Api(api).read_namespaced_deployment(name, kube_namespace).spec.template.spec
    assert template.containers[0].resources.limits == {"cpu": "100m", "memory": "64Mi", "nvidia.com/gpu": "1"}
    assert template.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in template.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    # The real scheduler binds the ReplicaSet's pod to the (tainted) GPU node.
    core = k8s.CoreV1Api(api)
    deadline = time.monotonic() + 60
    while True:
        pods = core.list_namespaced_pod(kube_namespace, label_selector=f"app.kubernetes.io/name={name}").items
        if any(p.spec.node_name for p in pods) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [p.spec.node_name for p in pods] == [kube_cluster.node_name]
    k8s.AppsV1Api(api).delete_namespaced_deployment(name, kube_namespace)


def _pods_seen(api, namespace: str):
    """Every pod of ``namespace`` as the API server stores it, polled while the ``with`` block runs
    (stage pods are deleted when they finish)."""
    import contextlib
    import threading

    from kubernetes import client as k8s

    seen: dict[str, object] = {}
    stop = threading.Event()

    def poll() -> None:
        core = k8s.CoreV1Api(api)
        while not stop.is_set():
            for pod in core.list_namespaced_pod(namespace).items:
                seen.setdefault(pod.metadata.uid, pod)
            stop.wait(0.2)

    @contextlib.contextmanager
    def watching():
        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield seen
        finally:
            stop.set()
            thread.join(10)

    return watching()


def test_mlflow_connection_credentials_reach_pods_and_the_model_server_through_a_secret(
    kube_cluster, kube_namespace, airflow_db, mlops_home, dags_folder, monkeypatch
):
    """Before: the MLflow connection's login and password went into the worker's environment only;
    the train pod and the model server talked to MLflow without them. Now the worker writes them
    into a Secret in the pods' namespace, and pods reference it: no value is in any pod spec."""
    import base64
    import hashlib
    import json

    import mlflow
    from kubernetes import client as k8s

    password = "s3cr@t/x"
    store = f"sqlite:///{mlops_home / 'mlflow.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_K8S", json.dumps(
        {"conn_type": "mlflow", "host": store, "login": "ml", "password": password}))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the worker sets them: undo after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    text = pipeline_yaml(kube_cluster, kube_namespace,
                         train_extra="callable: tests.fixtures_code:model_that_notes_mlflow_credentials")
    text = text.replace("        stages:\n", "        mlflow: {conn_id: mlflow_k8s}\n        stages:\n", 1)
    text = text.rstrip(" ") + "          serve: {backend: kubernetes, mode: online, resources: {cpu: 100m, memory: 64Mi}}\n"
    api = kube_cluster.api_client()
    with _pods_seen(api, kube_namespace) as pods:
        _, _, states = run(dags_folder, "k8s_credentials", text)
    assert set(states.values()) == {"success"}, states
    pipeline = kube_namespace.replace("-", "_")

    # The Secret: in the pods' namespace, named after the pipeline and the connection, labelled.
    secret_name = f"{kube_namespace}-mlflow-k8s-credentials"
    secret = k8s.CoreV1Api(api).read_namespaced_secret(secret_name, kube_namespace)
    assert {k: base64.b64decode(v).decode() for k, v in secret.data.items()} == {
        "MLFLOW_TRACKING_USERNAME": "ml", "MLFLOW_TRACKING_PASSWORD": password}
    assert secret.metadata.labels == {"airflow-mlops/pipeline": pipeline, "airflow-mlops/connection": "mlflow_k8s"}

    def credentials_env(container) -> dict[str, tuple]:
        env = {e.name: e for e in container.env or []}
        assert not any(password in (e.value or "") for e in env.values())  # no plain value anywhere
        return {name: (e.value, e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key)
                for name, e in env.items() if name.startswith("MLFLOW_TRACKING_") and e.value_from}

    wanted = {name: (None, secret_name, name) for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    (train_pod,) = [p for p in pods.values() if p.metadata.labels.get("airflow-mlops/stage") == "train"]
    assert credentials_env(train_pod.spec.containers[0]) == wanted
    deployment = k8s.AppsV1Api(api).read_namespaced_deployment(f"{kube_namespace}-serve", kube_namespace)
    assert credentials_env(deployment.spec.template.spec.containers[0]) == wanted

    # ... and the training process in the pod had them (through the stand-in kubelet's secretKeyRef).
    client = mlflow.MlflowClient(tracking_uri=store)
    run_tags = client.get_run(client.get_model_version(pipeline, "1").run_id).data.tags
    assert run_tags["seen.mlflow_username"] == "ml"
    assert run_tags["seen.mlflow_password_sha256"] == hashlib.sha256(password.encode()).hexdigest()


def test_stream_serving_runs_in_a_pod_with_its_kafka_connection_from_a_secret(
    kube_cluster, kube_namespace, airflow_db, mlops_home, dags_folder, monkeypatch
):
    """Before: ``serve: {backend: kubernetes, mode: stream}`` was refused, because the stage looked
    up the Airflow Kafka connection itself, which a pod cannot. Now the stage's operator resolves it
    once and writes the client config into a Secret; the pod reads it from a ``secretKeyRef``, and no
    value of it is in the pod's spec or its arguments."""
    import base64
    import json
    import uuid

    from kubernetes import client as k8s
    from sklearn.datasets import load_iris

    from tests.kafka_helpers import FAST_GROUP, produce_json, read_all, shared_broker, unique

    broker = shared_broker()
    source, scored = unique("iris"), unique("iris-scored")
    for topic in (source, scored):
        broker.create_topic(topic, 1)
    iris = load_iris(as_frame=True).frame.drop(columns="target")
    produce_json(broker, source, {f"flower-{i}": row for i, row in enumerate(iris.head(40).to_dict("records"))})
    marker = f"client-{uuid.uuid4().hex[:8]}"  # stands for a secret: it must reach the pod by reference only
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_K8S", json.dumps(
        {"conn_type": "kafka", "host": broker.bootstrap_servers, "extra": {"client_id": marker}}))
    text = pipeline_yaml(kube_cluster, kube_namespace)
    text = text.rstrip(" ") + (
        "          serve:\n"
        "            backend: kubernetes\n"
        "            resources: {cpu: 500m, memory: 512Mi}\n"
        "            kubernetes: {tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]}\n"
        "            mode: stream\n"
        f"            stream: {{kafka_conn_id: kafka_k8s, topics: {source}, output_topic: {scored}, idle_timeout: 5,\n"
        f"                      max_duration: 120, consumer_config: {json.dumps(FAST_GROUP)}}}\n")
    api = kube_cluster.api_client()
    with _pods_seen(api, kube_namespace) as pods:
        _, dr, states = run(dags_folder, "k8s_stream", text)
    assert set(states.values()) == {"success"}, states
    summary = dr.get_task_instance("serve.run").xcom_pull(task_ids="serve.run")
    assert (summary["records_in"], summary["predictions_out"]) == (40, 40)
    assert sorted(r.key.decode() for r in read_all(broker, scored)) == sorted(f"flower-{i}" for i in range(40))

    secret_name = f"{kube_namespace}-kafka-k8s-credentials"
    secret = k8s.CoreV1Api(api).read_namespaced_secret(secret_name, kube_namespace)
    config = json.loads(base64.b64decode(secret.data["AIRFLOW_MLOPS_KAFKA_CONFIG"]))
    assert config["client_id"] == marker and config["bootstrap_servers"] == broker.bootstrap_servers
    (serve_pod,) = [p for p in pods.values() if p.metadata.labels.get("airflow-mlops/stage") == "serve"]
    container = serve_pod.spec.containers[0]
    refs = {e.name: (e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key)
            for e in container.env or [] if e.value_from}
    assert refs["AIRFLOW_MLOPS_KAFKA_CONFIG"] == (secret_name, "AIRFLOW_MLOPS_KAFKA_CONFIG")
    payload = base64.b64decode(container.args[container.args.index("--payload") + 1]).decode()
    assert marker not in payload and not any(marker in (e.value or "") for e in container.env or [])
