"""Where a pipeline's MLflow store is, resolved in the worker when a task runs."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from airflow_mlops.spec.models import MlflowSettings
from airflow_mlops.stages.context import MlflowTarget, mlops_home

CONN_TYPE = "mlflow"


def tracking_uri_from_connection(conn_id: str) -> str:
    """An ``mlflow`` connection: host holds the URI (``http://mlflow:5000``) or a bare host name
    (then schema/port complete it); login/password become MLflow's basic-auth variables."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    host = conn.host or ""
    if "://" in host:
        uri = host if not conn.port or urlsplit(host).port else f"{host.rstrip('/')}:{conn.port}"
    else:
        scheme = conn.schema or "http"
        uri = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    if conn.login:
        os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
    if conn.password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password
    return uri


def resolve_target(settings: MlflowSettings, pipeline_id: str) -> MlflowTarget:
    """Precedence: ``tracking_uri`` > ``conn_id`` > ``$MLFLOW_TRACKING_URI`` > SQLite under
    ``$AIRFLOW_MLOPS_HOME``. Local stores get an absolute artifact location beside them."""
    if settings.tracking_uri:
        uri = settings.tracking_uri
    elif settings.conn_id:
        uri = tracking_uri_from_connection(settings.conn_id)
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    else:
        home = mlops_home()
        home.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{home / 'mlflow.db'}"
    artifacts = settings.artifact_location
    if artifacts is None and uri.startswith("sqlite:///"):
        artifacts = (os.path.dirname(uri[len("sqlite:///"):]) or ".") + "/mlartifacts"
    return MlflowTarget(
        tracking_uri=uri,
        experiment=settings.experiment or pipeline_id,
        registered_model=settings.registered_model or pipeline_id,
        artifact_location=artifacts,
        ui_url=settings.ui_url,
    )
