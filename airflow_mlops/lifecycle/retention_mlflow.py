"""Retention of MLflow runs and registered model versions (imported only when a policy needs it).

Model-version policies are planned first, so a runs policy knows which versions stay: a run that
backs a version carrying a protected alias is never deleted, and (``keep_registered``) neither is
a run that backs any version that stays.

Garbage collection is done for exactly the runs (and logged models) this plan deleted — the
equivalent of ``mlflow gc --run-ids …`` restricted to them. The ``mlflow gc`` command itself is not
used: given only ``--run-ids`` it also purges every *other* soft-deleted experiment and logged
model in the store, which no policy covers.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from typing import Any

from airflow_mlops._core.mlflow import SERVING_ALIASES_TAG
from airflow_mlops.lifecycle.retention import Candidate, Item, PolicyPlan, select
from airflow_mlops.lifecycle.specs import SERVING_ALIASES

log = logging.getLogger(__name__)
PAGE = 1000


def _client(uri: str) -> Any:
    from airflow_mlops._core.mlflow import read_only_client

    return read_only_client(uri)  # a mistyped store path is an error, never a new empty store


def _pages(fetch) -> list:
    out, token = [], None
    while True:
        page = fetch(token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class Registry:
    """Registered models, their versions and aliases, read once per plan."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.models = _pages(lambda t: client.search_registered_models(max_results=PAGE, page_token=t))
        self._versions: dict[str, list] = {}

    def versions(self, name: str) -> list:
        if name not in self._versions:
            quoted = name.replace("'", "\\'")
            self._versions[name] = _pages(
                lambda t: self.client.search_model_versions(f"name = '{quoted}'", max_results=PAGE, page_token=t)
            )
        return self._versions[name]

    def aliases(self, model: Any) -> dict[str, list[str]]:
        """version → aliases (from the registered model, which always carries them)."""
        out: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            out.setdefault(str(version), []).append(alias)
        return out


def guarded_aliases(model: Any, pol: Any) -> set[str]:
    """The aliases of ``model`` (a RegisteredModel) whose versions ``pol`` must not delete: the
    serving ones (``SERVING_ALIASES`` and those recorded in the model's ``SERVING_ALIASES_TAG``)
    less those the policy names in ``allow_deleting_aliases``, plus its ``protected_aliases``."""
    recorded = (getattr(model, "tags", None) or {}).get(SERVING_ALIASES_TAG, "")
    serving = set(SERVING_ALIASES) | {a.strip() for a in recorded.split(",") if a.strip()}
    return (serving - set(pol.allow_deleting_aliases)) | set(pol.protected_aliases)


def plan(policies: list[tuple[PolicyPlan, Any]], tracking_uri: str, now: float) -> None:
    from airflow_mlops._core.mlflow import StoreNotFound

    try:
        client = _client(tracking_uri)
    except StoreNotFound as exc:  # nothing to delete, and no empty store made at a mistyped path
        log.warning("%s: the MLflow policies have nothing to do", exc)
        for pp, _pol in policies:
            pp.notes.append(str(exc))
        return
    registry = Registry(client)
    doomed: set[tuple[str, str]] = set()
    for pp, pol in policies:
        if pol.kind == "mlflow_model_versions":
            _plan_versions(pp, pol, registry, now)
            doomed |= {tuple(i.check) for i in pp.items}
    for pp, pol in policies:
        if pol.kind == "mlflow_runs":
            _plan_runs(pp, pol, client, registry, doomed, now)


def _plan_versions(pp: PolicyPlan, pol: Any, registry: Registry, now: float) -> None:
    models = [m for m in registry.models if _matches(m.name, pol.models)]
    if not models:
        pp.notes.append("no registered model matches " + ", ".join(pol.models))
    cands, aliased = [], {}
    for model in models:
        aliases, protected_aliases = registry.aliases(model), guarded_aliases(model, pol)
        for v in registry.versions(model.name):
            version = str(v.version)
            guard = sorted(set(aliases.get(version, [])) & protected_aliases)
            item = Item("model_version", f"models:/{model.name}/{version}", 0, (v.creation_timestamp or 0) / 1000, "",
                        (model.name, version))
            cands.append(Candidate(item, model.name, f"alias {', '.join(guard)}" if guard else None))
            if aliases.get(version):
                aliased[item.id] = f"{item.id} (alias {', '.join(sorted(aliases[version]))})"
    pp.scanned = len(cands)
    chosen, guarded = select(cands, pol, now)
    pp.items = [c.item for c in chosen]
    pp.protected = [f"{c.item.id} ({c.protected})" for c in guarded]
    pp.aliased = [aliased[i.id] for i in pp.items if i.id in aliased]
    pp.kept = pp.scanned - len(pp.items)


def _plan_runs(pp: PolicyPlan, pol: Any, client: Any, registry: Registry, doomed: set, now: float) -> None:
    from mlflow.entities import ViewType

    backing: dict[str, str] = {}  # run id → why it must stay
    aliased: dict[str, str] = {}  # run id → the aliased version it backs
    staying_models: set[str] = set()  # logged model ids used by versions that stay
    for model in registry.models:
        aliases, protected_aliases = registry.aliases(model), guarded_aliases(model, pol)
        # Versions are listed for every model (not only matching ones): any of them may use a run.
        for v in registry.versions(model.name):
            version = str(v.version)
            guard = sorted(set(aliases.get(version, [])) & protected_aliases)
            stays = (model.name, version) not in doomed
            if stays and getattr(v, "model_id", None):
                staying_models.add(v.model_id)
            if not v.run_id:
                continue
            if aliases.get(version):
                aliased[v.run_id] = f"backs models:/{model.name}/{version} (alias {', '.join(sorted(aliases[version]))})"
            if guard:
                backing[v.run_id] = f"backs models:/{model.name}/{version} (alias {', '.join(guard)})"
            elif pol.keep_registered and stays and v.run_id not in backing:
                backing[v.run_id] = f"backs models:/{model.name}/{version}"
    experiments = [
        e for e in _pages(lambda t: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=PAGE, page_token=t))
        if _matches(e.name, pol.experiments)
    ]
    if not experiments:
        pp.notes.append("no experiment matches " + ", ".join(pol.experiments))
    statuses = set(pol.statuses)
    cands = []
    runs_by_exp: dict[str, list[str]] = {}
    for exp in experiments:
        runs = _pages(lambda t: client.search_runs(
            [exp.experiment_id], filter_string=pol.filter or "", run_view_type=ViewType.ACTIVE_ONLY,
            max_results=PAGE, page_token=t,
        ))
        for run in runs:
            info = run.info
            if info.status not in statuses:
                continue
            when = (info.end_time or info.start_time or 0) / 1000
            item = Item("mlflow_run", f"runs:/{info.run_id}", 0, when, "", (info.run_id, exp.experiment_id))
            item.uri = info.artifact_uri
            cands.append(Candidate(item, exp.experiment_id, backing.get(info.run_id)))
            runs_by_exp.setdefault(exp.experiment_id, []).append(info.run_id)
    pp.scanned = len(cands)
    chosen, guarded = select(cands, pol, now)
    pp.items = [c.item for c in chosen]
    pp.protected = [f"{c.item.id} ({c.protected})" for c in guarded]
    pp.aliased = [f"{i.id} ({aliased[i.check[0]]})" for i in pp.items if i.check[0] in aliased]
    if pol.delete_logged_models and pp.items:
        going = {i.check[0] for i in pp.items}
        exps = sorted({i.check[1] for i in pp.items})
        for lm in _pages(lambda t: client.search_logged_models(experiment_ids=exps, max_results=100, page_token=t)):
            if lm.source_run_id in going and lm.model_id not in staying_models:
                item = Item("logged_model", f"logged-models:/{lm.model_id}", 0, (lm.creation_timestamp or 0) / 1000,
                            f"run {lm.source_run_id} deleted", (lm.model_id, lm.source_run_id))
                item.uri = lm.artifact_location
                pp.items.append(item)
            elif lm.source_run_id in going:
                pp.protected.append(f"logged-models:/{lm.model_id} (used by a model version that stays)")
    pp.kept = pp.scanned - sum(1 for i in pp.items if i.kind == "mlflow_run")
    for item in pp.items:  # bytes an artifact store on local disk will free
        item.size = _local_size(item.uri)


def _local_size(uri: str | None) -> int:
    if not uri:
        return 0
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    if not path.startswith("/") or not os.path.isdir(path):
        return 0
    total = 0
    for dirpath, _dirs, names in os.walk(path, followlinks=False):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


# --- apply -------------------------------------------------------------------------------------------------


def _protected_runs_now(client: Any, pol: Any) -> dict[str, str]:
    """Run ids behind the aliases ``pol`` guards, as they are at this moment."""
    out = {}
    for model in _pages(lambda t: client.search_registered_models(max_results=PAGE, page_token=t)):
        aliases = guarded_aliases(model, pol)
        for alias, version in (model.aliases or {}).items():
            if alias in aliases:
                try:
                    v = client.get_model_version(model.name, str(version))
                except Exception:  # noqa: BLE001 - vanished: nothing to protect
                    continue
                if v.run_id:
                    out[v.run_id] = f"now backs models:/{model.name}/{version} (alias {alias})"
    return out


def apply(policies: list[tuple[PolicyPlan, Any]], tracking_uri: str) -> None:
    if not any(pp.items for pp, _pol in policies):
        return  # nothing planned: the store is not even opened (it may not exist)
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
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
                    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
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
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
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
