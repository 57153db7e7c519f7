"""The YAML train stage's own training, in this process: fit an estimator class with the job's
hyperparams (or call your function), score it on the test split, log params/metrics and the model
into the run ``TrainingRun`` created, and register the version.

    trainer = BuiltinTrainer(job, log)
    extra = trainer.prepare()                       # reads the datasets: {"target", "features"}
    outcome = trainer.train(client, run_id, gpus)   # {"metrics", "model_version"}
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.paths import environ_kept, import_string
from airflow_mlops.stages.train.gpus import GpuAssignment
from airflow_mlops.stages.train.job import GpuTrainJob

log = logging.getLogger("airflow_mlops.stages.train")


class BuiltinTrainer:
    """What to train for a job with ``builtin`` set (see ``stages.train.measure.TrainingRun``)."""

    def __init__(self, job: GpuTrainJob, log: logging.Logger) -> None:
        self.job, self.log = job, log
        self.frames: tuple[Any, Any] | None = None
        self.features: list[str] = []

    def prepare(self) -> dict[str, Any]:
        """Read the datasets (before any MLflow run exists). Raises StageFailed when the target
        column is missing. Returns the result's ``target`` and ``features``."""
        from airflow_mlops.stages.data import read_dataset

        data = self.job.data
        assert data is not None
        train_df = read_dataset(data.train_path, conn_id=data.conn_id)
        test_df = read_dataset(data.test_path, conn_id=data.conn_id) if data.test_path else train_df
        if data.target not in train_df.columns:
            raise StageFailed(f"target column '{data.target}' is not in the training data; columns: {list(train_df.columns)}")
        self.frames = train_df, test_df
        self.features = data.features or [c for c in train_df.columns if c != data.target]
        return {"target": data.target, "features": self.features}

    def train(self, client: Any, run_id: str, gpus: GpuAssignment) -> dict[str, Any]:
        """Fit, evaluate, log into run ``run_id`` and register; CUDA sees ``gpus`` meanwhile
        (put back after). Returns ``{"metrics": {name: float}, "model_version": str}``."""
        import mlflow

        from airflow_mlops._core.mlflow import use_store

        job, builtin, data = self.job, self.job.builtin, self.job.data
        assert builtin is not None and data is not None and self.frames is not None
        train_df, test_df = self.frames
        features = self.features
        x_train, y_train = train_df[features], train_df[data.target]
        x_test, y_test = test_df[features], test_df[data.target]
        use_store(job.target())
        # The run's own experiment becomes the active one: MLflow refuses to resume a run of another
        # experiment than the active one, which an earlier task (or a user's code) in this process set.
        mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
        with environ_kept("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"), mlflow.start_run(run_id=run_id):
            os.environ.update(gpus.cuda_env())
            if builtin.estimator:
                model = import_string(as_import_path(builtin.estimator))(**job.hyperparams)
                self.log.info("Fitting %s on %d rows, %d features", builtin.estimator, len(x_train), len(features))
                model.fit(x_train, y_train)
                metrics = evaluate(model, x_test, y_test, builtin.metrics)
            else:
                produced = import_string(str(builtin.callable))(
                    train=train_df, test=test_df, target=data.target, features=features, params=dict(job.hyperparams)
                )
                model, metrics = model_and_metrics(produced, f"train callable '{builtin.callable}'")
            mlflow.log_params({"features": len(features), "train_rows": len(x_train)})
            mlflow.log_metrics(metrics)
            self.log.info("Metrics: %s", metrics)
            info = log_model(model, x_test, job.registered_model)
        return {"metrics": metrics, "model_version": str(info.registered_model_version)}

    def kill(self) -> None:
        """Nothing to stop: the training runs in this process, which Airflow itself stops."""


def as_import_path(path: str) -> str:
    """Accept both 'sklearn.ensemble:RandomForestClassifier' and 'sklearn.ensemble.RandomForestClassifier'."""
    return path if ":" in path else ":".join(path.rsplit(".", 1))


def model_and_metrics(produced: Any, what: str) -> tuple[Any, dict[str, float]]:
    """``(model, metrics)`` from what a training function returned: ``(model, metrics)`` or
    ``{"model": ..., "metrics": ...}``. Raises StageFailed naming ``what`` otherwise."""
    if isinstance(produced, dict) and "model" in produced:
        return produced["model"], {k: float(v) for k, v in (produced.get("metrics") or {}).items()}
    if isinstance(produced, tuple) and len(produced) == 2:
        return produced[0], {k: float(v) for k, v in (produced[1] or {}).items()}
    raise StageFailed(f"{what} must return (model, metrics) or {{'model': ..., 'metrics': ...}}")


SIGNATURE_ROWS = 1000  # rows of the test set a model's signature is inferred from


def log_model(model: Any, example: Any, registered_model: str) -> Any:
    """Log ``model`` (a scikit-learn estimator or an ``mlflow.pyfunc.PythonModel``) into the
    active run with its signature from ``example`` (a DataFrame of inputs) and register it as a
    new version of ``registered_model``. Returns MLflow's ModelInfo; raises StageFailed for other models."""
    import mlflow
    from mlflow.models import infer_signature

    from airflow_mlops._core.mlflow import RegistryNotices

    # The schema from a sample: MLflow checks every value of the frame in Python (about 1 s per
    # million values here), and the columns and their types are the same in any thousand rows.
    sample = example.head(SIGNATURE_ROWS) if hasattr(example, "head") else example
    signature = infer_signature(sample, model.predict(sample))
    if isinstance(model, mlflow.pyfunc.PythonModel):
        with RegistryNotices(log):
            return mlflow.pyfunc.log_model(
                name="model", python_model=model, signature=signature, registered_model_name=registered_model
            )
    if type(model).__module__.split(".")[0] != "sklearn" and not hasattr(model, "get_params"):
        raise StageFailed(
            f"cannot log a {type(model).__name__}: return a scikit-learn estimator or an mlflow.pyfunc.PythonModel"
        )
    from airflow_mlops._core.compat import import_skops_io

    skops_io = import_skops_io()
    # MLflow saves scikit-learn models with skops, which refuses types it cannot vouch for (tree
    # nodes, for one). This model was fitted in this very process, so its own types are trusted.
    trusted = skops_io.get_untrusted_types(data=skops_io.dumps(model))
    with RegistryNotices(log):
        return mlflow.sklearn.log_model(
            model, name="model", signature=signature, registered_model_name=registered_model,
            input_example=example.head(2), skops_trusted_types=trusted,
            pip_requirements=list(sklearn_requirements(estimator_packages(model))),
        )


def estimator_packages(model: Any) -> frozenset[str]:
    """The top-level packages of ``model``'s class and of every estimator inside it (a Pipeline's
    steps, a search's estimator...): what loading it imports besides scikit-learn."""
    found, todo, seen = set(), [model], set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        found.add(type(obj).__module__.split(".")[0])
        params = obj.get_params(deep=False) if hasattr(obj, "get_params") else {}
        for value in params.values():
            items = value if isinstance(value, (list, tuple)) else [value]
            for item in items:
                item = item[-1] if isinstance(item, tuple) and item else item  # (name, estimator) steps
                if hasattr(item, "get_params") and not isinstance(item, type):
                    todo.append(item)
    return frozenset(found - {"builtins"})


@lru_cache(maxsize=32)
def sklearn_requirements(packages: frozenset[str]) -> tuple[str, ...]:
    """The pinned requirements of a scikit-learn model, from this environment's installed versions:
    what MLflow's skops flavour needs (scikit-learn, skops), numpy, scipy and pandas, and the
    distribution of every other package in ``packages`` (xgboost, lightgbm...); a package that
    is no installed distribution (code in the dags folder) adds nothing. Given to MLflow instead
    of its requirement inference, which loads the model again in a subprocess (7-15 s per train
    task, against well under a second)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    import mlflow.sklearn

    pins = list(mlflow.sklearn.get_default_pip_requirements(include_skops=True))
    distributions = packages_distributions()
    names = {"numpy", "scipy", "pandas"} | {d for p in packages - {"sklearn", "skops"} for d in distributions.get(p, [])}
    for name in sorted(names):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return tuple(pins)  # cached: never handed out as a list to change


def evaluate(model: Any, x: Any, y: Any, names: list[str]) -> dict[str, float]:
    """The named metrics (accuracy, f1, precision, recall, roc_auc, log_loss, rmse, mae, r2) of
    ``model`` on inputs ``x`` and labels ``y``; f1/precision/recall are weighted unless binary."""
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
