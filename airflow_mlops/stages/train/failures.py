"""A training try that something outside it ended (Kubernetes: OOMKilled, evicted, preempted, lost
with its node) registers no model version, so the registry alone never shows it. The worker that
ran the try records why in MLflow, where the Models page reads it (``ui.failed_trainings``):

- on the try's own run when the training had created one (the run tagged with the task instance,
  ``airflow_mlops.task_key``, and the try's ``airflow.try_number``): marked FAILED if it was left
  RUNNING (its process was killed), and tagged with the failure;
- else on a small FAILED run of its own in the pipeline's experiment, with the task's Airflow tags
  (``_core.context.run_tags``) and the failure's.

Tags: ``airflow_mlops.failure`` (the message, as the task log's first line says it),
``airflow_mlops.failure.reason`` (Kubernetes' word: ``OOMKilled``, ``Evicted``...) and
``airflow_mlops.failure.model`` (the registered model the try was training).

Best effort: recording never changes the task's outcome or its retry decision; a store that
cannot be written is a WARNING in the task log.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_mlops._core.context import TASK_KEY_TAG, MlflowTarget

FAILURE_TAG = "airflow_mlops.failure"
FAILURE_REASON_TAG = "airflow_mlops.failure.reason"
FAILURE_MODEL_TAG = "airflow_mlops.failure.model"
MAX_MESSAGE = 2000  # characters of the message kept in the tag (MLflow limits a tag's value)


def record_failure(target: MlflowTarget, tags: dict[str, str], *, reason: str, message: str,
                   log: logging.Logger | None = None) -> str | None:
    """Record that the training try ``tags`` names (``run_tags``: dag/run/task ids, try number)
    ended for ``reason`` (``message``: what the task says). Returns the MLflow run it was recorded
    on, or None when it could not be (a WARNING says why). Never raises."""
    log = log or logging.getLogger("airflow_mlops.stages.train")
    try:
        run_id = _record(target, tags, reason, message)
    except Exception as exc:  # noqa: BLE001 - best effort: the task's own outcome stands
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        log.warning("Could not record the failure (%s) of this training try in MLflow at %s: %s", reason,
                    _shown(target.tracking_uri), first)
        return None
    log.info("Recorded the failure (%s) on MLflow run %s of experiment '%s': the Models page lists it",
             reason, run_id, target.experiment)
    return run_id


def _record(target: MlflowTarget, tags: dict[str, str], reason: str, message: str) -> str:
    from airflow_mlops._core import mlflow as tracking

    client = tracking.client(target)
    experiment_id = tracking.experiment_id(client, target)
    failure = {FAILURE_TAG: message[:MAX_MESSAGE], FAILURE_REASON_TAG: reason,
               FAILURE_MODEL_TAG: target.registered_model}
    run = try_run(client, experiment_id, tags)
    if run is None:
        run_name = f"{tags.get('airflow.task_id') or 'train'} (ended: {reason})"
        run = client.create_run(experiment_id, run_name=run_name, tags={**tags, **failure})
        client.set_terminated(run.info.run_id, "FAILED")
        return run.info.run_id
    for key, value in failure.items():
        client.set_tag(run.info.run_id, key, value)
    if run.info.status == "RUNNING":  # its process was killed: nothing ended it
        client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def try_run(client: Any, experiment_id: str, tags: dict[str, str]) -> Any:
    """The MLflow run this try created (task key and try number), newest first; None if none."""
    task_key, try_number = tags.get(TASK_KEY_TAG), tags.get("airflow.try_number")
    if not task_key or not try_number:
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TASK_KEY_TAG}` = '{task_key}' and "
                                                            f"tags.`airflow.try_number` = '{try_number}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _shown(uri: str) -> str:
    from airflow_mlops._core.tracking_uri import redacted

    return redacted(uri)
