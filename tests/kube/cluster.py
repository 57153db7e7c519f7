"""A real Kubernetes control plane on 127.0.0.1 for tests: etcd, kube-apiserver, kube-scheduler and
kube-controller-manager (1.20.2, built by ``scripts/build-kube.sh``), plus a stand-in kubelet
(``kubelet.py``) that really runs pods' commands as local processes.

There is no container runtime here, so the node is an API object this module registers and the
stand-in kubelet plays its part: the real scheduler binds pods to it (GPU requests are checked
against the node's ``nvidia.com/gpu`` capacity), the real apiserver proxies ``pods/log`` to the
stand-in kubelet's HTTPS port, and the real controller-manager creates default ServiceAccounts
and garbage-collects.

The fake node is a *GPU node* and, like most GPU nodes, it is tainted
``nvidia.com/gpu=present:NoSchedule``: a pod must tolerate that taint to be scheduled at all, e.g.
``{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}``. A pod without the
toleration stays Pending with a FailedScheduling event, as it would on a real GPU-only cluster.

Every process is started with its log in ``workdir`` and stopped by PID (terminate, then kill).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

KUBE_BIN = Path(os.environ.get("KUBE_CACHE", Path.home() / ".cache/airflow-mlops/kube-1.20.2")) / "bin"
NODE_NAME = "gpu-node-0"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
KUBELET_SCRIPT = Path(__file__).with_name("kubelet.py")


@dataclass
class KubeCluster:
    kubeconfig: Path
    server: str
    token: str
    node_name: str
    gpus: int
    workdir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    argv: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver (etcd, the scheduler and the stand-in kubelet keep running, so
        the cluster's state and running pods survive): the API server is unreachable."""
        _stop(self.processes["kube-apiserver"])

    def start_apiserver(self, timeout: float = 60) -> None:
        """Start kube-apiserver again on the same port and wait until it is ready."""
        self.processes["kube-apiserver"] = _spawn("kube-apiserver", self.argv["kube-apiserver"], self.workdir)
        _wait_until(lambda: _http_ok(f"{self.server}/readyz", self.token), timeout, "kube-apiserver /readyz",
                    self.processes, self.workdir)

    def api_client(self):
        """A ``kubernetes.client.ApiClient`` talking to this cluster as an admin."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def wait_for_default_service_account(self, namespace: str, timeout: float = 60) -> None:
        """Wait until the controller-manager has created ``default`` *and* its token Secret.

        The ServiceAccount admission plugin of 1.20 rejects pods until both exist (the token is
        mounted into every pod), so a test must not create pods in a new namespace before this.
        """
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with self.api_client() as api:
            core = client.CoreV1Api(api)

            def ready() -> bool:
                try:
                    return bool(core.read_namespaced_service_account("default", namespace).secrets)
                except ApiException as exc:
                    if exc.status == 404:
                        return False
                    raise

            _wait_until(ready, timeout, f"the default ServiceAccount in {namespace}", self.processes, self.workdir)


@contextlib.contextmanager
def start_cluster(workdir: Path, gpus: int = 2, bin_dir: Path = KUBE_BIN) -> Iterator[KubeCluster]:
    """Start the control plane and the stand-in kubelet in ``workdir``; stop them all on exit."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("kube-apiserver", "kube-scheduler", "kube-controller-manager"):
        if not (bin_dir / name).is_file():
            raise FileNotFoundError(f"{bin_dir / name} is missing: run scripts/build-kube.sh")
    cert, key = workdir / "serving.crt", workdir / "serving.key"
    _write_self_signed(cert, key)
    sa_key, sa_pub = workdir / "sa.key", workdir / "sa.pub"
    _write_rsa_pair(sa_key, sa_pub)
    token = secrets.token_hex(16)
    (workdir / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')

    etcd_port, peer_port, api_port, kubelet_port = _free_ports(4)
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    _write_kubeconfig(kubeconfig, server, token)
    procs: dict[str, subprocess.Popen] = {}
    cluster = KubeCluster(kubeconfig, server, token, NODE_NAME, gpus, workdir, procs)
    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        procs["etcd"] = _spawn("etcd", [
            "etcd", "--name=default", f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
        ], workdir)
        _wait_until(lambda: _http_ok(f"{etcd_url}/health"), 30, "etcd", procs, workdir)

        cluster.argv["kube-apiserver"] = [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}", "--insecure-port=0",
            f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
            f"--token-auth-file={workdir / 'tokens.csv'}", "--authorization-mode=RBAC",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/16",
            # The node's only address is an InternalIP: with a Hostname address first the
            # apiserver would resolve the node name through DNS to reach the kubelet.
            "--kubelet-preferred-address-types=InternalIP",
            # The `kubernetes` Service's endpoints can't be 127.0.0.1 (loopback is rejected):
            # don't reconcile them rather than log an error every 10 s.
            "--endpoint-reconciler-type=none",
            # No --kubelet-certificate-authority: the apiserver then skips verifying the
            # kubelet's serving cert, so the stand-in kubelet's self-signed one is accepted.
        ]
        procs["kube-apiserver"] = _spawn("kube-apiserver", cluster.argv["kube-apiserver"], workdir)
        _wait_until(lambda: _http_ok(f"{server}/readyz", token), 60, "kube-apiserver /readyz", procs, workdir)

        common = [f"--kubeconfig={kubeconfig}", "--secure-port=0", "--port=0", "--leader-elect=false"]
        procs["kube-controller-manager"] = _spawn("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"), *common,
            # No node lifecycle controller: nothing heartbeats the fake node, and it would
            # mark it NotReady and evict its pods.
            "--controllers=*,-nodelifecycle",
            f"--service-account-private-key-file={sa_key}", f"--root-ca-file={cert}",
        ], workdir)
        procs["kube-scheduler"] = _spawn("kube-scheduler", [str(bin_dir / "kube-scheduler"), *common], workdir)
        procs["kubelet"] = _spawn("kubelet", [
            sys.executable, str(KUBELET_SCRIPT), f"--kubeconfig={kubeconfig}", f"--node={NODE_NAME}",
            f"--port={kubelet_port}", f"--cert={cert}", f"--key={key}", f"--workdir={workdir / 'pods'}",
            # Pods' `python` is this venv's interpreter, as if the image had the project installed.
            f"--path-prefix={Path(sys.executable).parent}",
        ], workdir)
        _wait_until(lambda: _http_ok(f"https://127.0.0.1:{kubelet_port}/healthz"), 30, "stand-in kubelet", procs,
                    workdir)
        with cluster.api_client() as api:
            _register_node(api, NODE_NAME, gpus, kubelet_port)
        yield cluster
    finally:
        for name in reversed(list(procs)):
            _stop(procs[name])


@contextlib.contextmanager
def extra_node(cluster: KubeCluster, name: str, gpus: int) -> Iterator[str]:
    """Another GPU node (tainted like the first) with a stand-in kubelet of its own, so pods the
    scheduler binds there run as local processes too; the node is deleted and its kubelet stopped
    on exit. Start it from the main thread (see ``_die_with_parent``)."""
    from kubernetes import client

    (port,) = _free_ports(1)
    procs = {f"kubelet-{name}": _spawn(f"kubelet-{name}", [
        sys.executable, str(KUBELET_SCRIPT), f"--kubeconfig={cluster.kubeconfig}", f"--node={name}",
        f"--port={port}", f"--cert={cluster.workdir / 'serving.crt'}", f"--key={cluster.workdir / 'serving.key'}",
        f"--workdir={cluster.workdir / 'pods'}", f"--path-prefix={Path(sys.executable).parent}",
    ], cluster.workdir)}
    try:
        _wait_until(lambda: _http_ok(f"https://127.0.0.1:{port}/healthz"), 30, f"stand-in kubelet of {name}", procs,
                    cluster.workdir)
        with cluster.api_client() as api:
            _register_node(api, name, gpus, port)
        yield name
    finally:
        with contextlib.suppress(Exception), cluster.api_client() as api:
            client.CoreV1Api(api).delete_node(name)
        for proc in procs.values():
            _stop(proc)


def _register_node(api, name: str, gpus: int, kubelet_port: int) -> None:
    """Create the fake GPU node, give it a Ready status, and leave only the GPU taint on it."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_node({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "nvidia.com/gpu.present": "true",
        }},
        "spec": {"taints": [GPU_TAINT]},
    })
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    now = _now()
    core.patch_node_status(name, {"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "stand-in kubelet is posting ready status",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {"kubeletVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64",
                     "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                     "osImage": "stand-in", "containerRuntimeVersion": "standin://0", "kubeProxyVersion": ""},
    }}, _content_type="application/strategic-merge-patch+json")

    # The TaintNodesByCondition admission plugin adds node.kubernetes.io/not-ready on creation;
    # a real kubelet's Ready status makes the node lifecycle controller lift it, which we don't run.
    def only_gpu_taint() -> bool:
        taints = [t.to_dict() for t in core.read_node(name).spec.taints or []]
        if [{k: t[k] for k in ("key", "value", "effect")} for t in taints] == [GPU_TAINT]:
            return True
        core.patch_node(name, {"spec": {"taints": [GPU_TAINT]}}, _content_type="application/merge-patch+json")
        return False

    _wait_until(only_gpu_taint, 10, f"node {name} without the not-ready taint")


def _spawn(name: str, argv: list[str], workdir: Path) -> subprocess.Popen:
    # PR_SET_PDEATHSIG fires when the starting *thread* ends: a process (re)started from another
    # thread (a test breaking the API server under a running task) would die with that thread,
    # so it goes without; the cluster's teardown stops it by PID like every other.
    main = threading.current_thread() is threading.main_thread()
    with open(workdir / f"{name}.log", "ab") as log:  # a restart appends
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, preexec_fn=_die_with_parent if main else None)


def _die_with_parent() -> None:
    # If the test process is killed outright, its teardown never runs: have the kernel send the
    # child SIGTERM instead of leaving a control plane behind (PR_SET_PDEATHSIG = 1, Linux only;
    # it fires when the *thread* that started the child ends: start clusters from the main thread).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str,
                procs: dict[str, subprocess.Popen] | None = None, workdir: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in (procs or {}).items():
            if proc.poll() is not None:
                tail = (workdir / f"{name}.log").read_text(errors="replace")[-4000:] if workdir else ""
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{tail}")
        with contextlib.suppress(OSError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    context = ssl._create_unverified_context()  # our own self-signed certs
    with urllib.request.urlopen(request, timeout=2, context=context) as response:
        return response.status == 200


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_kubeconfig(path: Path, server: str, token: str) -> None:
    path.write_text(json.dumps({  # JSON is YAML
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
    }, indent=2))


def _write_rsa_pair(key_path: Path, pub_path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def _write_self_signed(cert_path: Path, key_path: Path) -> None:
    """A self-signed CA-capable serving cert for 127.0.0.1 (also the controller-manager's root CA)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _write_rsa_pair(key_path, key_path.with_suffix(".pub"))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = dt.datetime.now(dt.timezone.utc)
    sans = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.96.0.1")]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
