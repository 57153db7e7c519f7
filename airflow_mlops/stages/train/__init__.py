"""train: fit a model (an estimator class with params, or your function), evaluate it on the test
split, log params/metrics/model to MLflow and register a model version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.mlflow import client as mlflow_client
from airflow_mlops._core.mlflow import use_experiment
from airflow_mlops._core.paths import import_string
from airflow_mlops.stages.data import read_dataset

TASK_KEY_TAG = "airflow_mlops.task_key"

if TYPE_CHECKING:
    from airflow_mlops.spec.models import TrainStage


def run(spec: "TrainStage", ctx: StageContext) -> dict[str, Any]:
    import mlflow

    train_df = read_dataset(ctx.find("train_path"))
    test_df = read_dataset(ctx.find("test_path"))
    if spec.target not in train_df.columns:
        raise StageFailed(f"target column '{spec.target}' is not in the training data; columns: {list(train_df.columns)}")
    features = spec.features or [c for c in train_df.columns if c != spec.target]
    x_train, y_train = train_df[features], train_df[spec.target]
    x_test, y_test = test_df[features], test_df[spec.target]

    experiment_id = use_experiment(ctx.mlflow)
    earlier = _registered_by_earlier_try(ctx, experiment_id)
    if earlier:
        run_id, version, metrics = earlier
        ctx.log.info(
            "An earlier try of this task already registered '%s' version %s (run %s): reusing it, not registering a duplicate",
            ctx.mlflow.registered_model, version, run_id,
        )
        return _result(ctx, spec, run_id, version, metrics, features)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"{ctx.pipeline_id}.{ctx.stage_name}", tags=ctx.tags
    ) as run:
        if spec.estimator:
            model = import_string(_as_import_path(spec.estimator))(**spec.params)
            ctx.log.info("Fitting %s on %d rows, %d features", spec.estimator, len(x_train), len(features))
            model.fit(x_train, y_train)
            metrics = evaluate(model, x_test, y_test, spec.metrics)
        else:
            produced = import_string(spec.callable)(
                train=train_df, test=test_df, target=spec.target, features=features, params=dict(spec.params)
            )
            model, metrics = _unpack(produced, spec.callable)
        mlflow.log_params({**spec.params, "features": len(features), "train_rows": len(x_train)})
        mlflow.log_metrics(metrics)
        ctx.log.info("Metrics: %s", metrics)
        info = log_model(model, x_test, ctx.mlflow.registered_model)
    version = str(info.registered_model_version)
    client = mlflow_client(ctx.mlflow)
    for key, value in ctx.tags.items():
        client.set_model_version_tag(ctx.mlflow.registered_model, version, key, value)
    ctx.log.info("Registered model '%s' version %s (run %s)", ctx.mlflow.registered_model, version, run.info.run_id)
    return _result(ctx, spec, run.info.run_id, version, metrics, features)


def _result(ctx: StageContext, spec: "TrainStage", run_id: str, version: str, metrics: dict, features: list) -> dict:
    return {
        "run_id": run_id,
        "model_name": ctx.mlflow.registered_model,
        "model_version": version,
        "model_uri": f"models:/{ctx.mlflow.registered_model}/{version}",
        "metrics": metrics,
        "target": spec.target,
        "features": features,
    }


def _model_metrics(logged: dict[str, float]) -> dict[str, float]:
    """The model's metrics among a run's: without the GPU telemetry and cost logged beside them."""
    from airflow_mlops.telemetry.cost import COST_PREFIX
    from airflow_mlops.telemetry.sampler import PREFIX as GPU_PREFIX

    return {k: v for k, v in logged.items() if k.split("/", 1)[0] not in (COST_PREFIX, GPU_PREFIX)}


def _registered_by_earlier_try(ctx: StageContext, experiment_id: str) -> tuple[str, str, dict] | None:
    """(run id, version, metrics) if an earlier try of this same task instance finished its run and
    registered a version; the task key (dag/run/task ids, no try number) is tagged on every run."""
    key = ctx.tags.get(TASK_KEY_TAG)
    if not key:
        return None
    client = mlflow_client(ctx.mlflow)
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TASK_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'"
    )
    for run in runs:
        for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            if version.name == ctx.mlflow.registered_model:
                return run.info.run_id, str(version.version), _model_metrics(run.data.metrics)
    return None


def _as_import_path(path: str) -> str:
    """Accept both 'sklearn.ensemble:RandomForestClassifier' and 'sklearn.ensemble.RandomForestClassifier'."""
    return path if ":" in path else ":".join(path.rsplit(".", 1))


def _unpack(produced: Any, name: str) -> tuple[Any, dict[str, float]]:
    if isinstance(produced, dict) and "model" in produced:
        return produced["model"], dict(produced.get("metrics", {}))
    if isinstance(produced, tuple) and len(produced) == 2:
        return produced[0], dict(produced[1])
    raise StageFailed(f"train callable '{name}' must return (model, metrics) or {{'model': ..., 'metrics': ...}}")


def log_model(model: Any, example: Any, registered_model: str) -> Any:
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict(example))
    if isinstance(model, mlflow.pyfunc.PythonModel):
        return mlflow.pyfunc.log_model(
            name="model", python_model=model, signature=signature, registered_model_name=registered_model
        )
    if type(model).__module__.split(".")[0] != "sklearn" and not hasattr(model, "get_params"):
        raise StageFailed(
            f"cannot log a {type(model).__name__}: return a scikit-learn estimator or an mlflow.pyfunc.PythonModel"
        )
    import skops.io

    # MLflow saves scikit-learn models with skops, which refuses types it cannot vouch for (tree
    # nodes, for one). This model was fitted in this very process, so its own types are trusted.
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return mlflow.sklearn.log_model(
        model, name="model", signature=signature, registered_model_name=registered_model,
        input_example=example.head(2), skops_trusted_types=trusted,
    )


def evaluate(model: Any, x: Any, y: Any, names: list[str]) -> dict[str, float]:
    from sklearn import metrics as m

    pred = model.predict(x)
    binary = getattr(y, "nunique", lambda: 0)() == 2
    average = "binary" if binary else "weighted"
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = m.accuracy_score(y, pred)
        elif name in ("f1", "precision", "recall"):
            fn = {"f1": m.f1_score, "precision": m.precision_score, "recall": m.recall_score}[name]
            out[name] = fn(y, pred, average=average)
        elif name in ("roc_auc", "log_loss"):
            proba = model.predict_proba(x)
            if name == "roc_auc":
                out[name] = m.roc_auc_score(y, proba[:, 1]) if binary else m.roc_auc_score(y, proba, multi_class="ovr")
            else:
                out[name] = m.log_loss(y, proba)
        elif name == "rmse":
            out[name] = m.mean_squared_error(y, pred) ** 0.5
        elif name == "mae":
            out[name] = m.mean_absolute_error(y, pred)
        elif name == "r2":
            out[name] = m.r2_score(y, pred)
    return {k: float(v) for k, v in out.items()}
