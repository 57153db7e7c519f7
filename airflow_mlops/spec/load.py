"""Pipeline files → validated :class:`Pipeline` models, or errors that point at the YAML.

This is the spec half of a pipeline's verdict; ``airflow_mlops.factory.pipelines`` adds the
other half (the DAG is built, as Airflow would) for both the loader and ``airflow-mlops validate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from airflow_mlops._core.errors import format_path
from airflow_mlops.spec import profiles
from airflow_mlops.spec._checks import (
    InputCheck,
    StageCheck,
    check_names_and_schedule,
    check_pipeline,
    stage_dependencies,
)
from airflow_mlops.spec._source import Source, load_source, merge_sources
from airflow_mlops.spec._translate import translate
from airflow_mlops.spec.dag import lift_default_args
from airflow_mlops.spec.data import anchored_inputs
from airflow_mlops.spec.errors import Mark, PipelineSpecError, SpecIssue
from airflow_mlops.spec.files import DEFAULTS_FILE, PIPELINE_SUFFIXES, discover, folder_defaults_chain, read_defaults
from airflow_mlops.spec.models import BUILTIN_PROFILES, KubernetesSettings, Pipeline, Resources, with_profile
from airflow_mlops.spec.profiles import ActiveProfile, ProfileChoice, chosen, lift_profiles

__all__ = [
    "DEFAULTS_FILE", "PIPELINE_SUFFIXES", "LoadedPipeline", "check_pipeline", "discover", "effective_kubernetes",
    "merged_source", "profile_names", "read_pipeline", "resolve_resources", "stage_dependencies", "translate",
]


@dataclass
class LoadedPipeline:
    pipeline: Pipeline
    file: Path
    text: str  # the pipeline's own YAML, shown in the DAG docs
    source: Source | None = None  # the data merged over the defaults, with every value's position
    resolved: Path | None = None  # ``file`` with symlinks resolved: the DAG's fileloc
    pipeline_profile: str | None = None  # the pipeline profile merged over it (None: the pipeline as written)
    pipeline_profiles: tuple[str, ...] = ()  # the pipeline profiles it has (its own and its defaults files')
    pipeline_profile_origin: str = ""  # who chose the profile ("from the environment variable ...")

    def profile(self, resources: str | Resources | None) -> Resources | None:
        """Resolve a stage's ``resources`` (name or inline, possibly based on a profile)."""
        return resolve_resources(self.pipeline, resources)

    def mark_of(self, path: tuple, *, key: bool = False) -> Mark:
        """Where ``path`` was written (or the nearest thing above it that was)."""
        mark = self.source.mark_of(path, key=key) if self.source else None
        return mark or Mark(str(self.file), 1, 1)


def resolve_resources(pipeline: Pipeline, resources: str | Resources | None) -> Resources | None:
    """A stage's ``resources`` with its profile applied (the built-in ones and the pipeline's own)."""
    return with_profile(resources, {**BUILTIN_PROFILES, **pipeline.resource_profiles})


def effective_kubernetes(pipeline: Pipeline, stage: Any) -> KubernetesSettings:
    """The pipeline's kubernetes settings with the fields the stage sets itself on top."""
    if stage.kubernetes is None:
        return pipeline.kubernetes
    # The fields either sets (the rest are the model's defaults either way): a rendered DAG file
    # writes out only those.
    return KubernetesSettings.model_validate(
        {**pipeline.kubernetes.model_dump(exclude_unset=True), **stage.kubernetes.model_dump(exclude_unset=True)}
    )


def read_pipeline(file: str | os.PathLike, root: str | os.PathLike | None = None, *,
                  stage_checks: Iterable[StageCheck] = (), input_checks: Iterable[InputCheck] = (),
                  construct_operators: bool = True, profile: ProfileChoice = None) -> LoadedPipeline:
    """Load and validate one pipeline file, merged over the ``_defaults.yaml`` files above it.

    ``stage_checks`` add what the layers above know (which backends run which kinds): the full
    verdict is ``airflow_mlops.factory.pipelines.read_pipeline``, which passes them.
    ``construct_operators``: also build each custom stage's operator with its ``args`` (False when
    the caller builds the DAG next, which constructs them anyway).
    ``profile``: the pipeline profile to merge over it (see ``spec.profiles``): a name, an
    :class:`ActiveProfile`, or a function that says which (asked only when the pipeline has profiles).

    ``root`` is accepted for compatibility and ignored: the defaults that apply to a file never
    depend on the folder it was found from (see ``airflow_mlops.spec.files``)."""
    del root
    path = Path(file)
    display = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc.reason})"
        raise PipelineSpecError([SpecIssue(Mark(display, 1, 1), "", f"cannot read file: {why}")]) from None
    src = load_source(display, text)
    if not isinstance(src.data, dict):
        got = "an empty file" if src.data is None else f"a {type(src.data).__name__}"
        raise PipelineSpecError(
            [SpecIssue(src.mark_of(()) or Mark(display, 1, 1), "", f"a pipeline file must be a mapping (id, stages, ...), got {got}")]
        )
    too_deep = _too_deep(src.data)
    if too_deep is not None:
        raise PipelineSpecError([SpecIssue(src.mark_of(too_deep) or Mark(display, 1, 1), format_path(too_deep),
                                           f"nested more than {MAX_NESTING} levels deep: Airflow serializes a DAG's "
                                           "values recursively and would fail on it (RecursionError), and no setting "
                                           "needs that; flatten it, or pass it as a JSON string")])
    resolved = path.resolve()
    merged = _over_defaults(src, resolved)
    defined = tuple(profiles.names(merged))
    active = chosen(profile) if defined else ActiveProfile(None)
    merged, written = profiles.apply(merged, active, display)
    stage_names = merged.data.get("stages") if isinstance(merged.data.get("stages"), dict) else {}
    issues = list(check_names_and_schedule(merged.data, merged)) + profiles.check_stages(merged, stage_names)
    try:
        pipeline = Pipeline.model_validate(merged.data)
    except ValidationError as exc:
        raise PipelineSpecError(profiles.named(_in_order(translate(exc, merged) + issues, display), active.name,
                                               written)) from None
    issues += check_pipeline(pipeline, merged, stage_checks, input_checks, construct_operators)
    if issues:
        raise PipelineSpecError(profiles.named(_in_order(issues, display), active.name, written))
    stages = anchored_inputs(pipeline.stages, os.path.abspath(path.parent))
    if stages is not None:
        pipeline = pipeline.model_copy(update={"stages": stages})
    return LoadedPipeline(pipeline=pipeline, file=path, text=text, source=merged, resolved=resolved,
                          pipeline_profile=active.name, pipeline_profiles=defined,
                          pipeline_profile_origin=active.origin if active.name else "")


def _over_defaults(src: Source, resolved: Path) -> Source:
    """The file's source merged over the ``_defaults.yaml`` files above it (no profile yet)."""
    merged = lift_profiles(lift_default_args(src))  # before merging: the nearest file wins, whichever way it
    for defaults in reversed(folder_defaults_chain(resolved.parent)):  # wrote a setting
        merged = merge_sources(read_defaults(defaults), merged)
    return merged


def merged_source(file: str | os.PathLike, profile: str | None = None) -> tuple[Source, frozenset]:
    """The pipeline file merged over its defaults files and ``profile`` as ``read_pipeline`` merges
    it, without checking it: each value's mark names the file it came from (the UI shows where
    each setting of a DAG was written). Also the positions the profile wrote. Raises what reading
    the files raises (OSError, PipelineSpecError)."""
    path = Path(file)
    src = load_source(str(path), path.read_text())
    if not isinstance(src.data, dict):
        raise PipelineSpecError([SpecIssue(Mark(str(path), 1, 1), "", "a pipeline file must be a mapping")])
    merged = _over_defaults(src, path.resolve())
    if profile is None or profile not in profiles.names(merged):
        return merged, frozenset()
    return profiles.apply(merged, ActiveProfile(profile, "recorded on the DAG"), str(path))


def profile_names(file: str | os.PathLike) -> list[str]:
    """The pipeline profiles a file has, its defaults files' first, without checking anything
    else (what the file cannot tell, it does not have: reading it reports the problem)."""
    path = Path(file)
    found: list[str] = []
    try:
        for defaults in folder_defaults_chain(path.resolve().parent):
            found += profiles.names(read_defaults(defaults))
        found += profiles.names(load_source(str(path), path.read_text()))
    except (OSError, UnicodeDecodeError, PipelineSpecError):
        pass
    return list(dict.fromkeys(found))


MAX_NESTING = 64


def _too_deep(data: Any) -> tuple | None:
    """The path of the first value nested deeper than ``MAX_NESTING`` mappings/lists, else None
    (walked without recursion: the value may be deeper than Python's own limit)."""
    stack: list[tuple[Any, tuple]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_NESTING:
            return path
        if isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
    return None


def _in_order(issues: list[SpecIssue], file: str) -> list[SpecIssue]:
    """The pipeline file's issues by position, then those of its defaults files."""
    return sorted(issues, key=lambda i: (i.mark.file != file, i.mark.file, i.mark.line, i.mark.column)
                  if i.mark else (True, "", 0, 0))
