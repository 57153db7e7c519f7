"""Is the Spark master there? One check, bounded by ``spark.connect_timeout``, before a session
or spark-submit waits on it, and the one ``DependencyFailed`` message when it is not.

Why our own check: Spark's standalone client tries a master that does not answer three times,
20 s apart (``StandaloneAppClient``'s registration retries are constants, no setting bounds
them), after a JVM start of its own; a Spark Connect client retries with backoff for minutes.
A TCP connection to the master's port, retried until ``connect_timeout``, answers the same
question within the bound the pipeline chose. Masters without an address of their own to ask
(``local[*]``, ``yarn``, ``k8s://``: their clients bring their own timeouts) are not checked.
"""

from __future__ import annotations

import re
import socket
import time

from airflow_mlops._core.errors import DependencyFailed

SPARK_MASTER = "Spark master"
CONNECT_PORT = 15002  # Spark Connect's default port
_LOCAL = re.compile(r"local(\[(\*|\d+)(,\s*\d+)?\])?|local-cluster\[\d+,\s*\d+,\s*\d+\]")
_OTHER = ("yarn", "k8s://", "mesos://")
_HOST_PORT = re.compile(r"\[?([A-Za-z0-9_.:-]*[A-Za-z0-9_.-])\]?:(\d{1,5})")


def master_endpoints(master: str) -> list[tuple[str, int]]:
    """(host, port) to check for ``master``: every master of ``spark://h1:7077,h2:7077`` (HA),
    ``sc://host[:port][/;params]`` (port 15002 by default); ``[]`` for local, yarn, k8s and mesos.

    Raises ``DependencyFailed`` (not retryable) for a URL Spark cannot parse either."""
    master = master.strip()
    if _LOCAL.fullmatch(master) or master.startswith(_OTHER):
        return []
    if master.startswith("spark://"):
        parts = master[len("spark://"):].split(",")
        found = [_HOST_PORT.fullmatch(part.strip()) for part in parts]
        if parts and all(found):
            return [(m.group(1), int(m.group(2))) for m in found if m]
    elif master.startswith("sc://"):
        authority = re.split(r"[/;]", master[len("sc://"):], maxsplit=1)[0]
        hit = _HOST_PORT.fullmatch(authority)
        if hit:
            return [(hit.group(1), int(hit.group(2)))]
        if re.fullmatch(r"[A-Za-z0-9_.-]+", authority):
            return [(authority, CONNECT_PORT)]
    raise invalid_master(master)


def invalid_master(master: str, during: str = "reading the stage's Spark settings") -> DependencyFailed:
    return DependencyFailed(
        SPARK_MASTER, address=master, during=during, retryable=False,
        failure="is not a master URL Spark understands",
        action="use local[*], spark://HOST:PORT[,HOST:PORT], sc://HOST[:PORT], yarn or k8s://... in "
               "spark.master or the Spark connection's host")


def check_master(master: str, timeout: float, *, during: str, kept: str | None = None) -> None:
    """Return once one of ``master``'s endpoints accepts a TCP connection; retry until ``timeout``
    seconds have passed, then raise ``DependencyFailed`` (retryable). Not a master URL: raises
    ``DependencyFailed`` (not retryable). Masters with nothing to check return at once."""
    try:
        endpoints = master_endpoints(master)
    except DependencyFailed:
        raise invalid_master(master, during) from None
    if not endpoints:
        return
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        for host, port in endpoints:
            left = max(0.1, deadline - time.monotonic())
            try:
                with socket.create_connection((host, port), timeout=min(5.0, left)):
                    return
            except OSError as exc:
                last = exc
        if time.monotonic() >= deadline:
            raise unreachable(master, timeout, last, during=during, kept=kept)
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def master_unreachable(master: str, timeout: float = 2.0) -> bool:
    """Whether ``master`` (one with an address) accepts no connection now: what a failed
    spark-submit or session creation is judged by."""
    try:
        check_master(master, timeout, during="")
    except DependencyFailed as exc:
        return exc.retryable
    return False


def unreachable(master: str, timeout: float, last: BaseException | None, *, during: str,
                kept: str | None = None) -> DependencyFailed:
    reason = f"{type(last).__name__}: {last}" if last else "no answer"
    return DependencyFailed(
        SPARK_MASTER, address=master, during=during, kept=kept, retryable=True,
        failure=f"accepted no connection within {timeout:g}s (spark.connect_timeout; last error: {reason})",
        action="start the Spark master (or fix the Spark connection's host and port); Airflow's retries run "
               "the task again")
