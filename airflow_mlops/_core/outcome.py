"""The one answer to "fail, skip or retry?": what each error becomes in an Airflow task, and in
the exit code of a process a task launched (a pod's runtime, the training process, the stream
command). No other module of the package raises Airflow's task exceptions (a test checks).

- ``StageSkipped``: the task is skipped (``AirflowSkipException``); exit code 4.
- an ``MlopsError`` with ``retryable = False``: the task fails without retrying
  (``AirflowFailException``); exit code 3. ``StageFailed`` (the stage refused its input), a
  permanent ``DependencyFailed`` (bad credentials, a corrupted store), ``TrackingUriError``,
  ``RestoreError``, a ``StreamError`` that a rerun would repeat (a missing topic, poison records
  without a dead-letter topic).
- an ``MlopsError`` with ``retryable = True`` (a transient ``DependencyFailed``: unreachable,
  timed out, lost): raised as it is, so Airflow's retries apply; exit code 1.
- anything else (a crash): as it is, retries apply; exit code 1.

A ``DependencyFailed``'s message goes to the task log first (``log.error``), before any traceback.
A process that a task launched prints the refusal after ``FAILED_PREFIX`` / ``SKIPPED_PREFIX``
(``_core.result``) and writes it to the result file's ``.failed`` / ``.skipped`` companion, which
the launcher reads back into the same outcome.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from airflow_mlops._core.errors import DependencyFailed, MlopsError, StageSkipped

EXIT_CRASHED = 1  # anything but the two below: Airflow's retries apply
EXIT_FAILED = 3  # refused: a retry would only repeat it
EXIT_SKIPPED = 4  # the stage decided the rest of the run should not happen


def retryable(exc: BaseException) -> bool:
    """Whether running again may succeed: an ``MlopsError`` says so; any other error is a crash."""
    return bool(exc.retryable) if isinstance(exc, MlopsError) else True


def failed(message: str) -> Exception:
    """The task fails without using up its retries (a verdict, bad arguments after rendering)."""
    from airflow_mlops._core.compat import AirflowFailException

    return AirflowFailException(message)


def skipped(message: str) -> Exception:
    """The task is skipped (and the tasks after it, by their trigger rules)."""
    from airflow_mlops._core.compat import AirflowSkipException

    return AirflowSkipException(message)


def for_airflow(exc: BaseException, log: Any = None) -> BaseException:
    """What an Airflow task raises for ``exc``, by the table above; a ``DependencyFailed``'s
    message goes to ``log`` first. The result keeps ``exc`` as its ``__cause__``."""
    if isinstance(exc, DependencyFailed) and log is not None:
        log.error("%s", exc)
    if isinstance(exc, StageSkipped):
        outcome = skipped(str(exc))
    elif not retryable(exc):
        outcome = failed(str(exc))
    else:
        return exc
    outcome.__cause__ = exc
    return outcome


@contextmanager
def airflow_outcome(log: Any = None) -> Iterator[None]:
    """Around a task's work: the package's own errors (``MlopsError``) leave as the table says;
    any other exception passes unchanged (a crash: Airflow's retries apply)."""
    try:
        yield
    except MlopsError as exc:
        outcome = for_airflow(exc, log)
        if outcome is exc:
            raise
        raise outcome from exc


def exit_code(exc: BaseException) -> int:
    """The exit code a launched process ends with for ``exc``, by the table above."""
    if isinstance(exc, StageSkipped):
        return EXIT_SKIPPED
    return EXIT_CRASHED if retryable(exc) else EXIT_FAILED


def report_exit(exc: BaseException, result_file: str | Path | None = None) -> int:
    """In a launched process: print ``exc`` to stderr the way its launcher reads it (after
    ``FAILED_PREFIX`` / ``SKIPPED_PREFIX`` for a refusal or a skip, ``error: `` for a fault a
    rerun may fix), write a refusal or a skip to the result file's companion when there is one,
    and return the exit code."""
    from airflow_mlops._core.result import FAILED_PREFIX, SKIPPED_PREFIX, outcome_files

    code = exit_code(exc)
    prefix = {EXIT_FAILED: FAILED_PREFIX, EXIT_SKIPPED: SKIPPED_PREFIX}.get(code, "error: ")
    print(f"{prefix}{exc}", file=sys.stderr, flush=True)
    if result_file and code != EXIT_CRASHED:
        fail_file, skip_file = outcome_files(result_file)
        Path(fail_file).parent.mkdir(parents=True, exist_ok=True)
        (skip_file if code == EXIT_SKIPPED else fail_file).write_text(str(exc))
    return code


def timed_out(message: str) -> Exception:
    """A sensor that waited its ``timeout`` out (``AirflowSensorTimeout``: failed, or skipped
    under ``soft_fail``)."""
    from airflow_mlops._core.compat import AirflowSensorTimeout

    return AirflowSensorTimeout(message)
