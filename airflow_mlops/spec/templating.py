"""Stage fields that vary per run: Jinja templates Airflow renders when the task runs, and ``~`` /
``$VAR`` in paths, expanded in the worker.

At parse time a templatable field may hold a template instead of a value of its type (a threshold
``min: "{{ params.min_accuracy }}"``); a field without one is validated as usual. The operator
carries the templated parts of its stage as a plain dict (``stage_overrides``, an Airflow template
field, so the UI's "Rendered Template" view shows what they became); when the task runs they are
put back into the stage, paths are expanded, and the stage is validated again with the same model
(``render_stage``). Nothing here imports more than pydantic: DAG files import it at every parse.
"""

from __future__ import annotations

import ast
from typing import Any

from pydantic import BaseModel, ValidationError, ValidationInfo, WrapValidator

from airflow_mlops._core.paths import expand_env, needs_expanding

TEMPLATE_PATTERN = r"\{\{|\{%"
RENDERED = "rendered"  # validation context key: the values are rendered, templates are no longer allowed

# Per stage kind: the templatable fields ("*": every key of a mapping). A field ending in a mapping
# (train params, validate thresholds) is templatable in every value below it.
TEMPLATABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "preprocess": (("input", "path"), ("inputs", "*", "path"), ("output",), ("sql",)),
    "train": (("params",),),
    "validate": (("thresholds",),),
    "serve": (("input", "path"), ("output",), ("stream", "topics"), ("stream", "output_topic")),
    "drift": (("current", "path"), ("reference", "path")),
}
# Fields whose rendered text is read as a literal (numbers, booleans, None, lists, dicts), because
# Jinja renders everything to text: params: {n_estimators: "{{ params.trees }}"} gets an int.
LITERAL = {("params",), ("thresholds",)}
# Paths (and only those) get ~ and $VAR expanded in the worker.
PATHS = {
    "preprocess": (("input", "path"), ("inputs", "*", "path"), ("output",)),
    "serve": (("input", "path"), ("output",)),
    "drift": (("current", "path"), ("reference", "path")),
}


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def has_template(value: Any) -> bool:
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_template(v) for v in value)
    if isinstance(value, BaseModel):
        return any(has_template(getattr(value, name)) for name in type(value).model_fields)
    return is_template(value)


def _rendered(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(RENDERED))


def _allow_template(value: Any, handler: Any, info: ValidationInfo) -> Any:
    """Before rendering a template stands in for the value; after rendering the value must be valid."""
    if is_template(value) and not _rendered(info):
        return value
    return handler(value)


class _TemplateJsonSchema:
    """The JSON Schema says a template is accepted too (editors do not flag it)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        template = {"type": "string", "pattern": TEMPLATE_PATTERN,
                    "description": "A Jinja template, rendered when the task runs (e.g. '{{ params.x }}')."}
        return {"anyOf": [schema, template]}


# Annotated[float | None, *TEMPLATABLE_VALUE]: the field's own type, or a template.
TEMPLATABLE_VALUE = (WrapValidator(_allow_template), _TemplateJsonSchema())


def allows_template(value: Any, info: ValidationInfo) -> bool:
    """For validators of templatable fields: skip the checks of a not-yet-rendered template."""
    return is_template(value) and not _rendered(info)


# --- parse time: what the operator carries --------------------------------------------------------


def _walk(node: Any, path: tuple[str, ...], at: tuple = ()) -> list[tuple[tuple, Any]]:
    """``(location, value)`` of each field at ``path`` under a model (or dict)."""
    if not path:
        return [(at, node)]
    head, rest = path[0], path[1:]
    if node is None:
        return []
    if head == "*":
        items = node.items() if isinstance(node, dict) else ()
        return [hit for key, child in items for hit in _walk(child, rest, at + (key,))]
    child = node.get(head) if isinstance(node, dict) else getattr(node, head, None)
    return _walk(child, rest, at + (head,))


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _templated_only(value: Any) -> Any:
    """The parts of a (plain) value that hold templates; lists are kept whole."""
    if isinstance(value, dict):
        return {k: _templated_only(v) for k, v in value.items() if has_template(v)}
    return value


def _put(tree: dict, at: tuple, value: Any) -> None:
    for key in at[:-1]:
        tree = tree.setdefault(key, {})
    tree[at[-1]] = value


def stage_overrides(stage: Any) -> dict[str, Any]:
    """The templated fields of a stage as a nested plain dict (``{}`` when none), e.g.
    ``{"input": {"path": "/data/{{ ds }}.csv"}}``. Cheap: a few attribute reads per stage."""
    out: dict[str, Any] = {}
    for path in TEMPLATABLE.get(getattr(stage, "kind", None), ()):
        for at, value in _walk(stage, path):
            if has_template(value):
                _put(out, at, _templated_only(_plain(value)))
    return out


# --- when the task runs ---------------------------------------------------------------------------


class StageRenderError(ValueError):
    """A rendered or expanded value the stage's model refuses, or an unset environment variable."""


def literal(text: Any) -> Any:
    """Rendered text read back as the value it prints: ``'100'`` → 100, ``'0.5'`` → 0.5,
    ``'True'``/``'true'`` → True, ``'None'``/``'null'`` → None, ``'[1, 2]'`` → [1, 2]; else the text."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    return {"true": True, "false": False, "null": None, "~": None}.get(text.strip().lower(), text)


def _merge(data: dict, rendered: dict, original: dict, as_literal: bool, at: tuple = ()) -> None:
    for key, value in rendered.items():
        here = at + (key,)
        literal_here = as_literal or here in LITERAL
        was = original.get(key) if isinstance(original, dict) else None
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value, was if isinstance(was, dict) else {}, literal_here, here)
        elif literal_here and is_template(was):
            data[key] = literal(value)
        elif literal_here and isinstance(value, list) and isinstance(was, list):
            data[key] = [literal(v) if is_template(w) else v for v, w in zip(value, was)]
        else:
            data[key] = value


def _expand_paths(kind: str, data: dict) -> None:
    for path in PATHS.get(kind, ()):
        for at, value in _walk(data, path):
            if needs_expanding(value):
                try:
                    _put(data, at, expand_env(value))
                except ValueError as exc:
                    raise StageRenderError(f"{'.'.join(map(str, at))}: {exc}") from None


def render_stage(stage: Any, rendered: dict[str, Any] | None, stage_name: str) -> Any:
    """The stage with its rendered templates put back and its paths expanded, validated again with
    its own model. Unchanged (the same object) when there is nothing to render or expand."""
    kind = getattr(stage, "kind", None)
    expand = any(needs_expanding(v) for path in PATHS.get(kind, ()) for _, v in _walk(stage, path))
    if not rendered and not expand:
        return stage
    data = stage.model_dump(exclude_unset=True, warnings=False)  # templates stand where numbers go
    data.setdefault("kind", kind)
    if rendered:
        _merge(data, rendered, stage_overrides(stage), False)
    try:
        _expand_paths(kind, data)
    except StageRenderError as exc:
        raise StageRenderError(f"stage '{stage_name}': {exc}") from None
    try:
        return type(stage).model_validate(data, context={RENDERED: True})
    except ValidationError as exc:
        raise StageRenderError(describe(exc, stage_name)) from None


def describe(exc: ValidationError, stage_name: str) -> str:
    """``stage 'x': input.path: <what is wrong> (rendered: <value>)``, one line per field."""
    lines = []
    seen = set()
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
        field = ".".join(loc) or "(stage)"
        if field in seen:
            continue
        seen.add(field)
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list)) else f" (rendered: {value!r})"
        lines.append(f"{field}: {err['msg'][:1].lower() + err['msg'][1:]}{shown}")
    return f"stage '{stage_name}': after rendering its templates, " + "; ".join(lines)


_UNION_TAGS = {"float", "int", "str", "bool", "list[str]", "dict", "none"}
