"""The ``mlflow`` connection type (host = tracking URI), so it appears in the Airflow UI's form.
Every way of filling it is read by ``airflow_mlops.hooks.mlflow.connection_tracking_uri``."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook


class MlflowConnectionHook(BaseHook):
    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["extra"],
            "relabeling": {"host": "Tracking URI or host", "schema": "Scheme (http/https)",
                           "login": "Username (basic auth)", "password": "Password (basic auth)"},
            "placeholders": {"host": "http://mlflow:5000, mlflow.example.com/tracking or "
                                     "sqlite:////srv/mlflow/mlflow.db",
                             "schema": "https"},
        }

    def tracking_uri(self) -> str:
        from airflow_mlops.hooks.mlflow import tracking_uri_from_connection

        return tracking_uri_from_connection(self.mlflow_conn_id)
