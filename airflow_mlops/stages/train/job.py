"""A training job, plain data: what one try of a training task needs, for both kinds of training.

- the YAML train stage builds it with ``job_for_stage(spec, ctx)``: ``builtin`` says what to fit
  (an estimator class or your function), in this process;
- GpuTrainOperator builds it from its arguments (``build_job``): ``entrypoint``, ``script`` or
  ``module`` says what to run, in a training subprocess.

Either way ``stages.train.measure.TrainingRun(job).run()`` runs it, measured and recorded the
same way (NVML, cost, MLflow run and tags, a registered version, reuse on retry). The job is
JSON-able, so it travels to a pod as the runner's payload (``stages.train.runner job``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from airflow_mlops._core.context import TASK_KEY_TAG  # noqa: F401 (the run tags below; measure.py reads it here)
from airflow_mlops.spec.prices import PriceTable
from airflow_mlops.stages.train.gpus import AskedBy
from airflow_mlops.telemetry.sampler import FLUSH_INTERVAL_S

if TYPE_CHECKING:
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import TrainStage

CHECKPOINT_ENV = "AIRFLOW_MLOPS_CHECKPOINT_DIR"
PARAMS_ENV = "AIRFLOW_MLOPS_PARAMS"
UI_URL_ENV = "AIRFLOW_MLOPS_MLFLOW_UI_URL"
# The run tags both kinds of training record (tests and scripts/demo_summary.py read them).
GPU_AVAILABLE_TAG = "airflow_mlops.gpu.available"
GPU_IDS_TAG = "airflow_mlops.gpu.ids"
GPU_NAMES_TAG = "airflow_mlops.gpu.names"
GPU_REASON_TAG = "airflow_mlops.gpu.reason"
CHECKPOINT_TAG = "airflow_mlops.checkpoint_dir"
ENTRYPOINT_TAG = "airflow_mlops.entrypoint"


class TrainData(BaseModel):
    """Datasets handed to the training as DataFrames (the train stage's contract): file paths
    (parquet/csv), the label column, and the feature columns (default: all but the target)."""

    model_config = ConfigDict(extra="forbid")

    train_path: str
    test_path: str | None = None
    target: str
    features: list[str] | None = None
    conn_id: str | None = None  # the Airflow connection for object-storage paths (_core.storage)


class BuiltinTraining(BaseModel):
    """The YAML train stage's own training: an ``estimator`` class fitted with the job's
    hyperparams and scored with ``metrics``, or a ``callable`` returning (model, metrics)."""

    model_config = ConfigDict(extra="forbid")

    estimator: str | None = None
    callable: str | None = None
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"])
    # "spark": a Spark ML fit on the stage's Spark session (``stages.train.spark``); ``spark`` then
    # holds the embedded session's {master, conf}, or None under spark-submit (the cluster's own).
    engine: Literal["pandas", "spark"] = "pandas"
    spark: dict[str, Any] | None = None


class GpuTrainJob(BaseModel):
    """Everything one try needs. What to train is exactly one of ``builtin`` (in this process),
    ``entrypoint`` (``'pkg.module:function'``), ``script`` or ``module`` (a subprocess)."""

    model_config = ConfigDict(extra="forbid")

    builtin: BuiltinTraining | None = None
    entrypoint: str | None = None  # 'pkg.module:function'
    script: str | None = None
    module: str | None = None
    args: list[str] = Field(default_factory=list)
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    # How many GPUs, or which (NVML indices); neither: those this process sees (in a pod: the pod's).
    gpus: int | None = None
    gpu_ids: list[int] | None = None
    gpus_asked_by: AskedBy = "gpus"  # the setting named in GPU messages
    checkpoint_dir: str | None = None  # required by entrypoint/script/module
    tracking_uri: str
    experiment: str
    registered_model: str
    artifact_location: str | None = None
    run_name: str
    tags: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, Any] | None = None  # {cpu, memory, gpu} held, for the cost
    prices: PriceTable = Field(default_factory=PriceTable)
    sample_interval_s: float = 1.0
    flush_interval_s: float = FLUSH_INTERVAL_S
    data: TrainData | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # Folders put first on the training process's PYTHONPATH: the DAG's folder and dags folder /
    # bundle (_core.paths.code_paths), so an entrypoint beside the DAG file imports.
    python_path: list[str] = Field(default_factory=list)
    prometheus_port: int | None = None
    pushgateway_url: str | None = None
    ui_url: str | None = None
    # The MLflow connection's MLFLOW_TRACKING_USERNAME/PASSWORD, as the operator resolved them:
    # never in the payload (exclude) nor shown (repr); a pod gets them from a Secret.
    credentials: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)
    # A rank of a torchrun group (backends/kubernetes/distributed.py): global rank 0 (torchrun's
    # RANK) records the run; the others only train (runner.follow). The cost is billed for
    # ``pods`` times ``resources``: every pod of the group holds them.
    distributed: bool = False
    pods: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_thing_to_train(self) -> "GpuTrainJob":
        given = [k for k in ("builtin", "entrypoint", "script", "module") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"a training job trains exactly one of builtin, entrypoint, script or module; got {given}")
        if self.builtin is not None and self.data is None:
            raise ValueError("a built-in training job needs data= (its datasets)")
        if self.builtin is None and not self.checkpoint_dir:
            raise ValueError(f"a training {given[0]} needs checkpoint_dir=")
        return self

    def target(self) -> "MlflowTarget":
        """The MLflow store, experiment and registered model this job records into."""
        from airflow_mlops._core.context import MlflowTarget

        return MlflowTarget(tracking_uri=self.tracking_uri, experiment=self.experiment,
                            registered_model=self.registered_model, artifact_location=self.artifact_location,
                            ui_url=self.ui_url, credentials=self.credentials)

    def trains(self) -> str:
        """What this job trains, in words (the ``airflow_mlops.entrypoint`` tag, log lines)."""
        if self.builtin is not None:
            return str(self.builtin.estimator or self.builtin.callable)
        return str(self.entrypoint or self.script or f"-m {self.module}")


def job_for_stage(spec: "TrainStage", ctx: "StageContext") -> GpuTrainJob:
    """The job of a YAML train stage: its estimator/callable, params and columns, the upstream
    preprocess stage's ``train_path``/``test_path``, and the context's MLflow target, tags,
    resources (``resources.gpu`` decides the GPUs; without it, those the process sees), prices
    and ``gpu_metrics``. Raises StageFailed when no upstream stage gave the datasets."""
    from airflow_mlops.telemetry.cost import as_prices, resources_from

    settings = ctx.gpu_metrics or {}
    resources = ctx.resources
    if resources is not None and not isinstance(resources, dict):
        resources = resources.held()
    return GpuTrainJob(
        builtin=BuiltinTraining(estimator=spec.estimator, callable=spec.callable, metrics=list(spec.metrics),
                                engine=ctx.engine, spark=ctx.spark),
        hyperparams=dict(spec.params),
        gpus=None if resources is None else resources_from(resources, gpus_held=0).gpu,
        gpus_asked_by="resources.gpu",
        tracking_uri=ctx.mlflow.tracking_uri, experiment=ctx.mlflow.experiment,
        registered_model=ctx.mlflow.registered_model, artifact_location=ctx.mlflow.artifact_location,
        ui_url=ctx.mlflow.ui_url, run_name=f"{ctx.pipeline_id}.{ctx.stage_name}", tags=dict(ctx.tags),
        resources=resources, prices=as_prices(ctx.prices),
        sample_interval_s=settings.get("sample_interval") or 1.0,
        prometheus_port=settings.get("prometheus_port"), pushgateway_url=settings.get("pushgateway_url"),
        data=TrainData(train_path=ctx.find("train_path"), test_path=ctx.find("test_path"), target=spec.target,
                       features=spec.features, conn_id=ctx.data_conn_id),
    )


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str:
    """Where people open MLflow: ``ui_url`` (a pipeline's ``mlflow.ui_url``), else Airflow's
    ``[mlops] mlflow_ui_url`` (``$AIRFLOW__MLOPS__MLFLOW_UI_URL``; the UI plugin's pages use it
    too), else ``$AIRFLOW_MLOPS_MLFLOW_UI_URL``, else the tracking URI when it is a server
    (http/https), else ``mlflow ui``'s default address."""
    base = ui_url or configured_ui_url() or os.environ.get(UI_URL_ENV)
    if not base:
        base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://localhost:5000"
    return base.rstrip("/")


def configured_ui_url() -> str | None:
    """Airflow's ``[mlops] mlflow_ui_url``: its environment variable anywhere, the configuration
    file only where Airflow is already loaded (the worker, the api-server). A training process or
    a pod never imports Airflow for it: that would set up Airflow's logging there."""
    import sys

    value = os.environ.get("AIRFLOW__MLOPS__MLFLOW_UI_URL")
    if value or "airflow.configuration" not in sys.modules:
        return value or None
    try:
        from airflow.configuration import conf

        return conf.get("mlops", "mlflow_ui_url", fallback=None) or None
    except Exception:  # noqa: BLE001 - a configuration that cannot be read names no address
        return None


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run (the "MLflow run" extra link)."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def prometheus_labels(tags: dict[str, str]) -> dict[str, str]:
    """The Airflow task a series belongs to, from the MLflow tags every try carries."""
    names = (("dag_id", "airflow.dag_id"), ("task_id", "airflow.task_id"), ("run_id", "airflow.run_id"))
    return {label: tags[tag] for label, tag in names if tag in tags}
