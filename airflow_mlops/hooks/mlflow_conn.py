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
        """The connection's tracking URI, without its credentials (``get_conn`` uses both)."""
        from airflow_mlops.hooks.mlflow import tracking_uri_from_connection

        return tracking_uri_from_connection(self.mlflow_conn_id)

    def get_conn(self) -> Any:
        """An ``mlflow.MlflowClient`` on the connection's store (tracking and registry), its login
        and password sent as basic auth with this client's requests only: nothing is written to
        the process environment. Raises ``TrackingUriError`` for a URI that breaks the absolute-path
        rule, and what the connection lookup raises for a missing connection."""
        from airflow_mlops._core.mlflow import client_for
        from airflow_mlops._core.tracking_uri import checked_tracking_uri
        from airflow_mlops.hooks.mlflow import connection_target

        uri, credentials = connection_target(self.mlflow_conn_id)
        return client_for(checked_tracking_uri(uri, f"Airflow connection '{self.mlflow_conn_id}'"), credentials)
