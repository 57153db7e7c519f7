"""A validated pipeline → an Airflow DAG with one task group per stage."""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from airflow.sdk import DAG, Asset, TaskGroup

from airflow_mlops._core.locations import asset_name_part, asset_uri
from airflow_mlops._core.paths import import_string, mlops_home, needs_expanding
from airflow_mlops.backends import RESULT_TASK, stage_task_call
from airflow_mlops.spec.dag import TASK_CALLBACKS, DagSettings, resolve_callbacks
from airflow_mlops.spec.files import scanned
from airflow_mlops.spec.load import LoadedPipeline, stage_dependencies
from airflow_mlops.spec.models import Pipeline
from airflow_mlops.spec.operator_args import stage_task_args
from airflow_mlops.spec.templating import is_template
from airflow_mlops.stages import registry

TAG = "airflow-mlops"


@dataclass
class Plan:
    """What the backends need to know about the whole pipeline while building one stage."""

    loaded: LoadedPipeline
    deps: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.deps = stage_dependencies(self.pipeline)

    @property
    def pipeline(self) -> Pipeline:
        return self.loaded.pipeline

    @cached_property
    def data_dir(self) -> str:
        """Where the stages write: the pipeline's ``data_dir`` (an absolute path, kept as written:
        a folder reached through a symlink keeps its name when the link moves; or an object-storage
        URI), else ``$AIRFLOW_MLOPS_HOME/data/<id>``. ``~``, ``$VAR`` and templates are left for the
        worker, which expands and renders them when the task runs. A relative ``data_dir`` never
        gets here: the spec refuses it (it would land inside a dags folder git-sync replaces)."""
        from airflow_mlops._core.storage import local_path, scheme_of

        raw = self.pipeline.data_dir
        if not raw:
            return str(scanned(("mlops_home",), mlops_home) / "data" / self.pipeline.id)
        if needs_expanding(raw) or is_template(raw):
            return raw
        if scheme_of(raw) not in (None, "file"):
            return raw.rstrip("/")
        return os.path.normpath(local_path(raw))

    @cached_property
    def asset_root(self) -> str:
        """``data_dir`` for the Assets' URIs, which are fixed when the DAG is parsed: ``~`` and set
        variables expanded here, templates and unset variables shown as written."""
        return os.path.expandvars(os.path.expanduser(self.data_dir))

    def upstream_tasks(self, stage_name: str) -> list[tuple[str, str]]:
        """Every stage this one depends on, directly or not, nearest first, with its result task."""
        order: list[str] = []
        queue = deque(self.deps[stage_name])
        while queue:
            name = queue.popleft()
            if name not in order:
                order.append(name)
                queue.extend(self.deps[name])
        return [(name, f"{name}.{RESULT_TASK}") for name in order]


def _start(settings: DagSettings) -> datetime | None:
    """The first logical date, in the DAG's time zone (which Airflow takes from it): ``dag.timezone``
    when given (an explicit offset is the same instant, shown there), else the date-time's own
    offset, else Airflow's ``[core] default_timezone``."""
    import pendulum
    from airflow.settings import TIMEZONE

    value = settings.start_date
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    zone = pendulum.timezone(settings.timezone) if settings.timezone else None
    if value.tzinfo is None:
        return pendulum.instance(value, tz=zone or TIMEZONE)
    return pendulum.instance(value).in_timezone(zone) if zone else pendulum.instance(value)


def _dag_level(settings: DagSettings) -> dict[str, Any]:
    """The DAG-level settings the YAML set (left out otherwise: Airflow's own defaults apply)."""
    out: dict[str, Any] = {k: v for k in ("max_active_tasks", "dagrun_timeout", "max_consecutive_failed_dag_runs",
                                          "is_paused_upon_creation", "dag_display_name")
                           if (v := getattr(settings, k)) is not None}
    for flag in ("render_template_as_native_obj", "fail_fast"):
        if getattr(settings, flag):
            out[flag] = True
    if settings.end_date is not None:
        out["end_date"] = _start(settings.model_copy(update={"start_date": settings.end_date}))
    return out


def _docs(loaded: LoadedPipeline) -> str:
    p = loaded.pipeline
    lines = [f"# {p.id}", "", p.description or "", "", "| stage | kind | backend | depends on |", "|---|---|---|---|"]
    deps = stage_dependencies(p)
    for name, stage in p.stages.items():
        lines.append(f"| {name} | {stage.kind} | {p.backend_of(stage)} | {', '.join(deps[name]) or '—'} |")
    built = f", built with its profile `{loaded.pipeline_profile}`" if loaded.pipeline_profile else ""
    lines += ["", f"Defined in `{loaded.file}`{built}:", "", "```yaml", loaded.text.rstrip(), "```", "",
              _source_record(loaded)]
    return "\n".join(lines)


def _source_record(loaded: LoadedPipeline) -> str:
    """The files it was built from, for the UI's "Pipeline YAML" tab (``factory.source_record``)."""
    from airflow_mlops.factory import source_record
    from airflow_mlops.spec.files import defaults_chain, read_defaults

    path = loaded.resolved or loaded.file.resolve()
    defaults = [(d, read_defaults(d).text) for d in defaults_chain(path)]  # read when it loaded: cached
    return source_record.record(path, loaded.text, defaults, profile=loaded.pipeline_profile,
                                profile_origin=loaded.pipeline_profile_origin)


def _outlets(plan: Plan, name: str, stage: Any) -> list[Asset]:
    """Stage outputs as Airflow Assets (what the stage registry says the kind produces): datasets by
    folder (the folder's URI, percent-encoded: ``_core.locations``), drift reports by pipeline and
    stage, and models by registered name *and* producer: ``x-mlflow-model://<model>/<pipeline>/<stage>``.
    Several pipelines may train into one registered model (trainers competing for one champion);
    each one's train stage is then its own Asset, so Airflow keeps them all active."""
    produces = registry.produces(stage.kind)
    pid = plan.pipeline.id
    if produces == "dataset":
        return [Asset(name=f"{pid}.{name}", uri=asset_uri(f"{plan.asset_root.rstrip('/')}/{name}"))]
    if produces == "drift":
        return [Asset(name=f"{pid}.{name}", uri=f"x-airflow-mlops://{pid}/{name}/drift")]
    if produces == "model":
        model = asset_name_part(plan.pipeline.mlflow.registered_model or pid)
        return [Asset(name=f"{pid}.{name}.model", uri=f"x-mlflow-model://{model}/{pid}/{name}")]
    return []


class StageBuildError(Exception):
    """Building one stage's tasks failed: ``stage`` names it, ``error`` is what Airflow (or the
    operator) raised."""

    def __init__(self, stage: str, error: Exception):
        self.stage, self.error = stage, error
        super().__init__(f"stage '{stage}': {type(error).__name__}: {error}")


def _schedule(p: Pipeline) -> Any:
    """Cron/preset, the Assets named in ``schedule_on_assets``, or one Asset watched for Kafka
    messages (``dag.trigger.kafka``: an AssetWatcher with the official provider's trigger)."""
    if p.dag.trigger is not None:
        from airflow.providers.apache.kafka.triggers.msg_queue import KafkaMessageQueueTrigger
        from airflow.sdk import AssetWatcher

        k = p.dag.trigger.kafka
        trigger = KafkaMessageQueueTrigger(topics=k.topics, kafka_config_id=k.connection,
                                           apply_function=k.apply_function, poll_interval=k.poll_interval)
        asset = Asset(name=f"{p.id}.kafka_trigger", uri=f"x-airflow-mlops://{p.id}/kafka-trigger",
                      watchers=[AssetWatcher(name=f"{p.id}.kafka_watcher", trigger=trigger)])
        return [asset]
    if p.dag.schedule_on_assets:
        return [Asset.ref(name=n) for n in p.dag.schedule_on_assets]
    schedule = p.dag.schedule
    if schedule and p.dag.timezone and p.dag.start_date is None and schedule not in ("@once", "@continuous"):
        # Airflow takes a DAG's time zone from its start_date; without one, the cron is given its
        # zone itself (the timetable Airflow 3 makes of a cron string by default).
        from airflow_mlops._core.compat import cron_trigger_timetable

        return cron_trigger_timetable()(schedule, timezone=p.dag.timezone)
    return schedule


def dag_arguments(loaded: LoadedPipeline) -> dict[str, Any]:
    """The keyword arguments of the pipeline's ``DAG(...)`` (callbacks resolved to callables,
    ``start_date`` in the DAG's time zone, Params built): what ``build_dag`` passes, and what
    ``airflow-mlops render`` writes out."""
    p = loaded.pipeline
    # dag.default_args never repeats a DagSettings field (spec.dag.lift_default_args moved them).
    default_args = {
        **p.dag.default_args,
        **{k: resolve_callbacks(v) for k, v in p.dag.default_args.items() if k in TASK_CALLBACKS},
        "owner": p.dag.owner,
        "retries": p.dag.retries,
        "retry_delay": p.dag.retry_delay,
        **({"execution_timeout": p.dag.execution_timeout} if p.dag.execution_timeout else {}),
    }
    callbacks = {k: resolve_callbacks(v) for k in ("on_success_callback", "on_failure_callback")
                 if (v := getattr(p.dag, k)) is not None}
    return dict(
        dag_id=p.id,
        description=p.description or p.dag.description,
        schedule=_schedule(p),
        start_date=_start(p.dag),
        catchup=p.dag.catchup,
        tags=[TAG, *p.dag.tags],
        default_args=default_args,
        max_active_runs=p.dag.max_active_runs or 16,
        **_dag_level(p.dag),
        doc_md=_docs(loaded),
        params={name: spec.to_param() for name, spec in p.params.items()},
        **callbacks,
    )


@dataclass
class TaskCall:
    """One task of a stage's task group: its operator class and keyword arguments, the ids of the
    tasks of the same group it runs after, and (custom stages) the import path the YAML wrote."""

    operator: type
    arguments: dict[str, Any]
    after: tuple[str, ...] = ()
    path: str | None = None


def group_tooltip(p: Pipeline, stage: Any) -> str:
    return f"{stage.kind} on {p.backend_of(stage)}"


def stage_calls(plan: Plan, name: str, stage: Any) -> list[TaskCall]:
    """The tasks of stage ``name``'s group, in the order they are made. Raises what importing a
    custom operator raises (ImportError, MissingExtra)."""
    task_args = stage_task_args(stage)
    if registry.runs_users_operator(stage):
        clash = sorted({"task_id", *task_args} & set(stage.args))
        if clash:  # what calling the operator with both would raise
            raise TypeError(f"{stage.operator} got multiple values for keyword argument {clash[0]!r}")
        return [TaskCall(import_string(stage.operator), {"task_id": RESULT_TASK, **stage.args, **task_args},
                         path=stage.operator)]
    # With approval, what the stage publishes (the promoted model) is published by the approval
    # task, which moves the alias.
    approval = getattr(stage, "approval", None)
    outlets = _outlets(plan, name, stage)
    operator, arguments = stage_task_call(plan.pipeline.backend_of(stage), stage=stage, stage_name=name, plan=plan,
                                          task_args={**task_args, "outlets": [] if approval else outlets})
    calls = [TaskCall(operator, arguments)]
    if approval:
        from airflow_mlops.backends import approval as human

        gate, gate_arguments = human.call(stage=stage, stage_name=name, plan=plan,
                                          task_args={**task_args, "outlets": outlets})
        calls.append(TaskCall(gate, gate_arguments, after=(arguments["task_id"],)))
    return calls


def build_dag(loaded: LoadedPipeline) -> DAG:
    p = loaded.pipeline
    plan = Plan(loaded)
    # The loader hands DAGs to Airflow itself (load_pipelines(globals())): a DAG whose build
    # fails half-way must never reach Airflow through auto-registration.
    dag = DAG(**dag_arguments(loaded), auto_register=False)
    # Where the pipeline's code lives (not this module): operators put its folder on the import
    # path of training processes and pods. Airflow sets the loader file here when it parses it.
    dag.fileloc = str(loaded.resolved or loaded.file.resolve())
    groups: dict[str, TaskGroup] = {}
    with dag:
        for name, stage in p.stages.items():
            try:
                with TaskGroup(group_id=name, tooltip=group_tooltip(p, stage)) as group:
                    made: dict[str, Any] = {}
                    for call in stage_calls(plan, name, stage):
                        task = call.operator(**call.arguments)
                        for before in call.after:
                            made[before] >> task
                        made[task.task_id.rpartition(".")[2]] = task
            except Exception as exc:
                raise StageBuildError(name, exc) from exc
            groups[name] = group
        for name, deps in plan.deps.items():
            for dep in deps:
                groups[dep] >> groups[name]
    return dag
