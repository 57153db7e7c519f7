"""validate: check the candidate version's metrics against thresholds; on success set an MLflow
alias on it (aliases, not the deprecated stages API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops.stages.context import StageContext, StageFailed
from airflow_mlops.stages.tracking import client as mlflow_client

if TYPE_CHECKING:
    from airflow_mlops.spec.models import ValidateStage


def run(spec: "ValidateStage", ctx: StageContext) -> dict[str, Any]:
    name, version = ctx.find("model_name"), str(ctx.find("model_version"))
    client = mlflow_client(ctx.mlflow)
    run_id = client.get_model_version(name, version).run_id
    metrics = client.get_run(run_id).data.metrics

    failures = []
    for metric, bound in spec.thresholds.items():
        if metric not in metrics:
            failures.append(f"{metric} was not logged (logged: {', '.join(sorted(metrics)) or 'none'})")
            continue
        value = metrics[metric]
        if bound.min is not None and value < bound.min:
            failures.append(f"{metric} = {value:.4g} is below the minimum {bound.min:g}")
        if bound.max is not None and value > bound.max:
            failures.append(f"{metric} = {value:.4g} is above the maximum {bound.max:g}")
        ctx.log.info("%s = %.4g (min %s, max %s)", metric, value, bound.min, bound.max)

    client.set_model_version_tag(name, version, "airflow_mlops.validation", "failed" if failures else "passed")
    if failures:
        raise StageFailed(f"model '{name}' version {version} failed validation: " + "; ".join(failures))
    client.set_registered_model_alias(name, spec.alias, version)
    ctx.log.info("Model '%s' version %s passed; alias '%s' now points at it", name, version, spec.alias)
    return {
        "model_name": name,
        "model_version": version,
        "alias": spec.alias,
        # Pinned to the version, not the alias: the alias may move before serving runs.
        "model_uri": f"models:/{name}/{version}",
    }
