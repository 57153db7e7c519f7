"""The plugin's FastAPI app, mounted by Airflow's api-server under ``/mlops`` (read-only):

    GET /mlops/models                    HTML: every pipeline's registered models (nav entry "Models")
    GET /mlops/drift                     HTML: every drift monitor (nav entry "Drift")
    GET /mlops/dags/{dag_id}             HTML: the DAG's model and latest decision (the DAG's "MLOps" tab)
    GET /mlops/dags/{dag_id}/source      HTML: the pipeline YAML it was built from (the DAG's "Pipeline YAML" tab)
    GET /mlops/static/mlops-view.js      the React view Airflow's UI loads for those places (react_apps)

The HTML routes answer ``?fragment=1`` with the page's content only, for the React view to put
into Airflow's page.
    GET /mlops/api/models                JSON: [ui.data.model(...)]
    GET /mlops/api/models/{name}         JSON: ui.data.model(...); 404 for an unknown name
    GET /mlops/api/drift                 JSON: [ui.data.drift_monitors(...)]
    GET /mlops/api/dags/{dag_id}         JSON: ui.data.dag_summary(...)
    GET /mlops/api/dags/{dag_id}/source  JSON: ui.source.describe(...); 404 for an unknown DAG

Every route is behind Airflow's auth manager (``requires_access_dag("GET")``, as the core API's DAG
routes): without a valid JWT (the ``_token`` cookie the UI holds, or a bearer token) a request gets
401 (a browser asking for a page is sent to Airflow's login instead, and back), and a user who may
not read that DAG 403. When MLflow cannot be read the JSON routes answer
503 ``{"detail": <DependencyFailed message>}`` and the pages show that message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

MOUNT = "/mlops"
VIEW_SCRIPT = Path(__file__).parent / "static" / "mlops-view.js"


class StoreUnreadable(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _airflow_base(request: Request) -> str:
    """The Airflow UI's base path, from where this app is mounted (``/mlops`` under it)."""
    root = request.scope.get("root_path", "")
    return root[: -len(MOUNT)] if root.endswith(MOUNT) else ""


def mlflow_ui(uri: str) -> dict[str, Any]:
    """Where the pages' "MLflow run" links point: ``{base, configured}``. ``[mlops] mlflow_ui_url``
    (``AIRFLOW__MLOPS__MLFLOW_UI_URL``), else ``$AIRFLOW_MLOPS_MLFLOW_UI_URL``, else the tracking
    URI when it is a server; else ``mlflow ui``'s default address, a guess the pages say so."""
    import os

    from airflow_mlops.stages.train.job import UI_URL_ENV, configured_ui_url, ui_base

    known = bool(configured_ui_url() or os.environ.get(UI_URL_ENV) or uri.startswith(("http://", "https://")))
    return {"base": ui_base(uri), "configured": known}


def _read(during: str, fn: Callable[[Any, str], Any], empty: Any) -> tuple[Any, str, dict[str, Any]]:
    """Run ``fn(client, mlflow_ui_base)`` against the UI's store. Returns (result, store,
    :func:`mlflow_ui`); ``empty`` while the local store does not exist yet (no pipeline has run).
    StoreUnreadable with the one DependencyFailed message if the store cannot be resolved or read;
    404 for an unknown model."""
    from airflow_mlops._core.mlflow import StoreNotFound
    from airflow_mlops._core.mlflow_faults import is_not_found
    from airflow_mlops._core.tracking_uri import redacted
    from airflow_mlops.ui import data

    uri = "(not resolved)"
    try:
        uri, credentials = data.store()
        client = data.reader(uri, credentials)
    except StoreNotFound:
        return empty, f"{redacted(uri)} (not created yet: no pipeline has run)", mlflow_ui(uri)
    except Exception as exc:  # noqa: BLE001 - any failure of the store becomes the page's message
        raise StoreUnreadable(data.unreachable(uri, exc, during)) from None
    ui = mlflow_ui(uri)
    try:
        return fn(client, ui["base"]), redacted(uri), ui
    except Exception as exc:  # noqa: BLE001
        if is_not_found(exc):
            raise HTTPException(404, str(exc).splitlines()[0]) from None
        raise StoreUnreadable(data.unreachable(uri, exc, during)) from None


def create_app() -> FastAPI:  # noqa: C901
    """The app Airflow mounts (``fastapi_apps`` of ``ui.plugin.MlopsUiPlugin``)."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    from airflow_mlops.ui import data, pages

    readable = [Depends(requires_access_dag("GET"))]
    app = FastAPI(title="airflow-mlops", description="MLOps state from MLflow, read-only", dependencies=readable)

    @app.exception_handler(HTTPException)
    async def _refused(request: Request, exc: HTTPException):
        """A browser opening a page without a session goes to Airflow's login, and comes back."""
        wants_page = "text/html" in request.headers.get("accept", "") and "/api/" not in request.url.path
        if exc.status_code == 401 and wants_page:
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        return await http_exception_handler(request, exc)

    @app.exception_handler(StoreUnreadable)
    async def _unreadable(request: Request, exc: StoreUnreadable):
        if "/api/" in request.url.path:
            return JSONResponse({"detail": exc.message}, status_code=503)
        fragment = request.query_params.get("fragment") in ("1", "true")
        return HTMLResponse(pages.error("MLflow unreachable", exc.message, _airflow_base(request), fragment),
                            status_code=503)

    @app.get("/api/models")
    def api_models() -> list[dict]:
        return _read("listing the registered models", lambda c, ui: data.models(c, ui), [])[0]

    @app.get("/api/models/{name}")
    def api_model(name: str) -> dict:
        found = _read(f"reading model '{name}'", lambda c, ui: data.model(c, name, ui), None)[0]
        if found is None:
            raise HTTPException(404, f"no registered model named '{name}': the MLflow store does not exist yet")
        return found

    @app.get("/api/drift")
    def api_drift() -> list[dict]:
        return _read("reading the drift reports", lambda c, ui: data.drift_monitors(c), [])[0]

    @app.get("/api/dags/{dag_id}")
    def api_dag(dag_id: str) -> dict:
        return _read(f"reading DAG {dag_id}'s models", lambda c, ui: data.dag_summary(c, dag_id, ui),
                     {"dag_id": dag_id, "models": [], "drift": []})[0]

    @app.get("/models", response_class=HTMLResponse)
    def models_page(request: Request, fragment: bool = False) -> str:
        found, store, ui = _read("listing the registered models", lambda c, ui: data.models(c, ui), [])
        return pages.models_page(found, store, _airflow_base(request), fragment, ui)

    @app.get("/drift", response_class=HTMLResponse)
    def drift_page(request: Request, fragment: bool = False) -> str:
        found, store, _ui = _read("reading the drift reports", lambda c, ui: data.drift_monitors(c), [])
        return pages.drift_page(found, store, _airflow_base(request), fragment)

    @app.get("/dags/{dag_id}", response_class=HTMLResponse)
    def dag_page(request: Request, dag_id: str, fragment: bool = False) -> str:
        summary, _store, ui = _read(f"reading DAG {dag_id}'s models", lambda c, ui: data.dag_summary(c, dag_id, ui),
                                    {"dag_id": dag_id, "models": [], "drift": []})
        return pages.dag_page(summary, _airflow_base(request), fragment, ui)

    def _source(dag_id: str) -> dict:
        from airflow_mlops.ui import source

        known, doc_md = source.serialized_doc(dag_id)
        if not known:
            raise HTTPException(404, f"no DAG '{dag_id}' in the metadata database")
        return source.describe(dag_id, doc_md)

    @app.get("/api/dags/{dag_id}/source")
    def api_dag_source(dag_id: str) -> dict:
        return _source(dag_id)

    @app.get("/dags/{dag_id}/source", response_class=HTMLResponse)
    def dag_source_page(request: Request, dag_id: str, fragment: bool = False) -> str:
        from airflow_mlops.ui import source

        return pages.page(f"Pipeline YAML · {dag_id}", source.page_body(_source(dag_id)), _airflow_base(request),
                          fragment)

    @app.get("/static/mlops-view.js")
    def view_script() -> Response:
        """The React view (a plain ES module: React comes from Airflow's page, nothing to build)."""
        return Response(VIEW_SCRIPT.read_text(encoding="utf-8"), media_type="text/javascript",
                        headers={"Cache-Control": "no-cache"})

    return app
