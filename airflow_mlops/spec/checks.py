"""Checks across fields of a validated pipeline: what pydantic's per-field validation cannot see."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Iterable

from airflow_mlops.spec.errors import SpecIssue, did_you_mean, format_path, one_of
from airflow_mlops.spec.models import BUILTIN_PROFILES, Pipeline
from airflow_mlops.spec.source import Source


def stage_dependencies(pipeline: Pipeline) -> dict[str, list[str]]:
    """Each stage's upstream stages: ``depends_on`` if given, else the stage before it."""
    names = list(pipeline.stages)
    return {
        name: (stage.depends_on if stage.depends_on is not None else names[i - 1 : i])
        for i, (name, stage) in enumerate(pipeline.stages.items())
    }


def check_pipeline(pipeline: Pipeline, src: Source) -> Iterable[SpecIssue]:
    from airflow_mlops.backends import AVAILABLE_BACKENDS

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
        backend = stage.backend or pipeline.backend
        backend_loc = at + ("backend",) if stage.backend else ("backend",)
        if stage.kind != "custom" and backend not in AVAILABLE_BACKENDS:
            yield SpecIssue(
                src.mark_of(backend_loc), format_path(backend_loc),
                f"backend '{backend}' is not available in this version of airflow-mlops; available: {one_of(AVAILABLE_BACKENDS)}",
            )
        yield from _check_engine(stage, backend, at, backend_loc, src, pipeline.kubernetes.image)
        yield from _check_imports(stage, at, src)
    yield from _check_cycles(deps, src)


def _check_engine(
    stage: Any, backend: str, at: tuple, backend_loc: tuple, src: Source, pipeline_image: str | None = None
) -> Iterable[SpecIssue]:
    """What each backend's engine can do: Spark runs preprocess (SQL or a transform over Spark
    DataFrames) and serve; the batch backend runs pandas, which has no SQL."""
    def issue(field: str, message: str) -> SpecIssue:
        return SpecIssue(src.mark_of(at + (field,)), format_path(at + (field,)), message)

    if backend == "spark":
        if stage.kind not in ("preprocess", "serve", "custom"):
            yield SpecIssue(src.mark_of(backend_loc), format_path(backend_loc),
                            f"the spark backend runs preprocess and serve stages, not {stage.kind}; "
                            f"give this stage 'backend: batch' (or kubernetes)")
        elif stage.kind == "preprocess":
            if stage.steps:
                yield issue("steps", "built-in steps are pandas operations; on the spark backend use 'sql' or 'transform'")
            if stage.callable:
                yield issue("callable", "on the spark backend read with 'input'/'inputs' and transform with 'sql' or 'transform'")
            if stage.split and stage.split.stratify:
                yield issue("split", "a stratified split is not available on the spark backend; remove 'stratify'")
        if stage.kind == "serve" and stage.mode in ("online", "stream"):
            yield issue("mode", f"{stage.mode} serving is not a Spark job: use backend batch (or kubernetes) for it")
    elif backend == "kubernetes" and stage.kind != "custom":
        if not (stage.kubernetes and stage.kubernetes.image) and not pipeline_image:
            yield SpecIssue(src.mark_of(backend_loc), format_path(backend_loc),
                            "the kubernetes backend needs an image with airflow-mlops installed: "
                            "set kubernetes.image on the pipeline or the stage")
    if backend != "spark" and stage.kind == "preprocess" and stage.sql:
        yield issue("sql", "'sql' runs on Spark: set 'backend: spark' on this stage, or use 'transform' with pandas")


def _check_imports(stage: Any, at: tuple, src: Source) -> Iterable[SpecIssue]:
    """Custom operators are imported (the DAG needs the class); callables are only located, so
    parsing never imports a user's training code and its heavy libraries."""
    if stage.kind == "custom":
        module, _, attr = stage.operator.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # any import-time failure of user code is a spec error here
            yield SpecIssue(src.mark_of(at + ("operator",)), format_path(at + ("operator",)),
                            f"cannot import operator '{stage.operator}': {type(exc).__name__}: {exc}")
        return
    target = getattr(stage, "callable", None)
    if target:
        module = target.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            yield SpecIssue(src.mark_of(at + ("callable",)), format_path(at + ("callable",)),
                            f"module '{module}' of callable '{target}' is not importable")


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

