"""Pydantic's validation errors, re-addressed to YAML positions and reworded for people."""

from __future__ import annotations

import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import core_schema

from airflow_mlops._core.errors import did_you_mean, format_path, one_of
from airflow_mlops.spec._source import Source
from airflow_mlops.spec.dag import DagSettings
from airflow_mlops.spec.errors import SpecIssue
from airflow_mlops.spec.models import STAGE_KINDS, Pipeline

_TYPE_NAMES = {
    "string_type": "a string", "model_type": "a mapping", "dict_type": "a mapping", "model_attributes_type": "a mapping",
    "int_type": "a whole number", "float_type": "a number", "bool_type": "true or false", "list_type": "a list",
}
# pydantic's own error types; any other type is a PydanticCustomError whose message is already ours.
_PYDANTIC_TYPES = frozenset(typing.get_args(core_schema.ErrorType))


def translate(
    errors: ValidationError | list[dict], src: Source, *, prefix: tuple = (), root: type[BaseModel] = Pipeline
) -> list[SpecIssue]:
    """Pydantic's errors, re-addressed to YAML positions and reworded for people.

    ``root`` is the model that validated the data at ``prefix`` in ``src`` (the whole pipeline by
    default; an operator's argument model for a custom stage's ``args``)."""
    if isinstance(errors, ValidationError):
        errors = errors.errors(include_url=False)
    data = _at(src.data, prefix)
    by_path: dict[tuple, list[dict]] = {}
    unknown: list[tuple] = []  # where an unknown key was written: its mapping matched no other member
    issues = []
    for err in errors:
        loc = tuple(err.get("loc") or ())
        if err["type"] == "extra_forbidden" and loc:
            path = prefix + _data_path(loc, data)
            unknown.append(path)
            allowed = _allowed_keys(loc, root)
            key = path[-1]
            expected = f"; expected one of {one_of(allowed)}" if allowed else ""
            hint = did_you_mean(key, allowed)
            if "dag" in allowed and key in DagSettings.model_fields:  # schedule: at the top, or a profile's
                hint = f" (a DAG setting: write it under dag, as dag.{key})"
            issues.append(
                SpecIssue(src.mark_of(path, key=True), format_path(path), f"unknown key '{key}'{hint}{expected}")
            )
        else:
            path = prefix + _data_path(loc, data, allow_missing=err["type"] == "missing")
            if err["type"] == "union_tag_invalid":
                path += ("kind",)  # point at the bad kind itself, not the stage
            by_path.setdefault(path, []).append(err)
    for path, errs in by_path.items():
        type_errs = [e for e in errs if e["type"] in _TYPE_NAMES]
        other = [e for e in errs if e["type"] not in _TYPE_NAMES]
        deeper = any(p[: len(path)] == path and len(p) > len(path) for p in [*by_path, *unknown])
        if type_errs and not other and not deeper:
            # A union (e.g. a profile name or an inline mapping) where no member matched.
            wanted = " or ".join(sorted({_TYPE_NAMES[e["type"]] for e in type_errs}))
            issues.append(SpecIssue(src.mark_of(path), format_path(path),
                                    f"expected {wanted}, got {_got(type_errs[0]['input'], src, path, wanted)}"))
        for err in other:
            issues.append(SpecIssue(src.mark_of(path), format_path(path), _message(err, path)))
    return sorted(issues, key=lambda i: (i.mark.line, i.mark.column) if i.mark else (0, 0))


def _at(data: Any, path: tuple) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


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


def _allowed_keys(loc: tuple, root: type[BaseModel] = Pipeline) -> list[str]:  # noqa: C901
    """The keys the mapping holding ``loc[-1]`` accepts, found by walking the models along ``loc``
    (which also carries union tags: a stage kind or a model's class name)."""
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

    tp: Any = root
    for part in loc[:-1]:
        tp = descend(tp, part)
        if tp is None:
            return []
    models = [t for t in members(tp) if isinstance(t, type) and issubclass(t, BaseModel)]
    return list(models[0].model_fields) if len(models) == 1 else []


def _got(value: Any, src: Any, path: tuple, wanted: str) -> str:
    """What was written, as written: YAML reads an unquoted ``true``, ``no``, ``1.10`` or
    ``2025-01-10`` as a boolean, number or date, which is not what a user who wanted text sees."""
    if wanted != "a string" or isinstance(value, (str, dict, list)) or value is None:
        return repr(value)
    mark = src.mark_of(path)
    lines = (getattr(src, "text", "") or "").splitlines()
    raw = ""
    if mark and 0 < mark.line <= len(lines):
        raw = re.split(r"[\s,}\]#]", lines[mark.line - 1][mark.column - 1:], maxsplit=1)[0]
    try:  # the text at that position is this value (a merged defaults file has its own text)
        import yaml

        if not raw or yaml.safe_load(raw) != value:
            raw = ""
    except yaml.YAMLError:
        raw = ""
    shown = raw or repr(value)
    kind = {bool: "a boolean", int: "a number", float: "a number"}.get(type(value), f"a {type(value).__name__}")
    return f"{shown} (YAML reads it unquoted as {kind}, {value!r}): quote it, '{shown}', for the text"


def _message(err: dict, path: tuple) -> str:
    etype, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    field = path[-1] if path else ""
    if etype not in _PYDANTIC_TYPES:
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

