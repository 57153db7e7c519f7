"""A custom stage's operator and its ``args``, checked the way Airflow will use them.

The operator class is imported (the DAG needs it anyway) and its ``__init__`` signatures along
the MRO — down to BaseOperator's — say which arguments it takes: an unknown one is reported at
its own line with a did-you-mean, a missing required one at ``args``. Then the operator is
constructed with those arguments, exactly as the DAG will construct it. An operator that
validates its arguments with pydantic raises ``ArgumentsError`` (all of this package's operators
and sensors do), so every bad value, however deep in ``args``, is reported at its own line.

An operator whose ``__init__`` takes named arguments through ``**kwargs`` lists them in a class
attribute ``accepted_kwargs`` (e.g. StreamInferenceOperator: every StreamSpec field).
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable

from airflow_mlops._core.errors import ArgumentsError, did_you_mean, format_path, one_of
from airflow_mlops._core.extras import MissingExtra
from airflow_mlops.spec._source import Source
from airflow_mlops.spec.errors import SpecIssue

RESULT_TASK = "run"  # the task id of a stage's result task, inside the stage's task group


def stage_task_args(stage: Any) -> dict[str, Any]:
    """What a stage's own fields add to its task's arguments (the same for every backend)."""
    task_args: dict[str, Any] = {"doc_md": stage.doc} if stage.doc else {}
    if stage.retries is not None:
        task_args["retries"] = stage.retries
    if stage.execution_timeout is not None:
        task_args["execution_timeout"] = stage.execution_timeout
    for name in ("queue", "pool"):
        if getattr(stage, name, None) is not None:
            task_args[name] = getattr(stage, name)
    return task_args


def import_operator(path: str) -> Any:
    import importlib

    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def accepted_arguments(cls: type) -> tuple[set[str] | None, list[str], list[str]]:
    """(every keyword ``cls`` accepts, or None when its signature cannot tell; the operator's own
    ones, BaseOperator's left out; the required ones)."""
    from airflow.sdk import BaseOperator

    names: set[str] = set()
    own: list[str] = []
    required: list[str] = []
    first = True
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]  # without self
        except (TypeError, ValueError):
            return None, own, required
        extra = list(klass.__dict__.get("accepted_kwargs", ()))
        for name in [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)] + extra:
            names.add(name)
            if klass is not BaseOperator and name not in own:
                own.append(name)
        if first:
            required = [p.name for p in params if p.default is p.empty
                        and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "task_id"]
            first = False
        if klass is BaseOperator or not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names, own, required


def check_custom_stage(stage: Any, at: tuple, src: Source, construct: bool = True) -> Iterable[SpecIssue]:
    """The operator imported and its signature checked; with ``construct``, also built with its
    arguments (its own checks of their values), which the DAG's build does anyway: the loader
    passes False on the way to building the DAG, so a custom operator is constructed once."""
    operator_loc, args_loc = at + ("operator",), at + ("args",)
    try:
        cls = import_operator(stage.operator)
    except Exception as exc:  # any import-time failure of user code is a spec error here
        yield SpecIssue(src.mark_of(operator_loc), format_path(operator_loc),
                        f"cannot import operator '{stage.operator}': {type(exc).__name__}: {exc}")
        return
    from airflow.sdk import BaseOperator

    if not (isinstance(cls, type) and issubclass(cls, BaseOperator)):
        yield SpecIssue(src.mark_of(operator_loc), format_path(operator_loc),
                        f"'{stage.operator}' is not an Airflow operator class (a subclass of BaseOperator)")
        return
    task_args = stage_task_args(stage)
    issues = list(_check_signature(cls, stage, at, src, task_args))
    if issues or not construct:
        yield from issues
        return
    try:
        cls(task_id=RESULT_TASK, **stage.args, **task_args)
    except ArgumentsError as exc:
        yield from translate_arguments(exc, src, args_loc)
    except MissingExtra as exc:  # the operator's extra is not installed: the operator line needs it
        yield SpecIssue(src.mark_of(operator_loc), format_path(operator_loc), str(exc))
    except Exception as exc:
        where = args_loc if stage.args else operator_loc
        yield SpecIssue(src.mark_of(where), format_path(where),
                        f"{cls.__name__} refuses these arguments: {type(exc).__name__}: {exc}")


def translate_arguments(exc: ArgumentsError, src: Source, args_loc: tuple) -> list[SpecIssue]:
    from airflow_mlops.spec._translate import translate

    return translate(exc.errors, src, prefix=args_loc, root=exc.model)


def _check_signature(cls: type, stage: Any, at: tuple, src: Source, task_args: dict) -> Iterable[SpecIssue]:
    names, own, required = accepted_arguments(cls)
    args_loc = at + ("args",)
    suggested = set()
    for key in stage.args:
        loc = args_loc + (key,)
        if key == "task_id":
            yield SpecIssue(src.mark_of(loc, key=True), format_path(loc),
                            f"the stage names its task ('{at[-1]}.{RESULT_TASK}'): remove task_id")
        elif key in task_args:
            field = {"doc_md": "doc"}.get(key, key)
            yield SpecIssue(src.mark_of(loc, key=True), format_path(loc),
                            f"'{key}' is also set by the stage's '{field}': give it once")
        elif names is not None and key not in names:
            hint = did_you_mean(key, sorted(names))
            suggested.add(hint.split("'")[1] if hint else None)
            takes = f"; {cls.__name__} takes {one_of(own)} (and BaseOperator's arguments)" if own else \
                "; it takes only BaseOperator's arguments"
            yield SpecIssue(src.mark_of(loc, key=True), format_path(loc), f"unknown argument '{key}'{hint}{takes}")
    for name in required:
        if name not in stage.args and name not in suggested:
            where = args_loc if args_loc in src.value_marks else at + ("operator",)
            yield SpecIssue(src.mark_of(where, key=True), format_path(args_loc),
                            f"{cls.__name__} needs the argument '{name}'")
