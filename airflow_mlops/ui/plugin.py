"""The Airflow plugin (entry point ``airflow.plugins``: installed with the package, nothing to
copy into a plugins folder): the read-only app under ``/mlops`` and its places in the Airflow UI —
"Models" and "Drift" in the Browse menu, an "MLOps" tab on every DAG's page.

Cheap to import (Airflow loads plugins in every component): the FastAPI app is built only when the
api-server asks for ``fastapi_apps``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_mlops import listeners

MOUNT = "/mlops"  # ui.app.MOUNT (not imported here: that module imports FastAPI)


@cache
def _app() -> Any:
    from airflow_mlops.ui.app import create_app

    return create_app()


class MlopsUiPlugin(AirflowPlugin):
    name = "airflow_mlops"
    listeners = [listeners]
    external_views = [
        {"name": "Models", "href": f"{MOUNT}/models", "destination": "nav", "category": "browse",
         "url_route": "mlops-models"},
        {"name": "Drift", "href": f"{MOUNT}/drift", "destination": "nav", "category": "browse",
         "url_route": "mlops-drift"},
        {"name": "MLOps", "href": f"{MOUNT}/dags/{{DAG_ID}}", "destination": "dag", "url_route": "mlops"},
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": _app(), "url_prefix": MOUNT, "name": "airflow-mlops"}]
