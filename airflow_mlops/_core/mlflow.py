"""The MLflow client, built one way everywhere: tracking and registry at the same store, reading
never creates a store, experiments created with an explicit artifact location. MLflow itself is
imported inside the functions (cheap at DAG parse)."""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow_mlops._core.context import MlflowTarget
from airflow_mlops._core.errors import StageFailed, did_you_mean
from airflow_mlops._core.mlflow_faults import bound_http_requests, is_not_found
from airflow_mlops._core.tracking_uri import with_basic_auth

SERVING_ALIAS = "champion"
# Registered-model tag naming the aliases pipelines serve through; retention never deletes the
# versions behind them.
SERVING_ALIASES_TAG = "airflow_mlops.serving_aliases"


def use_credentials(target: MlflowTarget) -> None:
    """Give this process the target's MLflow credentials (``MLFLOW_TRACKING_USERNAME`` /
    ``PASSWORD``), where MLflow's fluent API and the processes a task starts (spark-submit, a
    training script) read them. For a task's own process only, once its operator resolved the
    target: a long-lived process serving many users (the api-server) passes them per client
    (``read_only_client(uri, credentials)``) instead."""
    os.environ.update(target.credentials)


def use_store(target: MlflowTarget) -> None:
    """Point MLflow's tracking and registry at the target store.

    Both, always: MLflow keeps them as process-wide globals, and a registry URI left over from an
    earlier task in the same process would register the model in the wrong store.
    """
    import mlflow

    bound_http_requests()
    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_registry_uri(target.tracking_uri)


def use_experiment(target: MlflowTarget) -> str:
    """Point MLflow at the target store and return the experiment id, creating it if needed."""
    use_store(target)
    return experiment_id(client(target), target)


def experiment_id(mlflow_client: Any, target: MlflowTarget) -> str:
    """The target experiment's id, through this client (MLflow's process-wide URIs untouched).

    The artifact location is set explicitly on creation: MLflow's default (``./mlruns``) is relative
    to the worker's current directory, which differs between workers.
    """
    import mlflow

    experiment = mlflow_client.get_experiment_by_name(target.experiment)
    if experiment is not None:
        moved_artifact_location(experiment, target)
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(target.experiment, artifact_location=target.artifact_location)
    except mlflow.exceptions.MlflowException:
        # Another task created it between our lookup and create: use theirs.
        experiment = mlflow_client.get_experiment_by_name(target.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


def _same_location(a: str, b: str) -> bool:
    strip = lambda v: (v[len("file://"):] if v.startswith("file://") else v).rstrip("/")  # noqa: E731
    return strip(a) == strip(b)


def moved_artifact_location(experiment: Any, target: MlflowTarget) -> str | None:
    """When the pipeline names an ``artifact_location`` other than the one the existing experiment
    was created with, MLflow keeps using the experiment's (it is fixed at creation): say so, with
    what to do, in the task log (a WARNING). Returns the message, or None when they agree."""
    wanted, actual = target.artifact_location, getattr(experiment, "artifact_location", None)
    if not wanted or not actual or _same_location(wanted, actual):
        return None
    message = (f"mlflow.artifact_location is {wanted}, but the experiment '{target.experiment}' already exists with "
               f"its artifacts at {actual}: MLflow fixes an experiment's location when it is created, so this run's "
               f"artifacts go to {actual}. To use the new location, name a new experiment (mlflow.experiment), or "
               "move the old one's artifacts and keep its location")
    logging.getLogger("airflow_mlops.mlflow").warning("%s", message)
    return message


class StoreNotFound(StageFailed):
    """A read-only use of a local MLflow store that does not exist (MLflow would create it)."""


def local_store_path(tracking_uri: str) -> str | None:
    """The file or folder of a local store (``sqlite:////abs/mlflow.db``, ``file:///abs``, ``/abs``),
    else None (a tracking server)."""
    if tracking_uri.startswith("sqlite:///"):
        return tracking_uri[len("sqlite:///"):]
    if tracking_uri.startswith("file://"):
        return tracking_uri[len("file://"):]
    if tracking_uri.startswith("/"):
        return tracking_uri
    return None


def read_only_client(tracking_uri: str, credentials: dict[str, str] | None = None) -> Any:
    """An MlflowClient for reading a store that must already exist. MLflow creates a missing
    SQLite file (and its folder) on first use; reading commands (``rollback``, ``cost``, retention
    plans) must not, so a missing local store raises StoreNotFound naming the path.
    ``credentials``: as ``client_for``'s."""

    path = local_store_path(tracking_uri)
    if path is not None and not os.path.exists(path):
        raise StoreNotFound(f"no MLflow store at {path}: the file does not exist (check the tracking URI "
                            f"{tracking_uri}; reading never creates a store)")
    return client_for(tracking_uri, credentials)


def registered_model(mlflow_client: Any, name: str, tracking_uri: str) -> Any:
    """The registered model ``name``, or StageFailed saying there is none (with a did-you-mean)."""
    import mlflow

    try:
        return mlflow_client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if not is_not_found(exc):
            raise
        known = [m.name for m in mlflow_client.search_registered_models(max_results=1000)]
        raise StageFailed(f"there is no registered model named '{name}'{did_you_mean(name, known)} in the MLflow "
                          f"registry at {tracking_uri}") from exc


def alias_version(mlflow_client: Any, name: str, alias: str) -> str | None:
    """The version behind ``alias`` of the registered model ``name``, None when the model has no
    such alias. Read from the model's own alias table, so "no alias" is the registry's answer:
    MLflow's ``get_model_version_by_alias`` reports a missing alias as INVALID_PARAMETER_VALUE,
    indistinguishable from a bad request. Raises MlflowException when the model does not exist
    (RESOURCE_DOES_NOT_EXIST, see ``mlflow_faults.is_not_found``) and whatever the tracking server
    raised when it failed (5xx, time-out, 401/403): never taken for "no alias"."""
    version = (mlflow_client.get_registered_model(name).aliases or {}).get(alias)
    return None if version is None else str(version)


def client(target: MlflowTarget) -> Any:
    """An MlflowClient whose tracking and registry are the target's store."""
    return client_for(target.tracking_uri)


def client_for(tracking_uri: str | None, credentials: dict[str, str] | None = None) -> Any:
    """An MlflowClient whose tracking and registry are both ``tracking_uri`` (None: MLflow's own
    resolution, ``$MLFLOW_TRACKING_URI`` first). MLflow's process-wide URIs are left untouched.
    Its HTTP requests end within ``$AIRFLOW_MLOPS_MLFLOW_TIMEOUT`` (``mlflow_faults.http_env``).
    ``credentials`` (``MlflowTarget.credentials``) go with this client's requests only, as basic
    auth (``tracking_uri.with_basic_auth``): the process environment is left alone."""
    import mlflow

    bound_http_requests()

    if not tracking_uri:
        return mlflow.MlflowClient()
    tracking_uri = with_basic_auth(tracking_uri, credentials or {})
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def record_serving_aliases(mlflow_client: Any, name: str, *aliases: str) -> None:
    """Note on the registered model that pipelines serve through ``aliases`` (the
    ``airflow_mlops.serving_aliases`` tag): retention then never deletes the versions behind them
    (``lifecycle.retention.registry.guarded_aliases``)."""
    recorded = (mlflow_client.get_registered_model(name).tags or {}).get(SERVING_ALIASES_TAG, "")
    current = {a for a in recorded.split(",") if a}
    if not set(aliases) <= current:
        mlflow_client.set_registered_model_tag(name, SERVING_ALIASES_TAG, ",".join(sorted(current | set(aliases))))


class RegistryNotices:
    """A context manager that turns what MLflow prints to stderr while it registers a model
    ("Successfully registered model …", "Registered model … already exists. Creating a new
    version …", "Created version …") into INFO lines of ``log``: Airflow's task log shows a
    task's stderr as ERROR. Everything else written to stderr meanwhile is logged as WARNING."""

    NOTICES = ("Successfully registered model", "Registered model", "Created version")

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def __enter__(self) -> RegistryNotices:
        import contextlib
        import io

        self.buffer = io.StringIO()
        self._redirect = contextlib.redirect_stderr(self.buffer)
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        import re

        self._redirect.__exit__(*exc)
        for line in self.buffer.getvalue().splitlines():
            if not line.strip():
                continue
            # MLflow's own log records ("2026/12/07 02:23:16 INFO mlflow....: ...") keep their level.
            record = re.match(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)", line)
            if record:
                self.log.log(getattr(logging, record.group(1)), "MLflow: %s", record.group(2))
            else:
                level = logging.INFO if line.startswith(self.NOTICES) else logging.WARNING
                self.log.log(level, "MLflow: %s", line.strip())
