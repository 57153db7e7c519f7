"""The ``mlflow`` connection type (host = tracking URI), so it appears in the Airflow UI's form."""

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
            "relabeling": {"host": "Tracking URI or host", "schema": "Scheme (http/https)"},
            "placeholders": {"host": "http://mlflow:5000"},
        }

    def tracking_uri(self) -> str:
        from airflow_mlops.hooks.mlflow import tracking_uri_from_connection

        return tracking_uri_from_connection(self.mlflow_conn_id)
