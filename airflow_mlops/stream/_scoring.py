"""One micro-batch: decode → one ``model.predict`` on a DataFrame → encoded predictions, with the
records that fail set aside as dead letters. No Kafka here: records are anything with ``key``,
``value``, ``headers``, ``topic``, ``partition`` and ``offset`` attributes."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Sequence

from airflow_mlops.spec.stream import StreamSpec
from airflow_mlops.stream._codecs import encode_json, encode_numbers
from airflow_mlops.stream._model import ScoringModel
from airflow_mlops.stream._phases import Phases, clock
from airflow_mlops.stream.errors import BatchFailed

MAX_ERROR_CHARS = 2000
# What a produced message costs beyond its key, value and headers (the record batch's framing),
# kept free when a dead letter is cut to the producer's limit.
DEAD_LETTER_OVERHEAD = 1024


class MissingFeatures(ValueError):
    pass


@dataclass
class DeadLetter:
    record: Any
    stage: str  # decode | predict | encode
    error: BaseException

    def payload(self, model_version: str, limit: int) -> tuple[Any, Any, list[tuple[str, bytes]]]:
        """``(key, value, headers)`` of the dead letter, at most ``limit`` bytes in all (the
        producer's largest message): a record the broker took can be larger than what this
        producer may send, and a dead letter that cannot be produced would block its partition
        for good. Its value is then cut to fit, with ``original_size`` (bytes) and ``truncated``
        headers; topic, partition and offset are always in the headers, so the whole record can
        still be read from the source topic."""
        headers = self.headers(model_version)
        key, value = self.record.key, self.record.value
        overhead = DEAD_LETTER_OVERHEAD + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if value is not None and overhead + len(value) > limit:
            headers += [("original_size", str(len(value)).encode()), ("truncated", b"true")]
            value = value[:max(0, limit - overhead - 64)]
        return key, value, headers

    def headers(self, model_version: str) -> list[tuple[str, bytes]]:
        """The record's own headers, then where it came from and why it failed."""
        r = self.record
        message = str(self.error) or repr(self.error)
        return [
            *(r.headers or []),
            ("error_stage", self.stage.encode()),
            ("error_type", type(self.error).__name__.encode()),
            ("error_message", message[:MAX_ERROR_CHARS].encode("utf-8", "replace")),
            ("source_topic", r.topic.encode()),
            ("source_partition", str(r.partition).encode()),
            ("source_offset", str(r.offset).encode()),
            ("model_version", model_version.encode()),
        ]


def _column(records: Sequence[Any], name: str) -> list[Any]:
    """Every record's ``name`` (``key``, ``value``): read in one pass where the batch offers it
    (``value_list()``: the confluent engine's messages), else record by record."""
    read = getattr(records, f"{name}_list", None)
    if read is not None:
        return read()
    return [getattr(r, name) for r in records]


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def predictions_as_list(out: Any, n: int) -> list[Any]:
    """A pyfunc's output (array, Series, DataFrame, list, dict of columns) → one JSON-able value
    per input row."""
    import numpy as np
    import pandas as pd

    if isinstance(out, pd.DataFrame):
        values = out.iloc[:, 0].tolist() if out.shape[1] == 1 else out.to_dict("records")
    elif isinstance(out, (pd.Series, np.ndarray)):
        values = out.tolist()
    elif isinstance(out, dict):
        columns = {k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in out.items()}
        values = [dict(zip(columns, row)) for row in zip(*columns.values())]
    elif isinstance(out, (list, tuple)):
        values = [v.item() if hasattr(v, "item") else v for v in out]
    else:
        raise TypeError(f"the model returned a {type(out).__name__}; expected an array, Series, DataFrame or list")
    if len(values) != n:
        raise ValueError(f"the model returned {len(values)} predictions for {n} rows")
    return values


class BatchScorer:
    """Scores micro-batches for one spec and one loaded model."""

    def __init__(self, spec: StreamSpec, model: ScoringModel, decoder: Callable[[bytes], Any],
                 phases: Phases | None = None) -> None:
        import operator

        self.spec = spec
        self.phases = phases or Phases()
        self.model = model
        self.decoder = decoder
        self.features = spec.features or model.features
        required = spec.features or model.required or []
        self.required = frozenset(required)
        self.optional = [c for c in self.features or () if c not in self.required]
        # JSON writes 1.0 as 1: integer columns the signature declares as double/float are cast,
        # or MLflow's schema enforcement would refuse them ("Can not safely convert int64").
        self.float_features = [c for c in model.float_features or () if c in (self.features or ())]
        self.headers = [("model_version", model.version.encode()), *((k, v.encode()) for k, v in spec.output_headers.items())]
        mode = spec.output_key
        self.key_field = mode[len("field:"):] if mode.startswith("field:") else None
        self.key_mode = "field" if self.key_field else mode

        # Typed decoding: with the decoder's help, records are checked against the model's input
        # types while parsed and come out as objects with one attribute per field.
        self.typed = False
        self.decode_many: Callable[[list[bytes]], list[Any]] | None = None
        self.types = {f: (model.feature_types or {}).get(f) for f in self.features or ()}
        typed = getattr(decoder, "typed", None)
        if self.features and callable(typed):
            extra = [f for f in (*spec.output_fields, *([self.key_field] if self.key_field else ()))
                     if f not in self.types]
            made = typed([(f, self.types[f], f in self.required) for f in self.features]
                         + [(f, None, False) for f in dict.fromkeys(extra)])
            if made:
                self.decoder, attrs = made
                self.typed = True
                # values → rows for a whole batch, raising if any one fails (see decode)
                self.decode_many = getattr(self.decoder, "many", None)
                self.attrs = attrs
                self.get_features = operator.attrgetter(*(attrs[f] for f in self.features))
        # A frame of float64 (double) / int64 (long) columns, built without per-column Python
        # work where every feature is a required number.
        numeric = {"double": "float64", "long": "int64"}
        self.dtypes = [numeric.get(self.types.get(f) or "") for f in self.features or ()]
        self.all_double = bool(self.features) and not self.optional and all(d == "float64" for d in self.dtypes)
        self.unchecked_predict = model.unchecked_predict if self.features == model.features else None
        self.columns: Any = None  # the all-double frame's column index, made once (see frame)
        self._astuple: Any = None  # see row_values

    def field(self, row: Any, name: str) -> Any:
        if self.typed:
            return getattr(row, self.attrs[name])
        return row.get(name)

    # -- decode ------------------------------------------------------------------------------

    def decode(self, records: Sequence[Any]) -> tuple[Sequence[Any], list[Any], list[DeadLetter]]:
        many = self.decode_many
        if many is not None:
            # The whole batch in one call: no Python frame per record. A bad record anywhere
            # makes it raise; then the loop below finds which, one record at a time.
            try:
                return records, many(_column(records, "value")), []
            except Exception:
                pass
        decoder = self.decoder
        required = None if self.typed else self.required  # typed decoders check fields themselves
        good: list[Any] = []
        rows: list[Any] = []
        dead: list[DeadLetter] = []
        for record in records:
            try:
                row = decoder(record.value)
                if required and not row.keys() >= required:
                    missing = sorted(required - row.keys())
                    raise MissingFeatures(f"missing field(s) {missing} the model needs")
            except Exception as exc:
                dead.append(DeadLetter(record, "decode", exc))
                continue
            good.append(record)
            rows.append(row)
        return good, rows, dead

    # -- predict -----------------------------------------------------------------------------

    def frame(self, rows: list[Any]) -> Any:
        import numpy as np
        import pandas as pd

        features = self.features
        if features is None:
            return pd.DataFrame.from_records(rows)
        if self.typed:
            if self.all_double:  # one flat pass over the floats: no nested-sequence discovery
                n = len(rows) * len(features)
                flat = np.fromiter(chain.from_iterable(map(self.row_values(rows[0]), rows)), dtype=np.float64, count=n)
                if self.columns is None:
                    self.columns = pd.Index(features)
                return pd.DataFrame(flat.reshape(len(rows), len(features)), columns=self.columns, copy=False)
            values = list(map(self.get_features, rows))
            if len(features) == 1:
                values = [(v,) for v in values]
            columns = list(zip(*values)) if values else [() for _ in features]
            frame = pd.DataFrame({f: (np.array(col, dtype=d) if d and f not in self.optional else list(col))
                                  for f, col, d in zip(features, columns, self.dtypes)})
        elif self.optional:
            frame = pd.DataFrame({c: [r.get(c) for r in rows] for c in features})
        else:
            frame = pd.DataFrame({c: [r[c] for r in rows] for c in features})
        for c in self.float_features:
            if frame[c].dtype.kind in "iu":
                frame[c] = frame[c].astype("float64")
        return frame

    def row_values(self, row: Any) -> Callable[[Any], tuple[Any, ...]]:
        """row → its features as a tuple, in order. A msgspec Struct holding exactly the features
        in that order is copied out by ``astuple`` in C (about 3× faster than one getattr each)."""
        if self._astuple is None:
            self._astuple = False
            if getattr(type(row), "__struct_fields__", None) == tuple(self.attrs[f] for f in self.features or ()):
                import msgspec

                self._astuple = msgspec.structs.astuple
        if self._astuple:
            return self._astuple
        get = self.get_features
        return get if len(self.features or ()) > 1 else lambda r: (get(r),)

    def predict(self, rows: list[Any]) -> list[Any]:
        t = clock()
        frame = self.frame(rows)
        t = self.phases.lap("frame", t)
        try:
            unchecked = self.unchecked_predict
            # an all-double typed frame is float64 by construction (see frame): no need to look
            if unchecked is not None and (self.typed and self.all_double
                                          or [str(d) for d in frame.dtypes] == self.dtypes):
                out = unchecked(frame)
            else:
                out = self.model.predict(frame)
            return predictions_as_list(out, len(rows))
        finally:
            self.phases.lap("predict", t)

    def predict_isolating(self, rows: list[Any]) -> list[Any]:
        """One predict for the whole batch; if it raises, split the batch in halves and retry each,
        down to single records, so only the records that fail on their own are set aside
        (``_Failed``). k bad records in n cost about 2·k·log2(n) extra calls, not n."""
        try:
            return self.predict(rows)
        except Exception as exc:
            if len(rows) == 1:
                return [_Failed(exc)]
            mid = len(rows) // 2
            return self.predict_isolating(rows[:mid]) + self.predict_isolating(rows[mid:])

    # -- encode ------------------------------------------------------------------------------

    def encode(self, record: Any, row: Any, prediction: Any) -> tuple[bytes | None, bytes]:
        out = {self.spec.prediction_field: prediction}
        for name in self.spec.output_fields:
            out[name] = self.field(row, name)
        if self.key_mode == "input":
            key = record.key
        elif self.key_mode == "none":
            key = None
        else:
            value = self.field(row, self.key_field)
            if value is None:
                raise MissingFeatures(f"the key field '{self.key_field}' is missing")
            key = value if isinstance(value, bytes) else str(value).encode()
        return key, encode_json(out)

    def score(self, records: Sequence[Any]) -> tuple[list[tuple[bytes | None, bytes]], list[DeadLetter]]:
        """→ (``(key, value)`` of each prediction in input order, dead letters)."""
        t = clock()
        good, rows, dead = self.decode(records)
        self.phases.lap("decode", t)
        predictions = self.predict_isolating(rows) if rows else []
        t = clock()
        try:
            return self.encode_all(records, good, rows, predictions, dead)
        finally:
            self.phases.lap("encode", t)

    def encode_all(self, records: Sequence[Any], good: Sequence[Any], rows: list[Any], predictions: list[Any],
                   dead: list[DeadLetter]) -> tuple[list[tuple[bytes | None, bytes]], list[DeadLetter]]:
        outputs: list[tuple[bytes | None, bytes]] = []
        pf = self.spec.prediction_field
        simple = self.key_mode == "input" and not self.spec.output_fields
        if simple and predictions and not dead:
            # Numbers (every prediction succeeded): one encode for the batch, each record's value
            # cut from it; the same bytes as encoding {pf: prediction} one record at a time.
            values = encode_numbers(pf, predictions)
            if values is not None:
                return list(zip(_column(good, "key"), values)), dead
        for record, row, prediction in zip(good, rows, predictions):
            if prediction.__class__ is _Failed:
                dead.append(DeadLetter(record, "predict", prediction.error))
                continue
            try:
                if simple:  # the common case, without the per-record branches
                    outputs.append((record.key, encode_json({pf: prediction})))
                else:
                    outputs.append(self.encode(record, row, prediction))
            except Exception as exc:
                dead.append(DeadLetter(record, "encode", exc))
        halt = self.spec.halt_on_failed_batch
        if halt and not outputs and len(records) >= halt:
            first = min(dead, key=lambda d: (d.record.topic, d.record.partition, d.record.offset))
            raise BatchFailed(
                f"every one of the {len(records)} records of this batch failed (the first to {first.stage}: "
                f"{type(first.error).__name__}: {str(first.error)[:500]}); that points at the model or the data's "
                f"schema rather than at single bad records, so the run stops instead of dead-lettering them "
                f"(halt_on_failed_batch)"
            )
        return outputs, dead
