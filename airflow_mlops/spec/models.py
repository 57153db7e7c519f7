"""The pipeline YAML as pydantic models: the single source of truth for validation, the JSON
Schema (``airflow-mlops schema``) and the error messages."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_mlops._core.units import Duration
from airflow_mlops.spec.backend_settings import (  # noqa: F401 (re-exported: spec.models is a documented import path)
    KubernetesSettings,
    SecretEnv,
    SparkSettings,
    Toleration,
    VolumeMount,
)
from airflow_mlops.spec.base import IMPORT_PATH, Strict, kind_from_name_schema, overlay_model
from airflow_mlops.spec.dag import DagSettings, ParamsField, param_specs
from airflow_mlops.spec.data import (  # noqa: F401 (re-exported: spec.models is a documented import path)
    COLUMN_TYPES,
    Approval,
    Bounds,
    Comparison,
    DataFormat,
    DataInput,
    DriftThresholds,
    QualityGates,
    Split,
    Step,
    Threshold,
    WritableLocation,
    canonical_type,
)
from airflow_mlops.spec.prices import GpuMetricsSettings, PriceTable
from airflow_mlops.spec.resources import (  # noqa: F401 (re-exported: spec.models is a documented import path)
    BUILTIN_PROFILES,
    Resources,
    with_profile,
)
from airflow_mlops.spec.stream import StreamServeSettings
from airflow_mlops.spec.training import Distributed

Backend = Literal["batch", "spark", "kubernetes"]
AVAILABLE_BACKENDS: tuple[str, ...] = Backend.__args__  # what backends/ can build
# Backends that run a server mode (serve's ``mode: online``) as a long-lived server of their own (a
# Deployment: backends/kubernetes/serving.py); on the others the kind's engine starts the server in
# the task and checks it with a sample of the stage's input.
SERVER_BACKENDS: tuple[str, ...] = ("kubernetes",)
STAGE_KINDS = ("preprocess", "train", "validate", "serve", "drift", "custom")


# --- pipeline-level settings -------------------------------------------------------------------


class MlflowSettings(Strict):
    """Where results go. Tracking URI precedence: ``tracking_uri`` > ``conn_id`` (an Airflow
    connection whose host is the URI) > ``MLFLOW_TRACKING_URI`` > a SQLite store under
    ``$AIRFLOW_MLOPS_HOME`` (default ``$AIRFLOW_HOME/mlops``)."""

    tracking_uri: str | None = Field(None, description="The MLflow tracking URI (http(s)://, sqlite:///, "
                                     "databricks...); default $MLFLOW_TRACKING_URI, else $AIRFLOW_MLOPS_HOME/mlflow.db.")
    conn_id: str | None = Field(None, description="An Airflow connection of type mlflow to take the tracking URI "
                                "(and credentials) from, instead of tracking_uri.")
    experiment: str | None = Field(None, description="Defaults to the pipeline id.")
    registered_model: str | None = Field(None, description="Defaults to the pipeline id.")
    artifact_location: str | None = Field(None, description="Only used when the experiment is created.")
    ui_url: str | None = Field(
        None, description="Base URL of the MLflow UI, for the task's 'MLflow run' link (default: "
        "$AIRFLOW_MLOPS_MLFLOW_UI_URL, else the tracking URI when it is http(s), else http://localhost:5000).")

    @field_validator("tracking_uri")
    @classmethod
    def _absolute_sqlite(cls, v: str | None) -> str | None:
        from airflow_mlops._core.tracking_uri import store_problem

        # The same rule for every source of the URI (hooks/mlflow.py). A leading ~ or $VAR is
        # expanded in the worker, which then checks the result again.
        problem = store_problem(v, parse_time=True)
        if problem:
            raise PydanticCustomError("relative_sqlite", "{problem}", {"problem": problem})
        return v


# --- data references ---------------------------------------------------------------------------

KIND = "What the stage does; taken from the stage's name when the name is a kind."


class StageBase(Strict):
    backend: Backend | None = Field(None, description="Where the stage runs; defaults to the pipeline's backend.")
    depends_on: list[str] | None = Field(None, description="Stages this one waits for; default: the stage before it.")
    resources: str | Resources | None = Field(None, description="A profile name or inline cpu/memory/gpu.")
    retries: int | None = Field(None, ge=0, description="Retries of the stage's tasks; default: dag.retries.")
    execution_timeout: Duration | None = Field(None, description="How long one try of the stage's task may run "
                                               "('2h', seconds or ISO 8601); default: dag.execution_timeout.")
    doc: str | None = Field(None, description="Shown in the Airflow UI on the stage's tasks.")
    queue: str | None = Field(None, description="The executor queue of the stage's tasks (Celery: the workers that "
                              "listen on it, e.g. GPU machines); default Airflow's [operators] default_queue.")
    pool: str | None = Field(None, description="The Airflow pool the stage's tasks take a slot of.")
    kubernetes: KubernetesSettings | None = Field(None, description="Overrides the pipeline's kubernetes settings.")


    @field_validator("depends_on", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class PreprocessStage(StageBase):
    """Read (``input``, named ``inputs`` or your ``callable``) → transform (``sql`` on Spark, a
    ``transform`` function, or built-in ``steps``) → ``quality`` gates → ``split`` → write."""

    kind: Literal["preprocess"] = Field("preprocess", description=KIND)
    callable: str | None = Field(None, pattern=IMPORT_PATH, description="'package.module:function'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the callable.")
    input: DataInput | None = Field(None, description="The one dataset to read: a path or URI, a table, or a "
                                    "scikit-learn dataset.")
    inputs: dict[str, DataInput] | None = Field(None, description="Named inputs, for 'sql' (as tables) or 'transform'.")
    sql: str | None = Field(None, description="Spark SQL over the named inputs (spark backend).")
    transform: str | None = Field(
        None, pattern=IMPORT_PATH, description="'package.module:function' called with the inputs as DataFrames, by name."
    )
    steps: list[Step] = Field(default_factory=list, description="Built-in transformations, in order (dropna, "
                              "rename, fillna ...).")
    quality: QualityGates | None = Field(None, description="Checks the data must pass before it is split; a failed "
                                         "check fails the stage, naming it.")
    split: Split | None = Field(default_factory=Split, description="The train/test split; null writes one dataset.")
    format: DataFormat = Field("parquet", description="The format the stage writes.")
    output: WritableLocation | None = Field(None, description="Write here instead of <data_dir>/<stage>/<run id>.")
    spark: SparkSettings | None = Field(None, description="Overrides the pipeline's spark settings.")

    @model_validator(mode="after")
    def _one_source(self) -> "PreprocessStage":
        given = [k for k in ("callable", "input", "inputs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PydanticCustomError("preprocess_source", "give exactly one of 'callable', 'input' or 'inputs'")
        if self.sql and self.transform:
            raise PydanticCustomError("preprocess_source", "give 'sql' or 'transform', not both")
        return self


class TrainStage(StageBase):
    """Either ``estimator`` (a scikit-learn style class, or on the spark backend a Spark ML one,
    fitted with ``params``) or ``callable`` (your function returning ``(model, metrics)``)."""

    kind: Literal["train"] = Field("train", description=KIND)
    estimator: str | None = Field(None, description="Import path of an estimator class, e.g. 'sklearn.ensemble."
                                  "RandomForestClassifier', or on the spark backend 'pyspark.ml.classification.LogisticRegression'.")
    callable: str | None = Field(None, pattern=IMPORT_PATH, description="'package.module:function' called with "
                                 "train, test, target, features, params; returns (model, metrics).")
    params: dict[str, Any] = Field(default_factory=dict, description="The estimator's hyperparameters (or the "
                                   "callable's params); templates allowed ('{{ params.depth }}').")
    target: str = Field(..., description="Label column.")
    features: list[str] | None = Field(None, description="Feature columns; default: all but the target.")
    metrics: list[Literal["accuracy", "f1", "precision", "recall", "roc_auc", "log_loss", "rmse", "mae", "r2"]] = Field(
        default_factory=lambda: ["accuracy"], description="Metrics computed on the test split and logged to MLflow."
    )
    spark: SparkSettings | None = Field(None, description="Overrides the pipeline's spark settings (spark backend).")
    distributed: Distributed | None = Field(None, description="Multi-node torchrun on the kubernetes backend.")

    @model_validator(mode="after")
    def _estimator_or_callable(self) -> "TrainStage":
        if (self.estimator is None) == (self.callable is None):
            raise PydanticCustomError("train_source", "give exactly one of 'estimator' or 'callable'")
        return self


ALIAS = r"^[A-Za-z_][\w-]*$"


class ValidateStage(StageBase):
    """Thresholds on the candidate, then (with ``compare``) champion vs challenger."""

    kind: Literal["validate"] = Field("validate", description=KIND)
    thresholds: dict[str, Threshold] = Field(default_factory=dict, description="metric → {min, max}.")
    compare: dict[str, Comparison] = Field(
        default_factory=dict, description="metric → how the candidate must beat the current champion."
    )
    alias: str = Field("champion", pattern=ALIAS, description="MLflow alias set on a passing version.")
    previous_alias: str = Field(
        "previous-champion", pattern=ALIAS, description="Moved to the replaced champion, for rollback."
    )
    on_reject: Literal["fail", "skip"] = Field(
        "fail", description="When the champion wins (or the approver rejects): fail the task, or skip it and "
        "serving after it."
    )
    approval: Approval | None = Field(
        None, description="A person approves the promotion in Airflow's UI before the alias moves (Airflow's "
        "human-in-the-loop, 3.1+): the validate group gets an 'approval' task after 'run'.")

    @field_validator("alias", "previous_alias")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        # MLflow refuses these alias names: 'latest' and 'v<number>' already mean a version.
        if re.fullmatch(r"latest|v\d+", v, flags=re.IGNORECASE):
            raise PydanticCustomError(
                "reserved_alias",
                "MLflow reserves the alias {v} ('latest' and 'v<number>' already name versions); choose another, "
                "e.g. 'champion' or 'production'", {"v": repr(v)})
        return v


class ServeStage(StageBase):
    """batch: score a dataset; online: run an MLflow model server for the validated version;
    stream: score a Kafka topic into another (bounded, at least once)."""

    kind: Literal["serve"] = Field("serve", description=KIND)
    mode: Literal["batch", "online", "stream"] = Field(
        "batch", description="batch: score a dataset; online: run a model server; stream: score a Kafka topic.")
    model: str | None = Field(
        None, pattern=r"^models:/[^/@]+(@[A-Za-z_][\w-]*|/\d+)$",
        description="The registered model to serve, 'models:/<name>@<alias>' or 'models:/<name>/<version>'; an alias "
        "is resolved to its version once per run. Default: the version an upstream train/validate stage produced, "
        "else the pipeline's mlflow.registered_model at 'champion'.",
    )
    stream: StreamServeSettings | None = Field(None, description="mode: stream — Kafka topics, bounds, dead letters.")
    host: str = Field("127.0.0.1", description="online: the interface the model server listens on.")
    port: int = Field(5001, ge=1, le=65535, description="online: the model server's port.")
    workers: int = Field(1, ge=1, description="online: uvicorn workers of the model server.")
    replicas: int = Field(1, ge=1, description="online on kubernetes: the Deployment's minimum replicas.")
    max_replicas: int = Field(3, ge=1, description="online on kubernetes: the autoscaler's maximum.")
    target_cpu_percent: int = Field(70, ge=1, le=100, description="online on kubernetes: the autoscaler's CPU target.")
    input: DataInput | None = Field(None, description="Data to score; default: the preprocess stage's test split.")
    format: DataFormat = Field("parquet", description="batch: the format the predictions are written in.")
    on_bad_rows: Literal["fail", "set_aside"] = Field(
        "fail", description="batch: rows that do not fit the model's signature (a missing value in an integer "
        "column...) fail the stage, or are set aside in rejected.<format> beside the predictions, with the reason.")
    output: WritableLocation | None = Field(None, description="Write predictions here instead of "
                                            "<data_dir>/<stage>/<run id>.")
    spark: SparkSettings | None = Field(None, description="Overrides the pipeline's spark settings.")

    @model_validator(mode="after")
    def _stream_settings(self) -> "ServeStage":
        if (self.mode == "stream") != (self.stream is not None):
            raise PydanticCustomError(
                "stream_settings", "mode: stream needs a 'stream' mapping (topics, output_topic, ...), "
                "and 'stream' is only for mode: stream")
        return self

    @property
    def kafka_conn_id(self) -> str | None:
        """The Airflow connection a stream-mode stage reads (None in other modes): looked up once
        by the stage's operator, never by the stage (``StageContext.kafka``)."""
        return self.stream.kafka_conn_id if self.stream is not None else None


class DriftStage(StageBase):
    """Compare a new dataset with the training reference, per feature: PSI over binned numeric or
    categorical values, and the Kolmogorov–Smirnov statistic for numeric ones."""

    kind: Literal["drift"] = Field("drift", description=KIND)
    current: DataInput = Field(..., description="The new data.")
    reference: DataInput | None = Field(None, description="Default: the train split of an upstream preprocess stage.")
    features: list[str] | None = Field(None, description="Default: every column both datasets have, minus 'exclude'.")
    exclude: list[str] = Field(default_factory=list, description="Columns never compared (labels, ids).")
    bins: int = Field(10, ge=2, le=100, description="Quantile bins of the reference, for numeric PSI.")
    thresholds: DriftThresholds = Field(default_factory=lambda: DriftThresholds(psi=0.2, ks=0.2),
                                        description="The limits above which a feature drifted (per_feature overrides).")
    per_feature: dict[str, DriftThresholds] = Field(default_factory=dict, description="Overrides per column.")
    on_drift: Literal["trigger", "fail", "report"] = Field(
        "trigger",
        description="trigger: succeed (emitting the stage's Asset, which a training pipeline can be scheduled "
        "on) only when drift is found, else skip; fail: fail the task on drift; report: always succeed.",
    )


class CustomStage(StageBase):
    kind: Literal["custom"] = Field("custom", description=KIND)
    operator: str = Field(..., pattern=IMPORT_PATH, description="'package.module:OperatorClass'.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the operator.")


Stage = Annotated[
    Union[PreprocessStage, TrainStage, ValidateStage, ServeStage, DriftStage, CustomStage], Field(discriminator="kind")
]


class PipelineDefaults(Strict):
    """What a ``_defaults.yaml`` up the folder tree may set for every pipeline below it."""

    backend: Backend = Field("batch", description="Where stages run unless a stage says otherwise: batch (the "
                             "Airflow worker), spark or kubernetes.")
    dag: DagSettings = Field(default_factory=DagSettings, description="The Airflow DAG's settings: schedule, dates, "
                             "retries, callbacks, default_args.")
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings, description="Where runs and models are tracked "
                                   "and registered.")
    resource_profiles: dict[str, Resources] = Field(default_factory=dict, description="Named cpu/memory/gpu sets "
                                                    "that stages refer to by name (resources: gpu-large).")
    data_dir: WritableLocation | None = Field(
        None, description="Where stages write data: an absolute path or an object-storage URI (s3://, gs://, abfs://); "
        "default $AIRFLOW_MLOPS_HOME/data/<id>.")
    data_conn_id: str | None = Field(
        None, description="The Airflow connection for a data_dir, input or output URI (default: the scheme's own, "
        "e.g. aws_default).")
    spark: SparkSettings = Field(default_factory=SparkSettings, description="The spark backend's master and "
                                 "configuration.")
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings, description="The kubernetes "
                                           "backend's namespace, image and pod settings.")
    prices: PriceTable = Field(
        default_factory=PriceTable,
        description="Prices per hour for the cost that training tasks record: resources held x wall-clock hours.")
    gpu_metrics: GpuMetricsSettings = Field(default_factory=GpuMetricsSettings, description="How training tasks "
                                            "sample and export NVML telemetry.")
    params: ParamsField = Field(
        default_factory=dict, description="The DAG's Params, by name: the Airflow trigger form shows them and "
        "templates read them as {{ params.<name> }}; 'name: value' is short for 'name: {default: value}'.")
    profiles: dict[str, DefaultsProfile] = Field(default_factory=dict, description=(
        "Pipeline profiles by name (dev, prod...), each merged deeply over the pipeline when active "
        "(AIRFLOW_MLOPS_PROFILE, or the Airflow Variable mlops_profile); not resource_profiles (cpu/memory/gpu sets)."))

    _params = field_validator("params", mode="before")(classmethod(lambda cls, v: param_specs(v)))


_PROFILE_DOC = "What this profile changes: merged deeply over the pipeline (lists replaced whole) when it is active."
_params_short = {"_params": field_validator("params", mode="before")(classmethod(lambda cls, v: param_specs(v)))}
DefaultsProfile = overlay_model("DefaultsProfile", PipelineDefaults, _PROFILE_DOC, ("profiles",), _params_short)
PipelineProfile = overlay_model(
    "PipelineProfile", PipelineDefaults, _PROFILE_DOC, ("profiles",), _params_short,
    description=(str | None, Field(None, description="The DAG's description in the Airflow UI.")),
    stages=(dict[str, dict[str, Any]] | None, Field(None, description="Fields to change in the pipeline's own "
            "stages, by stage name, e.g. {train: {resources: {memory: 8Gi}}} (a profile adds no stage).")))
PipelineDefaults.model_rebuild()


class Pipeline(PipelineDefaults):
    """A pipeline YAML: one Airflow DAG whose stages run in order on their backends."""

    id: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="The DAG id.")
    description: str | None = Field(None, description="The DAG's description in the Airflow UI.")
    stages: dict[str, Stage] = Field(..., min_length=1, description="The stages, by name, in order; a name that is "
                                     "a kind (train) sets the kind.", json_schema_extra=lambda s: kind_from_name_schema(s, STAGE_KINDS))
    profiles: dict[str, PipelineProfile] = Field(  # type: ignore[assignment]
        default_factory=dict, description=PipelineDefaults.model_fields["profiles"].description)

    def backend_of(self, stage: Any) -> str:
        """Where ``stage`` runs: its own ``backend``, else the pipeline's. The one place this is
        decided; a custom stage's operator runs wherever Airflow runs it, whatever this says."""
        return stage.backend or self.backend

    def hosts_server(self, stage: Any) -> bool:
        """Whether ``stage``'s backend runs a server mode as a server of its own (``SERVER_BACKENDS``)
        rather than the kind's engine in the task; read by ``backends.stage_task_call`` and
        ``stages.needs`` (only a server the task starts is sent a sample)."""
        return self.backend_of(stage) in SERVER_BACKENDS

    @field_validator("stages", mode="before")
    @classmethod
    def _kind_from_name(cls, v: Any) -> Any:
        """A stage named after a kind (``train:``) needs no ``kind:``."""
        if isinstance(v, dict):
            return {
                name: {"kind": name, **body} if isinstance(body, dict) and "kind" not in body and name in STAGE_KINDS else body
                for name, body in v.items()
            }
        return v
