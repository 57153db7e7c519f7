"""A stand-in kubelet for the test cluster: it really runs pods bound to its node as local processes.

Started by ``cluster.start_cluster`` as ``python kubelet.py --kubeconfig ... --node ... --port ...``.
What it does, the way a kubelet does it (without containers):

* watches the pods bound to its node (``spec.nodeName``) and, for each new one, runs the **first**
  container's ``command + args`` (``$(VAR)`` references expanded) with ``workingDir`` or a scratch
  folder as its working directory. The environment is the pod's, not the test process's: ``PATH``
  (the venv's bin first, so ``python`` is the project's interpreter), ``HOME``, ``HOSTNAME``, then
  ``envFrom`` and ``env`` (plain values, ``secretKeyRef``/``configMapKeyRef`` read through the API,
  a few ``fieldRef``s). A missing Secret/ConfigMap leaves the pod Pending with
  CreateContainerConfigError and is retried, as a kubelet does. Other containers (an xcom
  sidecar, say) are not run: they are reported running, then terminated with exit code 0.
  Containers run once (as with ``restartPolicy: Never``); init containers are not run.
* moves the pod Pending -> Running -> Succeeded/Failed with container statuses (exit code, reason
  Completed/Error, 128+signal when killed by a signal);
* serves ``GET /containerLogs/{namespace}/{pod}/{container}`` over HTTPS, which is where the
  apiserver proxies ``pods/log`` requests: ``follow``, ``timestamps`` (RFC3339Nano, like the
  kubelet), ``tailLines``, ``sinceSeconds``, ``sinceTime`` and ``limitBytes``;
* on a pod's deletionTimestamp, sends SIGTERM to its process group (SIGKILL after the grace
  period, capped at 10 s), reports the exit and confirms the deletion with grace period 0;
* ends a running pod the way a kubelet's OOM killer or eviction manager, the scheduler's
  preemption or a lost node does, when a test annotates it ``stand-in.kubelet/end-as:`` with
  ``OOMKilled``, ``Evicted``, ``Preempted`` or ``NodeLost`` (there are no memory cgroups, node
  pressure, priorities or other nodes here): SIGKILL to its processes, then the status Kubernetes
  reports (the container terminated with reason OOMKilled and exit code 137; the pod Failed with
  reason Evicted and the node-pressure message, or NodeLost; or with the DisruptionTarget
  condition PreemptionByScheduler).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import logging
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("kubelet")
STRATEGIC = "application/strategic-merge-patch+json"
POD_IP = "127.0.0.1"  # pods share the host's network: there is no pod network here


class MissingReference(Exception):
    """An env source (Secret, ConfigMap, key) that does not exist (yet)."""


@dataclass
class Run:
    """One pod's process and the log it writes (one record per line: ``<ns> <F|P> <text>``)."""

    namespace: str
    name: str
    uid: str
    containers: list[str]
    log_path: Path
    started: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    process: subprocess.Popen | None = None
    end_as: str | None = None  # OOMKilled / Evicted, asked for by a test's annotation


class Kubelet:
    def __init__(self, api, node: str, workdir: Path, path_prefix: str):
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.node, self.workdir, self.path_prefix = node, workdir, path_prefix
        self.lock = threading.Lock()
        self.runs: dict[str, Run] = {}  # by pod uid
        self.by_name: dict[tuple[str, str], Run] = {}  # the latest pod of that name
        self.deleting: set[str] = set()

    # -- watching ---------------------------------------------------------------------------------
    def watch_forever(self) -> None:
        from kubernetes import watch

        selector = f"spec.nodeName={self.node}"
        while True:
            try:
                pods = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in pods.items:
                    self.sync(pod)
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, field_selector=selector,
                                              resource_version=pods.metadata.resource_version, timeout_seconds=300)
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.sync(event["object"])
                    elif event["type"] == "DELETED":  # deleted without us (grace 0, or terminal)
                        threading.Thread(target=self.kill, args=(event["object"].metadata.uid, 0), daemon=True).start()
            except Exception:  # an expired resourceVersion, a dropped connection: list again
                log.exception("watch interrupted; listing again")
                time.sleep(1)

    def sync(self, pod) -> None:
        uid = pod.metadata.uid
        with self.lock:
            if pod.metadata.deletion_timestamp is not None:
                if uid in self.deleting:
                    return
                self.deleting.add(uid)
                target = self.delete
            elif (uid in self.runs and (end := (pod.metadata.annotations or {}).get(END_AS)) in END_AS_KINDS
                  and self.runs[uid].end_as is None and self.runs[uid].process is not None):
                self.runs[uid].end_as = end
                _signal_group(self.runs[uid].process, signal.SIGKILL)
                return
            elif uid not in self.runs and pod.status.phase in (None, "Pending"):
                ns, name = pod.metadata.namespace, pod.metadata.name
                pod_dir = self.workdir / f"{ns}_{name}_{uid[:8]}"
                pod_dir.mkdir(parents=True, exist_ok=True)
                run = Run(ns, name, uid, [c.name for c in pod.spec.containers],
                          pod_dir / f"{pod.spec.containers[0].name}.log")
                run.log_path.touch()
                self.runs[uid] = self.by_name[ns, name] = run
                target = self.run
            else:
                return
        threading.Thread(target=target, args=(pod,), name=f"pod-{pod.metadata.name}", daemon=True).start()

    # -- running ----------------------------------------------------------------------------------
    def run(self, pod) -> None:
        run = self.runs[pod.metadata.uid]
        container = pod.spec.containers[0]
        try:
            resolved = self.wait_for_env(pod, container, run)
            if resolved is None:  # deleted while waiting
                return
            env, defined = resolved
            argv = [_expand(a, defined) for a in (container.command or []) + (container.args or [])]
            if not container.command:
                raise OSError("the stand-in kubelet needs the container's command: it cannot know the image's "
                              "entrypoint")
            cwd = container.working_dir or str(run.log_path.parent)
            run.process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            if run.uid in self.deleting:  # deleted while starting: kill() may have missed the process
                _signal_group(run.process, signal.SIGKILL)
        except OSError as exc:  # no such executable or folder: the runtime's StartError
            self.set_status(pod, "Failed", dict.fromkeys(run.containers, _terminated(128, "StartError", str(exc))))
            run.done.set()
            return
        started = _now()
        run.started.set()
        running = {"running": {"startedAt": started}}
        self.set_status(pod, "Running", dict.fromkeys(run.containers, running), start_time=started)
        with open(run.log_path, "ab", buffering=0) as out:
            for line in iter(run.process.stdout.readline, b""):
                tag, text = (b"F", line[:-1]) if line.endswith(b"\n") else (b"P", line)
                out.write(b"%d %s %s\n" % (time.time_ns(), tag, text))
        code = run.process.wait()
        code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as container runtimes report
        finished = {c: _terminated(0, "Completed", started=started) for c in run.containers}
        finished[container.name] = _terminated(code, "Completed" if code == 0 else "Error", started=started)
        if run.end_as == "OOMKilled":
            finished[container.name] = _terminated(137, "OOMKilled", started=started)
        self.set_status(pod, "Succeeded" if code == 0 and not run.end_as else "Failed", finished,
                        pod_reason=END_AS_STATES.get(run.end_as), disruption=END_AS_DISRUPTIONS.get(run.end_as))
        run.done.set()

    def wait_for_env(self, pod, container, run: Run) -> tuple[dict[str, str], dict[str, str]] | None:
        reported = False
        while True:
            try:
                return self.environment(pod, container, run)
            except MissingReference as exc:
                if pod.metadata.uid in self.deleting:
                    return None
                if not reported:
                    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                    self.set_status(pod, "Pending", dict.fromkeys(run.containers, waiting))
                    reported = True
                time.sleep(1)

    def environment(self, pod, container, run: Run) -> tuple[dict[str, str], dict[str, str]]:  # noqa: C901
        """The process's environment, and the variables the pod defines ($(VAR) expands only those)."""
        from kubernetes.client.exceptions import ApiException

        ns = pod.metadata.namespace
        base = {"PATH": f"{self.path_prefix}:/usr/local/bin:/usr/bin:/bin", "HOME": str(run.log_path.parent),
                "HOSTNAME": pod.metadata.name, "LANG": "C.UTF-8"}
        env: dict[str, str] = {}

        def lookup(kind: str, name: str, key: str | None, optional: bool) -> dict[str, str] | str | None:
            try:
                if kind == "Secret":
                    data = {k: base64.b64decode(v).decode() for k, v in
                            (self.core.read_namespaced_secret(name, ns).data or {}).items()}
                else:
                    data = dict(self.core.read_namespaced_config_map(name, ns).data or {})
            except ApiException as exc:
                if exc.status != 404:
                    raise
                if optional:
                    return None
                raise MissingReference(f'{kind.lower()} "{name}" not found') from None
            if key is None:
                return data
            if key not in data and not optional:
                raise MissingReference(f"couldn't find key {key} in {kind} {ns}/{name}")
            return data.get(key)

        for source in container.env_from or []:
            ref, kind = (source.secret_ref, "Secret") if source.secret_ref else (source.config_map_ref, "ConfigMap")
            values = lookup(kind, ref.name, None, bool(ref.optional)) or {}
            env.update({f"{source.prefix or ''}{k}": v for k, v in values.items()})
        fields = {"metadata.name": pod.metadata.name, "metadata.namespace": ns, "metadata.uid": pod.metadata.uid,
                  "spec.nodeName": self.node, "spec.serviceAccountName": pod.spec.service_account_name,
                  "status.podIP": POD_IP, "status.hostIP": POD_IP}
        for var in container.env or []:
            source = var.value_from
            if source is None:
                value = _expand(var.value or "", env)
            elif source.secret_key_ref:
                ref = source.secret_key_ref
                value = lookup("Secret", ref.name, ref.key, bool(ref.optional))
            elif source.config_map_key_ref:
                ref = source.config_map_key_ref
                value = lookup("ConfigMap", ref.name, ref.key, bool(ref.optional))
            elif source.field_ref and source.field_ref.field_path in fields:
                value = fields[source.field_ref.field_path]
            else:
                raise MissingReference(f"env {var.name}: this kind of valueFrom is not supported by the stand-in")
            if value is not None:
                env[var.name] = value
        return {**base, **env}, env

    def set_status(self, pod, phase: str, states: dict[str, dict], start_time: str | None = None,
                   pod_reason: tuple[str, str] | None = None, disruption: tuple[str, str] | None = None) -> None:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        running = phase == "Running"
        now = _now()
        images = {c.name: c.image for c in pod.spec.containers}
        statuses = [{
            "name": name, "image": images[name], "imageID": f"standin://{images[name]}",
            "containerID": f"standin://{pod.metadata.uid}/{name}", "ready": running, "started": running,
            "restartCount": 0, "state": state,
        } for name, state in states.items()]
        ok = "True" if running else "False"
        reason = {} if running else {"reason": "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"}
        conditions = [{"type": "Initialized", "status": "True", "lastTransitionTime": now}] + [
            {"type": t, "status": ok, "lastTransitionTime": now, **reason} for t in ("ContainersReady", "Ready")]
        status = {"phase": phase, "hostIP": POD_IP, "podIP": POD_IP, "podIPs": [{"ip": POD_IP}],
                  "conditions": conditions, "containerStatuses": statuses}
        if start_time:
            status["startTime"] = start_time
        if pod_reason:  # the pod's own reason and message (Evicted: the eviction manager's words)
            status["reason"], status["message"] = pod_reason
        if disruption:  # Kubernetes 1.26+: why the pod is being ended from outside
            conditions.append({"type": "DisruptionTarget", "status": "True", "lastTransitionTime": now,
                               "reason": disruption[0], "message": disruption[1]})
        deadline = time.monotonic() + 300
        while True:  # like a real kubelet, report the status again until the API server takes it
            try:
                self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace,
                                                      {"status": status}, _content_type=STRATEGIC)
                return
            except ApiException as exc:
                if exc.status != 404:  # a pod deleted meanwhile has no status to report
                    raise
                return
            except urllib3.exceptions.HTTPError:  # the API server is down: try again
                if time.monotonic() > deadline:
                    raise
                log.warning("could not report %s for pod %s: the API server does not answer; retrying",
                            phase, pod.metadata.name)
                time.sleep(1)

    # -- stopping ---------------------------------------------------------------------------------
    def delete(self, pod) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        grace = pod.metadata.deletion_grace_period_seconds
        self.kill(pod.metadata.uid, grace=min(10, 30 if grace is None else grace))
        try:
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                                            body=client.V1DeleteOptions(grace_period_seconds=0,
                                                                        preconditions={"uid": pod.metadata.uid}))
        except ApiException as exc:
            if exc.status not in (404, 409):  # already gone, or a new pod of that name
                raise

    def kill(self, uid: str, grace: float) -> None:
        run = self.runs.get(uid)
        if run is None:
            return
        with self.lock:
            self.deleting.add(uid)
        if run.process is not None and run.process.poll() is None:
            _signal_group(run.process, signal.SIGTERM)
            try:
                run.process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(run.process, signal.SIGKILL)
        if run.process is not None:
            run.done.wait(10)  # until its exit is reported

    def kill_all(self) -> None:
        for run in list(self.runs.values()):
            if run.process is not None and run.process.poll() is None:
                _signal_group(run.process, signal.SIGKILL)

    # -- logs -------------------------------------------------------------------------------------
    def stream_logs(self, run: Run, container: str, query: dict[str, str], write) -> None:  # noqa: C901
        if container != run.containers[0]:
            return  # containers other than the first are not run: their log is empty
        follow = query.get("follow") == "true"
        timestamps = query.get("timestamps") == "true"
        tail = int(query["tailLines"]) if "tailLines" in query else None
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        since = 0
        if "sinceSeconds" in query:
            since = time.time_ns() - int(query["sinceSeconds"]) * 10**9
        elif "sinceTime" in query:
            since = int(dt.datetime.fromisoformat(query["sinceTime"].replace("Z", "+00:00")).timestamp()) * 10**9
        sent = 0

        def emit(records: list[bytes]) -> bool:
            nonlocal sent
            out = b""
            for record in records:
                stamp, tag, text = record.split(b" ", 2)
                if int(stamp) < since:
                    continue
                out += (_rfc3339nano(int(stamp)).encode() + b" " if timestamps else b"") + text
                out += b"\n" if tag == b"F" else b""
            if limit is not None:
                out = out[: max(0, limit - sent)]
            if out:
                write(out)
                sent += len(out)
            return limit is None or sent < limit

        with open(run.log_path, "rb") as f:
            records = f.read().split(b"\n")
            pending = records.pop()  # an unfinished record (the writer is mid-line), or b""
            if not emit(records[max(0, len(records) - tail):] if tail is not None else records) or not follow:
                return
            while True:
                finished = run.done.is_set()  # checked before reading: nothing is written after done
                chunk = pending + f.read()
                *records, pending = chunk.split(b"\n")
                if records and not emit(records):
                    return
                if finished:
                    return
                time.sleep(0.1)


class LogHandler(BaseHTTPRequestHandler):
    kubelet: Kubelet

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts == ["healthz"]:
            return self.reply(200, b"ok")
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self.reply(404, b"404 page not found\n")
        _, ns, name, container = parts
        run = self.kubelet.by_name.get((ns, name))
        if run is None or container not in run.containers:
            return self.reply(404, f'container "{container}" in pod "{name}" not found\n'.encode())
        if not run.started.wait(0) and not run.done.is_set():
            return self.reply(400, f'container "{container}" in pod "{name}" is waiting to start: '
                                   f"ContainerCreating\n".encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()  # no Content-Length: the body ends when the connection closes (HTTP/1.0)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self.kubelet.stream_logs(run, container, query, self.wfile.write)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client went away

    def reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002
        log.info("%s %s", self.address_string(), format % args)


END_AS = "stand-in.kubelet/end-as"
# What a test may ask the kubelet to end a running pod as → the pod's (reason, message), if any.
END_AS_STATES: dict[str | None, tuple[str, str] | None] = {
    "OOMKilled": None,
    "Evicted": ("Evicted", "The node was low on resource: memory. Threshold quantity: 100Mi, available: 52Mi."),
    "NodeLost": ("NodeLost", "Node gpu-node-0 which was running the pod is unresponsive"),
}
# ... or → its DisruptionTarget condition's (reason, message).
END_AS_DISRUPTIONS: dict[str | None, tuple[str, str]] = {
    "Preempted": ("PreemptionByScheduler", "Kubernetes default scheduler: preempting to accommodate a higher priority pod"),
}
END_AS_KINDS = set(END_AS_STATES) | set(END_AS_DISRUPTIONS)


def _terminated(code: int, reason: str, message: str | None = None, started: str | None = None) -> dict:
    now = _now()
    state = {"exitCode": code, "reason": reason, "startedAt": started or now, "finishedAt": now}
    return {"terminated": {**state, "message": message} if message else state}


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the pod's process and its children (start_new_session)
    except ProcessLookupError:
        pass


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, $$(VAR) gives a literal $(VAR)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339nano(ns: int) -> str:
    """Go's time.RFC3339Nano, which the kubelet uses: nanoseconds with trailing zeros trimmed."""
    seconds, nanos = divmod(ns, 10**9)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def main() -> None:
    from kubernetes import config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("kubeconfig", "node", "cert", "key", "workdir", "path-prefix"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # our own cluster, self-signed
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(levelname)s %(message)s")

    kubelet = Kubelet(config.new_client_from_config(config_file=args.kubeconfig), args.node, Path(args.workdir),
                      args.path_prefix)

    def stop(signum, frame) -> None:  # noqa: ARG001
        kubelet.kill_all()  # no pod process outlives the kubelet
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LogHandler.kubelet = kubelet
    server = ThreadingHTTPServer(("127.0.0.1", args.port), LogHandler)
    server.daemon_threads = True
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.cert, args.key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()
    log.info("stand-in kubelet for node %s serving logs on https://127.0.0.1:%d", args.node, args.port)
    kubelet.watch_forever()


if __name__ == "__main__":
    main()
