"""What the Airflow UI plugin shows, read from MLflow as plain dicts (the JSON API returns them as
they are; the HTML pages render them). Nothing here writes to MLflow.

Facts and where the stages record them:

- model version tags ``airflow.dag_id`` / ``airflow.run_id`` / ``airflow.task_id`` (the task that
  registered it, both training paths), ``airflow_mlops.decision`` / ``airflow_mlops.decision_detail``
  (the validate stage), ``airflow_mlops.gpu.available``;
- the version's run: the model's metrics, ``cost/*`` metrics and ``airflow_mlops.cost.prices`` tag
  (``telemetry.cost``), ``gpu/*`` summary metrics (``telemetry.mlflow_sink``), the
  ``airflow_mlops.gpu.reason`` tag when no GPU was measured (``stages.train.measure``);
- drift runs (tag ``airflow_mlops.kind`` = ``drift``): ``drift/psi/<feature>``,
  ``drift/ks/<feature>`` metrics and the ``airflow_mlops.drift.drifted`` tag (``stages.drift``);
- failed trainings: runs tagged ``airflow_mlops.failure`` / ``.failure.reason`` /
  ``.failure.model`` by the worker of a training try that Kubernetes ended (OOMKilled,
  evicted...; ``stages.train.failures``): such a try registered no version.

MLflow is imported inside the functions: the plugin is imported when the api-server starts.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

from airflow_mlops._core.errors import DependencyFailed
from airflow_mlops._core.mlflow import SERVING_ALIAS, read_only_client
from airflow_mlops.stages.drift import DRIFTED_TAG, KIND_TAG, LIMITS_TAG
from airflow_mlops.stages.train.failures import FAILURE_MODEL_TAG, FAILURE_REASON_TAG, FAILURE_TAG
from airflow_mlops.stages.train.job import GPU_AVAILABLE_TAG, GPU_NAMES_TAG, GPU_REASON_TAG, run_url
from airflow_mlops.stages.validate import APPROVAL_TAG, DECISION_TAG, DETAIL_TAG, GATE_TAG
from airflow_mlops.telemetry.cost import COST_PREFIX, PRICES_TAG
from airflow_mlops.telemetry.sampler import PREFIX as GPU_PREFIX

PREVIOUS_ALIAS = "previous-champion"
NOT_MODEL_METRICS = (COST_PREFIX, GPU_PREFIX, "drift")  # prefixes of what is logged beside the model's own metrics
COST_FIELDS = ("gpu_hours", "cpu_hours", "memory_gib_hours", "gpu", "cpu", "memory", "total")
MAX_VERSIONS = 100
DRIFT_RUNS = 20  # the trend covers this many latest runs per monitor
FAILED_TRAININGS = 10  # a model's latest failed trainings shown


def store() -> tuple[str, dict[str, str]]:
    """(tracking URI, credentials) of the store the UI reads: ``[mlops] tracking_uri`` or
    ``[mlops] conn_id`` in Airflow's configuration (``AIRFLOW__MLOPS__TRACKING_URI``…), else the
    stages' own default resolution (``$MLFLOW_TRACKING_URI``, else
    ``$AIRFLOW_MLOPS_HOME/mlflow.db``). A connection's login and password are returned, for the
    reading client's own requests: the api-server's environment never holds them."""
    from airflow.configuration import conf

    from airflow_mlops._core.tracking_uri import resolve_tracking_uri
    from airflow_mlops.hooks.mlflow import connection_target

    configured = conf.get("mlops", "tracking_uri", fallback=None)
    if configured:
        return resolve_tracking_uri(configured, "[mlops] tracking_uri"), {}
    conn_id = conf.get("mlops", "conn_id", fallback=None)
    if conn_id:
        uri, credentials = connection_target(conn_id)
        return resolve_tracking_uri(uri, f"Airflow connection '{conn_id}'"), credentials
    return resolve_tracking_uri(None), {}


def reader(uri: str, credentials: dict[str, str] | None = None) -> Any:
    """A read-only MlflowClient that gives up quickly: one try, 5 s per request (the UI must answer;
    ``$MLFLOW_HTTP_REQUEST_*`` set by the deployment win); ``credentials`` go with its requests."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    return read_only_client(uri, credentials)


def unreachable(uri: str, exc: BaseException, during: str) -> str:
    """The one message the pages show when the store cannot be read (DependencyFailed's shape,
    without its retry line: nothing retries a page; no stack trace)."""
    from airflow_mlops._core.tracking_uri import redacted, scrubbed

    # A request URL quoted in MLflow's message carries the reading client's credentials: masked.
    failure = scrubbed(str(exc).strip().splitlines()[0])[:300] if str(exc).strip() else type(exc).__name__
    message = DependencyFailed("MLflow tracking store", address=redacted(uri), failure=f"could not be read ({failure})",
                               during=during, retryable=True,
                               action="check that the tracking server is up and that the api-server reaches it "
                                      "([mlops] tracking_uri / conn_id, $MLFLOW_TRACKING_URI); then reload this page")
    return "\n".join(line for line in str(message).splitlines() if not line.startswith("  retry:"))


def _iso(ms: Any) -> str | None:
    return None if not ms else datetime.fromtimestamp(int(ms) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def models(client: Any, mlflow_ui: str) -> list[dict[str, Any]]:
    """Every model a pipeline produced (a version tagged ``airflow.dag_id``) or tried to (a
    failed training recorded for it, though it may have no version yet), by name; each as
    :func:`model`."""
    found = {}
    for registered in client.search_registered_models(max_results=1000):
        detail = model(client, registered.name, mlflow_ui, registered=registered)
        if any(v["dag_id"] for v in detail["versions"]) or detail["failed_trainings"]:
            found[registered.name] = detail
    for name in sorted(failed_models(client) - set(found)):
        found[name] = model(client, name, mlflow_ui)
    return sorted(found.values(), key=lambda m: m["name"])


def model(client: Any, name: str, mlflow_ui: str, registered: Any = None) -> dict[str, Any]:
    """``{name, description, aliases: {alias: version}, champion, previous_champion, dag_ids,
    versions: [version(...)...] newest first, failed_trainings: failed_trainings(...)}``; a model
    not registered (yet) whose trainings failed has no versions. Raises MlflowException
    (RESOURCE_DOES_NOT_EXIST) for a name that is neither registered nor failed."""
    from airflow_mlops._core.mlflow_faults import is_not_found

    try:
        registered = registered or client.get_registered_model(name)
    except Exception as exc:
        failures = failed_trainings(client, name, mlflow_ui) if is_not_found(exc) else []
        if not failures:
            raise
        return {"name": name, "description": "", "aliases": {}, "champion": None, "previous_champion": None,
                "dag_ids": sorted({f["dag_id"] for f in failures if f["dag_id"]}), "versions": [],
                "failed_trainings": failures}
    aliases = {alias: str(v) for alias, v in (registered.aliases or {}).items()}
    found = client.search_model_versions(f"name = '{name}'", max_results=MAX_VERSIONS)
    versions = sorted(found, key=lambda v: int(v.version), reverse=True)
    by_version = {str(v): [a for a, n in aliases.items() if n == str(v)] for v in (x.version for x in versions)}
    rows = [version(client, v, by_version.get(str(v.version), []), mlflow_ui) for v in versions]
    failures = failed_trainings(client, name, mlflow_ui)
    return {
        "name": name,
        "description": registered.description or "",
        "aliases": aliases,
        "champion": aliases.get(SERVING_ALIAS),
        "previous_champion": aliases.get(PREVIOUS_ALIAS),
        "dag_ids": sorted({r["dag_id"] for r in rows + failures if r["dag_id"]}),
        "versions": rows,
        "failed_trainings": failures,
    }


def version(client: Any, mv: Any, aliases: list[str], mlflow_ui: str) -> dict[str, Any]:
    """One version: ``{version, created, aliases, decision, decision_detail, dag_id, dag_run_id,
    task_id, dag_run_url (Airflow UI path), run_id, mlflow_run_url, metrics {name: value}, params
    {name: value} (the run's logged hyperparameters, as MLflow stores them: strings), cost
    {gpu_hours, cpu_hours, memory_gib_hours, gpu, cpu, memory, total} or None, prices {gpu_hour,
    cpu_hour, memory_gib_hour} or None, gpu {available, reason, names, utilization_mean (%),
    memory_peak_gib, energy_kwh, temperature_max_c}, gate {compare: {metric: direction}, thresholds:
    {metric: {min, max}}} or None (not validated), approval {decision: approved|rejected, by (the
    Airflow user, None when the timeout answered), at (UTC), timed_out} or None}``; ``prices`` carries ``currency`` (ISO 4217)
    since it was recorded with one."""
    tags = dict(mv.tags or {})
    run = client.get_run(mv.run_id) if mv.run_id else None
    metrics = dict(run.data.metrics) if run else {}
    run_tags = dict(run.data.tags) if run else {}
    dag_id, dag_run = tags.get("airflow.dag_id") or run_tags.get("airflow.dag_id"), \
        tags.get("airflow.run_id") or run_tags.get("airflow.run_id")
    cost = {k: metrics[f"{COST_PREFIX}/{k}"] for k in COST_FIELDS if f"{COST_PREFIX}/{k}" in metrics} or None
    prices = _json(run_tags.get(PRICES_TAG))
    available = (tags.get(GPU_AVAILABLE_TAG) or run_tags.get(GPU_AVAILABLE_TAG)) == "true"
    energy = metrics.get("gpu/energy_j")
    peak = metrics.get("gpu/memory_peak_bytes")
    gpu = {
        "available": available,
        "reason": None if available else (run_tags.get(GPU_REASON_TAG) or "no GPU was asked for or measured"),
        "names": run_tags.get(GPU_NAMES_TAG) or None,
        "utilization_mean": metrics.get("gpu/utilization_mean"),
        "memory_peak_gib": None if peak is None else peak / 2**30,
        "energy_kwh": None if energy is None else energy / 3.6e6,
        "temperature_max_c": metrics.get("gpu/temperature_max_c"),
    }
    experiment = run.info.experiment_id if run else None
    return {
        "version": str(mv.version),
        "created": _iso(mv.creation_timestamp),
        "aliases": sorted(aliases),
        "decision": tags.get(DECISION_TAG),
        "decision_detail": tags.get(DETAIL_TAG),
        "gate": _json(tags.get(GATE_TAG)),
        "approval": _json(tags.get(APPROVAL_TAG)),
        "dag_id": dag_id,
        "dag_run_id": dag_run,
        "task_id": tags.get("airflow.task_id") or run_tags.get("airflow.task_id"),
        "dag_run_url": dag_run_url(dag_id, dag_run),
        "run_id": mv.run_id,
        "mlflow_run_url": run_url(mlflow_ui, experiment, mv.run_id) if experiment else None,
        "metrics": {k: v for k, v in sorted(metrics.items()) if k.split("/", 1)[0] not in NOT_MODEL_METRICS},
        "params": dict(sorted(run.data.params.items())) if run else {},
        "cost": cost,
        "prices": prices,
        "gpu": gpu,
    }


def dag_run_url(dag_id: str | None, dag_run: str | None) -> str | None:
    """The Airflow UI's path of a DAG run, None without both ids."""
    from urllib.parse import quote

    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(dag_run, safe='')}" if dag_id and dag_run else None


def _failed_runs(client: Any, query: str, max_results: int) -> list[Any]:
    """Runs with a recorded failure (``stages.train.failures``) matching ``query``, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    if not experiments:
        return []
    return client.search_runs(experiments, filter_string=f"tags.`{FAILURE_REASON_TAG}` != ''{query}",
                              order_by=["attributes.start_time DESC"], max_results=max_results)


def failed_models(client: Any) -> set[str]:
    """The registered-model names that failed trainings were recorded for (the latest 1000)."""
    return {r.data.tags[FAILURE_MODEL_TAG] for r in _failed_runs(client, "", 1000) if r.data.tags.get(FAILURE_MODEL_TAG)}


def failed_trainings(client: Any, name: str, mlflow_ui: str, limit: int = FAILED_TRAININGS) -> list[dict[str, Any]]:
    """The model ``name``'s latest ``limit`` training tries that Kubernetes ended (their worker
    recorded why: ``stages.train.failures``), newest first; each ``{time (UTC), dag_id,
    dag_run_id, task_id, try_number, dag_run_url, reason (OOMKilled, Evicted...), message, run_id,
    mlflow_run_url}``."""
    found = []
    for run in _failed_runs(client, f" and tags.`{FAILURE_MODEL_TAG}` = '{name}'", limit):
        tags = run.data.tags
        dag_id, dag_run = tags.get("airflow.dag_id"), tags.get("airflow.run_id")
        found.append({"time": _iso(run.info.start_time), "dag_id": dag_id, "dag_run_id": dag_run,
                      "task_id": tags.get("airflow.task_id"), "try_number": tags.get("airflow.try_number"),
                      "dag_run_url": dag_run_url(dag_id, dag_run), "reason": tags.get(FAILURE_REASON_TAG),
                      "message": tags.get(FAILURE_TAG) or "", "run_id": run.info.run_id,
                      "mlflow_run_url": run_url(mlflow_ui, run.info.experiment_id, run.info.run_id)})
    return found


def drift_monitors(client: Any, dag_id: str | None = None) -> list[dict[str, Any]]:
    """Each drift monitor (DAG and task that ran a drift stage), latest first within its trend:
    ``{dag_id, task_id, latest: {run_id, dag_run_id, time, limits {psi, ks, features: {feature:
    {psi, ks}}} or None, drifted_count, features: {feature:
    {psi, ks, drifted}}}, trend: [{time, run_id, drifted_count, psi: {feature: value}}] oldest
    first}``."""
    experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    if not experiments:
        return []
    query = f"tags.`{KIND_TAG}` = 'drift'"
    if dag_id:
        query += f" and tags.`airflow.dag_id` = '{dag_id}'"
    runs = client.search_runs(experiments, filter_string=query, order_by=["attributes.start_time DESC"],
                              max_results=500)
    monitors: dict[tuple[str, str], list[Any]] = {}
    for run in runs:
        key = (run.data.tags.get("airflow.dag_id") or run.info.run_name or "?",
               run.data.tags.get("airflow.task_id") or "drift")
        monitors.setdefault(key, []).append(run)
    found = []
    for (dag, task), history in sorted(monitors.items()):
        history = history[:DRIFT_RUNS]
        points = [_drift_point(r) for r in history]
        latest = points[0]
        found.append({"dag_id": dag, "task_id": task, "latest": latest,
                      "trend": [{k: p[k] for k in ("time", "run_id", "drifted_count")}
                                | {"psi": {f: s["psi"] for f, s in p["features"].items()}} for p in reversed(points)]})
    return found


def _drift_point(run: Any) -> dict[str, Any]:
    metrics, tags = run.data.metrics, run.data.tags
    try:
        drifted = set(json.loads(tags.get(DRIFTED_TAG, "null")) or [])
        known = DRIFTED_TAG in tags
    except ValueError:
        drifted, known = set(), False
    features: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        if key.startswith("drift/psi/"):
            features.setdefault(key[len("drift/psi/"):], {})["psi"] = value
        elif key.startswith("drift/ks/"):
            features.setdefault(key[len("drift/ks/"):], {})["ks"] = value
    for name, scores in features.items():
        scores.setdefault("psi", None)
        scores.setdefault("ks", None)
        scores["drifted"] = (name in drifted) if known else None
    return {"run_id": run.info.run_id, "dag_run_id": tags.get("airflow.run_id"), "time": _iso(run.info.start_time),
            "limits": _json(tags.get(LIMITS_TAG)),
            "drifted_count": _float(metrics.get("drift/features_drifted")),
            "features": dict(sorted(features.items()))}


def dag_summary(client: Any, dag_id: str, mlflow_ui: str) -> dict[str, Any]:
    """What one pipeline's DAG produced: ``{dag_id, models: [{name, champion, latest: version(...),
    versions: [version(...)] newest first}], drift: drift_monitors(...)}``; a model's versions are
    those this DAG registered; no models for a DAG that registered none."""
    found = []
    for registered in client.search_registered_models(max_results=1000):
        versions = client.search_model_versions(f"name = '{registered.name}' and tags.`airflow.dag_id` = '{dag_id}'",
                                                max_results=MAX_VERSIONS)
        if not versions:
            continue
        aliases = {a: str(v) for a, v in (registered.aliases or {}).items()}
        rows = [version(client, v, [a for a, n in aliases.items() if n == str(v.version)], mlflow_ui)
                for v in sorted(versions, key=lambda v: int(v.version), reverse=True)]
        found.append({"name": registered.name, "champion": aliases.get(SERVING_ALIAS), "latest": rows[0],
                      "versions": rows})
    return {"dag_id": dag_id, "models": found, "drift": drift_monitors(client, dag_id)}
