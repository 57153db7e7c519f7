"""Record decoders. A decoder takes a record's value (``bytes``) and returns a mapping of field
name → value; raising means the record is poison and goes to the dead-letter topic. Name your own
by import path in ``StreamSpec.decoder`` (``'mypkg.codecs:decode_avro'``).

A decoder may also offer ``typed(fields)``: given the fields the model needs (name, MLflow type,
required) it returns a faster decoder that checks types while parsing and returns objects whose
attributes hold those fields. The default JSON decoder does (with msgspec), so a record whose
``"age"`` is ``"forty"`` is refused when decoded, naming the field, and a micro-batch never needs
MLflow's per-call schema conversion.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

try:  # msgspec ships with Airflow's task SDK and decodes JSON several times faster than the stdlib
    import msgspec

    _decode = msgspec.json.Decoder().decode
    _encode = msgspec.json.Encoder().encode
except ImportError:  # pragma: no cover
    msgspec = None  # type: ignore[assignment]
    _decode = json.loads

    def _encode(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


class DecodeError(ValueError):
    """A record value that is not what the decoder expects."""


class SchemaMismatch(DecodeError):
    """A record whose fields do not match the model's input schema."""


# MLflow ColSpec type names → Python types msgspec checks while parsing.
_PY_TYPES: dict[str, Any] = {"double": float, "float": float, "long": int, "integer": int, "boolean": bool,
                             "string": str}


class JsonDecoder:
    """One JSON object per record (the default decoder)."""

    def __call__(self, value: bytes | None) -> Mapping[str, Any]:
        if value is None:
            raise DecodeError("the record has no value (a tombstone)")
        try:
            obj = _decode(value)
        except Exception as exc:
            raise DecodeError(f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise DecodeError(f"expected a JSON object, got {type(obj).__name__}")
        return obj

    def typed(self, fields: Sequence[tuple[str, str | None, bool]]) -> tuple[Callable[[bytes], Any], dict[str, str]] | None:
        """``fields``: (JSON name, MLflow type name or None for any, required). Returns the typed
        decoder and each field's attribute name on the decoded objects; None without msgspec."""
        if msgspec is None:
            return None
        from typing import Any as AnyType
        from typing import Optional

        attrs = {name: f"f{i}" for i, (name, _, _) in enumerate(fields)}
        spec: list[Any] = []
        for name, type_name, required in sorted(fields, key=lambda f: not f[2]):  # required fields first
            py = _PY_TYPES.get(type_name or "", AnyType)
            spec.append((attrs[name], py) if required else (attrs[name], Optional[py], None))
        row = msgspec.defstruct("Row", spec, rename={a: n for n, a in attrs.items()}, gc=False)
        decode = msgspec.json.Decoder(row).decode
        validation_error, syntax_error = msgspec.ValidationError, msgspec.DecodeError

        def typed_decode(value: bytes | None) -> Any:
            if value is None:
                raise DecodeError("the record has no value (a tombstone)")
            try:
                return decode(value)
            except validation_error as exc:
                raise SchemaMismatch(f"does not match the model's input schema: {exc}") from None
            except syntax_error as exc:
                raise DecodeError(f"not valid JSON: {exc}") from None

        def many(values: list[bytes | None]) -> list[Any]:
            """Every value decoded, in one call; raises at the first that fails (a tombstone's
            None included): the caller then decodes them one by one to find which."""
            return list(map(decode, values))

        typed_decode.many = many  # type: ignore[attr-defined]
        return typed_decode, attrs


json_decoder = JsonDecoder()


def encode_json(obj: Any) -> bytes:
    """Compact JSON (numpy scalars and arrays are converted by the caller)."""
    return _encode(obj)


_NUMBERS = frozenset((int, float))


def encode_numbers(name: str, values: list[Any]) -> list[bytes] | None:
    """``[encode_json({name: v}) for v in values]`` for a list of plain ints and floats, from one
    encode of the whole list; None if any value is something else (bool, None, str, list…)."""
    if not set(map(type, values)) <= _NUMBERS:
        return None
    parts = _encode(values)[1:-1].split(b",")  # a number's JSON has no comma
    if len(parts) != len(values):  # pragma: no cover - defensive
        return None
    head = _encode({name: None})[:-len(b"null}")]
    return [head + p + b"}" for p in parts]
