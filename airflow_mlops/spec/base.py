"""What the spec modules share: strict models and durations written the way people write them."""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, create_model

# An import path written 'package.module:name' (a callable, a transform, a decoder, an operator).
IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


class Strict(BaseModel):
    """Unknown keys are errors (reported with a did-you-mean by ``spec.load.translate``)."""

    model_config = ConfigDict(extra="forbid")


def kind_from_name_schema(schema: dict[str, Any], kinds: Iterable[str]) -> None:
    """The JSON Schema of ``stages``: a stage named after a kind without ``kind:`` is that kind
    there too (as ``Pipeline`` reads it; editors would otherwise find it matches several kinds)."""
    union = schema["additionalProperties"]
    ref = union.get("discriminator", {}).get("mapping", {})
    schema["properties"] = {name: {"if": {"not": {"required": ["kind"]}}, "then": {"$ref": ref[name]}, "else": union}
                            for name in kinds if name in ref and name != "custom"}



def overlay_model(name: str, of: type[BaseModel], doc: str, leave_out: Iterable[str] = (),
                  validators: dict[str, Any] | None = None, **extra: Any) -> type[BaseModel]:
    """A model with ``of``'s fields, each optional and unset by default (a profile sets some of
    them over a pipeline: a default here would read as a value it sets), with the same types and
    descriptions; ``extra`` adds fields as ``create_model`` takes them."""
    fields: dict[str, Any] = {
        field: (info.annotation | None, Field(None, description=info.description))
        for field, info in of.model_fields.items() if field not in leave_out
    }
    return create_model(name, __base__=Strict, __doc__=doc, __validators__=validators, **fields, **extra)
