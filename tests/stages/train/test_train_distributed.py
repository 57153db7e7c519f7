"""Multi-node torchrun on Kubernetes against the real API server and scheduler (tests/kube), with a
second GPU node: GPU accounting across nodes, an unschedulable group failing with the scheduler's
reason and cleaned up, retries that never leave two groups. The stand-in kubelets really run the
pods: ``torchrun`` there is tests/kube/torchrun_standin.py (torch is not installed here), and every
rank runs tests/kube/rendezvous_train.py, which checks that each rank reaches rank 0 with the right
world size."""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from airflow_mlops.backends.kubernetes.distributed import GROUP_LABEL, DistributedTraining
from airflow_mlops.spec.models import KubernetesSettings, Resources, TrainStage
from airflow_mlops.spec.training import Distributed
from airflow_mlops.stages.train.job import TASK_KEY_TAG, GpuTrainJob
from tests.conftest import REPO
from tests.helpers import write
from tests.kube.cluster import extra_node


@pytest.fixture(scope="module")
def two_gpu_nodes(kube_cluster):
    """gpu-node-0 (the cluster's) and gpu-node-1, 2 GPUs each."""
    with extra_node(kube_cluster, "gpu-node-1", gpus=2):
        yield kube_cluster


@pytest.fixture
def pod_path(tmp_path: Path) -> str:
    """A PATH for the pods whose ``torchrun`` is the stand-in."""
    folder = tmp_path / "bin"
    folder.mkdir()
    launcher = folder / "torchrun"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {REPO / "tests/kube/torchrun_standin.py"} "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return f"{folder}:{Path(sys.executable).parent}:/usr/bin:/bin"


def free_port() -> int:
    """A port with the one above it free too (the stand-in's MASTER_PORT is the rendezvous port + 1)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def group_objects(cluster, namespace: str) -> tuple[list, list]:
    from kubernetes import client

    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        return (core.list_namespaced_pod(namespace, label_selector=GROUP_LABEL).items,
                core.list_namespaced_service(namespace, label_selector=GROUP_LABEL).items)


def test_yaml_train_stage_runs_a_torchrun_group_across_two_gpu_nodes(
    two_gpu_nodes, kube_namespace, airflow_db, mlops_home, dags_folder, pod_path, capfd
):
    from airflow.dag_processing.dagbag import DagBag

    cluster = two_gpu_nodes
    write(dags_folder, "ddp.yaml", f"""
        id: ddp
        kubernetes:
          image: python:3.11
          namespace: {kube_namespace}
          config_file: {cluster.kubeconfig}
          schedule_timeout: 30s
          env: {{PYTHONPATH: {REPO}, PATH: "{pod_path}"}}
        stages:
          preprocess:
            input: {{sklearn_dataset: iris}}
          train:
            backend: kubernetes
            callable: tests.kube.rendezvous_train:train
            target: target
            resources: {{cpu: 1, memory: 1Gi, gpu: 2}}
            distributed:
              nodes: 2
              rendezvous: {{port: {free_port()}, timeout: 2m}}
          validate:
            thresholds: {{accuracy: {{min: 0.8}}}}
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dr = bag.dags["ddp"].test()
    log = capfd.readouterr().out
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states == {"preprocess.run": "success", "train.run": "success", "validate.run": "success"}, log[-6000:]
    train = next(ti for ti in dr.get_task_instances() if ti.task_id == "train.run").xcom_pull(task_ids="train.run")
    # 2 pods × 2 GPUs on two 2-GPU nodes: the scheduler had to put one pod on each.
    assert "are scheduled, on node(s) gpu-node-0, gpu-node-1" in log
    assert train["distributed"]["world_size"] == 4 and train["distributed"]["nodes"] == 2
    assert train["metrics"]["world_size"] == 4 and train["metrics"]["ranks_reached"] == 4
    assert train["metrics"]["accuracy"] >= 0.8 and train["model_version"] == "1"
    # every rank's log reached the task log, prefixed with its rank(s)
    for rank in (1, 2, 3):
        node = rank // 2
        assert f"[node {node}, ranks {node * 2}-{node * 2 + 1}] rank {rank}: reached rank 0 with world size 4" in log
    assert "[node 0, ranks 0-1] rank 0: ranks [0, 1, 2, 3] all reached rank 0 with world size 4" in log
    # the cost is billed for both pods: 4 GPUs, 2 CPUs, 2 GiB for rank 0's wall-clock time
    hours = train["cost"]["wall_seconds"] / 3600
    assert train["cost"]["gpu_hours"] == pytest.approx(4 * hours)
    assert train["cost"]["cpu_hours"] == pytest.approx(2 * hours)
    assert group_objects(cluster, kube_namespace) == ([], [])


def job(tmp_path: Path, task_key: str) -> GpuTrainJob:
    return GpuTrainJob(entrypoint="tests.kube.rendezvous_train:entrypoint", checkpoint_dir=str(tmp_path / "ckpt"),
                       tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="ddp", registered_model="ddp",
                       artifact_location=str(tmp_path / "artifacts"),
                       run_name="ddp.train", tags={TASK_KEY_TAG: task_key})


def settings(cluster, namespace: str, pod_path: str, schedule_timeout: str = "30s") -> KubernetesSettings:
    return KubernetesSettings(image="python:3.11", namespace=namespace, config_file=str(cluster.kubeconfig),
                              schedule_timeout=schedule_timeout, env={"PYTHONPATH": str(REPO), "PATH": pod_path})


def test_a_group_that_does_not_fit_fails_with_the_schedulers_reason_and_is_deleted(
    two_gpu_nodes, kube_namespace, tmp_path, pod_path
):
    cluster = two_gpu_nodes
    group = DistributedTraining(
        job(tmp_path, "ddp/run-1/too-big"), distributed=Distributed(nodes=3, rendezvous={"port": free_port()}),
        kubernetes=settings(cluster, kube_namespace, pod_path, "6s"), resources=Resources(cpu="1", gpu=2),
        pipeline_id="ddp", stage_name="train", log=logging.getLogger("test"))
    with pytest.raises(RuntimeError) as failed:
        group.run()
    message = str(failed.value)
    assert "was not scheduled as a whole within 6s: 2 of 3 pods scheduled" in message, message
    assert "Insufficient nvidia.com/gpu" in message, message
    assert "nvidia.com/gpu=2" in message
    deadline = time.monotonic() + 30
    while group_objects(cluster, kube_namespace) != ([], []):  # pods go once the kubelets confirm
        assert time.monotonic() < deadline, group_objects(cluster, kube_namespace)
        time.sleep(0.5)


def test_a_retry_deletes_what_the_earlier_try_left_and_never_runs_two_groups(
    two_gpu_nodes, kube_namespace, tmp_path, pod_path
):
    from kubernetes import client

    cluster = two_gpu_nodes
    make = lambda: DistributedTraining(  # noqa: E731 - one per try, as each try of the operator does
        job(tmp_path, "ddp/run-1/train"), distributed=Distributed(nodes=2, rendezvous={"port": free_port()}),
        kubernetes=settings(cluster, kube_namespace, pod_path), resources=Resources(cpu="1", gpu=1),
        pipeline_id="ddp", stage_name="train", log=logging.getLogger("test"))
    # An earlier try's worker died after creating the Service and pod 0 (which waits for node 1).
    service, pods = make().render()
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_service(kube_namespace, service)
        stale = core.create_namespaced_pod(kube_namespace, pods[0]).metadata.uid

    seen: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append([p.metadata.uid for p in group_objects(cluster, kube_namespace)[0]
                         if p.metadata.deletion_timestamp is None])
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        first = make().run()
    finally:
        stop.set()
        watcher.join()
    assert first["metrics"] == {"world_size": 2} and first["reused"] is False
    assert max(len(uids) for uids in seen) <= 2  # never the stale pod beside a new group
    assert not any(stale in uids and len(uids) > 1 for uids in seen)
    assert group_objects(cluster, kube_namespace) == ([], [])
    # Another try of the same task instance: the version is registered already, nothing is duplicated.
    again = make().run()
    assert again["reused"] is True and again["model_version"] == first["model_version"] == "1"
    assert os.path.exists(tmp_path / "mlflow.db")


GROUP_TRY = """
import logging, os, sys
from pathlib import Path
from airflow_mlops.backends.kubernetes.distributed import DistributedTraining
from airflow_mlops.spec.models import KubernetesSettings, Resources
from airflow_mlops.spec.training import Distributed
from tests.stages.train.test_train_distributed import job

logging.basicConfig(level=logging.INFO)
tmp, kubeconfig, namespace, pod_path, port = sys.argv[1:6]
k = KubernetesSettings(image="python:3.11", namespace=namespace, config_file=kubeconfig,
                       env={"PYTHONPATH": os.environ["PYTHONPATH"], "PATH": pod_path})
DistributedTraining(job(Path(tmp), "ddp/run-1/lost").model_copy(update={"params": {"sleep": 8}}),
                    distributed=Distributed(nodes=2, rendezvous={"port": int(port)}), kubernetes=k,
                    resources=Resources(cpu="1", gpu=1), pipeline_id="ddp", stage_name="train",
                    log=logging.getLogger("first-try")).run()
"""


def test_a_group_whose_worker_was_killed_is_taken_over_by_the_next_try(
    two_gpu_nodes, kube_namespace, tmp_path, pod_path, caplog
):
    """SIGKILL the process running a group's try once its pods run (no clean-up runs, as when a
    Celery worker dies): the group keeps running, and the next try follows those same pods to
    their end instead of deleting them and starting the training again."""
    import signal
    import subprocess

    cluster, port = two_gpu_nodes, free_port()
    with open(tmp_path / "first_try.log", "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-c", GROUP_TRY, str(tmp_path), str(cluster.kubeconfig), kube_namespace, pod_path,
             str(port)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pods = group_objects(cluster, kube_namespace)[0]
            if len(pods) == 2 and all(p.status.phase == "Running" for p in pods):
                break
            assert worker.poll() is None, (tmp_path / "first_try.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
    running = sorted(p.metadata.uid for p in group_objects(cluster, kube_namespace)[0])
    assert len(running) == 2, "the group was not running when its worker was killed"

    seen: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(sorted(p.metadata.uid for p in group_objects(cluster, kube_namespace)[0]))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    caplog.set_level(logging.INFO, logger="test")
    try:
        result = DistributedTraining(
            job(tmp_path, "ddp/run-1/lost").model_copy(update={"params": {"sleep": 8}}),
            distributed=Distributed(nodes=2, rendezvous={"port": port}),
            kubernetes=settings(cluster, kube_namespace, pod_path), resources=Resources(cpu="1", gpu=1),
            pipeline_id="ddp", stage_name="train", log=logging.getLogger("test")).run()
    finally:
        stop.set()
        watcher.join()
    assert result["metrics"] == {"world_size": 2} and result["reused"] is False
    assert "Taking over training group" in caplog.text
    assert all(uids in ([], running) for uids in seen), seen  # only ever the first try's pods
    assert group_objects(cluster, kube_namespace) == ([], [])


def test_a_rank_killed_for_memory_fails_the_group_and_is_recorded_on_rank_0s_run(
    two_gpu_nodes, kube_namespace, tmp_path, pod_path
):
    """Rank 1's pod is OOMKilled (the stand-in kubelet, asked by annotation) while rank 0's
    training has its MLflow run open: the try fails without retry naming the memory limit, and
    that run is marked FAILED with the reason, so the Models page lists it."""
    import mlflow
    from airflow.sdk.exceptions import AirflowFailException
    from kubernetes import client

    from airflow_mlops.stages.train.failures import FAILURE_REASON_TAG, FAILURE_TAG
    from airflow_mlops.ui import data

    cluster = two_gpu_nodes
    tags = {TASK_KEY_TAG: "ddp/run-1/oom", "airflow.try_number": "1", "airflow.dag_id": "ddp",
            "airflow.run_id": "run-1", "airflow.task_id": "train"}
    group = DistributedTraining(
        job(tmp_path, "ddp/run-1/oom").model_copy(update={"params": {"sleep": 60}, "tags": tags}),
        distributed=Distributed(nodes=2, rendezvous={"port": free_port()}),
        kubernetes=settings(cluster, kube_namespace, pod_path), resources=Resources(cpu="1", memory="1Gi", gpu=1),
        pipeline_id="ddp", stage_name="train", log=logging.getLogger("test"))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def kill_rank_1() -> None:  # once rank 0's run is open and both pods run
        core = client.CoreV1Api(cluster.api_client())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pods = [p for p in group_objects(cluster, kube_namespace)[0] if p.status.phase == "Running"]
            opened = (tmp_path / "mlflow.db").exists() and mlflow.MlflowClient(store).search_runs(
                [e.experiment_id for e in mlflow.MlflowClient(store).search_experiments()],
                filter_string="attributes.status = 'RUNNING'")
            if len(pods) == 2 and opened:
                core.patch_namespaced_pod(f"{group.name}-1", kube_namespace,
                                          {"metadata": {"annotations": {"stand-in.kubelet/end-as": "OOMKilled"}}})
                return
            time.sleep(0.3)

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    with pytest.raises(AirflowFailException) as failed:
        group.run()
    killer.join(10)
    assert f"Kubernetes killed pod {kube_namespace}/{group.name}-1 (OOMKilled" in str(failed.value)
    assert "at its memory limit of 1Gi" in str(failed.value)
    mlflow_client = mlflow.MlflowClient(store)
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("ddp").experiment_id])
    assert (run.info.status, run.data.tags[FAILURE_REASON_TAG]) == ("FAILED", "OOMKilled")
    assert "memory limit of 1Gi" in run.data.tags[FAILURE_TAG] and "last log lines" not in run.data.tags[FAILURE_TAG]
    (model,) = data.models(mlflow_client, "http://mlflow.example")
    assert (model["name"], model["versions"], [f["run_id"] for f in model["failed_trainings"]]) == \
        ("ddp", [], [run.info.run_id])
    deadline = time.monotonic() + 30
    while group_objects(cluster, kube_namespace) != ([], []):
        assert time.monotonic() < deadline, group_objects(cluster, kube_namespace)
        time.sleep(0.5)


def test_gpu_train_operator_runs_the_same_group_from_python(
    two_gpu_nodes, kube_namespace, airflow_db, mlops_home, dags_folder, pod_path, capfd
):
    import mlflow
    from airflow.dag_processing.dagbag import DagBag

    cluster = two_gpu_nodes
    k = {"image": "python:3.11", "namespace": kube_namespace, "config_file": str(cluster.kubeconfig),
         "schedule_timeout": "30s", "env": {"PYTHONPATH": str(REPO), "PATH": pod_path}}
    write(dags_folder, "ddp_operator.py", f"""
        from airflow.sdk import DAG

        from airflow_mlops.operators.gpu_train import GpuTrainOperator

        with DAG("ddp_operator", schedule=None):
            GpuTrainOperator(task_id="train", entrypoint="tests.kube.rendezvous_train:entrypoint", backend="kubernetes",
                             kubernetes={k!r}, resources={{"cpu": "1", "memory": "1Gi", "gpu": 1}},
                             distributed={{"nodes": 2, "nproc_per_node": 2, "rendezvous": {{"port": {free_port()}}}}},
                             mlflow={{"registered_model": "ddp_operator"}})
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dr = bag.dags["ddp_operator"].test()
    log = capfd.readouterr().out
    ti = dr.get_task_instances()[0]
    assert ti.state == "success", log[-6000:]
    result = ti.xcom_pull(task_ids="train")
    assert result["distributed"]["world_size"] == 4 and result["metrics"] == {"world_size": 4}
    assert "[node 1, ranks 2-3] rank 3: reached rank 0 with world size 4" in log
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    version = client.get_model_version("ddp_operator", result["model_version"])
    assert version.tags["airflow.task_id"] == "train"
    assert result["cost"]["gpu_hours"] == pytest.approx(2 * result["cost"]["wall_seconds"] / 3600)
    assert group_objects(cluster, kube_namespace) == ([], [])


@pytest.mark.parametrize("stage, backend, field, message", [
    ({"callable": "m:f", "distributed": {"nodes": 2}}, "batch", "distributed", "give this stage 'backend: kubernetes'"),
    ({"estimator": "sklearn.linear_model.LogisticRegression", "distributed": {"nodes": 2}}, "kubernetes",
     "distributed", "give a 'callable'"),
    ({"callable": "m:f", "spark": {"master": "local[2]"}}, "kubernetes", "spark", "'spark' settings are for the spark"),
])
def test_distributed_settings_that_cannot_run_are_refused_before_any_pod(stage, backend, field, message):
    from airflow_mlops.stages import registry

    spec = TrainStage(target="y", backend=backend, **stage)
    problems = list(registry.problems(spec, backend))
    assert [f for f, _ in problems] == [field] and message in problems[0][1], problems
