"""One micro-batch: decode → one ``model.predict`` on a DataFrame → encoded predictions, with the
records that fail set aside as dead letters. No Kafka here: records are anything with ``key``,
``value``, ``headers``, ``topic``, ``partition`` and ``offset`` attributes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from airflow_mlops.stream.codecs import encode_json
from airflow_mlops.stream.errors import BatchFailed
from airflow_mlops.stream.model import ScoringModel
from airflow_mlops.stream.spec import StreamSpec

MAX_ERROR_CHARS = 2000


class MissingFeatures(ValueError):
    pass


@dataclass
class DeadLetter:
    record: Any
    stage: str  # decode | predict | encode
    error: BaseException

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

    def __init__(self, spec: StreamSpec, model: ScoringModel, decoder: Callable[[bytes], Any]) -> None:
        self.spec = spec
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

    # -- decode ------------------------------------------------------------------------------

    def decode(self, records: Sequence[Any]) -> tuple[list[Any], list[Any], list[DeadLetter]]:
        decoder, required = self.decoder, self.required
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
        import pandas as pd

        if self.features is None:
            return pd.DataFrame.from_records(rows)
        if self.optional:
            frame = pd.DataFrame({c: [r.get(c) for r in rows] for c in self.features})
        else:
            frame = pd.DataFrame({c: [r[c] for r in rows] for c in self.features})
        for c in self.float_features:
            if frame[c].dtype.kind in "iu":
                frame[c] = frame[c].astype("float64")
        return frame

    def predict(self, rows: list[Any]) -> list[Any]:
        return predictions_as_list(self.model.predict(self.frame(rows)), len(rows))

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
            out[name] = row.get(name)
        if self.key_mode == "input":
            key = record.key
        elif self.key_mode == "none":
            key = None
        else:
            value = row[self.key_field]
            key = value if isinstance(value, bytes) else str(value).encode()
        return key, encode_json(out)

    def score(self, records: Sequence[Any]) -> tuple[list[tuple[bytes | None, bytes]], list[DeadLetter]]:
        """→ (``(key, value)`` of each prediction in input order, dead letters)."""
        good, rows, dead = self.decode(records)
        outputs: list[tuple[bytes | None, bytes]] = []
        if not rows:
            return outputs, dead
        predictions = self.predict_isolating(rows)
        halt = self.spec.halt_on_failed_batch
        if halt and len(rows) >= halt and all(p.__class__ is _Failed for p in predictions):
            first = predictions[0].error
            raise BatchFailed(
                f"every one of the {len(rows)} decoded records of this batch failed to score "
                f"({type(first).__name__}: {str(first)[:500]}); that points at the model or the data's schema rather "
                f"than at single bad records, so the run stops instead of dead-lettering them (halt_on_failed_batch)"
            )
        pf = self.spec.prediction_field
        simple = self.key_mode == "input" and not self.spec.output_fields
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
        return outputs, dead
