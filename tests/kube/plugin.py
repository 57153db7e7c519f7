"""pytest fixtures for the Kubernetes-backend tests (register with ``pytest_plugins = ["tests.kube.plugin"]``).

``kube_cluster`` (session): builds the binaries when they are not cached (``scripts/build-kube.sh``,
7-13 minutes the first time on 2 cores, counted against the first test's pytest-timeout: on a fresh
machine, better run the script before pytest) and starts a cluster with a 2-GPU fake node (~7-11 s);
see ``cluster.py``. Pods must tolerate the node's taint: ``cluster.GPU_TOLERATION``.
``kube_namespace``: a fresh namespace whose default ServiceAccount is ready, deleted afterwards.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.kube.cluster import KubeCluster, start_cluster

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    # The test cluster's certificates are self-signed and its kubeconfig skips verification.
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")


def ensure_binaries() -> None:
    """Build the control plane's binaries unless cached (``scripts/build-kube.sh``); fail, never skip."""
    build = subprocess.run(["bash", str(REPO / "scripts" / "build-kube.sh")], capture_output=True, text=True)
    if build.returncode != 0:
        # Never skip: a test run that silently drops the Kubernetes tests would look green.
        pytest.fail(f"scripts/build-kube.sh failed with exit code {build.returncode}:\n"
                    f"{build.stdout[-8000:]}\n{build.stderr[-8000:]}", pytrace=False)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory):
    ensure_binaries()
    with start_cluster(tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster):
    from kubernetes import client

    name = f"test-{uuid.uuid4().hex[:8]}"
    with kube_cluster.api_client() as api:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    kube_cluster.wait_for_default_service_account(name)
    yield name
    with kube_cluster.api_client() as api:
        # The namespace controller deletes its pods; the stand-in kubelet confirms those deletions.
        client.CoreV1Api(api).delete_namespace(name)
