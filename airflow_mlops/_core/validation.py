"""Operator arguments checked by their pydantic model, every problem named: the one translator
from pydantic's errors to ``ArgumentsError`` for the package's operators (pipeline YAML gets its
own, with line numbers: ``spec/_translate.py``)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Collection, Iterable

from airflow_mlops._core.errors import ArgumentsError


def validated(model: Any, data: dict[str, Any], owner: str, context: dict[str, Any] | None = None, *,
              union_tags: Collection[str] = (), fallback_models: Iterable[Any] = ()) -> Any:
    """``model`` (a pydantic model class) built from ``data``, or an ArgumentsError (a ValueError)
    naming every bad field: an unknown argument (top level) or key (nested) with a did-you-mean.

    :param owner: who is being built, for the message (``"BackupOperator 'backup'"``).
    :param context: pydantic validation context (e.g. ``{RENDERED: True}`` once templates rendered).
    :param union_tags: discriminator values pydantic puts into error locations; dropped from them.
    :param fallback_models: models whose fields to suggest when the place of an unknown key cannot
        be told (inside a union).
    """
    from pydantic import ValidationError

    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        lines = []
        for err in errors:
            parts = [p for p in err["loc"] if not (isinstance(p, str) and p in union_tags)]
            loc = ".".join(str(p) for p in parts)
            msg = err["msg"]
            if err["type"] == "extra_forbidden" and parts:
                key = str(parts[-1])
                if len(parts) == 1:
                    close = difflib.get_close_matches(key, sorted(model.model_fields), n=1)
                    msg = f"unknown argument '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                elif key in model.model_fields:
                    # An argument of the operator itself, written one level too deep (a policy's dry_run).
                    msg = (f"'{key}' is not a setting of {'.'.join(str(p) for p in parts[:-1])}: it is an argument "
                           f"of {owner.split(' ')[0]} itself ({key}=...)")
                else:
                    here = fields_at(model, parts[:-1]) or {f for m in fallback_models for f in m.model_fields}
                    close = difflib.get_close_matches(key, sorted(here), n=1)
                    msg = f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
            lines.append(f"{loc or '(arguments)'}: {msg}")
        raise ArgumentsError(owner, errors, model, f"{owner}: invalid arguments:\n  " + "\n  ".join(lines)) from None


def fields_at(model: Any, parts: list[Any]) -> set[str]:
    """The fields the mapping at ``parts`` of ``model`` accepts (every member of a union)."""
    from pydantic import BaseModel

    def models_of(tp: Any) -> list[type]:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) in (list, dict, typing.Union, types.UnionType):
            return [m for a in typing.get_args(tp) for m in models_of(a)]
        return [tp] if isinstance(tp, type) and issubclass(tp, BaseModel) else []

    current = [model]
    for part in parts:
        if isinstance(part, int):
            continue
        current = [m for c in current if part in c.model_fields for m in models_of(c.model_fields[part].annotation)]
    return {f for m in current for f in m.model_fields}
