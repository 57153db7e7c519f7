"""What the serve stages share: the model version a run serves."""

from __future__ import annotations

from typing import Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.mlflow import SERVING_ALIAS, alias_version, client, record_serving_aliases, registered_model
from airflow_mlops._core.mlflow_faults import is_not_found


def serving_model(model: str | None, ctx: StageContext) -> dict[str, Any]:
    """The model version a serve stage serves, resolved once per run.

    ``model`` is the stage's ``model:`` (``models:/<name>@<alias>`` or ``models:/<name>/<version>``);
    without it, the version an upstream train/validate stage produced (``model_uri`` in its
    result), else the pipeline's registered model at ``champion``. An alias is resolved to its
    version here, so every task of the run scores with the same version even if the alias moves.

    Returns ``{"model_uri": "models:/<name>/<version>", "model_name", "model_version",
    "model_ref"}`` (``model_ref``: what was asked for). Raises StageFailed when the model or
    alias does not exist in the pipeline's MLflow registry.
    """
    import re

    if model is None:
        upstream = ctx.find("model_uri", required=False)
        if upstream:
            name = ctx.find("model_name", required=False)
            version = ctx.find("model_version", required=False)
            return {"model_uri": upstream, "model_name": name, "model_version": None if version is None else str(version),
                    "model_ref": "upstream"}
        model = f"models:/{ctx.mlflow.registered_model}@{SERVING_ALIAS}"
    match = re.fullmatch(r"models:/([^/@]+)(?:@(.+)|/(\d+))", model)
    if not match:
        raise StageFailed(f"serve model {model!r}: expected 'models:/<name>@<alias>' or 'models:/<name>/<version>'")
    name, alias, version = match.groups()
    import mlflow

    mlflow_client = client(ctx.mlflow)
    missing = None
    try:
        if alias:
            found = alias_version(mlflow_client, name, alias)
            if found is None:
                missing = f"model '{name}' has no alias {alias!r}"
            else:
                version = found
                record_serving_aliases(mlflow_client, name, alias)
        else:
            mlflow_client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        if not is_not_found(exc):
            raise  # the tracking server failed: the stage's guard reports it (never "has no alias")
        try:
            registered_model(mlflow_client, name, ctx.mlflow.tracking_uri)
        except StageFailed as absent:
            raise StageFailed(f"cannot serve {model}: {absent}") from exc
        missing = f"model '{name}' has no version {version}"
    if missing:
        raise StageFailed(f"cannot serve {model}: {missing} in the MLflow registry at {ctx.mlflow.tracking_uri}")
    ctx.log.info("Serving %s: version %s of '%s'", model, version, name)
    return {"model_uri": f"models:/{name}/{version}", "model_name": name, "model_version": version, "model_ref": model}
