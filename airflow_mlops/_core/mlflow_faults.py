"""An MLflow tracking server failing under a task: a bounded wait, then one message and a retry
decision.

Bound: MLflow's HTTP client retries on its own (by default 7 retries with a backoff factor of 2
and a 120 s timeout per try: many minutes on a dead server). ``http_env`` sets those knobs from
one setting, ``$AIRFLOW_MLOPS_MLFLOW_TIMEOUT`` (seconds, default 60): the longest a single MLflow
request may take, its retries and their back-off included. ``bound_http_requests`` exports them
into this process (MLflow reads them on every request), so the stage processes it starts inherit
them; ``_core.mlflow.client_for`` and ``use_store`` call it.

Absent or broken (``is_not_found``): only MLflow's own "does not exist" code means the thing asked
for is absent (no such model, version, alias, run). Every other error while reading it is the
tracking server's fault (``classify``), never an answer: a reader that takes a 503 or a 403 for
"no champion" promotes a model unchecked.

Retry decision (``classify``): the server unreachable, timing out or answering 5xx may pass on
retry; refused credentials (401/403) will not. Only tracking servers (http/https URIs) are judged;
errors of a local store are left as they are.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from airflow_mlops._core.errors import DependencyFailed, StageFailed, StageSkipped

TIMEOUT_ENV = "AIRFLOW_MLOPS_MLFLOW_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
WHAT = "MLflow tracking server"
_WEB = ("http", "https")
_UNREACHABLE = re.compile(r"API request to \S+ failed with exception")
_TIMED_OUT = re.compile(r"failed with timeout exception|Read timed out|ReadTimeout|ConnectTimeout")
_TOO_MANY_5XX = re.compile(r"too many (5\d\d) error responses")
# MLflow's error codes that answer "there is no such thing" (a registered model, version, alias,
# run, experiment): the only errors that mean absent. MLflow's stores raise them and its REST
# server sends them in the error body (HTTP 404), which the client turns back into the same code.
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST"})


def is_not_found(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow saying the thing asked for does not exist (``NOT_FOUND_CODES``).
    False for everything else: a tracking server that failed, refused or timed out, a bug."""
    return getattr(exc, "error_code", None) in NOT_FOUND_CODES


def request_bound_s() -> float:
    """``$AIRFLOW_MLOPS_MLFLOW_TIMEOUT`` in seconds (default 60). Raises ValueError naming the
    variable when it is not a number of at least 1."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value < 1:
        raise ValueError(f"${TIMEOUT_ENV} must be a number of seconds >= 1, got {text!r}")
    return value


def http_env(bound_s: float | None = None) -> dict[str, str]:
    """MLflow's HTTP settings for requests that end within ``bound_s`` seconds (default
    ``request_bound_s()``), retries included: 2 retries (1 below 10 s, none below 3 s) with a
    backoff factor of 1 (urllib3 sleeps 0 s, then 2 s), no jitter, Retry-After not obeyed, and a
    per-try timeout of what is left divided by the tries."""
    bound = request_bound_s() if bound_s is None else float(bound_s)
    retries = 2 if bound >= 10 else 1 if bound >= 3 else 0
    sleeps = 2 if retries >= 2 else 0  # urllib3 2.x: 0 before the first retry, factor * 2**(n-1) after
    per_try = max(1, int((bound - sleeps) // (retries + 1)))
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(per_try),
        "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
    }


def bound_http_requests() -> None:
    """Export ``http_env()`` into this process's environment (and so to the processes it starts)."""
    os.environ.update(http_env())


def without_credentials(uri: str) -> str:
    """``uri`` with any ``user:password@`` removed, for messages and logs."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _from_http_client(exc: BaseException) -> bool:
    return (type(exc).__module__.split(".")[0] in ("mlflow", "requests", "urllib3", "aiohttp")
            or isinstance(exc, (ConnectionError, TimeoutError)))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or while handling, as long as they are MLflow's or
    its HTTP client's errors (MLflow wraps a lost connection without ``from``): an error of the
    stage's own code is never taken for a server fault."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and _from_http_client(exc):
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(exc: BaseException) -> tuple[str, bool] | None:
    """``(how it failed, retryable)`` when ``exc`` is a tracking server's fault, else None."""
    for e in _chain(exc):
        name = type(e).__name__
        text = str(e)
        status = None
        getter = getattr(e, "get_http_status_code", None)
        if callable(getter):
            try:
                status = int(getter())
            except Exception:  # noqa: BLE001
                status = None
        code = getattr(e, "error_code", None)
        if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or status in (401, 403) or re.search(
                r"error code 40[13]|40[13] Client Error", text):
            return "refused the credentials (401/403)", False
        too_many = _TOO_MANY_5XX.search(text)
        if too_many:
            return f"kept answering HTTP {too_many.group(1)}", True
        if _TIMED_OUT.search(text) or name in ("Timeout", "ReadTimeout", "ConnectTimeout"):
            return "timed out", True
        if name in ("ConnectionError", "ConnectionRefusedError", "MaxRetryError", "NewConnectionError") or \
                _UNREACHABLE.search(text):
            return "is unreachable", True
        if (status is not None and status >= 500) or code in ("TEMPORARILY_UNAVAILABLE",):
            return f"answered an error (HTTP {status or 503})", True
    return None


def failed(exc: BaseException, tracking_uri: str, during: str, *, kept: str | None = None,
           action: str | None = None) -> DependencyFailed | None:
    """The DependencyFailed for ``exc``, or None when it is not a tracking server's fault (a local
    store, an unknown model…). ``action`` defaults to one that fits the retry decision."""
    if urlsplit(tracking_uri or "").scheme.lower() not in _WEB:
        return None
    found = classify(exc)
    if found is None:
        return None
    how, retryable = found
    bound = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    if action is None:
        action = ("check the credentials of the MLflow connection (MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN)"
                  if not retryable else
                  "start or repair the tracking server; Airflow's retry runs the task again and it resumes "
                  "from what was kept")
    if retryable and bound:
        how += f" (within ${TIMEOUT_ENV}={request_bound_s():g} s per request)"
    return DependencyFailed(WHAT, address=without_credentials(tracking_uri), failure=how, during=during, kept=kept,
                            action=action, retryable=retryable)


@contextmanager
def tracking_server(tracking_uri: str, during: str, *, logger: logging.Logger | Any = None,
                    kept: Callable[[], str | None] | None = None, action: str | None = None) -> Iterator[None]:
    """Turn a tracking server's failure inside the block into DependencyFailed, logged first (one
    ERROR record before any traceback). ``kept``: called then, says what was kept (the run id,
    versions registered). A DependencyFailed raised inside passes unchanged."""
    try:
        yield
    except (DependencyFailed, StageFailed, StageSkipped):
        raise
    except Exception as exc:
        err = failed(exc, tracking_uri, during, kept=kept() if kept else None, action=action)
        if err is None:
            raise
        (logger or logging.getLogger(__name__)).error("%s", err)
        raise err from exc
