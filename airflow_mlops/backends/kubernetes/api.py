"""How long the Kubernetes API server may stay unreachable under a task, and what its failures mean.

Left alone, the Kubernetes client waits without limit for an API server that accepted the
connection but does not answer (no ``_request_timeout`` on most calls), urllib3 retries each
request three times, and KubernetesPodOperator retries its calls five times with backoff and
resumes following a pod's log forever. ``bound_api_client`` puts one bound on all of it:
``kubernetes.api_timeout`` (default 60 s) is how long the API server may fail every request in a
row before the task fails; each request then gets ``(connect, read)`` timeouts of at most
``api_timeout`` (log streams included: a silent pod's log is simply followed again).

``api_failure`` turns what the client raised into the one ``DependencyFailed`` message: the API
server unreachable, timing out or answering 5xx is retryable; 401 (bad credentials), 403 (the
worker's Role lacks a verb) and a missing namespace are not.
"""

from __future__ import annotations

import threading
import time
from typing import Any

API_SERVER = "Kubernetes API server"
# 5xx: the API server is up but cannot serve (etcd lost, overloaded): it may pass on retry.
TRANSIENT_STATUS = {500, 502, 503, 504}
CONNECT_TIMEOUT = 10.0  # seconds, at most: a reachable API server accepts a connection at once


class ApiServerUnreachable(Exception):
    """Every request to the API server at ``address`` failed for ``seconds`` (> ``api_timeout``).

    Not an urllib3 error on purpose: KubernetesPodOperator's own retries (tenacity on HTTPError)
    and log-following loop let it through, so the task ends instead of retrying further."""

    def __init__(self, address: str, seconds: float, last: BaseException):
        self.address, self.seconds, self.last = address, seconds, last
        super().__init__(f"no answer from {address} for {seconds:.0f}s (last: {_first_line(last)})")


class _Guard:
    """The failing streak of one ApiClient: since when every request failed."""

    def __init__(self, address: str, timeout: float):
        self.address, self.timeout = address, timeout
        self.failing_since: float | None = None
        self.lock = threading.Lock()

    def request_timeout(self, given: Any) -> tuple[float, float]:
        connect, read = (given, given) if isinstance(given, (int, float)) else (given or (None, None))
        connect = min(connect or CONNECT_TIMEOUT, CONNECT_TIMEOUT, self.timeout)
        return connect, min(read or self.timeout, self.timeout)

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        with self.lock:
            if self.failing_since is None:
                self.failing_since = now
            seconds = now - self.failing_since
        if seconds >= self.timeout:
            raise ApiServerUnreachable(self.address, seconds, exc) from exc

    def answered(self) -> None:
        with self.lock:
            self.failing_since = None


def bound_api_client(api_client: Any, api_timeout: float) -> Any:
    """``api_client`` (a ``kubernetes.client.ApiClient``) with every request bounded: timeouts of
    at most ``api_timeout`` seconds (connect at most 10 s), and ``ApiServerUnreachable`` raised
    once requests have failed for ``api_timeout`` seconds in a row (connection refused or reset,
    timeouts, 5xx). Changes and returns the same client; applying it twice keeps the first bound."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    rest = api_client.rest_client
    if getattr(rest, "_mlops_guard", None) is not None:
        return api_client
    guard = _Guard(api_client.configuration.host, api_timeout)
    inner = rest.request

    def request(method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        try:
            response = inner(method, url, *args, _request_timeout=guard.request_timeout(_request_timeout), **kwargs)
        except ApiException as exc:
            if exc.status in TRANSIENT_STATUS:
                guard.failed(exc)
            else:
                guard.answered()
            raise
        except urllib3.exceptions.HTTPError as exc:
            guard.failed(exc)
            raise
        guard.answered()
        return response

    rest.request = request
    rest._mlops_guard = guard
    return api_client


def api_address(api_client: Any) -> str | None:
    """The API server's URL an ApiClient talks to (no credentials: they travel in headers)."""
    return getattr(getattr(api_client, "configuration", None), "host", None)


def api_failure(exc: BaseException, *, address: str | None, api_timeout: float, during: str,
                kept: str | None, action: str | None = None) -> Any:
    """The ``DependencyFailed`` for an exception raised by the Kubernetes client (found in its
    ``__cause__``/``__context__`` chain too), or None when it is not the API server's failure.

    :param action: what to do when the API server was unreachable (the default says to check it
        and let Airflow retry); refusals (401/403/404 namespace) get their own advice."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    from airflow_mlops._core.errors import DependencyFailed

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "api_exceptions", None):  # kubernetes.utils.FailToCreateError: what the server said
            exc = exc.api_exceptions[0]
            continue
        if isinstance(exc, ApiServerUnreachable):
            return DependencyFailed(
                API_SERVER, address=address or exc.address, during=during, kept=kept, retryable=True,
                failure=f"was unreachable for {exc.seconds:.0f}s (kubernetes.api_timeout: {api_timeout:g}s; "
                        f"last error: {_first_line(exc.last)})",
                action=action or "check that the API server is up and reachable from the worker; "
                                 "Airflow's retries run the task again")
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return DependencyFailed(
                API_SERVER, address=address, during=during, kept=kept, retryable=True,
                failure=f"did not answer ({_first_line(exc)})",
                action=action or "check that the API server is up and reachable from the worker; "
                                 "Airflow's retries run the task again")
        if isinstance(exc, ApiException) and exc.status is not None:
            refused = _refusal(exc, during)
            if refused is not None:
                failure, todo = refused
                return DependencyFailed(API_SERVER, address=address, during=during, kept=kept, retryable=False,
                                        failure=failure, action=todo)
            if exc.status in TRANSIENT_STATUS:
                return DependencyFailed(
                    API_SERVER, address=address, during=during, kept=kept, retryable=True,
                    failure=f"answered {exc.status} {exc.reason}",
                    action=action or "the API server (or its etcd) is failing: check its health; Airflow's "
                                     "retries run the task again")
        exc = exc.__cause__ or exc.__context__
    return None


def _refusal(exc: Any, during: str) -> tuple[str, str] | None:
    """(how it failed, what to do) for a refusal no retry can change."""
    message = _api_message(exc)
    if exc.status == 401:
        return (f"refused the worker's credentials (401 {exc.reason})",
                "fix the Kubernetes connection (kubernetes.conn_id) or kubeconfig (kubernetes.config_file): "
                "its token or certificate is not accepted")
    if exc.status == 403:
        return (f"forbade the request (403: {message})",
                "grant the worker's service account what `airflow-mlops manifests` renders (its Role and "
                "RoleBinding in that namespace), or fix kubernetes.namespace")
    if exc.status == 404 and "namespaces" in message and "not found" in message:
        return (f"has no such namespace ({message})",
                "create the namespace (and apply `airflow-mlops manifests`), or fix kubernetes.namespace")
    return None


def _api_message(exc: Any) -> str:
    import json

    try:
        return json.loads(exc.body).get("message") or str(exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
