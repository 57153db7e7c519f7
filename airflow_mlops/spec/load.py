"""Pipeline files → validated :class:`Pipeline` models, or errors that point at the YAML."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from airflow_mlops.spec.dag import check_dag, lift_default_args
from airflow_mlops.spec.errors import Mark, PipelineSpecError, SpecIssue, did_you_mean, format_path, one_of
from airflow_mlops.spec.models import (
    BUILTIN_PROFILES,
    STAGE_KINDS,
    KubernetesSettings,
    Pipeline,
    PipelineDefaults,
    Resources,
)
from airflow_mlops.spec.source import Source, load_source, merge_sources

DEFAULTS_FILE = "_defaults.yaml"
PIPELINE_SUFFIXES = (".yaml", ".yml")


@dataclass
class LoadedPipeline:
    pipeline: Pipeline
    file: Path
    text: str  # the pipeline's own YAML, shown in the DAG docs

    def profile(self, resources: str | Resources | None) -> Resources | None:
        """Resolve a stage's ``resources`` (name or inline, possibly based on a profile)."""
        return resolve_resources(self.pipeline, resources)


def resolve_resources(pipeline: Pipeline, resources: str | Resources | None) -> Resources | None:
    if resources is None:
        return None
    profiles = {**BUILTIN_PROFILES, **pipeline.resource_profiles}
    if isinstance(resources, str):
        return profiles[resources]
    if resources.profile:
        base = profiles[resources.profile]
        return base.model_copy(update=resources.model_dump(exclude_none=True, exclude={"profile"}))
    return resources


def effective_kubernetes(pipeline: Pipeline, stage: Any) -> KubernetesSettings:
    """The pipeline's kubernetes settings with the fields the stage sets itself on top."""
    if stage.kubernetes is None:
        return pipeline.kubernetes
    return KubernetesSettings.model_validate(
        {**pipeline.kubernetes.model_dump(), **stage.kubernetes.model_dump(exclude_unset=True)}
    )


def discover(folder: str | os.PathLike) -> list[Path]:
    """Every pipeline file under ``folder``, sorted; ``_``-prefixed files (defaults) are not pipelines."""
    root = Path(folder)
    if root.is_file():
        return [root]
    return sorted(
        p for p in root.rglob("*") if p.suffix in PIPELINE_SUFFIXES and not p.name.startswith(("_", ".")) and p.is_file()
    )


# Defaults files are shared by many pipelines and re-read on every parse: cache by mtime.
_defaults_cache: dict[Path, tuple[float, Source]] = {}


def _read_defaults(path: Path) -> Source:
    mtime = path.stat().st_mtime
    hit = _defaults_cache.get(path)
    if hit and hit[0] == mtime:
        return hit[1]
    src = lift_default_args(load_source(str(path), path.read_text()))
    if src.data is not None and not isinstance(src.data, dict):
        raise PipelineSpecError([SpecIssue(src.mark_of(()), "", "a defaults file must be a mapping")])
    for key in ("id", "stages"):
        if isinstance(src.data, dict) and key in src.data:
            raise PipelineSpecError(
                [SpecIssue(src.mark_of((key,), key=True), key, f"'{key}' belongs in a pipeline file, not in {DEFAULTS_FILE}")]
            )
    try:
        PipelineDefaults.model_validate(src.data or {})
    except ValidationError as exc:
        raise PipelineSpecError(translate(exc, src)) from None
    _defaults_cache[path] = (mtime, src)
    return src


def _defaults_chain(file: Path, root: Path | None) -> list[Path]:
    """``_defaults.yaml`` files from ``root`` (or the filesystem root) down to the file's folder."""
    chain = []
    folder = file.resolve().parent
    stop = root.resolve() if root else None
    while True:
        candidate = folder / DEFAULTS_FILE
        if candidate.is_file():
            chain.append(candidate)
        if folder == stop or folder.parent == folder:
            break
        folder = folder.parent
    return chain[::-1]


def read_pipeline(file: str | os.PathLike, root: str | os.PathLike | None = None) -> LoadedPipeline:
    """Load and validate one pipeline file, merged over the defaults files above it."""
    path = Path(file)
    display = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PipelineSpecError([SpecIssue(Mark(display, 1, 1), "", f"cannot read file: {exc.strerror}")]) from None
    src = load_source(display, text)
    if not isinstance(src.data, dict):
        got = "an empty file" if src.data is None else f"a {type(src.data).__name__}"
        raise PipelineSpecError(
            [SpecIssue(src.mark_of(()) or Mark(display, 1, 1), "", f"a pipeline file must be a mapping (id, stages, ...), got {got}")]
        )
    merged = lift_default_args(src)  # before merging: the nearest file wins, whichever way it wrote a setting
    for defaults in reversed(_defaults_chain(path, Path(root) if root else None)):
        merged = merge_sources(_read_defaults(defaults), merged)
    try:
        pipeline = Pipeline.model_validate(merged.data)
    except ValidationError as exc:
        raise PipelineSpecError(translate(exc, merged)) from None
    issues = list(check_pipeline(pipeline, merged))
    if issues:
        raise PipelineSpecError(issues)
    return LoadedPipeline(pipeline=pipeline, file=path, text=text)


def load_folder(folder: str | os.PathLike) -> tuple[list[LoadedPipeline], dict[Path, PipelineSpecError]]:
    """All pipelines under ``folder``; a bad file only loses itself. Ids must be unique across files."""
    good: list[LoadedPipeline] = []
    bad: dict[Path, PipelineSpecError] = {}
    seen: dict[str, LoadedPipeline] = {}
    root = Path(folder) if Path(folder).is_dir() else None
    for path in discover(folder):
        try:
            loaded = read_pipeline(path, root)
        except PipelineSpecError as exc:
            bad[path] = exc
            continue
        first = seen.get(loaded.pipeline.id)
        if first is not None:
            src = load_source(str(path), loaded.text)
            bad[path] = PipelineSpecError(
                [SpecIssue(src.mark_of(("id",)), "id", f"pipeline id '{loaded.pipeline.id}' is already used by {first.file}")]
            )
            continue
        seen[loaded.pipeline.id] = loaded
        good.append(loaded)
    return good, bad


# --- checks across fields --------------------------------------------------------------------------


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
    yield from check_dag(pipeline, src)


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


# --- pydantic errors → issues -------------------------------------------------------------------------


_CUSTOM_ERRORS = {"gpu", "cpu", "memory", "one_source", "one_step", "preprocess_source", "train_source", "relative_sqlite",
                  "one_schedule", "stream_settings", "start_date", "timezone", "param"}
_TYPE_NAMES = {
    "string_type": "a string", "model_type": "a mapping", "dict_type": "a mapping", "model_attributes_type": "a mapping",
    "int_type": "a whole number", "float_type": "a number", "bool_type": "true or false", "list_type": "a list",
}


def translate(exc: ValidationError, src: Source) -> list[SpecIssue]:
    """Pydantic's errors, re-addressed to YAML positions and reworded for people."""
    errors = exc.errors(include_url=False)
    by_path: dict[tuple, list[dict]] = {}
    issues = []
    for err in errors:
        if err["type"] == "extra_forbidden":
            path = _data_path(err["loc"], src.data)
            allowed = _allowed_keys(err["loc"])
            key = path[-1]
            issues.append(
                SpecIssue(
                    src.mark_of(path, key=True), format_path(path),
                    f"unknown key '{key}'{did_you_mean(key, allowed)}; expected one of {one_of(allowed)}",
                )
            )
        else:
            path = _data_path(err["loc"], src.data, allow_missing=err["type"] == "missing")
            if err["type"] == "union_tag_invalid":
                path += ("kind",)  # point at the bad kind itself, not the stage
            by_path.setdefault(path, []).append(err)
    for path, errs in by_path.items():
        type_errs = [e for e in errs if e["type"] in _TYPE_NAMES]
        other = [e for e in errs if e["type"] not in _TYPE_NAMES]
        deeper = any(p[: len(path)] == path and len(p) > len(path) for p in by_path)
        if type_errs and not other and not deeper:
            # A union (e.g. a profile name or an inline mapping) where no member matched.
            wanted = " or ".join(sorted({_TYPE_NAMES[e["type"]] for e in type_errs}))
            issues.append(SpecIssue(src.mark_of(path), format_path(path), f"expected {wanted}, got {type_errs[0]['input']!r}"))
        for err in other:
            issues.append(SpecIssue(src.mark_of(path), format_path(path), _message(err, path)))
    return sorted(issues, key=lambda i: (i.mark.line, i.mark.column) if i.mark else (0, 0))


def _data_path(loc: tuple, data: Any, allow_missing: bool = False) -> tuple:
    """Pydantic's ``loc`` with union tags and model names dropped: only keys that exist in the data
    (plus a final missing field) remain, so the path reads like the YAML."""
    path: list[Any] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif allow_missing and i == len(loc) - 1 and isinstance(node, dict):
            path.append(part)
    return tuple(path)


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys the mapping holding ``loc[-1]`` accepts, found by walking the models along ``loc``
    (which also carries union tags: a stage kind or a model's class name)."""
    import typing

    from pydantic import BaseModel

    def members(tp: Any) -> list[Any]:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            return [m for a in typing.get_args(tp) for m in members(a)]
        return [tp]

    def descend(tp: Any, part: Any) -> Any:
        for t in members(tp):
            if isinstance(t, type) and issubclass(t, BaseModel):
                kind = t.model_fields.get("kind")
                if part == t.__name__ or (kind is not None and kind.default == part and part not in t.model_fields):
                    return t
                if part in t.model_fields:
                    return t.model_fields[part].annotation
            elif typing.get_origin(t) is dict:
                return typing.get_args(t)[1]
            elif typing.get_origin(t) is list and isinstance(part, int):
                return typing.get_args(t)[0]
        return None

    tp: Any = Pipeline
    for part in loc[:-1]:
        tp = descend(tp, part)
        if tp is None:
            return []
    models = [t for t in members(tp) if isinstance(t, type) and issubclass(t, BaseModel)]
    return list(models[0].model_fields) if len(models) == 1 else []


def _message(err: dict, path: tuple) -> str:
    etype, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    field = path[-1] if path else ""
    if etype in _CUSTOM_ERRORS:
        return err["msg"]
    if etype == "missing":
        return "required field is missing"
    if etype == "union_tag_invalid":
        return f"unknown kind '{ctx['tag']}'{did_you_mean(ctx['tag'], STAGE_KINDS)}; expected one of {one_of(STAGE_KINDS)}"
    if etype == "union_tag_not_found":
        return f"this stage needs a 'kind': one of {one_of(STAGE_KINDS)} (or name the stage after its kind)"
    if etype == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        what = f"{field} " if isinstance(field, str) and field else ""
        return f"unknown {what}{value!r}{did_you_mean(value, choices)}; expected one of {one_of(choices)}"
    if etype == "string_pattern_mismatch" and field in ("callable", "operator"):
        return f"expected an import path like 'package.module:name', got {value!r}"
    msg = err["msg"]
    if etype.startswith(("value_error", "assertion_error")):
        msg = msg.split(", ", 1)[-1]
    msg = msg[:1].lower() + msg[1:]
    if not isinstance(value, (dict, list)) and value is not None:
        return f"{msg}, got {value!r}"
    return msg
