"""The rule every MLflow tracking URI obeys, wherever it comes from (the YAML, an Airflow
connection, ``$MLFLOW_TRACKING_URI``, a CLI flag, an operator argument): a local store must be
named by an absolute path. ``sqlite:///mlflow.db`` or ``mlruns`` would be resolved against each
worker's current directory, so every task would write a store of its own that nobody reads.

Pure string checks (no MLflow import): used when a DAG is parsed and again when a task resolves
the URI it will use (``airflow_mlops.hooks.mlflow.resolve_target``). The store a URI-less caller
gets (``default_tracking_uri``) is decided here too: it needs no Airflow connection, so the domain
packages (stream, lifecycle, telemetry) resolve it without the hooks.
"""

from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import quote, urlsplit, urlunsplit

from airflow_mlops._core.errors import MlopsError
from airflow_mlops._core.paths import expand_env, mlops_home, needs_expanding

# Tracking URIs without "://" that are not paths.
_NAMED = {"databricks", "databricks-uc", "uc"}


def store_problem(uri: str | None, parse_time: bool = False) -> str | None:
    """Why ``uri`` cannot be used (a sentence ending with ``got '<uri>'``), or None if it can.
    Remote stores (http, https, postgresql, databricks…) are not judged. With ``parse_time``, a
    Jinja template or a path starting with ``~`` or holding ``$VAR`` is left to be checked once
    rendered and expanded in the worker."""
    if not uri:
        return None
    text = uri.strip()
    if parse_time:
        path = next((text[len(p):] for p in ("sqlite:///", "file://") if text.startswith(p)), text)
        if "{{" in text or path.startswith("~") or "$" in path:
            return None
    if text.lower().startswith("sqlite:"):
        return _sqlite_problem(text, uri)
    if text.lower().startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or not posixpath.isabs(parts.path):
            return ("a relative file-store path depends on each worker's current directory; use an absolute one, "
                    f"e.g. 'file:///srv/mlflow/mlruns', got {uri!r}")
        return None
    if ":" not in text.split("/", 1)[0] and text not in _NAMED and not posixpath.isabs(text):
        return ("a relative file-store path depends on each worker's current directory; use an absolute one, "
                f"e.g. '/srv/mlflow/mlruns', or a server's URL, got {uri!r}")
    return None


def _sqlite_problem(text: str, uri: str) -> str | None:
    """``store_problem`` of a ``sqlite:`` URI (``text``: ``uri`` stripped)."""
    rest = text[len("sqlite:"):]
    path = rest[3:].split("?", 1)[0] if rest.startswith("///") else None
    if path is None or path in ("", ":memory:"):
        return ("an in-memory SQLite store keeps nothing once the task ends; use a database file, e.g. "
                f"'sqlite:////srv/mlflow/mlflow.db' (four slashes), got {uri!r}")
    if not posixpath.isabs(path):
        return ("a relative SQLite path depends on each worker's current directory; use an absolute one, e.g. "
                f"'sqlite:////srv/mlflow/mlflow.db' (four slashes), got {uri!r}")
    return None


def argument(text: str) -> str:
    """``type=`` of a ``--tracking-uri`` command-line option: the same rule, as a usage error."""
    import argparse

    problem = store_problem(text, parse_time=True)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


class TrackingUriError(MlopsError, ValueError):
    """A tracking URI that would write somewhere nobody reads (a relative SQLite path…): fails a
    task without retries (``_core.outcome``), and is a ValueError for plain-Python callers."""

    retryable = False


def checked_tracking_uri(uri: str, source: str) -> str:
    """``uri``, or a ``TrackingUriError`` naming ``source`` ("$MLFLOW_TRACKING_URI", "Airflow
    connection 'x'"…) and what is wrong with it."""
    problem = store_problem(uri)
    if problem:
        raise TrackingUriError(f"MLflow tracking URI from {source}: {problem}. Nothing was written.")
    return uri


def default_tracking_uri() -> str:
    """The store of a caller that names none: ``$MLFLOW_TRACKING_URI``, else SQLite under
    ``$AIRFLOW_MLOPS_HOME`` (its folder created) — never MLflow's own default, ``mlflow.db`` in
    the current directory. Raises ``TrackingUriError`` for a ``$MLFLOW_TRACKING_URI`` that breaks
    the rule."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return checked_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")
    home = mlops_home()
    home.mkdir(parents=True, exist_ok=True)
    return checked_tracking_uri(f"sqlite:///{home / 'mlflow.db'}", "$AIRFLOW_MLOPS_HOME")


def resolve_tracking_uri(tracking_uri: str | None = None, source: str = "tracking_uri") -> str:
    """A tracking URI given to a Python API (``run_stream``, ``run_retention``…) or a command,
    ``~`` and ``$VAR`` expanded, then checked (``TrackingUriError`` naming ``source``); None:
    ``default_tracking_uri()``."""
    if not tracking_uri:
        return default_tracking_uri()
    if needs_expanding(tracking_uri):
        try:
            tracking_uri = expand_env(tracking_uri)
        except ValueError as exc:
            raise TrackingUriError(f"MLflow tracking URI from {source}: {exc}") from None
    return checked_tracking_uri(tracking_uri, source)


def local_artifact_location(uri: str) -> str | None:
    """Where a local SQLite store's artifacts go: ``mlartifacts`` beside the database file (an
    absolute path, the same from every worker); None for other stores (a server decides)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (posixpath.dirname(uri[len("sqlite:///"):]) or ".") + "/mlartifacts"


def redacted(uri: str) -> str:
    """``uri`` for a log: a password written into it (``postgresql://u:secret@db/mlflow``) masked."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


def with_basic_auth(uri: str, credentials: dict[str, str]) -> str:
    """``uri`` with ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` of ``credentials`` written into an
    http(s) URI's userinfo, where MLflow's HTTP client (requests) sends them as basic auth: for a
    client in a process whose environment must not hold them (the api-server). Other URIs, or no
    credentials: ``uri`` as it is. Log only ``redacted()`` of the result."""
    user = credentials.get("MLFLOW_TRACKING_USERNAME")
    parts = urlsplit(uri)
    if not user or parts.scheme.lower() not in ("http", "https"):
        return uri
    password = credentials.get("MLFLOW_TRACKING_PASSWORD")
    userinfo = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc.rpartition('@')[2]}"))


_USERINFO_PASSWORD = re.compile(r"(\w[\w+.-]*://[^/\s:@]+):[^@\s/]*@")


def scrubbed(text: str) -> str:
    """``text`` (an error message that may quote a request URL) with every URL's password masked,
    as ``redacted`` masks one URI's."""
    return _USERINFO_PASSWORD.sub(r"\1:***@", text)
