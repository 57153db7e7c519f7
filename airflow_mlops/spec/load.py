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

__all__ = [
    "DEFAULTS_FILE", "PIPELINE_SUFFIXES", "LoadedPipeline", "check_pipeline", "discover", "effective_kubernetes",
    "read_pipeline", "resolve_resources", "stage_dependencies", "translate",
]


@dataclass
class LoadedPipeline:
    pipeline: Pipeline
    file: Path
    text: str  # the pipeline's own YAML, shown in the DAG docs
    source: Source | None = None  # the data merged over the defaults, with every value's position
    resolved: Path | None = None  # ``file`` with symlinks resolved: the DAG's fileloc

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
    return KubernetesSettings.model_validate(
        {**pipeline.kubernetes.model_dump(), **stage.kubernetes.model_dump(exclude_unset=True)}
    )


def read_pipeline(file: str | os.PathLike, root: str | os.PathLike | None = None, *,
                  stage_checks: Iterable[StageCheck] = (), input_checks: Iterable[InputCheck] = (),
                  construct_operators: bool = True) -> LoadedPipeline:
    """Load and validate one pipeline file, merged over the ``_defaults.yaml`` files above it.

    ``stage_checks`` add what the layers above know (which backends run which kinds): the full
    verdict is ``airflow_mlops.factory.pipelines.read_pipeline``, which passes them.
    ``construct_operators``: also build each custom stage's operator with its ``args`` (False when
    the caller builds the DAG next, which constructs them anyway).

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
    merged = lift_default_args(src)  # before merging: the nearest file wins, whichever way it wrote a setting
    resolved = path.resolve()
    for defaults in reversed(folder_defaults_chain(resolved.parent)):
        merged = merge_sources(read_defaults(defaults), merged)
    issues = list(check_names_and_schedule(merged.data, merged))
    try:
        pipeline = Pipeline.model_validate(merged.data)
    except ValidationError as exc:
        raise PipelineSpecError(_in_order(translate(exc, merged) + issues, display)) from None
    issues += check_pipeline(pipeline, merged, stage_checks, input_checks, construct_operators)
    if issues:
        raise PipelineSpecError(_in_order(issues, display))
    stages = anchored_inputs(pipeline.stages, os.path.abspath(path.parent))
    if stages is not None:
        pipeline = pipeline.model_copy(update={"stages": stages})
    return LoadedPipeline(pipeline=pipeline, file=path, text=text, source=merged, resolved=resolved)


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
