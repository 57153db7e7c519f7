"""Deleting the planned MLflow runs, logged models and model versions, each re-checked first.

Garbage collection is done for exactly the runs (and logged models) this plan deleted: the
equivalent of ``mlflow gc --run-ids …`` restricted to them. The ``mlflow gc`` command itself is not
used: given only ``--run-ids`` it also purges every *other* soft-deleted experiment and logged
model in the store, which no policy covers.
"""

from __future__ import annotations

import os
from typing import Any

from airflow_mlops._core.mlflow_faults import is_not_found
from airflow_mlops.lifecycle.retention._model import Item, PolicyPlan
from airflow_mlops.lifecycle.retention._registry import PAGE, guarded_aliases, open_client, pages


def _protected_runs_now(client: Any, pol: Any) -> dict[str, str]:
    """Run ids behind the aliases ``pol`` guards, as they are at this moment."""
    out = {}
    for model in pages(lambda t: client.search_registered_models(max_results=PAGE, page_token=t)):
        aliases = guarded_aliases(model, pol)
        for alias, version in (model.aliases or {}).items():
            if alias in aliases:
                try:
                    v = client.get_model_version(model.name, str(version))
                except Exception as exc:
                    if is_not_found(exc):  # vanished: nothing to protect
                        continue
                    raise  # a tracking-server fault: never guess that a protected run is free
                if v.run_id:
                    out[v.run_id] = f"now backs models:/{model.name}/{version} (alias {alias})"
    return out


def apply_mlflow(policies: list[tuple[PolicyPlan, Any]], tracking_uri: str) -> None:
    """Delete the planned items of each ``(PolicyPlan, policy)`` of an MLflow kind; fills
    ``deleted``, and ``skipped`` for items that vanished or became protected since planning."""
    if not any(pp.items for pp, _pol in policies):
        return  # nothing planned: the store is not even opened (it may not exist)
    from mlflow.exceptions import MlflowException

    client = open_client(tracking_uri)
    for pp, pol in policies:
        if pol.kind == "mlflow_model_versions":
            for item in pp.items:
                name, version = item.check
                try:
                    current = client.get_model_version(name, version)
                    guard = guarded_aliases(client.get_registered_model(name), pol)
                    now_guarded = sorted(set(current.aliases or []) & guard)
                    if now_guarded:
                        pp.skipped.append({"item": item.id, "reason": f"now carries protected alias {', '.join(now_guarded)}"})
                        continue
                    client.delete_model_version(name, version)
                except MlflowException as exc:
                    if is_not_found(exc):
                        pp.skipped.append({"item": item.id, "reason": "vanished before deletion"})
                        continue
                    raise
                pp.deleted.append(item)
        else:
            _apply_runs(pp, pol, client, tracking_uri)


def _apply_runs(pp: PolicyPlan, pol: Any, client: Any, tracking_uri: str) -> None:
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException

    guard = _protected_runs_now(client, pol) if any(i.kind == "mlflow_run" for i in pp.items) else {}
    deleted_runs: set[str] = set()
    for item in pp.items:
        try:
            if item.kind == "mlflow_run":
                run_id = item.check[0]
                if run_id in guard:
                    pp.skipped.append({"item": item.id, "reason": guard[run_id]})
                    continue
                run = client.get_run(run_id)
                if run.info.lifecycle_stage == LifecycleStage.DELETED:
                    pp.skipped.append({"item": item.id, "reason": "already deleted by someone else"})
                    continue
                client.delete_run(run_id)
                deleted_runs.add(run_id)
            else:  # logged model of a run deleted here
                model_id, source_run = item.check
                if source_run not in deleted_runs:
                    pp.skipped.append({"item": item.id, "reason": f"its run {source_run} was not deleted"})
                    continue
                client.delete_logged_model(model_id)
        except MlflowException as exc:
            if is_not_found(exc):
                pp.skipped.append({"item": item.id, "reason": "vanished before deletion"})
                continue
            raise
        pp.deleted.append(item)
    if pol.garbage_collect and pp.deleted:
        _garbage_collect(pp, pol.backend_store_uri or tracking_uri)


def _garbage_collect(pp: PolicyPlan, store_uri: str) -> None:
    """Permanently delete the runs and logged models deleted above, artifacts first, as ``mlflow gc``
    does — but only these, never other soft-deleted entities."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking._tracking_service.utils import _get_store

    store = _get_store(store_uri)
    if not hasattr(store, "_hard_delete_run"):
        pp.notes.append(
            f"garbage collection skipped: {store_uri} cannot hard-delete runs (a tracking server?); "
            "set backend_store_uri to its database URI. The runs are deleted (recoverable) meanwhile."
        )
        return
    purged = 0
    for item in pp.deleted:
        if item.kind == "mlflow_run":
            run = store.get_run(item.check[0])
            _delete_artifacts(get_artifact_repository, run.info.artifact_uri, item, pp)
            store._hard_delete_run(item.check[0])
        elif hasattr(store, "_hard_delete_logged_model"):
            lm = store.get_logged_model(item.check[0], allow_deleted=True)
            _delete_artifacts(get_artifact_repository, lm.artifact_location, item, pp)
            store._hard_delete_logged_model(item.check[0])
        else:
            continue
        purged += 1
    pp.notes.append(f"garbage-collected {purged} deleted entities (metadata and artifacts)")


def _delete_artifacts(get_repo, uri: str, item: Item, pp: PolicyPlan) -> None:
    try:
        get_repo(uri).delete_artifacts()
    except Exception as exc:  # noqa: BLE001 - as mlflow gc: report, purge the metadata anyway
        pp.notes.append(f"artifacts of {item.id} at {uri} not deleted: {type(exc).__name__}: {exc}")
        return
    # Local stores keep <run id>/artifacts or models/<id>/artifacts: drop the now empty folder too.
    path = uri[len("file://"):] if uri and uri.startswith("file://") else uri
    if path and path.startswith("/") and path.rstrip("/").endswith("/artifacts"):
        try:
            os.rmdir(os.path.dirname(path.rstrip("/")))
        except OSError:
            pass  # not empty, or already gone: leave it
