"""Multi-node torchrun on Kubernetes: one training job as a group of N plain pods and a headless
Service (Kubernetes 1.20 has no Indexed Jobs), for the train stage's ``distributed:`` block and
``GpuTrainOperator(distributed=...)``.

- every pod comes from the one pod builder (``build_pod``): the stage's resources (its GPUs),
  GPU node selector and tolerations, labels, secrets by reference; plus ``hostname``/``subdomain``
  so pod 0 is ``<group>-0.<group>.<namespace>.svc`` (MASTER_ADDR) through the headless Service;
- each pod runs ``torchrun --nnodes N --node-rank R --nproc-per-node P --rdzv-backend c10d
  --rdzv-endpoint MASTER_ADDR:PORT ... -m airflow_mlops.stages.train.runner job --payload ...``
  with MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK, NPROC_PER_NODE, WORLD_SIZE, RANK in its env;
  the process of global rank 0 runs the whole ``TrainingRun`` (MLflow run, model, cost billed
  for all N pods) and prints the result; the other ranks run the same training code and record
  nothing (``runner.follow``);
- all or nothing: when the whole group is not scheduled within ``schedule_timeout``, the try
  fails with the scheduler's reason (the PodScheduled condition, e.g. ``Insufficient
  nvidia.com/gpu``) and every pod and the Service are deleted. They are deleted when the try
  ends however it ends. Names and the group label come from the task instance (dag/run/task, not
  the try), so a retry finds what an earlier try left: a whole group still running (its worker
  died under it) is taken over, its logs followed from their start, as KubernetesPodOperator
  re-attaches to a pod; anything else (part of a group, a failed pod) is deleted first.

Each pod's log is streamed into the task log, every line prefixed with its rank.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Mapping

from airflow_mlops._core.names import MAX_POD_NAME, object_name
from airflow_mlops._core.result import FAILED_PREFIX, RESULT_MARKER, find_result
from airflow_mlops.backends.kubernetes._podspec import as_dict, build_pod, kubernetes_hook
from airflow_mlops.spec.models import KubernetesSettings, Resources, SecretEnv
from airflow_mlops.spec.training import Distributed

GROUP_LABEL = "airflow-mlops/train-group"
NODE_RANK_LABEL = "airflow-mlops/node-rank"
LAUNCHERS = {"torchrun": ["torchrun"], "python": ["python", "-m", "torch.distributed.run"]}
TAIL_LINES = 30


def group_key(task_key: str) -> str:
    """The group label's value: a hash of the task instance (dag/run/task ids, no try number)."""
    return hashlib.sha256(task_key.encode()).hexdigest()[:12]


def group_name(pipeline_id: str, stage_name: str, key: str) -> str:
    """``<pipeline>-<stage>-<key>``, short enough for ``-<rank>`` as pod name and hostname."""
    return object_name(pipeline_id, stage_name, key, max_len=MAX_POD_NAME - 6)


def render_group(job_args: list[str], distributed: Distributed, k: KubernetesSettings, resources: Resources | None, *,
                 pipeline_id: str, stage_name: str, key: str, env: Mapping[str, str] | None = None,
                 secret_env: Mapping[str, SecretEnv] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the headless Service, the N pods) as dicts. ``job_args``: what torchrun runs after
    ``-m`` (module and arguments); ``resources``: what each pod holds."""
    name = group_name(pipeline_id, stage_name, key)
    nodes, nproc = distributed.nodes, distributed.processes(resources.gpu if resources else None)
    rdzv = distributed.rendezvous
    master = f"{name}-0.{name}.{k.namespace}.svc"
    labels = {GROUP_LABEL: key}
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": k.namespace, "labels": labels},
               "spec": {"clusterIP": "None", "selector": labels, "publishNotReadyAddresses": True,
                        "ports": [{"name": "rendezvous", "port": rdzv.port}]}}
    pods = []
    for rank in range(nodes):
        variables = {**(env or {}), "MASTER_ADDR": master, "MASTER_PORT": str(rdzv.port), "NNODES": str(nodes),
                     "NODE_RANK": str(rank), "NPROC_PER_NODE": str(nproc), "WORLD_SIZE": str(nodes * nproc),
                     "RANK": str(rank * nproc)}  # the node's first rank; torchrun sets each process's own
        args = [f"--nnodes={nodes}", f"--node-rank={rank}", f"--nproc-per-node={nproc}",
                f"--rdzv-backend={rdzv.backend}", f"--rdzv-endpoint={master}:{rdzv.port}", f"--rdzv-id={name}",
                f"--rdzv-conf=join_timeout={int(rdzv.timeout.total_seconds())}", "--max-restarts=0",
                "-m", *job_args]
        pod = build_pod(k, resources, pipeline_id=pipeline_id, stage_name=stage_name,
                        command=LAUNCHERS[distributed.launcher], args=args, env=variables, secret_env=secret_env,
                        labels={**labels, NODE_RANK_LABEL: str(rank)})
        pod.metadata.name = pod.spec.hostname = f"{name}-{rank}"
        pod.spec.subdomain = name
        pod.spec.restart_policy = "Never"
        pods.append(as_dict(pod))
    return service, pods


class DistributedTraining:
    """One try of a training job as a torchrun group; ``run()`` returns rank 0's result,
    ``kill()`` deletes the group.

    :param job: the ``GpuTrainJob`` (its ``airflow_mlops.task_key`` tag names the group).
    :param resources: what each pod holds (cpu, memory, whole GPUs).
    :param env: plain env for every pod (PYTHONPATH); ``secret_env``: references (MLflow credentials).
    """

    def __init__(self, job: Any, *, distributed: Distributed, kubernetes: KubernetesSettings,
                 resources: Resources | None, pipeline_id: str, stage_name: str, log: Any,
                 env: Mapping[str, str] | None = None, secret_env: Mapping[str, SecretEnv] | None = None,
                 poll_seconds: float = 1.0) -> None:
        from airflow_mlops.stages.train.job import TASK_KEY_TAG

        self.job, self.distributed, self.k, self.resources = job, distributed, kubernetes, resources
        self.pipeline_id, self.stage_name, self.log, self.poll = pipeline_id, stage_name, log, poll_seconds
        self.env, self.secret_env = dict(env or {}), dict(secret_env or {})
        self.key = group_key(job.tags.get(TASK_KEY_TAG) or job.run_name)
        self.name = group_name(pipeline_id, stage_name, self.key)
        self.selector = f"{GROUP_LABEL}={self.key}"
        self.nproc = distributed.processes(resources.gpu if resources else None)
        self.lines: dict[int, list[str]] = {}
        self.over = threading.Event()  # the try is over: log followers stop waiting for pods to start
        self._core: Any = None

    @property
    def core(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(kubernetes_hook(self.k).api_client)
        return self._core

    def payload_job(self) -> Any:
        """The job each rank gets: the pod's GPUs (the device plugin picks them), and the cost
        billed for every pod of the group."""
        held = self.resources
        return self.job.model_copy(update={
            "gpu_ids": None, "gpus": (held.gpu if held else None) or 0, "distributed": True,
            "pods": self.distributed.nodes,
            "resources": held.held() if held else None})

    def render(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from airflow_mlops.stages.train.runner import encode_job

        args = ["airflow_mlops.stages.train.runner", "job", "--payload", encode_job(self.payload_job())]
        return render_group(args, self.distributed, self.k, self.resources, pipeline_id=self.pipeline_id,
                            stage_name=self.stage_name, key=self.key, env=self.env, secret_env=self.secret_env)

    def run(self) -> dict[str, Any]:
        """Delete what an earlier try left, create the group, wait until it is all scheduled
        (else RuntimeError with the scheduler's reason), stream every rank's log, and return
        the result rank 0 printed plus ``distributed`` (nodes, nproc_per_node, world_size,
        pods, service). Raises StageFailed when the training refused its input, RuntimeError
        when a pod failed; the group is deleted in every case."""
        from airflow_mlops.stages.train.measure import TrainingRun

        service, pods = self.render()
        nodes = len(pods)
        ns = self.k.namespace
        left = self.left_running(nodes)
        if left:
            self.log.info("Taking over training group %s, left running by an earlier try whose worker was lost "
                          "(pods %s); following its logs from their start", self.name, ", ".join(left))
        else:
            self.delete_group(wait=True, why="left by an earlier try")
            reused = TrainingRun(self.job, log=self.log).earlier()  # no group at all for a version registered already
            if reused is not None:
                return {**reused, "distributed": self.summary(pods)}
        try:
            if not left:
                self.core.create_namespaced_service(ns, service)
                for pod in pods:
                    self.core.create_namespaced_pod(ns, pod)
                self.log.info("Started training group %s: %d pod(s) holding %s, %d process(es) each, rendezvous "
                              "%s:%d", self.name, nodes, _asked(self.resources), self.nproc,
                              f"{self.name}-0.{self.name}.{ns}.svc", self.distributed.rendezvous.port)
            self.wait_scheduled(nodes)
            followers = [threading.Thread(target=self.follow_log, args=(rank,), daemon=True, name=f"rank-{rank}")
                         for rank in range(nodes)]
            for thread in followers:
                thread.start()
            self.wait_finished(nodes, followers)
        finally:
            self.over.set()
            self.delete_group(wait=False, why="the try is over")
        result = None
        for rank in range(nodes):
            result = result or find_result(self.lines.get(rank, []))
        if result is None:
            raise RuntimeError(f"training group {self.name} finished but no rank printed '{RESULT_MARKER.strip()}'")
        return {**result, "distributed": self.summary(pods)}

    def summary(self, pods: list[dict[str, Any]]) -> dict[str, Any]:
        """The result's ``distributed``: nodes, nproc_per_node, world_size, pods, service."""
        return {"nodes": len(pods), "nproc_per_node": self.nproc, "world_size": len(pods) * self.nproc,
                "pods": [p["metadata"]["name"] for p in pods], "service": self.name}

    def left_running(self, nodes: int) -> list[str]:
        """The pod names of a whole group of this task instance that an earlier try left and
        that can still finish (every rank's pod and the Service there, none failed or being
        deleted); [] otherwise."""
        pods = self.pods()
        ranks = {p.metadata.labels.get(NODE_RANK_LABEL) for p in pods}
        whole = (len(pods) == nodes and ranks == {str(r) for r in range(nodes)}
                 and all(p.metadata.deletion_timestamp is None and p.status.phase != "Failed" for p in pods)
                 and self.core.list_namespaced_service(self.k.namespace, label_selector=self.selector).items)
        return sorted(p.metadata.name for p in pods) if whole else []

    def pods(self) -> list[Any]:
        return self.core.list_namespaced_pod(self.k.namespace, label_selector=self.selector).items

    def wait_scheduled(self, nodes: int) -> None:
        """Until every pod of the group is bound to a node; RuntimeError with the scheduler's
        reason once ``schedule_timeout`` passed."""
        timeout = self.k.schedule_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        while True:
            pods = self.pods()
            waiting = {p.metadata.name: _unscheduled(p) for p in pods if not p.spec.node_name}
            if len(pods) == nodes and not waiting:
                placed = sorted({p.spec.node_name for p in pods})
                self.log.info("All %d pods of %s are scheduled, on node(s) %s", nodes, self.name, ", ".join(placed))
                return
            if time.monotonic() > deadline:
                reasons = sorted({r for r in waiting.values() if r}) or ["no reason given by the scheduler yet"]
                raise RuntimeError(
                    f"training group {self.name} was not scheduled as a whole within {int(timeout)}s: "
                    f"{nodes - len(waiting)} of {nodes} pods scheduled, each asking {_asked(self.resources)}; "
                    f"the scheduler: {'; '.join(reasons)} (deleting all {nodes} pods and the Service: the group "
                    f"runs all or nothing; check the node pool's capacity, labels {self.k.gpu_node_selector} "
                    f"and taints)")
            time.sleep(self.poll)

    def wait_finished(self, nodes: int, followers: list[threading.Thread]) -> None:
        """Until every pod succeeded; a failed pod (or one not started within
        ``startup_timeout``) fails the try, naming its rank and last log lines."""
        from airflow_mlops._core.errors import StageFailed
        from airflow_mlops.backends.kubernetes._podspec import quantities
        from airflow_mlops.backends.kubernetes.termination import termination_error, termination_of

        started = time.monotonic()
        startup = self.k.startup_timeout.total_seconds()
        while True:
            pods = {int(p.metadata.labels[NODE_RANK_LABEL]): p for p in self.pods()}
            if len(pods) < nodes:
                raise RuntimeError(f"training group {self.name}: pod(s) {sorted(set(range(nodes)) - set(pods))} "
                                   "disappeared (deleted from outside?)")
            failed = [rank for rank, p in pods.items() if p.status.phase == "Failed"]
            if failed:
                rank = failed[0]
                self.over.set()  # followers of pods that never started stop; the others end with their log
                self._drain(followers)
                refused = [line[len(FAILED_PREFIX):] for line in self.lines.get(rank, []) if FAILED_PREFIX in line]
                if refused:
                    raise StageFailed(f"training group {self.name}, rank {rank}: {refused[-1]}")
                last = self.lines.get(rank, [])[-TAIL_LINES:]
                ended = termination_of(pods[rank])  # OOMKilled: no retry; evicted, preempted...: retried
                if ended is not None:
                    memory = quantities(self.resources).get("memory") if self.resources else None
                    raise termination_error(ended, stage_name=self.stage_name,
                                            pod=f"{self.k.namespace}/{self.name}-{rank}", memory=memory,
                                            log_tail=last, training=(self.job.target(), self.job.tags), log=self.log)
                tail = "\n".join(last)
                raise RuntimeError(f"training group {self.name}: the pod of rank {rank} failed "
                                   f"({_exit(pods[rank])}); its last log lines:\n{tail}")
            if all(p.status.phase == "Succeeded" for p in pods.values()):
                self._drain(followers)
                return
            pending = [rank for rank, p in pods.items() if p.status.phase in (None, "Pending")]
            if pending and time.monotonic() - started > startup:
                raise RuntimeError(f"training group {self.name}: pod(s) of rank {pending} did not start within "
                                   f"{int(startup)}s ({_waiting(pods[pending[0]])})")
            time.sleep(self.poll)

    def follow_log(self, rank: int) -> None:
        """Stream the pod of ``rank`` into the task log, each line prefixed with the rank."""
        nproc = self.nproc
        prefix = f"[rank {rank}]" if nproc == 1 else f"[node {rank}, ranks {rank * nproc}-{rank * nproc + nproc - 1}]"
        lines = self.lines.setdefault(rank, [])
        name = f"{self.name}-{rank}"
        while True:
            try:
                response = self.core.read_namespaced_pod_log(name, self.k.namespace, follow=True,
                                                             _preload_content=False)
                break
            except Exception:  # noqa: BLE001 - not started yet (400), or gone: try again shortly
                if self.over.wait(self.poll):
                    return
        pending = b""
        try:
            for chunk in response.stream(4096):
                *complete, pending = (pending + chunk).split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", "replace")
                    lines.append(line)
                    self.log.info("%s %s", prefix, line)
        except Exception as exc:  # noqa: BLE001 - the connection broke: say so rather than end quietly
            self.log.warning("%s the log stream of pod %s broke after %d line(s) (%s: %s): later lines of this "
                             "rank are not in this task log; the pod's own log has them until it is deleted",
                             prefix, name, len(lines), type(exc).__name__, exc)
        if pending:
            lines.append(pending.decode("utf-8", "replace"))
            self.log.info("%s %s", prefix, lines[-1])

    def _drain(self, followers: list[threading.Thread]) -> None:
        """Wait for every follower to reach the end of its pod's log (a finished container's log
        ends by itself), so no rank's last lines are lost: at most the API timeout per follower,
        then a warning naming the rank whose log is still streaming."""
        bound = max(30.0, self.k.api_timeout.total_seconds())
        for thread in followers:
            thread.join(timeout=bound)
            if thread.is_alive():
                self.log.warning("the log of %s has not ended %.0fs after its pod finished: its last lines may be "
                                 "missing from this task log", thread.name, bound)

    def delete_group(self, wait: bool, why: str) -> None:
        """Delete every pod and Service of the group (by its label); with ``wait``, until they are gone."""
        from kubernetes.client.exceptions import ApiException

        ns = self.k.namespace
        pods = self.pods()
        services = self.core.list_namespaced_service(ns, label_selector=self.selector).items
        if not pods and not services:
            return
        self.log.info("Deleting training group %s (%d pod(s), %d Service(s)): %s", self.name, len(pods),
                      len(services), why)
        for obj, delete in [*((p, self.core.delete_namespaced_pod) for p in pods),
                            *((s, self.core.delete_namespaced_service) for s in services)]:
            try:
                delete(obj.metadata.name, ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        deadline = time.monotonic() + 120
        while wait and self.pods():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pods of training group {self.name} {why} were not deleted within 120s")
            time.sleep(self.poll)

    def kill(self) -> None:
        """Delete the group (the operator's ``on_kill``)."""
        self.delete_group(wait=False, why="the task was stopped")


def _unscheduled(pod: Any) -> str | None:
    for condition in (pod.status.conditions or []) if pod.status else []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"{condition.reason}: {condition.message}"
    return None


def _asked(resources: Resources | None) -> str:
    from airflow_mlops.backends.kubernetes._podspec import quantities

    return ", ".join(f"{k}={v}" for k, v in quantities(resources).items()) or "no resources"


def _exit(pod: Any) -> str:
    for status in pod.status.container_statuses or []:
        if status.state and status.state.terminated:
            return f"exit code {status.state.terminated.exit_code}, {status.state.terminated.reason}"
    return "no exit code"


def _waiting(pod: Any) -> str:
    for status in (pod.status.container_statuses or []) if pod.status else []:
        if status.state and status.state.waiting:
            return f"{status.state.waiting.reason}: {status.state.waiting.message}"
    return "still Pending"
