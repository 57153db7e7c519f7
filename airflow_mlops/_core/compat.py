"""Airflow names that moved between the supported releases (3.1 … 3.3, docs: "Installing"):
imported from here, so each move is handled once.

- the task exceptions live in ``airflow.sdk.exceptions`` from 3.2; 3.1 has them in
  ``airflow.exceptions`` only (3.2+ keeps those as deprecated aliases, to be removed);
- ``CronTriggerTimetable`` is in ``airflow.sdk`` from 3.2, in ``airflow.timetables.trigger`` before;
- Airflow's ``.airflowignore`` walk is ``airflow._shared.module_loading.file_discovery`` from 3.2
  (``airflow.utils.file`` in 3.1, deprecated since).

Importing this module imports only Airflow's exceptions; the others are functions.
"""

from __future__ import annotations

from typing import Any, Callable

try:
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowSkipException,
    )
except ImportError:  # Airflow 3.1
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowSkipException,
    )

__all__ = ["AirflowException", "AirflowFailException", "AirflowSensorTimeout", "AirflowSkipException",
           "cron_trigger_timetable", "find_path_from_directory"]


def cron_trigger_timetable() -> type:
    """Airflow's ``CronTriggerTimetable`` class."""
    try:
        from airflow.sdk import CronTriggerTimetable
    except ImportError:  # Airflow 3.1
        from airflow.timetables.trigger import CronTriggerTimetable
    return CronTriggerTimetable


def find_path_from_directory() -> Callable[..., Any]:
    """Airflow's own walk of a folder under its ``.airflowignore`` rules."""
    try:
        from airflow._shared.module_loading.file_discovery import find_path_from_directory as walk
    except ImportError:
        try:  # an Airflow without core (a task-SDK-only worker): the SDK's copy
            from airflow.sdk._shared.module_loading.file_discovery import find_path_from_directory as walk
        except ImportError:  # Airflow 3.1
            from airflow.utils.file import find_path_from_directory as walk
    return walk


def import_skops_io() -> Any:
    """``skops.io`` (what MLflow saves and loads scikit-learn models with), imported with
    Airflow's deprecated-import warnings silenced for that import only: at import time skops
    looks up every SciPy ufunc name in every loaded module (pickle's ``whichmodule``), and each
    lookup in one of Airflow's deprecated-module shims warns, about 1,160 log lines per task.
    Call it before MLflow saves or loads a scikit-learn model; later imports reuse the module."""
    import sys
    import warnings

    module = sys.modules.get("skops.io")
    if module is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r"The `airflow\.")
            import skops.io as module
    return module
