"""Training on Spark (the train stage on the spark backend, ``stages.train.spark``): a Spark ML
estimator (``pyspark.ml....``, fitted with ``params``) or your callable, trained on the stage's
Spark session or cluster. The datasets are read as Spark
DataFrames and never collected to the driver; the metrics come from ``pyspark.ml.evaluation``; the
model is logged with MLflow's Spark flavour (which carries a pyfunc flavour too) and registered
like any other version, so the validate gate and serving treat it the same way.

    trainer = SparkMlTrainer(job, log)
    extra = trainer.prepare()                       # {"target", "features"}; reads the datasets
    outcome = trainer.train(client, run_id, gpus)   # {"metrics", "model_version"}

The estimator is wrapped in a ``Pipeline([VectorAssembler(features), estimator])`` with its
``labelCol`` set to the target (unless ``params`` set them), so the registered model scores the
raw feature columns. A ``callable`` gets ``train``/``test`` as Spark DataFrames (plus ``target``,
``features``, ``params``, ``spark``) and returns either an unfitted Spark ML ``Pipeline`` (or any
Estimator) scoring the raw columns, which is fitted and evaluated here like an ``estimator``, or
``(fitted Spark ML model, metrics)``.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.paths import import_string
from airflow_mlops.stages.train.builtin import as_import_path, model_and_metrics
from airflow_mlops.stages.train.gpus import GpuAssignment
from airflow_mlops.stages.train.job import GpuTrainJob

FEATURES_COLUMN = "_airflow_mlops_features"  # the assembled vector (never a user's column name)
# metric -> (evaluator, Spark metric name for a binary label, for a multi-class one)
CLASSIFICATION = {"accuracy": ("accuracy", "accuracy"), "f1": ("fMeasureByLabel", "weightedFMeasure"),
                  "precision": ("precisionByLabel", "weightedPrecision"), "recall": ("recallByLabel", "weightedRecall"),
                  "log_loss": ("logLoss", "logLoss")}
REGRESSION = {"rmse": "rmse", "mae": "mae", "r2": "r2"}
ROC_AUC_BINARY = ("roc_auc on Spark is for a binary label: Spark ML has no multi-class AUC; use accuracy, f1, "
                  "precision, recall or log_loss")


class SparkMlTrainer:
    """What to train for a job whose ``builtin.engine`` is ``spark``."""

    def __init__(self, job: GpuTrainJob, log: logging.Logger) -> None:
        self.job, self.log = job, log
        self.frames: tuple[Any, Any] | None = None
        self.features: list[str] = []

    def session(self) -> Any:
        """The stage's Spark session (embedded with the job's settings, or spark-submit's)."""
        from airflow_mlops.stages.spark_session import get_session

        settings = self.job.builtin.spark if self.job.builtin else None
        name = f"airflow-mlops {self.job.run_name}"
        if settings is None:
            return get_session(master=None, app_name=name)
        return get_session(settings.get("master"), settings.get("conf"), name)

    def prepare(self) -> dict[str, Any]:
        """Open the datasets as Spark DataFrames (lazily: nothing is read to the driver). Raises
        StageFailed when the target column is missing."""
        from airflow_mlops.stages.spark_session import read

        data = self.job.data
        assert data is not None
        spark = self.session()
        train = read(spark, data.train_path, None)
        test = read(spark, data.test_path, None) if data.test_path else train
        if data.target not in train.columns:
            raise StageFailed(f"target column '{data.target}' is not in the training data; columns: {train.columns}")
        self.frames = train, test
        self.features = data.features or [c for c in train.columns if c != data.target]
        return {"target": data.target, "features": self.features}

    def train(self, client: Any, run_id: str, gpus: GpuAssignment) -> dict[str, Any]:
        """Fit on Spark, evaluate on Spark, log into run ``run_id`` and register. Returns
        ``{"metrics": {name: float}, "model_version": str}``."""
        import mlflow

        from airflow_mlops._core.mlflow import use_store

        del gpus  # Spark's executors hold their own resources
        job, builtin, data = self.job, self.job.builtin, self.job.data
        assert builtin is not None and data is not None and self.frames is not None
        train, test = self.frames
        use_store(job.target())
        mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_params({"features": len(self.features), "engine": "spark"})
            metrics: dict[str, float] | None = None
            if builtin.estimator:
                self.log.info("Fitting %s on Spark (%d features)", builtin.estimator, len(self.features))
                model = fit(builtin.estimator, job.hyperparams, self.features, data.target, train)
            else:
                from pyspark.ml import Estimator

                produced = import_string(str(builtin.callable))(
                    train=train, test=test, target=data.target, features=self.features,
                    params=dict(job.hyperparams), spark=self.session())
                if isinstance(produced, Estimator):  # an unfitted Pipeline: fitted and scored here
                    self.log.info("Fitting the %s from %s on Spark", type(produced).__name__, builtin.callable)
                    model = produced.fit(train)
                else:
                    model, metrics = model_and_metrics(produced, f"train callable '{builtin.callable}'")
            if metrics is None:
                metrics, info = self.score_and_log(model, test, data.target, builtin.metrics)
            else:
                info = log_spark_model(model, test.select(*self.features), job.registered_model)
            mlflow.log_metrics(metrics)
            self.log.info("Metrics: %s", metrics)
        return {"metrics": metrics, "model_version": str(info.registered_model_version)}

    def score_and_log(self, model: Any, test: Any, target: str, names: list[str]) -> tuple[dict[str, float], Any]:
        """The metrics of ``model`` on ``test`` and the logged, registered model: the evaluators'
        Spark jobs run while the model is saved (both are short jobs whose latency adds up
        otherwise). Metrics that cannot be computed are refused before anything is registered."""
        from concurrent.futures import ThreadPoolExecutor

        classes = classes_of(model)
        if "roc_auc" in names and classes is not None and classes != 2:
            raise StageFailed(ROC_AUC_BINARY)
        with ThreadPoolExecutor(1, thread_name_prefix="spark-ml-evaluate") as pool:
            scoring = pool.submit(evaluate, model.transform(test), target, names, classes)
            info = log_spark_model(model, test.select(*self.features), self.job.registered_model)
            return scoring.result(), info

    def kill(self) -> None:
        """Cancel the session's running Spark jobs (the operator's ``on_kill``)."""
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.sparkContext.cancelAllJobs()


def spark_ml_pipeline(estimator: str, params: dict[str, Any], features: list[str], target: str) -> Any:
    """``Pipeline([VectorAssembler(features), estimator(**params)])``, the estimator's ``labelCol``
    set to ``target`` and its ``featuresCol`` to the vector unless ``params`` set them. Raises
    StageFailed for an import path that is not a Spark ML estimator."""
    from pyspark.ml import Estimator, Pipeline
    from pyspark.ml.feature import VectorAssembler

    try:
        cls = import_string(as_import_path(estimator))
    except (ImportError, AttributeError) as exc:
        raise StageFailed(f"cannot import the estimator '{estimator}': {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise StageFailed(f"'{estimator}' is not a Spark ML estimator class (pyspark.ml.Estimator)")
    try:
        model = cls(**params)
    except TypeError as exc:
        raise StageFailed(f"{estimator}: bad params {sorted(params)}: {exc}") from exc
    for name, value in (("labelCol", target), ("featuresCol", FEATURES_COLUMN)):
        if model.hasParam(name) and name not in params:
            model.set(model.getParam(name), value)
    if isinstance(model, Pipeline):
        raise StageFailed(f"'{estimator}': a Pipeline's stages are objects, which YAML params cannot hold: return "
                          "the Pipeline from a 'callable' (it is then fitted and scored like an estimator)")
    assembler = VectorAssembler(inputCols=list(features), outputCol=FEATURES_COLUMN, handleInvalid="error")
    return Pipeline(stages=[assembler, model])


def fit(estimator: str, params: dict[str, Any], features: list[str], target: str, train: Any) -> Any:
    """The fitted ``PipelineModel`` of ``spark_ml_pipeline`` on the Spark DataFrame ``train``."""
    return spark_ml_pipeline(estimator, params, features, target).fit(train)


def classes_of(model: Any) -> int | None:
    """How many classes a fitted classifier (the last stage of a PipelineModel) knows; None when
    it does not say (a regressor, a model of your own)."""
    last = model.stages[-1] if hasattr(model, "stages") and model.stages else model
    return getattr(last, "numClasses", None)


def evaluate(scored: Any, target: str, names: list[str], classes: int | None = None) -> dict[str, float]:
    """The named metrics of a scored Spark DataFrame (``prediction``, and ``rawPrediction`` /
    ``probability`` where the model gives them), computed by ``pyspark.ml.evaluation`` on Spark.
    As in the pandas engine, f1/precision/recall are of label 1 for a binary label, else
    weighted; roc_auc is binary only (Spark has no multi-class AUC: StageFailed). ``classes``:
    the model's number of classes, when it knows it (else counted on the label, one Spark job)."""
    from pyspark.ml.evaluation import (
        BinaryClassificationEvaluator,
        MulticlassClassificationEvaluator,
        RegressionEvaluator,
    )

    scored = scored.withColumn(target, scored[target].cast("double"))
    binary: bool | None = None if classes is None else classes == 2
    out: dict[str, float] = {}
    for name in names:
        if name in CLASSIFICATION or name == "roc_auc":
            if binary is None:  # one small Spark job, only when a metric depends on it
                binary = scored.select(target).distinct().limit(3).count() == 2
        if name in CLASSIFICATION:
            metric = CLASSIFICATION[name][0 if binary else 1]
            evaluator = MulticlassClassificationEvaluator(labelCol=target, metricName=metric)
            if binary and metric.endswith("ByLabel"):
                evaluator.setMetricLabel(1.0)
            out[name] = evaluator.evaluate(scored)
        elif name == "roc_auc":
            if not binary:
                raise StageFailed(ROC_AUC_BINARY)
            out[name] = BinaryClassificationEvaluator(labelCol=target, metricName="areaUnderROC").evaluate(scored)
        elif name in REGRESSION:
            out[name] = RegressionEvaluator(labelCol=target, metricName=REGRESSION[name]).evaluate(scored)
    return {k: float(v) for k, v in out.items()}


def log_spark_model(model: Any, inputs: Any, registered_model: str) -> Any:
    """Log a fitted Spark ML model into the active run with MLflow's Spark flavour (its pyfunc
    flavour scores pandas frames) and register it as a new version of ``registered_model``.
    The signature comes from the schema of ``inputs`` (a Spark DataFrame of the feature columns;
    no Spark job runs for it) and a ``prediction`` of type double.
    Returns MLflow's ModelInfo; StageFailed for a model that is not a Spark ML Transformer."""
    import mlflow
    import pyspark
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from pyspark.ml import Transformer

    if not isinstance(model, Transformer):
        raise StageFailed(f"cannot log a {type(model).__name__} on Spark: return a fitted Spark ML model "
                          "(a pyspark.ml Transformer, e.g. a PipelineModel)")
    types = {"double": "double", "float": "float", "int": "integer", "bigint": "long", "smallint": "integer",
             "tinyint": "integer", "boolean": "boolean", "string": "string"}
    columns = [ColSpec(types.get(f.dataType.simpleString(), "double"), f.name) for f in inputs.schema.fields]
    signature = ModelSignature(inputs=Schema(columns), outputs=Schema([ColSpec("double")]))
    # Requirements given, not inferred: inference loads the model again in a subprocess (seconds).
    from airflow_mlops._core.mlflow import RegistryNotices

    with RegistryNotices(logging.getLogger("airflow_mlops.stages.train")):
        return mlflow.spark.log_model(model, artifact_path="model", registered_model_name=registered_model,
                                      signature=signature, pip_requirements=[f"pyspark=={pyspark.__version__}"])

