"""Checks across fields of a validated pipeline: what pydantic's per-field validation cannot see."""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Callable, Iterable, Iterator

from airflow_mlops._core.errors import did_you_mean, format_path, one_of
from airflow_mlops._core.names import group_id
from airflow_mlops.spec._source import Source
from airflow_mlops.spec.dag import check_dag
from airflow_mlops.spec.errors import SpecIssue
from airflow_mlops.spec.models import AVAILABLE_BACKENDS, BUILTIN_PROFILES, Pipeline

# (stage, backend, pipeline) -> (field or None, message) for each problem
# (a tuple for a field: a place in the whole pipeline, e.g. ('gpu_metrics', 'prometheus_port'))
StageCheck = Callable[[Any, str, Pipeline], Iterator[tuple["str | tuple | None", str]]]
# (pipeline, {stage: upstream stages, nearest first}) -> (stage name, message) for each problem
InputCheck = Callable[[Pipeline, dict[str, list[str]]], Iterator[tuple[str, str]]]


def stage_dependencies(pipeline: Pipeline) -> dict[str, list[str]]:
    """Each stage's upstream stages: ``depends_on`` if given, else the stage before it."""
    names = list(pipeline.stages)
    return {
        name: (stage.depends_on if stage.depends_on is not None else names[i - 1 : i])
        for i, (name, stage) in enumerate(pipeline.stages.items())
    }


def check_pipeline(pipeline: Pipeline, src: Source, stage_checks: Iterable[StageCheck] = (),  # noqa: C901
                   input_checks: Iterable[InputCheck] = (), construct_operators: bool = True) -> Iterable[SpecIssue]:
    """What the models alone cannot see; ``check_names_and_schedule`` runs besides, on the raw data.

    ``stage_checks``: what the layers above know of a stage on its backend (``stages.registry.problems``,
    ``backends.problems``, ``stages.registry.extra_problems``), each yielding ``(field or None for the
    backend or a tuple for a place in the pipeline, message)``; ``input_checks``:
    what each stage needs from the stages before it (``stages.registry.input_problems``), given
    ``{stage: its upstream stages, nearest first}`` and yielding ``(stage name, message)``."""
    names = list(pipeline.stages)
    deps = stage_dependencies(pipeline)
    profiles = {**BUILTIN_PROFILES, **pipeline.resource_profiles}
    for name, stage in pipeline.stages.items():
        at = ("stages", name)
        for i, dep in enumerate(stage.depends_on or []):
            if dep not in pipeline.stages or dep == name:
                why = "a stage cannot depend on itself" if dep == name else f"unknown stage '{dep}'{did_you_mean(dep, names)}; stages are {one_of(names)}"
                yield SpecIssue(src.mark_of(at + ("depends_on", i)), format_path(at + ("depends_on",)), why)
        res = stage.resources
        profile = res if isinstance(res, str) else (res.profile if res else None)
        if profile is not None and profile not in profiles:
            loc = at + (("resources",) if isinstance(res, str) else ("resources", "profile"))
            yield SpecIssue(
                src.mark_of(loc), format_path(loc),
                f"unknown resource profile '{profile}'{did_you_mean(profile, profiles)}; known: {one_of(profiles)}",
            )
        backend = pipeline.backend_of(stage)
        backend_loc = at + ("backend",) if stage.backend else ("backend",)
        if stage.kind != "custom" and backend not in AVAILABLE_BACKENDS:
            yield SpecIssue(
                src.mark_of(backend_loc), format_path(backend_loc),
                f"backend '{backend}' is not available in this version of airflow-mlops; available: {one_of(AVAILABLE_BACKENDS)}",
            )
        for check in stage_checks:
            for field, message in check(stage, backend, pipeline):
                loc = backend_loc if field is None else field if isinstance(field, tuple) else at + (field,)
                yield SpecIssue(src.mark_of(loc), format_path(loc), message)
        yield from _check_imports(stage, at, src, construct_operators)
    cycles = list(_check_cycles(deps, src))
    yield from cycles
    yield from check_dag(pipeline, src)
    known = all(dep in pipeline.stages and dep != name for name, ds in deps.items() for dep in ds)
    if known and not cycles:  # what comes from upstream is only clear once the graph is
        upstream = {name: upstream_stages(deps, name) for name in pipeline.stages}
        for check in input_checks:
            for name, message in check(pipeline, upstream):
                loc = ("stages", name)
                yield SpecIssue(src.mark_of(loc, key=True), format_path(loc), message)


def _check_imports(stage: Any, at: tuple, src: Source, construct: bool = True) -> Iterable[SpecIssue]:
    """Custom operators are imported (the DAG needs the class) and checked against their arguments;
    callables are only located, so parsing never imports a user's training code and its heavy
    libraries."""
    if stage.kind == "custom":
        from airflow_mlops.spec.operator_args import check_custom_stage

        yield from check_custom_stage(stage, at, src, construct)
        return
    for field in ("callable", "transform"):  # a train/preprocess callable, a preprocess transform
        target = getattr(stage, field, None)
        if not target:
            continue
        module = target.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            yield SpecIssue(src.mark_of(at + (field,)), format_path(at + (field,)),
                            f"module '{module}' of {field} '{target}' is not importable")


def _check_cycles(deps: dict[str, list[str]], src: Source) -> Iterable[SpecIssue]:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in deps.get(node, []):
            if dep not in deps or dep == node:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep] if dep in path else [node, dep]
            if state.get(dep) is None:
                cycle = visit(dep, path + [dep])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for name in deps:
        if state.get(name) is None:
            cycle = visit(name, [name])
            if cycle:
                loc = ("stages", cycle[0], "depends_on")
                yield SpecIssue(src.mark_of(loc), format_path(loc), "dependency cycle: " + " → ".join(cycle[::-1]))
                return



# --- names and schedule: what Airflow itself would refuse -------------------------------------------

# Airflow's rule for a task group id (airflow.sdk.definitions._internal.node.GROUP_KEY_REGEX): no '.',
# which separates a group from its tasks; the DAG id may have one (KEY_REGEX).
_GROUP_ID = re.compile(r"^[\w-]+$")
_MAX_GROUP_ID, _MAX_DAG_ID = 200, 250


def check_names_and_schedule(data: Any, src: Source) -> Iterable[SpecIssue]:
    """Stage names, DAG id length and schedule, read from the raw data: so they are reported
    together with the model's errors, whether or not the rest of the file is valid."""
    if not isinstance(data, dict):
        return
    if isinstance(data.get("id"), str) and len(data["id"]) > _MAX_DAG_ID:
        yield SpecIssue(src.mark_of(("id",)), "id",
                        f"a DAG id has at most {_MAX_DAG_ID} characters, got {len(data['id'])}")
    stages = data.get("stages")
    for name in stages if isinstance(stages, dict) else ():
        loc = ("stages", name)
        if not isinstance(name, str) or not _GROUP_ID.match(name):
            fixed = group_id(name)
            yield SpecIssue(src.mark_of(loc, key=True), format_path(loc),
                            f"stage name {name!r} cannot be an Airflow task group id (letters, digits, '_' and '-' "
                            f"only; '.' separates a group from its tasks): rename it, e.g. '{fixed}'")
        elif len(name) > _MAX_GROUP_ID:
            yield SpecIssue(src.mark_of(loc, key=True), format_path(loc),
                            f"a stage name has at most {_MAX_GROUP_ID} characters (an Airflow task group id), "
                            f"got {len(name)}")
    dag = data.get("dag")
    schedule = dag.get("schedule") if isinstance(dag, dict) else None
    if isinstance(schedule, str) and schedule not in ("@once", "@continuous"):
        problem = schedule_problem(schedule)
        if problem:
            yield SpecIssue(src.mark_of(("dag", "schedule")), "dag.schedule", problem)


SCHEDULE_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")


def schedule_problem(value: str) -> str | None:
    """Why Airflow would refuse ``value`` as a DAG's schedule (None if it would not)."""
    from airflow_mlops._core.compat import cron_trigger_timetable

    CronTriggerTimetable = cron_trigger_timetable()
    try:  # Airflow's own check (croniter), on the timetable a plain schedule string becomes
        CronTriggerTimetable(value, timezone="UTC").validate()
        return None
    except Exception as exc:
        why = str(exc).rstrip(".")
    text = value.strip()
    if text.lower() in ("none", "null", "~", ""):
        return (f"{value!r} is a string here, not a missing schedule: write 'schedule: null' (or leave it out) "
                "for a DAG that runs only when triggered")
    if text.startswith("@"):
        return (f"unknown schedule preset {value!r}{did_you_mean(text, SCHEDULE_PRESETS)}; "
                f"presets: {one_of(SCHEDULE_PRESETS)}")
    fields = len(text.split())
    extra = " (Airflow reads a 6th field as seconds and a 7th as the year)" if fields in (6, 7) else ""
    return (f"not a cron expression or preset: {why}{extra}; write 5 fields 'minute hour day-of-month month "
            f"day-of-week', e.g. '0 6 * * 1-5' for 06:00 on weekdays, or a preset: {one_of(SCHEDULE_PRESETS)}")


# --- what each stage needs from upstream ---------------------------------------------------------------


def upstream_stages(deps: dict[str, list[str]], name: str) -> list[str]:
    """Every stage ``name`` depends on, directly or not, nearest first."""
    order: list[str] = []
    queue = list(deps.get(name, []))
    while queue:
        dep = queue.pop(0)
        if dep not in order and dep in deps:
            order.append(dep)
            queue.extend(deps[dep])
    return order
