"""An Airflow listener (registered by the package's plugin, so every Airflow that has the package
installed loads it), for the package's pipeline DAGs:

- a run that would schedule none of its stages fails, with a note that says why, instead of
  ending green with no work done;
- a stage that skipped (a challenger that lost with ``on_reject: skip``, a rejected approval) has
  its reason as the task instance's note, and the run's note lists them: a green run says what it
  did not do, on its own page, without opening a log.

Airflow creates no task instance for a logical date before a task's ``start_date`` (or after its
``end_date``). A pipeline with an explicit ``dag.start_date`` that is triggered for an earlier day
(``airflow dags test churn 2024-01-01``, or the UI's trigger form with a past logical date) would
otherwise be a run of zero tasks, marked ``success``. Only the package's pipeline DAGs (tag
``airflow-mlops``) are checked; hand-written DAGs keep Airflow's own behaviour.

Cheap to import: Airflow imports listeners in every component.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

PIPELINE_TAG = "airflow-mlops"  # factory._build.TAG (not imported: keeps this module cheap)
SKIP_REASON_KEY = "airflow_mlops.skip_reason"  # backends.stage.SKIP_REASON_KEY


def _out_of_range(task: Any, logical_date: datetime) -> bool:
    """Whether Airflow creates no task instance for ``task`` at ``logical_date`` (the filter in
    ``DagRun.verify_integrity``)."""
    start, end = getattr(task, "start_date", None), getattr(task, "end_date", None)
    return (start is not None and logical_date < start) or (end is not None and logical_date > end)


def empty_run_reason(dag: Any, logical_date: datetime | None) -> str | None:
    """Why a run of ``dag`` for ``logical_date`` schedules none of its tasks, or ``None`` when at
    least one task runs (or the DAG is not a pipeline built by the package).

    ``dag`` is the scheduler's (serialized) DAG; dates are timezone-aware.
    """
    if logical_date is None or PIPELINE_TAG not in set(getattr(dag, "tags", None) or ()):
        return None
    tasks = list(getattr(dag, "tasks", ()))
    if not tasks or not all(_out_of_range(t, logical_date) for t in tasks):
        return None
    starts = [t.start_date for t in tasks if t.start_date is not None]
    if starts and logical_date < min(starts):
        return (
            f"No stage ran: the logical date {logical_date.isoformat()} is before the pipeline's "
            f"start_date {min(starts).isoformat()}, and Airflow schedules no task before its start "
            f"date. To run this day, give an earlier dag.start_date or none (a pipeline without "
            f"start_date runs for any date), or trigger a date on or after the start date."
        )
    ends = [t.end_date for t in tasks if t.end_date is not None]
    return (
        f"No stage ran: the logical date {logical_date.isoformat()} is after the pipeline's "
        f"end_date {max(ends).isoformat() if ends else '?'}, and Airflow schedules no task after "
        f"its end date. Trigger a date within the pipeline's dates, or move dag.end_date."
    )


def _fail_empty_run(dag_run: Any) -> None:
    from airflow.utils.state import DagRunState

    try:
        dag = dag_run.get_dag()
    except Exception:  # a run whose DAG cannot be read is not this listener's to judge
        log.debug("No DAG for %s; not checked", dag_run, exc_info=True)
        return
    reason = empty_run_reason(dag, dag_run.logical_date)
    if reason is None:
        return
    log.error("Marking run %s failed. %s", dag_run.run_id, reason)
    dag_run.set_state(DagRunState.FAILED)
    dag_run.note = reason


def note_skips(dag_run: Any) -> list[str]:
    """Each skipped stage's reason (the XCom it left) as its task instance's note, and all of them
    as the run's note (kept when the run already has one); the ``task_id: reason`` lines."""
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    # The session the caller (the scheduler, dags test) works in: the run's own, else Airflow's
    # thread-local one, which is the caller's too. Never a second session: it would wait on the
    # caller's row locks (a deadlock with itself). The caller commits.
    session = object_session(dag_run) or settings.Session()
    rows = session.scalars(select(XComModel).where(
        XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id,
        XComModel.key == SKIP_REASON_KEY)).all()
    reasons = {(x.task_id, x.map_index): XComModel.deserialize_value(x) for x in rows}
    if not reasons:
        return []
    lines = []
    skipped = session.scalars(select(TaskInstance).where(
        TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id,
        TaskInstance.state == TaskInstanceState.SKIPPED)).all()
    for ti in skipped:
        reason = reasons.get((ti.task_id, ti.map_index))
        if reason:
            ti.note = f"Skipped: {reason}"[:1000]
            lines.append(f"{ti.task_id}: {reason}")
    run = dag_run if object_session(dag_run) is session else session.get(type(dag_run), dag_run.id)
    if lines and run is not None and not run.note:
        run.note = ("Skipped: " + "; ".join(lines))[:1000]
    return lines


def _pipeline(dag_run: Any) -> Any:
    try:
        dag = dag_run.get_dag()
    except Exception:  # a run whose DAG cannot be read is not this listener's to judge
        log.debug("No DAG for %s; not checked", dag_run, exc_info=True)
        return None
    return dag if PIPELINE_TAG in set(getattr(dag, "tags", None) or ()) else None


def _finished(dag_run: Any) -> None:
    if _pipeline(dag_run) is None:
        return
    try:
        note_skips(dag_run)
    except Exception:  # noqa: BLE001 - a note is a courtesy: never let it disturb the scheduler
        log.warning("Could not note the skipped stages of %s", dag_run.run_id, exc_info=True)


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    """A scheduled or triggered run, as the scheduler starts it."""
    _fail_empty_run(dag_run)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    """A run that reached ``success`` with nothing scheduled (``airflow dags test`` starts its run
    as running, so only this event sees it); else its skipped stages noted."""
    _fail_empty_run(dag_run)
    _finished(dag_run)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _finished(dag_run)
