"""drift: compare new data with the training reference, feature by feature, and report to MLflow
(metrics, a table and a plot). PSI for binned numeric and for categorical features, the
Kolmogorov–Smirnov statistic for numeric ones."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed, StageSkipped
from airflow_mlops._core.mlflow import use_experiment
from airflow_mlops.stages.data import read_dataset, read_input

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.spec.models import DriftStage

EPSILON = 1e-6  # stands in for an empty bin, so PSI stays finite
KIND_TAG = "airflow_mlops.kind"  # "drift" on every drift report run
# The verdict per feature (a JSON list of the features over their thresholds), beside the
# drift/psi/<feature> and drift/ks/<feature> metrics: the Airflow UI's Drift page reads it.
DRIFTED_TAG = "airflow_mlops.drift.drifted"
# The limits the verdict used, as JSON: {"psi": x|null, "ks": y|null, "features": {feature:
# {"psi", "ks"}}} (the stage's thresholds, and per_feature's where they differ).
LIMITS_TAG = "airflow_mlops.drift.limits"


def run(spec: "DriftStage", ctx: StageContext) -> dict[str, Any]:
    import mlflow

    reference = read_input(spec.reference, ctx.data_conn_id) if spec.reference else read_dataset(ctx.find("train_path"), conn_id=ctx.data_conn_id)
    current = read_input(spec.current, ctx.data_conn_id)
    features = spec.features or [c for c in reference.columns if c in current.columns and c not in spec.exclude]
    missing = [c for c in features if c not in reference.columns or c not in current.columns]
    if missing:
        raise StageFailed(f"drift features missing from the data: {missing}")
    report = {name: compare_feature(reference[name], current[name], spec.bins) for name in features}
    drifted = []
    for name, scores in report.items():
        limits = spec.per_feature.get(name, spec.thresholds)
        scores["drifted"] = bool(
            (limits.psi is not None and scores["psi"] > limits.psi)
            or (limits.ks is not None and scores["ks"] is not None and scores["ks"] > limits.ks)
        )
        if scores["drifted"]:
            drifted.append(name)

    experiment_id = use_experiment(ctx.mlflow)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{ctx.pipeline_id}.{ctx.stage_name}",
                          tags={**ctx.tags, KIND_TAG: "drift", DRIFTED_TAG: json.dumps(drifted),
                                LIMITS_TAG: limits_json(spec, features)}) as run:
        mlflow.log_metrics({f"drift/psi/{_metric_name(n)}": s["psi"] for n, s in report.items()})
        mlflow.log_metrics({f"drift/ks/{_metric_name(n)}": s["ks"] for n, s in report.items() if s["ks"] is not None})
        mlflow.log_metric("drift/features_drifted", len(drifted))
        mlflow.log_table({"feature": list(report), **{k: [s[k] for s in report.values()] for k in ("psi", "ks", "ks_pvalue", "drifted")}},
                         artifact_file="drift_report.json")
        mlflow.log_figure(plot(report, spec.thresholds.psi), "drift_psi.png")
    summary = f"{len(drifted)} of {len(report)} features drifted" + (f": {', '.join(drifted)}" if drifted else "")
    ctx.log.info("Drift report (MLflow run %s): %s", run.info.run_id, summary)
    for name, s in report.items():
        ctx.log.info("  %-30s psi %.4f  ks %s%s", name, s["psi"], "—" if s["ks"] is None else f"{s['ks']:.4f}",
                     "  DRIFT" if s["drifted"] else "")
    if drifted and spec.on_drift == "fail":
        raise StageFailed(f"data drift: {summary} (report: MLflow run {run.info.run_id})")
    if not drifted and spec.on_drift == "trigger":
        raise StageSkipped(f"no drift ({summary}): nothing to trigger")
    return {"drifted": bool(drifted), "drifted_features": drifted, "report_run_id": run.info.run_id,
            "features": {n: {k: s[k] for k in ("psi", "ks")} for n, s in report.items()}}


def compare_feature(reference: "pd.Series", current: "pd.Series", bins: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    from scipy import stats

    ref, cur = reference.dropna(), current.dropna()
    if pd.api.types.is_numeric_dtype(ref) and not pd.api.types.is_bool_dtype(ref) and ref.nunique() > bins:
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        ref_share = np.histogram(ref, edges)[0] / len(ref)
        cur_share = np.histogram(cur, edges)[0] / max(len(cur), 1)
        ks = stats.ks_2samp(ref, cur)
        return {"psi": psi(ref_share, cur_share), "ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue)}
    categories = sorted(set(ref.astype(str)) | set(cur.astype(str)))
    ref_share = ref.astype(str).value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
    cur_share = cur.astype(str).value_counts(normalize=True).reindex(categories, fill_value=0).to_numpy()
    return {"psi": psi(ref_share, cur_share), "ks": None, "ks_pvalue": None}


def psi(expected: Any, actual: Any) -> float:
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(float(e), EPSILON), max(float(a), EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def limits_json(spec: "DriftStage", features: list[str]) -> str:
    """The value of ``LIMITS_TAG``: within MLflow's 5,000 characters of a tag value (the
    per-feature part is left out of a longer one)."""
    default = {"psi": spec.thresholds.psi, "ks": spec.thresholds.ks}
    own = {n: {"psi": lim.psi, "ks": lim.ks} for n in features
           if (lim := spec.per_feature.get(n)) is not None and {"psi": lim.psi, "ks": lim.ks} != default}
    text = json.dumps({**default, "features": own})
    return text if len(text) <= 5000 else json.dumps({**default, "features": {}})


def plot(report: dict[str, dict[str, Any]], threshold: float | None) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.barh(names, [report[n]["psi"] for n in names], color=["#d62728" if report[n]["drifted"] else "#1f77b4" for n in names])
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"PSI threshold {threshold:g}")
        ax.legend(loc="lower right")
    ax.set_xlabel("population stability index (PSI)")
    ax.set_title("Drift per feature (red: over its threshold)")
    fig.tight_layout()
    return fig


def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
