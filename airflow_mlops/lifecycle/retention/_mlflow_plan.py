"""Planning the retention of MLflow runs and registered model versions.

Model-version policies are planned first, so a runs policy knows which versions stay: a run that
backs a version carrying a protected alias is never deleted, and (``keep_registered``) neither is
a run that backs any version that stays. No MLflow import happens unless a policy needs it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow_mlops.lifecycle.retention._model import Candidate, Item, PolicyPlan
from airflow_mlops.lifecycle.retention._registry import PAGE, Registry, guarded_aliases, matches, open_client, pages
from airflow_mlops.lifecycle.retention._selection import select

log = logging.getLogger(__name__)


def plan_mlflow(policies: list[tuple[PolicyPlan, Any]], tracking_uri: str, now: float) -> None:
    """Fill each ``(PolicyPlan, policy)`` of an MLflow kind with what it deletes at ``now`` (seconds
    since the epoch). A store that does not exist plans nothing and says so in each plan's notes."""
    from airflow_mlops._core.mlflow import StoreNotFound

    try:
        client = open_client(tracking_uri)
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
    models = [m for m in registry.models if matches(m.name, pol.models)]
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


def _plan_runs(pp: PolicyPlan, pol: Any, client: Any, registry: Registry, doomed: set, now: float) -> None:  # noqa: C901
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
        e for e in pages(lambda t: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=PAGE, page_token=t))
        if matches(e.name, pol.experiments)
    ]
    if not experiments:
        pp.notes.append("no experiment matches " + ", ".join(pol.experiments))
    statuses = set(pol.statuses)
    cands = []
    runs_by_exp: dict[str, list[str]] = {}
    for exp in experiments:
        runs = pages(lambda t: client.search_runs(
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
        for lm in pages(lambda t: client.search_logged_models(experiment_ids=exps, max_results=100, page_token=t)):
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
