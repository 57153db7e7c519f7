"""The rule every MLflow tracking URI obeys, wherever it comes from (the YAML, an Airflow
connection, ``$MLFLOW_TRACKING_URI``, a CLI flag, an operator argument): a local store must be
named by an absolute path. ``sqlite:///mlflow.db`` or ``mlruns`` would be resolved against each
worker's current directory, so every task would write a store of its own that nobody reads.

Pure string checks (no MLflow import): used when a DAG is parsed and again when a task resolves
the URI it will use (``airflow_mlops.hooks.mlflow.resolve_target``).
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

# Tracking URIs without "://" that are not paths.
_NAMED = {"databricks", "databricks-uc", "uc"}


def store_problem(uri: str | None, parse_time: bool = False) -> str | None:  # noqa: C901
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
        rest = text[len("sqlite:"):]
        path = rest[3:] if rest.startswith("///") else None
        if path is not None:
            path = path.split("?", 1)[0]
        if path is None or path in ("", ":memory:"):
            return ("an in-memory SQLite store keeps nothing once the task ends; use a database file, e.g. "
                    f"'sqlite:////srv/mlflow/mlflow.db' (four slashes), got {uri!r}")
        if not posixpath.isabs(path):
            return ("a relative SQLite path depends on each worker's current directory; use an absolute one, e.g. "
                    f"'sqlite:////srv/mlflow/mlflow.db' (four slashes), got {uri!r}")
        return None
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


def argument(text: str) -> str:
    """``type=`` of a ``--tracking-uri`` command-line option: the same rule, as a usage error."""
    import argparse

    problem = store_problem(text, parse_time=True)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
