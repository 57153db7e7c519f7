"""Extra links on tasks in the Airflow UI."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink

RUN_URL_XCOM = "mlflow_run_url"


class MlflowRunLink(BaseOperatorLink):
    """"MLflow run" button on the task: opens the run the task logged to.

    Airflow 3 evaluates links in the worker when the try ends (success or failure) and keeps them
    for the UI, so the task just notes the URL on itself (``mlflow_run_url``) once the run
    exists. Reading it back from XCom instead would log a "not found" error for every task that
    has no run (preprocess, serve, a try that failed first).
    """

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return getattr(operator, RUN_URL_XCOM, None) or ""
