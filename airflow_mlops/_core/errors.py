"""Errors every layer raises, and the words their messages share.

``retryable`` tells a launcher (the worker, a pod's runtime, spark-submit) whether Airflow should
try the task again: a crash or a lost connection may pass on retry; a stage that judged its input
and refused it will not.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class MlopsError(Exception):
    """Base of the package's own errors. ``retryable``: whether running again may succeed."""

    retryable = True


class StageFailed(MlopsError):
    """A stage failed for a reason a retry cannot fix (a metric below its threshold, bad data)."""

    retryable = False


class StageSkipped(MlopsError):
    """The stage decided the rest of this run should not happen (a challenger that lost)."""

    retryable = False


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'train'?)`` when a close choice exists, else ``''``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_of(choices: Iterable[str]) -> str:
    return ", ".join(f"'{c}'" for c in choices)


def format_path(path: Iterable[object]) -> str:
    return ".".join(str(p) for p in path)


class ArgumentsError(ValueError):
    """An operator's invalid arguments, each with its place among them.

    ``errors`` are dicts like pydantic's (``loc`` relative to the operator's keyword arguments,
    ``msg``, ``type``, and optionally ``input``/``ctx``); ``model`` is the pydantic model that
    validated them, if one did. An operator that raises this (rather than a bare ValueError) gets
    each problem reported at its own line of a pipeline's ``args:`` by ``airflow-mlops validate``
    and the dags-folder loader. ``str()`` is the message Python users see."""

    def __init__(self, owner: str, errors: list[dict], model: type | None = None, message: str | None = None):
        self.owner = owner
        self.errors = errors
        self.model = model
        if message is None:
            lines = [f"{format_path(e.get('loc') or ()) or '(arguments)'}: {e['msg']}" for e in errors]
            message = f"{owner}: invalid arguments:\n  " + "\n  ".join(lines)
        super().__init__(message)

    @classmethod
    def one(cls, owner: str, argument: str | tuple | None, message: str) -> "ArgumentsError":
        """A single problem with one argument (``None``: with their combination)."""
        loc = () if argument is None else ((argument,) if isinstance(argument, str) else tuple(argument))
        return cls(owner, [{"loc": loc, "msg": message, "type": "argument"}], message=f"{owner}: {message}")


class DependencyFailed(MlopsError):
    """A server or store the task depends on failed under it: one message a person can act on.

    The message reads, in this order (each part on its own line after the first)::

        <what> (<address>) <failed how> during <during>
          kept: <what was kept>            -- e.g. "offsets committed up to tumours[0]=120"
          to do: <action>                  -- e.g. "start the broker; a rerun resumes from ..."

    ``what``: the dependency in the field's words (``MLflow tracking server``, ``Kafka broker``,
    ``Kubernetes API server``, ``Spark master``, ``backup target``); ``address``: where it was
    (URI, bootstrap servers, path), secrets already removed; ``during``: the stage, snapshot or
    batch that was running; ``retryable``: True for transient faults (unreachable, timed out, lost)
    so Airflow's retries apply, False for permanent ones (corrupted, bad credentials, missing topic).
    ``cause``: the library's own exception, kept as ``__cause__`` by ``raise ... from``.
    """

    def __init__(
        self,
        what: str,
        *,
        failure: str,
        during: str,
        action: str,
        address: str | None = None,
        kept: str | None = None,
        retryable: bool = True,
    ):
        self.what = what
        self.address = address
        self.failure = failure
        self.during = during
        self.kept = kept
        self.action = action
        self.retryable = retryable
        where = f" ({address})" if address else ""
        lines = [f"{what}{where} {failure} during {during}"]
        if kept:
            lines.append(f"  kept: {kept}")
        lines.append(f"  to do: {action}")
        lines.append(f"  retry: {'yes, Airflow retries apply' if retryable else 'no, this will not pass on retry'}")
        super().__init__("\n".join(lines))
