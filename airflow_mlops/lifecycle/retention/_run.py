"""The entry points: ``plan`` what the policies delete, ``apply`` exactly that plan, and
``run_retention`` (plan, apply unless dry run, log, summarise).

A dry run is ``plan`` alone; a real run is ``plan`` then ``apply`` of that same plan, so the dry
run lists exactly what the real run deletes. ``apply`` re-checks every item just before deleting
it and skips (and reports) anything that vanished, changed since it was planned, or became
protected in between: it never deletes an item the plan does not hold.

An MLflow tracking server failing under ``run_retention`` ends it with ``DependencyFailed``
(retryable unless it refused the credentials), saying what was deleted before: a rerun plans again
from what is left, so it finishes the work.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from airflow_mlops._core.storage import is_remote
from airflow_mlops.lifecycle.retention._files import apply_files, plan_files
from airflow_mlops.lifecycle.retention._mlflow_apply import apply_mlflow
from airflow_mlops.lifecycle.retention._mlflow_plan import plan_mlflow
from airflow_mlops.lifecycle.retention._model import Plan, PolicyPlan
from airflow_mlops.lifecycle.retention._objects import apply_objects, plan_objects
from airflow_mlops.lifecycle.retention.report import log_outcome, log_plan
from airflow_mlops.lifecycle.specs import RetentionSpec

log = logging.getLogger(__name__)


def _name(policy: Any) -> str:
    if policy.name:
        return policy.name
    if policy.kind == "files":
        return policy.root
    if policy.kind == "mlflow_runs":
        return "runs of " + ", ".join(policy.experiments)
    return "versions of " + ", ".join(policy.models)


def plan(spec: RetentionSpec | dict, *, now: float | None = None, tracking_uri: str | None = None) -> Plan:
    """What the policies would delete at ``now`` (seconds since the epoch; default: now). Nothing is
    changed. ``spec``: a RetentionSpec or its dict. Raises pydantic's ValidationError for a bad
    dict, ArgumentsError for a relative MLflow store."""
    spec = spec if isinstance(spec, RetentionSpec) else RetentionSpec.model_validate(spec)
    now = time.time() if now is None else now
    plans = [PolicyPlan(i, _name(p), p.kind) for i, p in enumerate(spec.policies)]
    mlflow_ones = [(pp, pol) for pp, pol in zip(plans, spec.policies) if pol.kind != "files"]
    for pp, pol in zip(plans, spec.policies):
        if pol.kind == "files":
            (plan_objects if is_remote(pol.root) else plan_files)(pol, pp, now)
    if mlflow_ones:
        plan_mlflow(mlflow_ones, _tracking_uri(spec, tracking_uri), now)
    return Plan(spec, plans, now)


def apply(p: Plan, *, tracking_uri: str | None = None) -> Plan:
    """Delete exactly the planned items (re-checked one by one); fills each policy's ``deleted`` and
    ``skipped``. Returns ``p``; raises RuntimeError if ``p`` was applied already."""
    if p.applied:
        raise RuntimeError("this plan has already been applied")
    mlflow_ones = []
    for pp, pol in zip(p.policies, p.spec.policies):
        if pol.kind == "files":
            apply_objects(pp, pol) if is_remote(pol.root) else apply_files(pp)
        else:
            mlflow_ones.append((pp, pol))
    if mlflow_ones:
        apply_mlflow(mlflow_ones, _tracking_uri(p.spec, tracking_uri))
    p.applied = True
    return p


def run_retention(spec: RetentionSpec | dict, *, tracking_uri: str | None = None, logger: logging.Logger | None = None) -> dict[str, Any]:
    """Plan, apply unless ``dry_run``, log what happened and return ``Plan.summary()``.
    ``spec``: a RetentionSpec or its dict; ``tracking_uri`` overrides the spec's MLflow store."""
    from airflow_mlops._core.mlflow_faults import tracking_server

    spec = spec if isinstance(spec, RetentionSpec) else RetentionSpec.model_validate(spec)
    logger = logger or log
    uri = _tracking_uri(spec, tracking_uri) if any(pol.kind != "files" for pol in spec.policies) else ""
    with tracking_server(uri, "retention cleanup (planning)", logger=logger,
                         kept=lambda: "nothing was deleted: the plan was not complete"):
        p = plan(spec, tracking_uri=uri or tracking_uri)
    log_plan(p, spec.dry_run, logger)
    if not spec.dry_run:
        with tracking_server(uri, "retention cleanup (deleting)", logger=logger, kept=lambda: _deleted_so_far(p)):
            apply(p, tracking_uri=uri or tracking_uri)
    summary = p.summary()
    log_outcome(p, summary, logger)
    return summary


def _deleted_so_far(p: Plan) -> str:
    done = p.deleted
    listed = ", ".join(i.id for i in done[:10]) + (" …" if len(done) > 10 else "")
    return (f"{len(done)} item(s) deleted before the failure ({listed or 'none'}); everything else is untouched "
            "and a rerun plans again from what is left")


def _tracking_uri(spec: RetentionSpec, given: str | None) -> str:
    """``given`` (what RetentionCleanupOperator resolved from ``mlflow``, connection included, or
    the caller's argument), else ``mlflow.tracking_uri``, else the default store. A
    ``mlflow.conn_id`` is not looked up here: connections are resolved by the operator."""
    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops._core.tracking_uri import resolve_tracking_uri

    if given:
        return resolve_tracking_uri(given, "the tracking_uri argument")
    if spec.mlflow.conn_id and not spec.mlflow.tracking_uri:
        raise StageFailed(f"mlflow.conn_id '{spec.mlflow.conn_id}' is an Airflow connection: run this retention "
                          "through RetentionCleanupOperator, which resolves it, or pass tracking_uri=")
    return resolve_tracking_uri(spec.mlflow.tracking_uri, "the tracking_uri setting")
