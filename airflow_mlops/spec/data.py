"""The data a stage reads and checks: inputs, the train/test split, pandas steps, column types and
data-quality gates, and the metric thresholds a model is judged by (part of the pipeline YAML's models; ``spec.models`` re-exports them)."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_mlops._core.storage import location_problem, scheme_of
from airflow_mlops._core.units import Duration
from airflow_mlops.spec.base import Strict
from airflow_mlops.spec.templating import TEMPLATABLE_VALUE

DataFormat = Literal["csv", "parquet"]


def _writable(value: str) -> str:
    problem = location_problem(value)
    if problem:
        raise PydanticCustomError("location", "{problem}", {"problem": problem})
    return value


def _readable(value: str) -> str:
    problem = location_problem(value, relative_ok=True)
    if problem:
        raise PydanticCustomError("location", "{problem}", {"problem": problem})
    return value


# Where stage data is written (data_dir, an output): an absolute path or an object-storage URI
# (_core.storage); a relative path is refused, since it would land in whichever folder a worker
# runs in, or inside a dags folder that git-sync replaces.
WritableLocation = Annotated[str, AfterValidator(_writable)]
# What a stage reads: the same, or a path relative to the pipeline's file (data shipped with it).
ReadableLocation = Annotated[str, AfterValidator(_readable)]


class DataInput(Strict):
    """A dataset to read: a path/URI, or a scikit-learn bundled dataset (demos and tutorials)."""

    path: ReadableLocation | None = Field(
        None, description="An absolute path, a path relative to the pipeline's file, or an object-storage URI "
        "(s3://, gs://, abfs://).")
    format: DataFormat | None = Field(None, description="Inferred from the extension when omitted.")
    sklearn_dataset: str | None = Field(None, description="e.g. 'breast_cancer', 'iris', 'wine'.")
    conn_id: str | None = Field(None, description="The Airflow connection for a URI path (default: the pipeline's "
                                "data_conn_id, else the scheme's default connection).")

    @model_validator(mode="after")
    def _one_source(self) -> "DataInput":
        if (self.path is None) == (self.sklearn_dataset is None):
            raise PydanticCustomError("one_source", "give exactly one of 'path' or 'sklearn_dataset'")
        return self


def _relative(path: str | None) -> bool:
    return bool(path) and not path.startswith(("/", "~", "$", "{")) and scheme_of(path) is None


def anchored_inputs(stages: dict[str, Any], folder: str) -> dict[str, Any] | None:
    """The stages with every relative input ``path`` joined to ``folder`` (the pipeline file's
    folder as written: through a git-sync symlink, never its target, so the path stays valid
    after the next sync); None when no input is relative."""
    changed = False

    def anchored(value: Any) -> Any:
        nonlocal changed
        if isinstance(value, DataInput) and _relative(value.path):
            changed = True
            return value.model_copy(update={"path": os.path.join(folder, value.path)})
        if isinstance(value, dict):
            return {k: anchored(v) for k, v in value.items()}
        return value

    out = {}
    for name, stage in stages.items():
        update = {f: new for f in type(stage).model_fields if (new := anchored(old := getattr(stage, f))) is not old}
        out[name] = stage.model_copy(update=update) if update else stage
    return out if changed else None


class Split(Strict):
    test_fraction: float = Field(0.2, gt=0, lt=1, description="The share of rows held out for testing.")
    seed: int = Field(42, description="The random seed of the split (the same seed, the same split).")
    stratify: str | None = Field(None, description="Column to stratify the split by.")


class Step(Strict):
    """One built-in transform; exactly one key per step."""

    dropna: list[str] | bool | None = Field(None, description="Drop rows with nulls (in these columns).")
    drop: list[str] | None = Field(None, description="Drop these columns.")
    rename: dict[str, str] | None = Field(None, description="Rename columns: {old: new}.")
    fillna: dict[str, Any] | None = Field(None, description="Fill nulls per column: {column: value}.")
    query: str | None = Field(None, description="Keep rows matching a pandas query expression.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Step":
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "one_step", "a step has exactly one of {choices}, got {given}",
                {"choices": ", ".join(type(self).model_fields), "given": given or "none"},
            )
        return self


# --- stages --------------------------------------------------------------------------------------


class Bounds(Strict):
    min: int | None = Field(None, ge=0, description="At least this many.")
    max: int | None = Field(None, ge=0, description="At most this many.")


# Column types as Spark prints them (simpleString), with the aliases people write.
COLUMN_TYPES = ("bigint", "int", "smallint", "tinyint", "double", "float", "string", "boolean", "date", "timestamp",
                "timestamp_ntz", "binary")
_TYPE_ALIASES = {"long": "bigint", "integer": "int", "str": "string", "bool": "boolean", "float64": "double"}


def canonical_type(name: str) -> str:
    """``'Long'`` → ``'bigint'``: the Spark simpleString of a type name people write."""
    name = name.strip().lower()
    return _TYPE_ALIASES.get(name, name)


class QualityGates(Strict):
    """Checks on a stage's output; a failed gate fails the task with the measured numbers."""

    row_count: Bounds | None = Field(None, description="Bounds on the number of rows.")
    max_null_fraction: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="column → highest allowed fraction of nulls (0 = no nulls)."
    )
    columns: dict[str, str | None] = Field(
        default_factory=dict,
        description="Required columns → type ('bigint'/'long', 'int', 'double', 'float', 'string', 'boolean', "
        "'date', 'timestamp') or null for any type.",
    )
    unique: list[str | list[str]] = Field(default_factory=list, description="Columns (or column lists) that must be unique.")

    @field_validator("columns")
    @classmethod
    def _known_types(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        nested = re.compile(r"^(decimal|array|map|struct)\b")
        bad = {col: t for col, t in v.items()
               if t is not None and canonical_type(t) not in COLUMN_TYPES and not nested.match(canonical_type(t))}
        if bad:
            import difflib

            col, t = next(iter(bad.items()))
            close = difflib.get_close_matches(canonical_type(t), [*COLUMN_TYPES, *_TYPE_ALIASES], n=1)
            raise PydanticCustomError(
                "column_type", "column '{col}': unknown type {t}{hint}; expected one of {choices} (or decimal(p,s), "
                "array<…>, map<…>, struct<…>)",
                {"col": col, "t": repr(t), "hint": f" (did you mean '{close[0]}'?)" if close else "",
                 "choices": ", ".join(COLUMN_TYPES)})
        return v


class Threshold(Strict):
    min: Annotated[float | None, *TEMPLATABLE_VALUE] = Field(None, description="The metric must be at least this "
                                                             "(a template allowed).")
    max: Annotated[float | None, *TEMPLATABLE_VALUE] = Field(None, description="The metric must be at most this "
                                                             "(a template allowed).")


class Comparison(Strict):
    """How a metric of the candidate must compare with the champion's to win."""

    direction: Literal["higher", "lower"] = Field("higher", description="Which way is better.")
    min_improvement: float = Field(0.0, ge=0, description="Required gain over the champion (0: at least as good).")
    relative: bool = Field(False, description="min_improvement is a fraction of the champion's value.")


class Approval(Strict):
    """A person approves the new champion before the alias moves (validate ``approval:``): Airflow's
    human-in-the-loop form shows the gate's comparison, with Approve and Reject."""

    timeout: Duration = Field(
        timedelta(hours=24), description="How long to wait for an answer (e.g. '24h', '90m', seconds); "
        "no answer in time rejects the version (default 24h).")
    assigned_users: list[str] = Field(
        default_factory=list, description="Airflow user ids or names who may answer (default: anyone who may "
        "edit the DAG's task instances).")
    subject: str | None = Field(None, description="The form's title (default: 'Promote <model> version <v> to "
                                "<alias>?').")


    @field_validator("timeout")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("the approval timeout must be longer than 0")
        return v


class DriftThresholds(Strict):
    psi: float | None = Field(None, gt=0, description="Population stability index above which a feature drifted.")
    ks: float | None = Field(None, gt=0, le=1, description="Kolmogorov–Smirnov statistic above which a feature drifted.")
