"""One harness per real server the tests start (each on 127.0.0.1, a free port, stopped by PID):

- ``TrackingServer``: ``mlflow server`` (SQLite with served artifacts; the deployment's on Postgres and
  an S3 bucket, and the restored one of its backup test);
- ``SparkStandalone``: a Spark standalone Master and its Workers, from the pyspark install.

The Kafka-protocol broker is ``airflow_mlops.kafka.broker.EmbeddedBroker`` (shared through
``tests.kafka_helpers.shared_broker``), the S3-protocol server ``tests.s3_helpers``, the
Kubernetes API server ``tests/kube``, and the deployment's Postgres, Redis and Celery workers
``tests/deployment/stack.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers import free_port, wait_for_http


class TrackingServer:
    """``mlflow server`` on a free port (or ``port``), in its own process group (uvicorn runs as a
    child); ``uri`` is ``http://127.0.0.1:<port>``. By default ``folder`` holds its SQLite store and
    artifacts; the deployment gives a Postgres ``backend_store_uri``, an ``s3://`` artifacts
    destination, the S3 credentials in ``env`` (the process environment without MLflow's and AWS's
    own variables, plus these) and a ``log`` file."""

    def __init__(self, folder: Path, *, backend_store_uri: str | None = None, artifacts_destination: str | None = None,
                 env: dict[str, str] | None = None, port: int | None = None, log: Path | None = None):
        self.folder, self.port = folder, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{folder / 'mlflow.db'}"
        self.artifacts_destination = artifacts_destination or str(folder / "artifacts")
        self.env = None if env is None else {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}, **env}
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "TrackingServer":
        return self.launch().wait(timeout)

    def launch(self) -> "TrackingServer":
        """Start the process without waiting (``wait`` then waits for its health endpoint)."""
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - open for the server's life
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_store_uri,
             "--artifacts-destination", self.artifacts_destination, "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=self.folder, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait(self, timeout: float = 180) -> "TrackingServer":
        wait_for_http(f"{self.uri}/health", self.process, "mlflow server", timeout)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self.process = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the uvicorn child gone too: the port is free
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)

    def pause(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)


class SparkStandalone:
    """A standalone Spark Master and ``workers`` Workers (``cores`` and ``memory`` each), every
    process stopped and started by PID; ``url`` is ``spark://127.0.0.1:<port>``, logs in ``workdir``."""

    def __init__(self, workdir: Path, workers: int = 1, cores: int = 2, memory: str = "2g"):
        import pyspark

        self.spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
        self.workdir, self.port, self.webui = workdir, free_port(), free_port()
        self.workers, self.cores, self.memory = workers, cores, memory
        self.url = f"spark://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
                    "SPARK_LOG_DIR": str(workdir), "SPARK_WORKER_DIR": str(workdir / "work")}

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen([self.spark_class, *args], stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)

    def start(self) -> "SparkStandalone":
        """Start the master, and the workers that do not run (they register again by themselves)."""
        self._spawn("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(self.webui))
        self._wait(lambda: self.state().get("status") == "ALIVE", "the master")
        for i in range(self.workers):
            name = "worker" if self.workers == 1 else f"worker{i}"
            if name not in self.procs:
                self._spawn(name, "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                            "--cores", str(self.cores), "--memory", self.memory, "--webui-port", str(free_port()),
                            "--work-dir", str(self.workdir / f"work-{name}"))
        self._wait(lambda: self.state().get("aliveworkers", 0) >= self.workers, f"{self.workers} worker(s) registered")
        return self

    def stop(self, *names: str) -> None:
        """Stop ``names`` (default: the master only; the workers wait for it to come back)."""
        for name in names or ("master",):
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def stop_all(self) -> None:
        self.stop(*[n for n in self.procs if n != "master"], "master")

    def state(self) -> dict:
        """The master's own view (its web UI's /json): status, workers, active/completed apps."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.webui}/json/", timeout=2) as response:
            return json.loads(response.read())

    def _wait(self, ready, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (OSError, ValueError):  # not listening yet, or its UI still starting (HTML, not JSON)
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{what} not up within {timeout}s; see {self.workdir}")
