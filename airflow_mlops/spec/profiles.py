"""Pipeline profiles: one pipeline, different settings per deployment (dev, staging, prod).

A pipeline file and the ``_defaults.yaml`` files above it may each have ``profiles:``, a mapping
from a profile's name to an overlay of the pipeline's own keys (``dag``, ``mlflow``, ``data_dir``,
``kubernetes``..., and in the pipeline file ``stages``). The files' ``profiles`` merge like
everything else (nearest file wins), and the active profile's overlay is then merged deeply over
the whole merged pipeline: a profile in ``_defaults.yaml`` beats the pipeline's own base settings,
and the pipeline's own profile beats the defaults file's.

Which profile is active is the deployment's choice, made above this layer
(``factory.pipelines.deployment_profile``) and handed down as an :class:`ActiveProfile`; this
module only merges and names the profile in errors. Not to be confused with ``resource_profiles``
(named cpu/memory/gpu sets for stages).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Union

from airflow_mlops._core.errors import did_you_mean, format_path, one_of
from airflow_mlops.spec._source import Source, merge_sources
from airflow_mlops.spec.dag import lift_default_args
from airflow_mlops.spec.errors import Mark, PipelineSpecError, SpecIssue

PROFILES = "profiles"


@dataclass(frozen=True)
class ActiveProfile:
    """The profile a pipeline is built with: ``name`` None for none (the pipeline as written);
    ``origin`` says who chose it, for messages; ``problem``: why it could not be told."""

    name: str | None
    origin: str = ""
    problem: str | None = None


# What read_pipeline takes: a profile, a name, or a function asked only when a pipeline has profiles.
ProfileChoice = Union[ActiveProfile, str, None, Callable[[], ActiveProfile]]


def chosen(choice: ProfileChoice) -> ActiveProfile:
    if callable(choice):
        return choice()
    if isinstance(choice, ActiveProfile):
        return choice
    return ActiveProfile(choice, "as asked" if choice else "")


def names(src: Source) -> list[str]:
    """The profiles a (merged) source defines, in the order written."""
    profiles = src.data.get(PROFILES) if isinstance(src.data, dict) else None
    return [name for name in profiles if isinstance(name, str)] if isinstance(profiles, dict) else []  # others: the model


def lift_profiles(src: Source) -> Source:
    """``lift_default_args`` inside each profile of one file (before the files merge, as for the
    file's own settings: the nearest file wins whichever way each wrote a setting)."""
    profiles = src.data.get(PROFILES) if isinstance(src.data, dict) else None
    if not isinstance(profiles, dict):
        return src
    for name, body in profiles.items():
        if isinstance(body, dict) and isinstance(body.get("dag"), dict) and body["dag"].get("default_args"):
            prefix = (PROFILES, name)
            try:
                lifted = lift_default_args(_rooted(src, prefix))
            except PipelineSpecError as exc:
                raise PipelineSpecError([_in_profile(i, name) for i in exc.issues]) from None
            src = _graft(src, prefix, lifted)
    return src


def apply(base: Source, active: ActiveProfile, file: str) -> tuple[Source, frozenset]:
    """``base`` with the active profile merged over it, and the positions of what the profile
    wrote (see :func:`named`). No profile defined anywhere: the base, whatever is active."""
    defined = names(base)
    if not defined or active.name is None and active.problem is None:
        return base, frozenset()
    where = base.mark_of((PROFILES,), key=True) or Mark(file, 1, 1)
    if active.problem is not None:
        raise PipelineSpecError([SpecIssue(where, PROFILES, f"cannot tell which profile is active: {active.problem}")])
    if active.name not in defined:
        raise PipelineSpecError([SpecIssue(where, PROFILES, (
            f"the active profile {active.name!r} ({active.origin}) is not defined for this pipeline"
            f"{did_you_mean(active.name, defined)}; it has {one_of(defined)} (in this file and the "
            f"_defaults.yaml files above it). Add '{active.name}: {{}}' under profiles to run the pipeline as "
            "written there"))])
    prefix = (PROFILES, active.name)
    overlay = _rooted(base, prefix)
    if not isinstance(overlay.data, dict):
        return base, frozenset()  # not a mapping: the model says so, at its line
    stages, have = overlay.data.get("stages"), base.data.get("stages")
    if isinstance(stages, dict) and isinstance(have, dict) and not stages.keys() <= have.keys():
        # One it does not have is refused (check_stages), not added as a stage of its own.
        overlay = Source({**overlay.data, "stages": {k: v for k, v in stages.items() if k in have}}, overlay.text,
                         overlay.value_marks, overlay.key_marks)
    written = frozenset(overlay.value_marks.values()) | frozenset(overlay.key_marks.values())
    merged = merge_sources(base, overlay)
    for path in overlay.value_marks:  # a mapping both wrote stays where the pipeline wrote it (a missing
        if isinstance(_at(base.data, path), dict) and isinstance(_at(overlay.data, path), dict):  # field is its)
            for own, marks in ((base.value_marks, merged.value_marks), (base.key_marks, merged.key_marks)):
                if path in own:
                    marks[path] = own[path]
    return merged, written


def check_stages(base: Source, pipeline_stages: Iterable[str]) -> list[SpecIssue]:
    """Each profile changes only stages the pipeline has (a profile adds no stage)."""
    have = list(pipeline_stages)
    issues = []
    for name in names(base):
        body = base.data[PROFILES][name]
        stages = body.get("stages") if isinstance(body, dict) else None
        for stage in stages if isinstance(stages, dict) else ():
            if stage not in have:
                at = (PROFILES, name, "stages", stage)
                issues.append(SpecIssue(base.mark_of(at, key=True), format_path(at), (
                    f"profile {name!r} changes stage {stage!r}, which the pipeline does not have"
                    f"{did_you_mean(stage, have)}; its stages: {one_of(have)} (a profile changes stages, it adds none)")))
    return issues


def named(issues: Iterable[SpecIssue], profile: str | None, written: frozenset) -> list[SpecIssue]:
    """Issues of a pipeline built with ``profile``, each naming it: one at a value the profile
    wrote reads as the profile's own key (``profiles.prod.dag.schedule``), any other says it
    was found with that profile. Without a profile, as they are."""
    issues = list(issues)
    if profile is None:
        return issues
    # The model checks every profile on its own too: of its words and ours on one value, its own.
    own = {(i.mark, i.field) for i in issues if i.field.startswith(f"{PROFILES}.")}
    out: dict[SpecIssue, None] = {}
    for issue in issues:
        mark = issue.mark
        if mark is not None and (mark.file, mark.line, mark.column) in written and not issue.field.startswith(f"{PROFILES}."):
            issue = _in_profile(issue, profile)
            if (issue.mark, issue.field) in own:
                continue
        elif not issue.field.startswith(f"{PROFILES}."):
            issue = replace(issue, profile=profile)
        out[issue] = None
    return list(out)


def _in_profile(issue: SpecIssue, profile: str) -> SpecIssue:
    field = format_path((PROFILES, profile)) + (f".{issue.field}" if issue.field else "")
    return replace(issue, field=field)


def _at(data: Any, path: tuple) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _rooted(src: Source, prefix: tuple) -> Source:
    """The part of ``src`` under ``prefix`` as a source of its own (paths without the prefix,
    positions kept)."""
    data: Any = src.data
    for part in prefix:
        data = data[part]
    n = len(prefix)
    return Source(data=data, text=src.text,
                  value_marks={p[n:]: m for p, m in src.value_marks.items() if p[:n] == prefix and len(p) > n},
                  key_marks={p[n:]: m for p, m in src.key_marks.items() if p[:n] == prefix and len(p) > n})


def _graft(src: Source, prefix: tuple, part: Source) -> Source:
    """``src`` with what is under ``prefix`` replaced by ``part`` (a ``_rooted`` source, changed)."""
    def put(data: Any, path: tuple) -> Any:
        if not path:
            return part.data
        return {**data, path[0]: put(data[path[0]], path[1:])}

    def marks(own: dict, new: dict) -> dict:
        kept = {p: m for p, m in own.items() if not (p[:len(prefix)] == prefix and len(p) > len(prefix))}
        return {**kept, **{prefix + p: m for p, m in new.items()}}

    return Source(data=put(src.data, prefix), text=src.text, value_marks=marks(src.value_marks, part.value_marks),
                  key_marks=marks(src.key_marks, part.key_marks))
