"""Pods built from stages, inspected through KubernetesPodOperator.build_pod_request_obj(dry_run=True)
(no cluster needed for this part; tests/backends/kubernetes/test_kubernetes_cluster.py runs them on a real one)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from airflow_mlops.factory.pipelines import read_pipeline
from tests.helpers import write

PIPELINE = """
    id: churn_k8s
    kubernetes:
      image: registry.example/mlops:1.0
      namespace: ml
      service_account: churn-runner
      volumes:
        - {claim: training-data, mount_path: /data, read_only: true}
        - {claim: models, mount_path: /models}
      secret_env:
        DB_PASSWORD: {secret: churn-db, key: password}
      env: {MODE: nightly}
    stages:
      preprocess:
        input: {path: /data/churn.csv}
      train:
        backend: kubernetes
        estimator: sklearn.ensemble.RandomForestClassifier
        target: churned
        resources: training
      validate:
        backend: kubernetes
        resources: {cpu: 500m, memory: 1Gi}
        kubernetes: {namespace: ml-small, tolerations: [{key: spot, operator: Exists, effect: NoSchedule}]}
    """


@pytest.fixture
def dag(tmp_path):
    from airflow_mlops.factory._build import build_dag

    return build_dag(read_pipeline(write(tmp_path, "p.yaml", PIPELINE)))


def pod_of(task):
    return task.pod_operator(["-m", "airflow_mlops.runtime", "--payload", "e30="], "churn_k8s").build_pod_request_obj(dry_run=True)


def test_gpu_stage_pod_requests_its_profile_and_lands_on_gpu_nodes(dag):
    task = dag.get_task("train.run")
    assert type(task).__name__ == "KubernetesStageOperator"
    assert type(dag.get_task("preprocess.run")).__name__ == "StageOperator"
    pod = pod_of(task)
    container = pod.spec.containers[0]
    wanted = {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}  # the built-in 'training' profile
    assert container.resources.requests == wanted
    assert container.resources.limits == wanted  # GPUs must have requests == limits
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert pod.metadata.namespace == "ml"
    assert pod.spec.service_account_name == "churn-runner"
    assert container.image == "registry.example/mlops:1.0"
    assert container.command == ["python"]
    assert container.args[:2] == ["-m", "airflow_mlops.runtime"]
    assert pod.metadata.labels["airflow-mlops/pipeline"] == "churn_k8s"
    assert pod.metadata.labels["airflow-mlops/stage"] == "train"


def test_volumes_and_secrets_without_secret_values(dag):
    pod = pod_of(dag.get_task("train.run"))
    container = pod.spec.containers[0]
    assert [(v.persistent_volume_claim.claim_name, v.persistent_volume_claim.read_only) for v in pod.spec.volumes] == [
        ("training-data", True), ("models", False)]
    assert [(m.mount_path, m.read_only) for m in container.volume_mounts] == [("/data", True), ("/models", False)]
    env = {e.name: e for e in container.env}
    assert env["MODE"].value == "nightly"
    ref = env["DB_PASSWORD"].value_from.secret_key_ref
    assert (ref.name, ref.key, env["DB_PASSWORD"].value) == ("churn-db", "password", None)
    # The pod imports the code the DAG sees: the pipeline's folder first (issue 19, item 4).
    assert env["PYTHONPATH"].value.split(":")[0] == str(Path(dag.fileloc).parent)


def test_stage_overrides_and_cpu_only_pods_get_no_gpu_scheduling(dag):
    pod = pod_of(dag.get_task("validate.run"))
    assert pod.metadata.namespace == "ml-small"
    assert pod.spec.containers[0].resources.requests == {"cpu": "500m", "memory": "1Gi"}
    assert not pod.spec.node_selector
    assert [(t.key, t.effect) for t in pod.spec.tolerations] == [("spot", "NoSchedule")]
    assert pod.spec.service_account_name == "churn-runner"  # inherited from the pipeline


def test_payload_carries_the_stage_not_the_yaml_and_the_runtime_runs_it(tmp_path):
    """The pod's argument decodes to the spec and context; running the runtime on it here executes
    the same stage code (a validate stage against a real SQLite MLflow store)."""
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.backends import runtime
    from airflow_mlops.spec.models import ValidateStage

    ctx = StageContext(pipeline_id="p", stage_name="validate", run_key="r", data_dir=str(tmp_path),
                       mlflow=MlflowTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", "e", "nope"),
                       upstream=[("train", {"model_name": "nope", "model_version": "1"})])
    payload = runtime.encode_payload(ValidateStage(thresholds={"accuracy": {"min": 0.5}}), ctx)
    decoded = json.loads(base64.b64decode(payload))
    assert decoded["spec"]["thresholds"] == {"accuracy": {"min": 0.5, "max": None}}
    assert decoded["context"]["upstream"] == [["train", {"model_name": "nope", "model_version": "1"}]]
    out = subprocess.run([sys.executable, "-m", "airflow_mlops.runtime", "--payload", payload],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1  # the model does not exist in this empty store: a crash, not a verdict
    assert "RESOURCE_DOES_NOT_EXIST" in out.stderr or "not found" in out.stderr.lower()


@pytest.mark.parametrize("engine, wire", [("pandas", "batch"), ("spark", "spark")])
def test_the_context_engine_travels_as_earlier_releases_read_and_is_read_under_either_name(tmp_path, engine, wire):
    """A worker and a pod image (or a spark-submit cluster) may be of different releases: the JSON
    keeps the key earlier ones read (``"backend": "batch" | "spark"``), and ``"engine"`` is read too."""
    from airflow_mlops._core.context import MlflowTarget, StageContext

    ctx = StageContext(pipeline_id="p", stage_name="s", run_key="r", data_dir=str(tmp_path),
                       mlflow=MlflowTarget("sqlite:////m.db", "e", "m"), engine=engine)
    sent = json.loads(json.dumps(ctx.to_dict()))
    assert sent["backend"] == wire and "engine" not in sent
    assert StageContext.from_dict(sent) == ctx
    newer = {k: v for k, v in sent.items() if k != "backend"} | {"engine": engine}
    assert StageContext.from_dict(newer) == ctx


def test_parsing_a_kubernetes_pipeline_imports_no_kubernetes_client(tmp_path):
    write(tmp_path, "p.yaml", PIPELINE)
    code = textwrap.dedent(f"""
        import sys
        from airflow_mlops import load_pipelines
        dags = load_pipelines(folder={str(tmp_path)!r})
        assert "churn_k8s" in dags, dags
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'kubernetes_asyncio')))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_manifests_size_the_quota_from_the_profiles_and_bind_the_launcher(tmp_path, capsys):
    import yaml

    from airflow_mlops.cli import main

    path = write(tmp_path, "p.yaml", PIPELINE)
    assert main(["manifests", str(path), "--launcher", "airflow/worker"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    by_ns = {}
    for doc in docs:
        by_ns.setdefault(doc["metadata"]["namespace"], {})[doc["kind"]] = doc
    assert sorted(by_ns) == ["ml", "ml-small"]
    assert by_ns["ml"]["ResourceQuota"]["spec"]["hard"] == {
        "pods": "1", "requests.cpu": "16", "limits.cpu": "16", "requests.memory": "64Gi", "limits.memory": "64Gi",
        "requests.nvidia.com/gpu": "4"}
    assert by_ns["ml-small"]["ResourceQuota"]["spec"]["hard"]["requests.cpu"] == "500m"
    assert by_ns["ml"]["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "namespace": "airflow", "name": "worker"}]
    assert by_ns["ml"]["NetworkPolicy"]["spec"] == {
        "podSelector": {"matchLabels": {"airflow-mlops/pipeline": "churn_k8s"}}, "policyTypes": ["Ingress"], "ingress": []}
    assert by_ns["ml"]["ServiceAccount"]["automountServiceAccountToken"] is False
    # Both namespaces mount the pipeline's two claims (the stage override keeps the volumes).
    pvcs = sorted((d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvcs == [("ml", "models"), ("ml", "training-data"), ("ml-small", "models"), ("ml-small", "training-data")]


def test_stream_serving_runs_on_kubernetes_and_is_refused_on_spark_at_its_line(tmp_path, capsys):
    """Stream serving on the kubernetes backend was refused (the stage looked up the Airflow Kafka
    connection itself, which a pod cannot): now its operator resolves it and the pod gets it from a
    Secret (test_kubernetes_cluster runs one). On Spark it is refused at the mode's line, and the
    launcher's Role may write that Secret."""
    from airflow_mlops.cli import main

    path = write(tmp_path, "p.yaml", """
        id: scores
        kubernetes: {image: registry.example/mlops:1.0}
        stages:
          serve:
            backend: kubernetes
            mode: stream
            stream: {topics: events, output_topic: scored, model_uri: "models:/m/1"}
        """)
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["manifests", str(path), "--launcher", "airflow/airflow-worker"]) == 0
    role = next(d for d in yaml.safe_load_all(capsys.readouterr().out) if d and d["kind"] == "Role")
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"]} in role["rules"]
    path.write_text(path.read_text().replace("backend: kubernetes", "backend: spark"))
    assert main(["validate", str(path)]) == 1
    assert (f"{path}:6:11 stages.serve.mode: stream serving is not a Spark job: use backend batch (or kubernetes) "
            "for it") in capsys.readouterr().out


def test_stage_pods_training_pods_and_the_model_server_come_from_one_builder(tmp_path):
    """The three pods the package makes get the same scheduling, resources, labels, pull secrets
    and volumes from the same settings (before, each had its own builder; the model server's
    lacked the GPU node selector and tolerations)."""
    from airflow_mlops.backends.kubernetes._podspec import as_dict
    from airflow_mlops.backends.kubernetes.serving import render_model_server
    from airflow_mlops.factory._build import build_dag
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.stages.train.job import GpuTrainJob

    text = PIPELINE.replace("      env: {MODE: nightly}\n",
                            "      env: {MODE: nightly}\n      image_pull_secrets: [registry-login]\n")
    text = text.rstrip(" ") + "      serve:\n        backend: kubernetes\n        mode: online\n        resources: training\n"
    dag = build_dag(read_pipeline(write(tmp_path, "p.yaml", text)))
    stage_pod = as_dict(pod_of(dag.get_task("train.run")))
    serve = dag.get_task("serve.run")
    server_pod = render_model_server("churn_k8s", "serve", "models:/churn_k8s/1", serve.stage, serve.kubernetes,
                                     serve.stage_resources, "http://mlflow:5000")[0]["spec"]["template"]
    training = GpuTrainOperator(task_id="train", entrypoint="tests.gpu_entrypoints:train_forest", resources="training",
                                backend="kubernetes", kubernetes=serve.kubernetes, pipeline_id="churn_k8s")
    job = GpuTrainJob(entrypoint="tests.gpu_entrypoints:train_forest", gpus=4, checkpoint_dir=str(tmp_path),
                      tracking_uri="sqlite:////tmp/x.db", experiment="e", registered_model="m", run_name="r")
    training_pod = as_dict(training.pod_operator(job).build_pod_request_obj(dry_run=True))
    for pod in (stage_pod, server_pod, training_pod):
        spec, container = pod["spec"], pod["spec"]["containers"][0]
        assert container["resources"] == {"requests": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"},
                                          "limits": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}}
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert spec["imagePullSecrets"] == [{"name": "registry-login"}]
        assert spec["serviceAccountName"] == "churn-runner"
        assert [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]] == ["training-data", "models"]
        assert pod["metadata"]["labels"]["airflow-mlops/pipeline"] == "churn_k8s"
        env = {e["name"]: e for e in container["env"]}
        assert env["MODE"] == {"name": "MODE", "value": "nightly"}
        assert env["DB_PASSWORD"] == {"name": "DB_PASSWORD",
                                      "valueFrom": {"secretKeyRef": {"name": "churn-db", "key": "password"}}}
    assert server_pod["metadata"]["labels"]["airflow-mlops/stage"] == "serve"


def test_manifests_let_the_worker_write_the_credentials_secret_and_apply_the_model_server(tmp_path):
    from airflow_mlops.backends.kubernetes.manifests import render

    text = PIPELINE.replace("id: churn_k8s\n", "id: churn_k8s\n    mlflow: {conn_id: mlflow_default}\n")
    text = text.rstrip(" ") + "      serve:\n        backend: kubernetes\n        mode: online\n"
    roles = {d["metadata"]["namespace"]: d for d in render(read_pipeline(write(tmp_path, "p.yaml", text)))
             if d["kind"] == "Role"}
    rules = {r["resources"][0]: r["verbs"] for r in roles["ml"]["rules"]}
    assert rules["secrets"] == ["get", "create", "update"]
    assert rules["deployments"] == rules["services"] == rules["horizontalpodautoscalers"] == ["get", "create", "patch"]
    small = {r["resources"][0] for r in roles["ml-small"]["rules"]}  # no model server there
    assert "secrets" in small and "deployments" not in small
    plain = {r["resources"][0] for d in render(read_pipeline(write(tmp_path, "q.yaml", PIPELINE)))
             if d["kind"] == "Role" for r in d["rules"]}
    assert plain == {"pods", "pods/log", "events"}  # no connection, no model server: pods only


def test_a_stage_operator_without_an_image_is_refused_by_the_one_image_rule():
    """The YAML checks, GpuTrainOperator and every Kubernetes operator read one rule
    (``spec.backend_settings.image_problem``): a pod needs an image with airflow-mlops installed."""
    from airflow_mlops.backends.kubernetes import KubernetesStageOperator

    with pytest.raises(ValueError, match=r"^KubernetesStageOperator\(task_id='t'\): the kubernetes backend needs an "
                                         r"image with airflow-mlops installed: give kubernetes=\{'image': \.\.\.\}$"):
        KubernetesStageOperator(task_id="t", stage={"kind": "validate"}, stage_name="validate", kubernetes={})
