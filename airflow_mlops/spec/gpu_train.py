"""GpuTrainOperator's arguments as one model, beside the train stage's own settings (``training``).

The operator validates its keyword arguments with ``GpuTrainSpec`` when the DAG is parsed, and
again with the rendered values when the task runs (``RENDERED`` in the validation context): the
template fields (``entrypoint``, ``script``, ``module``, ``args``, ``hyperparams``,
``checkpoint_dir``, ``train_path``, ``test_path``, ``gpu_ids``, ``env``) may hold a Jinja template
until then. Each problem is an error at its argument (``loc``), so ``airflow-mlops validate``
points at its line of a pipeline's ``args:``. What the model cannot know (where the training code
is, what a backend needs, which extras are installed) the operator checks after it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_mlops.spec.base import IMPORT_PATH, Strict
from airflow_mlops.spec.models import BUILTIN_PROFILES, KubernetesSettings, MlflowSettings, Resources, with_profile
from airflow_mlops.spec.prices import PriceTable
from airflow_mlops.spec.renamed import renamed_value
from airflow_mlops.spec.templating import TEMPLATABLE_VALUE, allows_template
from airflow_mlops.spec.training import Distributed

BACKENDS = ("batch", "kubernetes")  # "local", the old name of "batch", is read too (spec/renamed.py)


def parse_gpu_ids(value: Any, error: Any) -> list[int]:
    """GPU indices as users give them: ``[0, 1]``, ``"0,1"`` or ``"[0, 1]"`` (a rendered XCom) → [0, 1].
    ``error(message)`` makes the exception raised for anything else."""
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        try:
            value = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise error(f"gpu_ids must be GPU indices like [0, 1] or '0,1', got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise error(f"gpu_ids must be GPU indices like [0, 1] or '0,1', got {value!r}")
    ids = list(value)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids) or len(set(ids)) != len(ids):
        raise error(f"gpu_ids must be distinct GPU indices ≥ 0, like [0, 1], got {value!r}")
    return ids


def _or_also(*alternatives: dict[str, Any]) -> Any:
    """A field's JSON Schema (for editors) also takes these spellings, which the validators read."""
    def extend(schema: dict[str, Any]) -> None:
        schema["anyOf"] = [*alternatives, *schema.get("anyOf", ())]
    return extend


def _refuse(message: str) -> PydanticCustomError:
    return PydanticCustomError("argument", "{message}", {"message": message})


def _whole(value: Any, low: int, high: int | None = None) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int) and value >= low
            and (high is None or value <= high))


class GpuTrainSpec(Strict):
    """What GpuTrainOperator trains, on what, and where the results go. Exactly one of
    ``entrypoint``, ``script``, ``module``."""

    entrypoint: str | None = Field(
        None, description="'package.module:function', called in a fresh process with the keyword arguments it "
        "declares among params (hyperparams), checkpoint_dir, train, test, target, features.")
    script: str | None = Field(None, description="A Python file run as `python script args...` (relative: to the "
                               "DAG file's folder).")
    module: str | None = Field(None, description="A module run as `python -m module args...`.")
    args: list[str] = Field(default_factory=list, description="Command-line arguments of script/module.",
                            json_schema_extra={"items": {"type": ["string", "number"]}})
    gpus: int | None = Field(None, description="How many GPUs (whole, ≥ 0; default 1): those with the most free "
                             "memory; 0 hides all.")
    gpu_ids: Annotated[list[int] | None, *TEMPLATABLE_VALUE] = Field(
        None, description="Exactly these NVML indices ([0, 1] or '0,1'), e.g. GpuAvailableSensor's XCom.",
        json_schema_extra=_or_also({"type": "string", "pattern": r"^[\s\[(]*\d+(\s*,\s*\d+)*[\s\])]*$"}))
    hyperparams: dict[str, Any] = Field(default_factory=dict, description="Logged as MLflow params, passed as "
                                        "`params`.")
    checkpoint_dir: str | None = Field(None, description="Where the entrypoint saves and resumes checkpoints "
                                       "(default $AIRFLOW_MLOPS_HOME/checkpoints/<dag>/<run>/<task>).")
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings, description="Tracking URI or connection, "
                                   "experiment, registered model (both default to pipeline_id).")
    pipeline_id: str | None = Field(None, description="Names the experiment and model; default: the DAG id.")
    train_path: str | None = Field(None, description="The training dataset of a callable entrypoint (a path).")
    test_path: str | None = Field(None, description="The test dataset (a path); needs train_path.")
    target: str | None = Field(None, description="The label column; required with datasets.")
    features: list[str] | None = Field(None, description="The feature columns (default: every other column).")
    upstream_task: str | None = Field(None, description="Instead of the paths: the task id of a preprocess stage "
                                      "whose XCom holds train_path/test_path.")
    resources: Resources | None = Field(None, description="{cpu, memory, gpu} held, or a built-in profile name "
                                        "('training', 'inference', 'small'): for the cost and the pod.",
                                        json_schema_extra=_or_also({"enum": sorted(BUILTIN_PROFILES)}))
    prices: PriceTable = Field(default_factory=PriceTable, description="Price per hour of a GPU, a CPU, a GiB.")
    sample_interval: float = Field(1.0, description="Seconds between NVML samples (> 0).")
    backend: Literal["batch", "kubernetes"] = Field(
        "batch", description="'batch': a subprocess of the worker ('local' is its deprecated name); 'kubernetes': "
        "a GPU pod running the same job.")
    kubernetes: KubernetesSettings | None = Field(None, description="Pod settings (image required) for the "
                                                  "kubernetes backend.")
    distributed: Distributed | None = Field(None, description="Multi-node torchrun: `nodes` pods each holding "
                                            "`resources` (kubernetes backend).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables of the training "
                                "process.")
    prometheus_port: int | None = Field(None, description="Serve the GPU figures at :<port>/metrics (0-65535).")
    pushgateway_url: str | None = Field(None, description="Push the GPU figures to this Pushgateway (http(s) URL).")
    mlflow_ui_url: str | None = Field(None, description="Base URL of the MLflow UI for the 'MLflow run' link.")

    # --- one argument at a time ----------------------------------------------------------------

    @field_validator("entrypoint")
    @classmethod
    def _import_path(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and not allows_template(v, info) and not re.match(IMPORT_PATH, v):
            raise _refuse(f"entrypoint must look like 'package.module:function', got {v!r}")
        return v

    @field_validator("args", mode="before")
    @classmethod
    def _arg_list(cls, v: Any) -> Any:
        if isinstance(v, (str, bytes, dict)) or not isinstance(v, (list, tuple)) or \
                not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in v):
            raise _refuse(f"args must be a list of strings, got {v!r}")
        return [str(a) for a in v]

    @field_validator("args")
    @classmethod
    def _args_for_programs(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if v and info.data.get("entrypoint"):
            raise _refuse("args= are for script=/module=; a callable entrypoint takes hyperparams=")
        return v

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_count(cls, v: Any) -> Any:
        if v is not None and not _whole(v, 0):
            raise _refuse(f"gpus must be a whole number ≥ 0, got {v!r}")
        return v

    @field_validator("gpu_ids", mode="before")
    @classmethod
    def _gpu_indices(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None or allows_template(v, info):
            return v
        return parse_gpu_ids(v, _refuse)

    @field_validator("hyperparams", mode="before")
    @classmethod
    def _mapping(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise _refuse(f"hyperparams must be a dict, got {type(v).__name__}")
        return v

    @field_validator("test_path")
    @classmethod
    def _test_after_train(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("train_path") is None:
            raise _refuse("test_path needs train_path")
        return v

    @field_validator("resources", mode="before")
    @classmethod
    def _profile_name(cls, v: Any) -> Any:
        return cls._with_profile(v) if isinstance(v, str) else v

    @field_validator("resources")
    @classmethod
    def _inline_over_profile(cls, v: Resources | None) -> Resources | None:
        return cls._with_profile(v) if v is not None and v.profile else v

    @staticmethod
    def _with_profile(v: str | Resources) -> Resources | None:
        try:
            return with_profile(v, BUILTIN_PROFILES)
        except ValueError as exc:
            raise _refuse(str(exc)) from None

    @field_validator("sample_interval", mode="before")
    @classmethod
    def _seconds(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise _refuse(f"sample_interval must be a number of seconds > 0, got {v!r}")
        return v

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_name(cls, v: Any) -> Any:
        v = renamed_value("GpuTrainOperator", "backend", v)
        if v not in BACKENDS:
            raise _refuse(f"backend must be one of {BACKENDS}, got {v!r}")
        return v

    @field_validator("distributed")
    @classmethod
    def _pods_only(cls, v: Distributed | None, info: ValidationInfo) -> Distributed | None:
        backend = info.data.get("backend")
        if v is not None and backend not in (None, "kubernetes"):
            raise _refuse(f"distributed= runs a torchrun group of pods: it needs backend='kubernetes', got {backend!r}")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _strings(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
            raise _refuse("env must map names to string values")
        return v

    @field_validator("prometheus_port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        if v is not None and not _whole(v, 0, 65535):
            raise _refuse(f"prometheus_port must be a port number, got {v!r}")
        return v

    @field_validator("pushgateway_url", mode="before")
    @classmethod
    def _http(cls, v: Any) -> Any:
        if v is not None and not str(v).startswith(("http://", "https://")):
            raise _refuse(f"pushgateway_url must be an http(s) URL, got {v!r}")
        return v

    # --- across arguments ------------------------------------------------------------------------

    @model_validator(mode="after")
    def _combinations(self) -> "GpuTrainSpec":
        given = [name for name in ("entrypoint", "script", "module") if getattr(self, name)]
        if len(given) != 1:
            raise _refuse(f"give exactly one of entrypoint= ('pkg.module:function'), script= or module=; "
                          f"got {given or 'none'}")
        if self.gpus is not None and self.gpu_ids is not None:
            raise _refuse("give gpus= (how many) or gpu_ids= (which), not both")
        data_given = any(v is not None for v in (self.train_path, self.test_path, self.upstream_task))
        if data_given and not self.entrypoint:
            raise _refuse("train_path/test_path/upstream_task hand datasets to a callable entrypoint; "
                          "scripts read their own")
        if data_given and not self.target:
            raise _refuse("target= (the label column) is required with datasets")
        if self.train_path is not None and self.upstream_task is not None:
            raise _refuse("give train_path/test_path or upstream_task, not both")
        return self

    # --- what the job gets -----------------------------------------------------------------------

    def gpu_count(self) -> int | None:
        """How many GPUs to pick (None when ``gpu_ids`` names them): ``gpus``, else 1."""
        return None if self.gpu_ids is not None else (1 if self.gpus is None else self.gpus)
