"""The DAG-level part of a pipeline YAML: scheduling, dates and time zones, task defaults, callbacks
and the DAG's trigger parameters (``params:``).

Two rules keep what a user writes from being lost:

* One setting written two ways is one setting. ``dag.default_args.retries`` is ``dag.retries``
  (same for owner, retry_delay, execution_timeout and start_date): ``lift_default_args`` moves it
  there in each file *before* the files are merged, so the nearest file wins whichever way each
  wrote it; one file writing both is refused.
* Callbacks are import paths resolved when the file is parsed; a string Airflow would take for a
  list of characters never reaches it.
"""

from __future__ import annotations

import importlib
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Iterable, Literal, Union

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_mlops._core.errors import did_you_mean, format_path
from airflow_mlops._core.units import Duration
from airflow_mlops.spec._source import Source
from airflow_mlops.spec.base import Strict
from airflow_mlops.spec.errors import PipelineSpecError, SpecIssue

# Task defaults that DagSettings has a field for: written under default_args they are moved there.
LIFTED = ("owner", "retries", "retry_delay", "execution_timeout", "start_date")
# Airflow's task callbacks (default_args) and DAG callbacks (dag.*): import paths.
TASK_CALLBACKS = ("on_execute_callback", "on_failure_callback", "on_success_callback", "on_retry_callback",
                  "on_skipped_callback")
DAG_CALLBACKS = ("on_success_callback", "on_failure_callback")
# DAG arguments of Airflow that a pipeline does not set: under default_args Airflow would ignore them.
DAG_ONLY = ("template_searchpath", "user_defined_macros", "user_defined_filters", "access_control",
            "jinja_environment_kwargs", "owner_links", "auto_register", "doc_md", "params", "dag_id")
REMOVED = {
    "sla": "Airflow 3 has no SLAs (removed in 3.0); use a deadline alert in a Python DAG, or execution_timeout",
    "sla_miss_callback": "Airflow 3 has no SLAs and no sla_miss_callback (removed in 3.0); use on_failure_callback "
                         "with execution_timeout",
}
CALLBACK_PATH = r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*(:[A-Za-z_][\w.]*)?$"
Callbacks = Union[str, list[str]]


def _start_date(v: Any) -> Any:
    """A date stays a date (midnight in the DAG's time zone); a date-time keeps its offset."""
    if isinstance(v, str):
        s = v.strip()
        try:
            return date.fromisoformat(s) if len(s) == 10 else datetime.fromisoformat(s)
        except ValueError:
            raise PydanticCustomError(
                "start_date", "expected a date like 2025-03-01 or a date-time like '2025-03-01T06:00:00+01:00', got {v}",
                {"v": repr(v)}) from None
    return v


def _timezone(v: Any) -> Any:
    if v is None:
        return v
    import zoneinfo

    if isinstance(v, str):
        try:
            zoneinfo.ZoneInfo(v)
            return v
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    names = zoneinfo.available_timezones()
    raise PydanticCustomError(
        "timezone", "unknown time zone {v}{hint}; expected an IANA name such as 'Europe/Berlin', 'America/New_York' "
        "or 'UTC'", {"v": repr(v), "hint": did_you_mean(v, names)})


class KafkaMessageTrigger(Strict):
    """Start a run when a message arrives on a Kafka topic: Airflow's ``AssetWatcher`` with the
    official Kafka provider's ``KafkaMessageQueueTrigger``, watched in the triggerer."""

    topics: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]] = Field(
        ..., min_length=1, description="Topics to watch (one message that passes 'filter' queues a run).")
    connection: str = Field(
        "kafka_default", min_length=1, description="Airflow connection of type 'kafka' (apache-airflow-providers-"
        "apache-kafka): its extra holds librdkafka settings and must give 'bootstrap.servers' and 'group.id' "
        "(the watcher's consumer group).")
    filter: str = Field(
        "airflow_mlops.kafka.watch:any_message", pattern=CALLBACK_PATH,
        description="'package.module:function' taking a confluent-kafka Message and returning what to put in the "
        "asset event (JSON-able), or None/False to skip the message. Default: every message starts a run.")
    poll_interval: float = Field(5.0, gt=0, description="Seconds the watcher waits after a skipped message.")

    @property
    def apply_function(self) -> str:
        """The filter as the dotted path the provider's trigger imports."""
        return self.filter.replace(":", ".")


class DagTrigger(Strict):
    """What starts a run besides a person: a message on a Kafka topic."""

    kafka: KafkaMessageTrigger = Field(..., description="Start a run for a message on these Kafka topics "
                                       "(Airflow's Kafka provider's message queue trigger).")


class DagSettings(Strict):
    """How the DAG is scheduled and retried (Airflow's DAG arguments and default_args)."""

    schedule: str | None = Field(None, description="Cron, preset ('@daily') or null for manual runs.")
    schedule_on_assets: list[str] = Field(
        default_factory=list,
        description="Run when these Airflow Assets (by name) get an event, e.g. another pipeline's drift stage "
        "'<pipeline id>.<stage name>'. Replaces 'schedule'.",
    )
    trigger: DagTrigger | None = Field(
        None, description="Event-driven start: 'trigger: {kafka: {topics: [...], connection: kafka_default}}' runs "
        "the DAG when a message arrives (an Asset with an AssetWatcher; needs the triggerer). Replaces 'schedule'.")
    start_date: datetime | date | None = Field(
        None, description="First logical date: a date (midnight in the DAG's time zone) or a date-time; an explicit "
        "offset ('2025-03-01T06:00:00+01:00') is kept. Default: none (a schedule then starts from when the DAG is "
        "first seen, and a run for any date, e.g. reprocessing a past day, runs every stage).")
    timezone: str | None = Field(
        None, description="IANA time zone the schedule runs in, e.g. 'Europe/Berlin': '0 6 * * *' stays at 06:00 local "
        "time across daylight-saving changes. Default: the start_date's offset, else Airflow's [core] default_timezone.")
    catchup: bool = Field(False, description="Run the schedule's missed intervals since start_date.")
    description: str | None = Field(None, description="The DAG's description (default: the pipeline's).")
    tags: list[str] = Field(default_factory=list, description="The DAG's tags ('airflow-mlops' is always added).")
    owner: str = Field("airflow", description="The tasks' owner shown in the UI.")
    retries: int = Field(0, ge=0, description="Retries of every task (a stage's retries win).")
    retry_delay: Duration = Field(timedelta(minutes=5), description="Wait between tries ('90s', '5m', seconds, ISO "
                                  "8601).")
    execution_timeout: Duration | None = Field(None, description="How long one try of a task may run (a stage's "
                                               "own wins).")
    max_active_runs: int | None = Field(None, ge=1, description="Runs of this DAG at once.")
    max_active_tasks: int | None = Field(None, ge=1, description="Task instances of this DAG running at once "
                                         "(Airflow's default: [core] max_active_tasks_per_dag).")
    dagrun_timeout: Duration | None = Field(None, description="How long a run may take before Airflow fails it "
                                            "('6h'; execution_timeout bounds each task instead).")
    end_date: datetime | date | None = Field(None, description="No runs are scheduled after it.")
    max_consecutive_failed_dag_runs: int | None = Field(
        None, ge=1, description="Pause the DAG after this many failed runs in a row.")
    render_template_as_native_obj: bool = Field(
        False, description="Templates render to Python objects (lists, numbers) instead of strings.")
    fail_fast: bool = Field(False, description="The first failed task fails the rest of the run.")
    is_paused_upon_creation: bool | None = Field(
        None, description="Whether the DAG starts paused when Airflow first sees it (default: "
        "[core] dags_are_paused_at_creation).")
    dag_display_name: str | None = Field(None, description="The DAG's name in the UI (the id stays as it is).")
    on_success_callback: Callbacks | None = Field(
        None, description="DAG callback(s) when a run succeeds: 'package.module:function' (or dotted), or a list.")
    on_failure_callback: Callbacks | None = Field(
        None, description="DAG callback(s) when a run fails: 'package.module:function' (or dotted), or a list.")
    default_args: dict[str, Any] = Field(
        default_factory=dict, description="Any other Airflow default_args; task callbacks (on_failure_callback, "
        "on_success_callback, on_retry_callback, on_execute_callback, on_skipped_callback) are import paths.")

    _start = field_validator("start_date", "end_date", mode="before")(classmethod(lambda cls, v: _start_date(v)))
    _tz = field_validator("timezone", mode="before")(classmethod(lambda cls, v: _timezone(v)))

    @model_validator(mode="after")
    def _one_schedule(self) -> "DagSettings":
        given = [n for n in ("schedule", "schedule_on_assets", "trigger") if getattr(self, n)]
        if len(given) > 1:
            raise PydanticCustomError("one_schedule", "give one of 'schedule', 'schedule_on_assets' and 'trigger', "
                                      "not {both}", {"both": " and ".join(f"'{n}'" for n in given)})
        return self


# --- params: the DAG's trigger form ---------------------------------------------------------------

ParamType = Literal["string", "integer", "number", "boolean", "array", "object", "null"]
_PY_TYPES: dict[str, Any] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict,
    "null": type(None),
}


def _of_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _PY_TYPES[kind])


class ParamSpec(Strict):
    """A DAG Param: shown in the Airflow UI's trigger form, usable in templates as
    ``{{ params.<name> }}``; a run's configuration overrides its default."""

    type: ParamType | list[ParamType] | None = Field(None, description="JSON Schema type(s); add 'null' to allow none.")
    default: Any = Field(None, description="Value when a run does not set it; without one, manual runs must set it.")
    description: str | None = Field(None, description="Help text in the trigger form.")
    title: str | None = Field(None, description="Label in the trigger form (default: the name).")
    enum: list[Any] | None = Field(None, description="The allowed values (a drop-down in the trigger form).")
    minimum: int | float | None = Field(None, description="The smallest number allowed.")
    maximum: int | float | None = Field(None, description="The largest number allowed.")
    format: Literal["date", "date-time", "time", "multiline"] | None = Field(
        None, description="How the trigger form edits a string: a date or time picker, or a text box.")

    @model_validator(mode="after")
    def _default_fits(self) -> "ParamSpec":
        kinds = [self.type] if isinstance(self.type, str) else (self.type or [])
        if (self.minimum is not None or self.maximum is not None) and not {"integer", "number"} & set(kinds):
            raise PydanticCustomError("param", "minimum/maximum need type 'integer' or 'number'")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise PydanticCustomError("param", "minimum {lo} is above maximum {hi}", {"lo": self.minimum, "hi": self.maximum})
        if "default" not in self.model_fields_set:
            return self
        v = self.default
        if kinds and not any(_of_type(v, k) for k in kinds):
            raise PydanticCustomError("param", "default {v} is not of type {t}", {"v": repr(v), "t": " or ".join(kinds)})
        if self.enum is not None and v not in self.enum:
            raise PydanticCustomError("param", "default {v} is not one of enum {e}", {"v": repr(v), "e": self.enum})
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if number and self.minimum is not None and v < self.minimum:
            raise PydanticCustomError("param", "default {v} is below the minimum {lo}", {"v": v, "lo": self.minimum})
        if number and self.maximum is not None and v > self.maximum:
            raise PydanticCustomError("param", "default {v} is above the maximum {hi}", {"v": v, "hi": self.maximum})
        return self

    def to_param(self) -> Any:
        from airflow.sdk import Param

        schema = self.model_dump(exclude_none=True, exclude={"default", "description"})
        if "default" in self.model_fields_set:
            return Param(self.default, description=self.description, **schema)
        return Param(description=self.description, **schema)


def param_specs(v: Any) -> Any:
    """``name: value`` is short for ``name: {default: value}``."""
    if isinstance(v, dict):
        return {k: body if isinstance(body, dict) else {"default": body} for k, body in v.items()}
    return v


class _OrJustTheDefault:
    """JSON Schema: a param is a ParamSpec mapping, or just its default value."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        return {"anyOf": [handler(core_schema), {"not": {"type": "object"}, "description": "Short for {default: <value>}."}]}


ParamsField = dict[str, Annotated[ParamSpec, _OrJustTheDefault()]]


# --- one setting written two ways ------------------------------------------------------------------


def lift_default_args(src: Source) -> Source:  # noqa: C901
    """``dag.default_args.<setting>`` moved to ``dag.<setting>`` (with its positions) for each
    setting DagSettings has a field for; DAG-level settings under default_args, removed ones, and
    the same setting written both ways in this file are refused at their line."""
    data = src.data
    dag = data.get("dag") if isinstance(data, dict) else None
    args = dag.get("default_args") if isinstance(dag, dict) else None
    if not isinstance(args, dict) or not args:
        return src
    here = ("dag", "default_args")
    issues = []
    dag_level = [n for n in DagSettings.model_fields if n not in (*LIFTED, "default_args", *DAG_CALLBACKS)]
    for key in args:
        at = here + (key,)
        if key in LIFTED and key in dag:
            first = src.mark_of(("dag", key), key=True)
            issues.append(SpecIssue(src.mark_of(at, key=True), format_path(at),
                                    f"the same setting as dag.{key}" + (f" (line {first.line})" if first else "")
                                    + f"; write it once, as dag.{key}"))
        elif key in dag_level:
            issues.append(SpecIssue(src.mark_of(at, key=True), format_path(at),
                                    f"'{key}' is a DAG setting, not a task default: write it as dag.{key}"))
        elif key in DAG_ONLY:
            issues.append(SpecIssue(src.mark_of(at, key=True), format_path(at),
                                    f"'{key}' is an argument of the DAG, not a task default: Airflow would ignore it "
                                    "here, and pipelines do not set it (params: and doc: are the pipeline's own)"))
        elif key in REMOVED:
            issues.append(SpecIssue(src.mark_of(at, key=True), format_path(at), REMOVED[key]))
    if issues:
        raise PipelineSpecError(issues)
    moved = [k for k in args if k in LIFTED]
    if not moved:
        return src

    def rekey(marks: dict) -> dict:
        out = {}
        for path, mark in marks.items():
            if path[:2] == here and len(path) > 2 and path[2] in moved:
                path = ("dag",) + path[2:]
            out[path] = mark
        return out

    new_dag = {**{k: v for k, v in dag.items() if k != "default_args"}, **{k: args[k] for k in moved},
               "default_args": {k: v for k, v in args.items() if k not in moved}}
    return Source(data={**data, "dag": new_dag}, text=src.text,
                  value_marks=rekey(src.value_marks), key_marks=rekey(src.key_marks))


# --- callbacks and params, checked against the merged file -----------------------------------------


def import_callable(path: str) -> Any:
    """``'package.module:function'`` or ``'package.module.function'`` → the callable."""
    import re

    if not isinstance(path, str) or not re.match(CALLBACK_PATH, path) or (":" not in path and "." not in path):
        raise ValueError(f"expected an import path like 'package.module:function' or 'package.module.function', "
                         f"got {path!r}")
    if ":" in path:
        module, attrs = path.split(":", 1)
        candidates = [(module, attrs.split("."))]
    else:
        parts = path.split(".")
        candidates = [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]
    error: Exception | None = None
    for module, attrs in candidates:
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                error = error or exc
                continue  # that module does not exist: try a shorter one (a.b.Class.method)
            raise
        for part in attrs:
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{path!r} is a {type(obj).__name__}, not a function")
        return obj
    raise error or ImportError(f"cannot import {path!r}")


def resolve_callbacks(value: Any) -> list[Any]:
    """A callback setting (one path or a list) → the callables, as Airflow wants them."""
    paths = [value] if isinstance(value, str) else list(value or [])
    return [import_callable(p) for p in paths]


def check_dag(pipeline: Any, src: Source) -> Iterable[SpecIssue]:  # noqa: C901
    """Every callback resolves; a scheduled DAG's params all have defaults (Airflow refuses it otherwise)."""
    settings = pipeline.dag
    places = [(("dag", k), getattr(settings, k)) for k in DAG_CALLBACKS]
    places += [(("dag", "default_args", k), settings.default_args.get(k)) for k in TASK_CALLBACKS]
    if settings.trigger is not None:  # the triggerer imports it only once the DAG is live: check it now
        from airflow_mlops._core import extras

        if not extras.installed("apache-kafka"):  # the watcher is the Kafka provider's trigger
            at = ("dag", "trigger", "kafka")
            yield SpecIssue(src.mark_of(at), format_path(at),
                            extras.missing_message("apache-kafka", "a pipeline started by Kafka messages"))
        places.append((("dag", "trigger", "kafka", "filter"), settings.trigger.kafka.filter))
    for at, value in places:
        if value is None:
            continue
        if not isinstance(value, (str, list)):
            yield SpecIssue(src.mark_of(at), format_path(at),
                            f"expected an import path like 'package.module:function' or a list of them, got {value!r}")
            continue
        for i, path in enumerate([value] if isinstance(value, str) else value):
            loc = at if isinstance(value, str) else at + (i,)
            try:
                import_callable(path)
            except Exception as exc:  # any import-time failure of user code is a spec error here
                why = str(exc) if isinstance(exc, (ValueError, TypeError)) else f"{type(exc).__name__}: {exc}"
                yield SpecIssue(src.mark_of(loc), format_path(at), f"cannot resolve callback {path!r}: {why}")
    if settings.schedule or settings.schedule_on_assets or settings.trigger:
        for name, spec in pipeline.params.items():
            if "default" not in spec.model_fields_set:
                yield SpecIssue(src.mark_of(("params", name), key=True), format_path(("params", name)),
                                "a scheduled pipeline's params need a default (scheduled runs have no one to set them)")
