"""The Kubernetes API server failing under a task, on a real control plane (tests/kube): stopped
(connection refused), hung (SIGSTOP: connections accepted, nothing answered), refusing the
credentials, or without the namespace. Each ends within ``kubernetes.api_timeout`` with one
DependencyFailed message and the right retry decision, and once the API server is back the same
task succeeds and leaves nothing behind.

The cluster is this module's own: the tests stop its kube-apiserver (etcd, the scheduler and the
stand-in kubelet keep running, so state and running pods survive, as on a real cluster)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid

import pytest

from tests.conftest import REPO
from tests.helpers import write
from tests.kube.cluster import start_cluster
from tests.kube.plugin import ensure_binaries


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ensure_binaries()
    with start_cluster(tmp_path_factory.mktemp("kube-faults"), gpus=1) as kube:
        yield kube


def apiserver_up(cluster) -> None:
    proc = cluster.processes["kube-apiserver"]
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)  # harmless when it was not stopped
    else:
        cluster.start_apiserver()


@pytest.fixture
def namespace(cluster):
    from kubernetes import client

    name = f"faults-{uuid.uuid4().hex[:6]}"
    with cluster.api_client() as api:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    cluster.wait_for_default_service_account(name)
    yield name
    apiserver_up(cluster)  # a failed test must not leave the next one without an API server
    with cluster.api_client() as api:
        client.CoreV1Api(api).delete_namespace(name)


def serve_operator(tmp_path, cluster, namespace: str, *, api_timeout: str = "3s", kubeconfig=None):
    from airflow_mlops.factory._build import build_dag
    from airflow_mlops.spec.load import read_pipeline

    path = write(tmp_path, "serve.yaml", f"""
        id: faults
        kubernetes: {{image: python:3.11, namespace: {namespace}, config_file: {kubeconfig or cluster.kubeconfig},
                      api_timeout: {api_timeout}}}
        stages:
          serve: {{backend: kubernetes, mode: online, resources: {{cpu: 100m, memory: 64Mi}}}}
        """)
    return build_dag(read_pipeline(path)).get_task("serve.run")


def serve_context(tmp_path):
    from airflow_mlops._core.context import MlflowTarget, StageContext

    target = MlflowTarget(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e", registered_model="m",
                          artifact_location=str(tmp_path / "artifacts"))
    upstream = [("validate", {"model_uri": "models:/m/1", "model_name": "m", "model_version": "1"})]
    return StageContext(pipeline_id="faults", stage_name="serve", run_key="r1", data_dir=str(tmp_path / "data"),
                        mlflow=target, upstream=upstream)


def server_objects(cluster, namespace: str) -> list[str]:
    from kubernetes import client

    api = cluster.api_client()
    found = [f"Deployment/{d.metadata.name}" for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items]
    found += [f"Service/{s.metadata.name}" for s in client.CoreV1Api(api).list_namespaced_service(namespace).items]
    found += [f"HorizontalPodAutoscaler/{h.metadata.name}"
              for h in client.AutoscalingV1Api(api).list_namespaced_horizontal_pod_autoscaler(namespace).items]
    return sorted(found)


def test_model_server_with_the_api_server_stopped_fails_at_once_retryable_then_applies(cluster, namespace, tmp_path):
    from airflow_mlops._core.errors import DependencyFailed

    op = serve_operator(tmp_path, cluster, namespace)
    cluster.stop_apiserver()
    started = time.monotonic()
    with pytest.raises(DependencyFailed) as info:
        op.run(serve_context(tmp_path))
    assert time.monotonic() - started < 5  # connection refused: no reason to wait
    message = str(info.value)
    assert message.startswith(f"Kubernetes API server ({cluster.server}) did not answer (MaxRetryError")
    assert f"during applying the model server {namespace}/faults-serve of stage 'serve' (models:/m/1)" in message
    assert "kept: applied before the failure: nothing; the Deployment was not changed" in message
    assert "retry: yes" in message and info.value.retryable

    cluster.start_apiserver()
    result = op.run(serve_context(tmp_path))
    assert result["deployment"] == "faults-serve"
    assert server_objects(cluster, namespace) == [
        "Deployment/faults-serve", "HorizontalPodAutoscaler/faults-serve", "Service/faults-serve"]


def test_model_server_with_a_hung_api_server_ends_within_api_timeout(cluster, namespace, tmp_path):
    """SIGSTOP: the kernel still accepts connections, nothing answers. Without a request timeout
    the client waited forever here."""
    from airflow_mlops._core.errors import DependencyFailed

    op = serve_operator(tmp_path, cluster, namespace, api_timeout="3s")
    os.kill(cluster.processes["kube-apiserver"].pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        with pytest.raises(DependencyFailed) as info:
            op.run(serve_context(tmp_path))
        elapsed = time.monotonic() - started
    finally:
        os.kill(cluster.processes["kube-apiserver"].pid, signal.SIGCONT)
    assert 3 <= elapsed < 8, elapsed
    assert "did not answer (ReadTimeoutError" in str(info.value) and info.value.retryable
    # Back again: the same operator applies everything, each object once.
    op.run(serve_context(tmp_path))
    assert server_objects(cluster, namespace) == [
        "Deployment/faults-serve", "HorizontalPodAutoscaler/faults-serve", "Service/faults-serve"]


def test_refused_credentials_and_a_missing_namespace_fail_without_retry(cluster, namespace, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    wrong = tmp_path / "wrong-kubeconfig"
    wrong.write_text(cluster.kubeconfig.read_text().replace(cluster.token, "not-the-token"))
    op = serve_operator(tmp_path, cluster, namespace, kubeconfig=wrong)
    with pytest.raises(AirflowFailException) as info:
        op.run(serve_context(tmp_path))
    message = str(info.value)
    assert message.startswith(f"Kubernetes API server ({cluster.server}) refused the worker's credentials (401")
    assert "to do: fix the Kubernetes connection" in message and "retry: no" in message

    op = serve_operator(tmp_path, cluster, "no-such-namespace")
    with pytest.raises(AirflowFailException, match=r'has no such namespace \(namespaces "no-such-namespace" not found\)'):
        op.run(serve_context(tmp_path))
    assert server_objects(cluster, namespace) == []


def slow_train_pipeline(dag_id: str, cluster, namespace: str, starts, *, seconds: int, extra: str = "",
                        kubernetes_extra: str = "") -> str:
    """A pipeline whose train stage runs tests.fixtures_code:slow_trainer in a pod for ``seconds``,
    noting each start in ``starts``."""
    return f"""
id: {dag_id}
{extra}kubernetes:
  image: python:3.11
  namespace: {namespace}
  config_file: {cluster.kubeconfig}
  env: {{PYTHONPATH: {REPO}, TRAINER_STARTS: {starts}, TRAINER_SECONDS: "{seconds}"}}
  {kubernetes_extra}
stages:
  preprocess:
    input: {{sklearn_dataset: iris}}
  train:
    backend: kubernetes
    resources: {{cpu: 1, memory: 1Gi, gpu: 1}}
    target: target
    callable: tests.fixtures_code:slow_trainer
"""


def test_stage_pod_outlives_a_stopped_api_server_and_the_retry_takes_it_over(
    cluster, namespace, airflow_db, mlops_home, dags_folder, tmp_path, capfd
):
    """The API server stops under a running train pod: the task fails within api_timeout as a
    retryable error naming the pod it left; the API server comes back, Airflow's retry finds that
    pod by its labels and takes it over (the trainer started once), and no pod is left."""
    from airflow.dag_processing.dagbag import DagBag
    from kubernetes import client

    starts = tmp_path / "starts.txt"
    dag_id = namespace.replace("-", "_")
    write(dags_folder, "faults.yaml", slow_train_pipeline(dag_id, cluster, namespace, starts, seconds=40,
                                                          extra="dag: {retries: 1, retry_delay: 15s}\n",
                                                          kubernetes_extra="api_timeout: 4s"))
    core = client.CoreV1Api(cluster.api_client())
    events: dict[str, float] = {}

    def train_state() -> str | None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            return session.query(TaskInstance.state).filter_by(dag_id=dag_id, task_id="train.run").scalar()

    def break_it() -> None:  # stop the API server once the pod runs; start it once the first try failed
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pods = core.list_namespaced_pod(namespace).items
            if pods and pods[0].status.phase == "Running":
                break
            time.sleep(0.2)
        time.sleep(1)
        cluster.stop_apiserver()
        events["stopped"] = time.monotonic()
        while time.monotonic() < deadline and train_state() != "up_for_retry":
            time.sleep(0.5)
        events["failed"] = time.monotonic()
        cluster.start_apiserver()
        events["started"] = time.monotonic()

    breaker = threading.Thread(target=break_it, daemon=True)
    breaker.start()
    dag = next(d for d in DagBag(dag_folder=str(dags_folder)).dags.values() if d.dag_id != "invalid")
    dr = dag.test()
    breaker.join(60)
    log = capfd.readouterr().out
    (tmp_path / "task.log").write_text(log)  # the whole run's task log, for a failure's reader
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert {k: ti.state for k, ti in tis.items()} == {"preprocess.run": "success", "train.run": "success"}, \
        f"see {tmp_path / 'task.log'}; {events}"
    assert tis["train.run"].try_number == 2
    assert "stopped" in events and "started" in events
    assert events["failed"] - events["stopped"] < 4 + 15, events  # api_timeout + the provider's backoff + slack
    message = next(line for line in log.splitlines() if "Kubernetes API server (" in line)
    assert f"Kubernetes API server ({cluster.server}) was unreachable for " in message
    assert "(kubernetes.api_timeout: 4s" in message
    # The bound: api_timeout after the first failed request, plus one request's own retries.
    assert 4 <= int(re.search(r"unreachable for (\d+)s", message).group(1)) <= 10, message
    assert f"during stage 'train' (pod {namespace}/" in message
    assert "kept: pod" in log and "a retry of this task takes it over while it runs" in log
    assert "retry: yes, Airflow retries apply" in log
    assert "Reusing existing pod" in log  # the retry took the first try's pod over ...
    assert len(starts.read_text().split()) == 1  # ... so the trainer ran once
    assert core.list_namespaced_pod(namespace).items == []  # and nothing is left


RUN_ONE = """
import datetime, sys
from airflow.dag_processing.dagbag import DagBag

dag = DagBag(dag_folder=sys.argv[1]).dags[sys.argv[2]]
when = datetime.datetime.fromisoformat(sys.argv[3])
dag.test(run_after=when, logical_date=when)  # the run id is made from run_after
"""


def test_a_worker_killed_under_its_stage_pod_leaves_the_pod_to_the_next_try(
    cluster, namespace, airflow_db, mlops_home, dags_folder, tmp_path, capfd
):
    """The process running a kubernetes train stage is SIGKILLed while its pod trains (no clean-up
    of any kind runs, as when a Celery worker dies): the pod keeps running, and the next try of
    the same task (same dag_id, task_id, run_id) in a new process takes it over instead of
    starting a second one; the trainer starts once and no pod is left. (Airflow's retry after the
    heartbeat timeout is that next try; the retry itself is tested above.)"""
    import subprocess
    import sys
    from datetime import datetime, timezone

    from airflow.dag_processing.dagbag import DagBag
    from kubernetes import client

    starts = tmp_path / "starts.txt"
    dag_id = namespace.replace("-", "_")
    write(dags_folder, "killed.yaml", slow_train_pipeline(dag_id, cluster, namespace, starts, seconds=20))
    core = client.CoreV1Api(cluster.api_client())
    logical_date = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first_log = tmp_path / "first_try.log"
    with first_log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-c", RUN_ONE, str(dags_folder), dag_id, logical_date.isoformat()],
                                  start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (starts.exists() and starts.read_text().strip()) and time.monotonic() < deadline:
            assert worker.poll() is None, f"the first try ended before its trainer started: see {first_log}"
            time.sleep(0.2)
        assert starts.exists(), f"the trainer never started in the pod: see {first_log}"
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its task process, no clean-up
        worker.wait(30)
    pods = core.list_namespaced_pod(namespace).items
    assert [p.status.phase for p in pods] == ["Running"]  # the pod outlived its worker
    first_pod = pods[0].metadata.name

    dag = DagBag(dag_folder=str(dags_folder)).dags[dag_id]
    dr = dag.test(run_after=logical_date, logical_date=logical_date)  # the same run id: the same tasks' next try
    log = capfd.readouterr().out
    (tmp_path / "task.log").write_text(log)
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states == {"preprocess.run": "success", "train.run": "success"}, f"see {tmp_path / 'task.log'}"
    assert "Reusing existing pod" in log and first_pod in log  # that pod, taken over ...
    assert len(starts.read_text().split()) == 1  # ... so the trainer ran once
    assert core.list_namespaced_pod(namespace).items == []  # and nothing is left


# -- pods that Kubernetes ended: OOMKilled, evicted, preempted, lost with its node -----------------
# The stand-in kubelet has no memory cgroups and no node pressure: a test asks it, by an annotation
# written through the API server, to end a running pod as a kubelet's OOM killer or eviction
# manager would (SIGKILL, then that status; tests/kube/kubelet.py). The operator reads it all back
# from the real API server.


def end_the_first_pod_as(cluster, namespace: str, how: str, starts) -> threading.Thread:
    """Once the first train pod trains (its trainer noted its start in ``starts``), have its kubelet
    end it as ``how`` (OOMKilled, Evicted, Preempted, NodeLost)."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())

    def end() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            pods = [p for p in core.list_namespaced_pod(namespace).items if p.status.phase == "Running"]
            if pods and starts.exists() and starts.read_text().strip():
                core.patch_namespaced_pod(pods[0].metadata.name, namespace,
                                          {"metadata": {"annotations": {"stand-in.kubelet/end-as": how}}})
                return
            time.sleep(0.2)

    thread = threading.Thread(target=end, daemon=True)
    thread.start()
    return thread


# ending → (what the kubelet is asked to end the pod as, Kubernetes' reason the task reports, what the
# task log says of it; None: OOMKilled's own message, checked below)
ENDINGS = {
    "oom": ("OOMKilled", "OOMKilled", None),
    "evicted": ("Evicted", "Evicted", "was evicted by Kubernetes (Evicted: The node was low on resource: memory. "
                                      "Threshold quantity: 100Mi, available: 52Mi.)"),
    "preempted": ("Preempted", "PreemptionByScheduler",
                  "was preempted by Kubernetes (PreemptionByScheduler: Kubernetes default scheduler: preempting to "
                  "accommodate a higher priority pod)"),
    "node-lost": ("NodeLost", "NodeLost", "was lost with its node by Kubernetes (NodeLost: Node gpu-node-0 which was "
                                          "running the pod is unresponsive)"),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_pod_that_kubernetes_ended_says_why_first_and_retries_only_when_a_retry_can_pass(
    ending, cluster, namespace, airflow_db, mlops_home, dags_folder, tmp_path, capfd
):
    """OOMKilled: the task fails at once, without its retry, naming the memory limit to raise.
    Evicted, preempted or lost with its node: not the stage's fault: the retry runs a new pod, which
    trains, and the run is green. Either way the worker records the end on the try's MLflow run
    (FAILED, with the reason), and the Models page's data lists it as a failed training."""
    import mlflow
    from airflow.dag_processing.dagbag import DagBag

    from airflow_mlops.stages.train.failures import FAILURE_REASON_TAG, FAILURE_TAG
    from airflow_mlops.ui import data

    starts = tmp_path / "starts.txt"
    dag_id = namespace.replace("-", "_")
    write(dags_folder, "ended.yaml", slow_train_pipeline(dag_id, cluster, namespace, starts, seconds=15,
                                                         extra="dag: {retries: 1, retry_delay: 2s}\n"))
    how, reason, said = ENDINGS[ending]
    reporter = end_the_first_pod_as(cluster, namespace, how, starts)
    dag = next(d for d in DagBag(dag_folder=str(dags_folder)).dags.values() if d.dag_id != "invalid")
    dr = dag.test()
    reporter.join(10)
    log = capfd.readouterr().out
    (tmp_path / "task.log").write_text(log)
    train = next(ti for ti in dr.get_task_instances() if ti.task_id == "train.run")
    if ending == "oom":
        assert (train.state, train.try_number) == ("failed", 1), f"see {tmp_path / 'task.log'}"
        assert f"stage 'train' ran out of memory: Kubernetes killed pod {namespace}/" in log
        assert "(OOMKilled: exit code 137) at its memory limit of 1Gi. A retry with the same limit would be " \
               "killed again: raise the stage's resources.memory" in log
        assert len(starts.read_text().split()) == 1  # no blind retry
    else:
        assert (train.state, train.try_number) == ("success", 2), f"see {tmp_path / 'task.log'}"
        assert f"stage 'train': pod {namespace}/" in log
        assert f"{said}, not by the stage: Airflow's retries apply, each in a new pod" in log
        assert len(starts.read_text().split()) == 2  # the ended pod's start, and the retry's

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = {r.data.tags["airflow.try_number"]: r for r in client.search_runs(
        experiments, filter_string=f"tags.`airflow.dag_id` = '{dag_id}' and tags.`airflow.task_id` = 'train.run'")}
    first = runs["1"]  # the run the pod's training had started: ended by the worker, with why
    assert (first.info.status, first.data.tags.get(FAILURE_REASON_TAG)) == ("FAILED", reason), f"see {tmp_path / 'task.log'}"
    if ending == "oom":
        assert "ran out of memory" in first.data.tags[FAILURE_TAG] and "memory limit of 1Gi" in first.data.tags[FAILURE_TAG]
        assert set(runs) == {"1"}
    else:
        assert said in first.data.tags[FAILURE_TAG]
        assert runs["2"].info.status == "FINISHED" and FAILURE_REASON_TAG not in runs["2"].data.tags  # the retry trained
    assert f"Recorded the failure ({reason}) on MLflow run {first.info.run_id}" in log
    (model,) = data.models(client, "http://mlflow.example")
    assert [v["version"] for v in model["versions"]] == ([] if ending == "oom" else ["1"])
    (failed,) = model["failed_trainings"]
    assert (failed["dag_id"], failed["dag_run_id"], failed["try_number"], failed["reason"], failed["run_id"]) == \
        (dag_id, dr.run_id, "1", reason, first.info.run_id)
