"""The Airflow plugin (entry point ``airflow.plugins``: installed with the package, nothing to
copy into a plugins folder): the read-only app under ``/mlops`` and its places in the Airflow UI —
"Models" and "Drift" in the Browse menu, an "MLOps" tab on every DAG's page (React apps, see
``react_apps``) — and the listener that fails a pipeline run which would run no stage
(``airflow_mlops.listeners``).

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
    # React apps, not external views: Airflow shows an external view in a sandboxed iframe, where
    # no link can leave the frame or open a tab, and the page keeps its own look (no dark mode, no
    # user time zone). A React app is part of Airflow's own page; see ui/static/mlops-view.js.
    # The bundle URL is relative to Airflow's base URL; each place loads the view with its page.
    react_apps = [
        {"name": "Models", "bundle_url": f"{MOUNT.lstrip('/')}/static/mlops-view.js?view=models",
         "destination": "nav", "category": "browse", "url_route": "mlops-models"},
        {"name": "Drift", "bundle_url": f"{MOUNT.lstrip('/')}/static/mlops-view.js?view=drift",
         "destination": "nav", "category": "browse", "url_route": "mlops-drift"},
        {"name": "MLOps", "bundle_url": f"{MOUNT.lstrip('/')}/static/mlops-view.js?view=dag",
         "destination": "dag", "url_route": "mlops"},
        {"name": "Pipeline YAML", "bundle_url": f"{MOUNT.lstrip('/')}/static/mlops-view.js?view=source",
         "destination": "dag", "url_route": "mlops-source"},
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": _app(), "url_prefix": MOUNT, "name": "airflow-mlops"}]
