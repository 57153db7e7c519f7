"""The Kubernetes test harness itself: real scheduling against the fake GPU node, pods really run by the
stand-in kubelet, logs through the apiserver's proxy, and KubernetesPodOperator end to end."""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers import write
from tests.kube.cluster import GPU_TOLERATION


def core_api(cluster):
    from kubernetes import client

    return client.CoreV1Api(cluster.api_client())


def make_pod(core, namespace: str, name: str, code: str, *, gpus: int = 0, env=None, tolerate: bool = True):
    container = {"name": "main", "image": "python:3.11", "command": ["python", "-c", code], "env": env or []}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec = {"containers": [container], "restartPolicy": "Never", "tolerations": [GPU_TOLERATION] if tolerate else []}
    return core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": spec})


def pod_log(core, namespace: str, name: str, **options) -> str:
    """The pod's log through the apiserver. Not ``read_namespaced_pod_log(...)``'s return value: the
    kubernetes client 36 returns ``str(bytes)``, i.e. "b'...'" (kubernetes-client/python#2596)."""
    return core.read_namespaced_pod_log(name, namespace, _preload_content=False, **options).data.decode()


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_phase(core, namespace: str, name: str, phases=("Succeeded", "Failed"), timeout: float = 30):
    def done():
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return wait_for(done, timeout, f"pod {name} to reach {phases}")


def test_node_is_a_ready_tainted_gpu_node(kube_cluster):
    node = core_api(kube_cluster).read_node(kube_cluster.node_name)
    assert node.status.allocatable["nvidia.com/gpu"] == str(kube_cluster.gpus) == "2"
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [("nvidia.com/gpu", "present", "NoSchedule")]
    assert [(c.type, c.status) for c in node.status.conditions] == [("Ready", "True")]
    assert node.metadata.labels["nvidia.com/gpu.present"] == "true"


def test_pod_really_runs_and_its_logs_come_through_the_apiserver(kube_cluster, kube_namespace):
    core = core_api(kube_cluster)
    make_pod(core, kube_namespace, "hello", "print('hello'); print('second line'); import sys; sys.exit(0)", gpus=1)
    pod = wait_for_phase(core, kube_namespace, "hello")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name == kube_cluster.node_name
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")

    assert pod_log(core, kube_namespace, "hello") == "hello\nsecond line\n"
    assert pod_log(core, kube_namespace, "hello", tail_lines=1) == "second line\n"
    stamped = pod_log(core, kube_namespace, "hello", timestamps=True).splitlines()
    import pendulum

    assert [line.split(" ", 1)[1] for line in stamped] == ["hello", "second line"]
    stamp = pendulum.parse(stamped[0].split(" ", 1)[0])
    assert abs((pendulum.now("UTC") - stamp).total_seconds()) < 60
    assert pod_log(core, kube_namespace, "hello", limit_bytes=3) == "hel"


def test_failing_command_fails_the_pod_with_its_exit_code(kube_cluster, kube_namespace):
    core = core_api(kube_cluster)
    make_pod(core, kube_namespace, "boom", "import sys; print('about to fail', file=sys.stderr); sys.exit(3)")
    pod = wait_for_phase(core, kube_namespace, "boom")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert "about to fail" in pod_log(core, kube_namespace, "boom")


def test_scheduler_leaves_pods_pending_on_too_many_gpus_or_no_toleration(kube_cluster, kube_namespace):
    core = core_api(kube_cluster)
    make_pod(core, kube_namespace, "greedy", "print(1)", gpus=kube_cluster.gpus + 1)
    make_pod(core, kube_namespace, "intolerant", "print(1)", tolerate=False)

    def unschedulable(name):
        conditions = core.read_namespaced_pod(name, kube_namespace).status.conditions or []
        return next((c for c in conditions if c.type == "PodScheduled" and c.reason == "Unschedulable"), None)

    assert "Insufficient nvidia.com/gpu" in wait_for(lambda: unschedulable("greedy"), what="FailedScheduling").message
    assert "taint" in wait_for(lambda: unschedulable("intolerant"), what="FailedScheduling").message
    events = wait_for(lambda: core.list_namespaced_event(
        kube_namespace, field_selector="involvedObject.name=greedy,reason=FailedScheduling").items, what="event")
    assert "Insufficient nvidia.com/gpu" in events[0].message
    pod = core.read_namespaced_pod("greedy", kube_namespace)
    assert (pod.status.phase, pod.spec.node_name) == ("Pending", None)


def test_secret_env_reaches_the_process(kube_cluster, kube_namespace):
    core = core_api(kube_cluster)
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
           # $(VAR) expands variables the pod defines, not the runtime's (HOSTNAME), as in Kubernetes.
           {"name": "PLAIN", "value": "plain-$(TOKEN)-$(HOSTNAME)"}]
    code = "import os; print(os.environ['PLAIN'], os.environ['TOKEN'], 'AIRFLOW_HOME' in os.environ)"
    # The Secret does not exist yet: the pod waits with CreateContainerConfigError, as on a kubelet.
    make_pod(core, kube_namespace, "secretive", code, env=env)

    def config_error():
        statuses = core.read_namespaced_pod("secretive", kube_namespace).status.container_statuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason
    assert wait_for(config_error, what="CreateContainerConfigError") == "CreateContainerConfigError"

    core.create_namespaced_secret(kube_namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}})
    assert wait_for_phase(core, kube_namespace, "secretive").status.phase == "Succeeded"
    # The pod gets its own environment, not the test process's.
    assert pod_log(core, kube_namespace, "secretive") == "plain-s3cr3t-$(HOSTNAME) s3cr3t False\n"


def test_logs_stream_while_the_pod_runs_and_deletion_kills_the_process(kube_cluster, kube_namespace):
    core = core_api(kube_cluster)
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    make_pod(core, kube_namespace, "sleeper", code)
    wait_for_phase(core, kube_namespace, "sleeper", phases=("Running",))
    response = core.read_namespaced_pod_log("sleeper", kube_namespace, follow=True, _preload_content=False)
    first = next(response.stream(amt=None))  # arrives while the process is still sleeping
    pid = int(first.split()[0])
    os.kill(pid, 0)  # a real local process

    core.delete_namespaced_pod("sleeper", kube_namespace)  # default grace period: the kubelet confirms

    def gone():
        return not core.list_namespaced_pod(kube_namespace, field_selector="metadata.name=sleeper").items
    wait_for(gone, 20, "the pod to be deleted")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert b"".join(response.stream(amt=None)) == b""  # the follow stream ended with the process


KPO_DAG = """
    from airflow.sdk import DAG
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    with DAG("{dag_id}", schedule=None) as dag:
        KubernetesPodOperator(
            task_id="pod", name="{dag_id}", config_file="{kubeconfig}", in_cluster=False, namespace="{namespace}",
            image="python:3.11", cmds=["python", "-c", {code!r}], get_logs=True, on_finish_action="delete_pod",
            container_resources=k8s.V1ResourceRequirements(limits={{"nvidia.com/gpu": "1"}}),
            tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        )
"""


def kpo_dag(folder, cluster, namespace: str, dag_id: str, code: str):
    from airflow.dag_processing.dagbag import DagBag

    write(folder, f"{dag_id}.py", KPO_DAG.format(dag_id=dag_id, kubeconfig=cluster.kubeconfig, namespace=namespace,
                                                 code=code))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def test_kubernetes_pod_operator_through_dag_test(kube_cluster, kube_namespace, airflow_db, dags_folder, capfd):
    import re

    import pendulum
    from airflow.utils.state import DagRunState, TaskInstanceState

    core = core_api(kube_cluster)
    code = "import time; print('from the pod'); print('more', flush=True); time.sleep(3); print('last')"
    dr = kpo_dag(dags_folder, kube_cluster, kube_namespace, "kpo_ok", code).test()
    assert dr.state == DagRunState.SUCCESS, [(ti.task_id, ti.state) for ti in dr.get_task_instances()]
    # The operator followed the container's log through the apiserver into the task log (Airflow's
    # structlog writes it to stdout here). It logs a line when the next one arrives (a line may
    # continue), so "from the pod" was logged on "more", while the process still slept.
    out = capfd.readouterr().out
    logged = {message: stamp for stamp, message in
              re.findall(r"^(\S+) \[info\s*\] \[base\] (from the pod|more|last)\s", out, re.MULTILINE)}
    assert set(logged) == {"from the pod", "more", "last"}, out
    assert (pendulum.parse(logged["last"]) - pendulum.parse(logged["from the pod"])).total_seconds() > 2
    assert core.list_namespaced_pod(kube_namespace).items == []  # on_finish_action="delete_pod"

    dr = kpo_dag(dags_folder, kube_cluster, kube_namespace, "kpo_fail", "import sys; sys.exit(3)").test()
    assert dr.state == DagRunState.FAILED
    assert [ti.state for ti in dr.get_task_instances()] == [TaskInstanceState.FAILED]
    assert "'exit_code': 3" in capfd.readouterr().out


def test_kubernetes_pod_operator_execute_raises_with_the_exit_code(kube_cluster, kube_namespace):
    from unittest import mock

    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    op = KubernetesPodOperator(
        task_id="pod", name="kpo-fails", config_file=str(kube_cluster.kubeconfig), in_cluster=False,
        namespace=kube_namespace, image="python:3.11", cmds=["python", "-c", "import sys; sys.exit(3)"],
        get_logs=True, on_finish_action="delete_pod",
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    )
    ti = mock.MagicMock(dag_id="d", task_id="pod", map_index=-1, try_number=1)
    with pytest.raises(Exception, match="'exit_code': 3"):
        op.execute({"ti": ti, "task_instance": ti, "run_id": "manual__1", "dag": mock.MagicMock(parent_dag=None)})
