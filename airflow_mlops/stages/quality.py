"""Data-quality gates: measure a DataFrame (pandas or Spark), compare with the gates, and fail
with the measured numbers. Measuring is engine-specific; judging is shared."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops._core.errors import StageFailed
from airflow_mlops.spec.models import canonical_type

if TYPE_CHECKING:
    from airflow_mlops.spec.models import QualityGates

_PANDAS_TYPES = {
    "int64": "bigint", "Int64": "bigint", "int32": "int", "Int32": "int", "float64": "double", "Float64": "double",
    "float32": "float", "object": "string", "string": "string", "str": "string", "bool": "boolean",
    "boolean": "boolean",
}


def _unique_sets(gates: "QualityGates") -> list[list[str]]:
    return [[u] if isinstance(u, str) else list(u) for u in gates.unique]


def measure_pandas(df: Any, gates: "QualityGates") -> dict[str, Any]:
    types = {}
    for col, dtype in df.dtypes.items():
        name = str(dtype)
        types[str(col)] = "timestamp" if name.startswith("datetime64") else _PANDAS_TYPES.get(name, name)
    present = [c for c in gates.max_null_fraction if c in df.columns]
    nulls = {c: int(df[c].isna().sum()) for c in present}
    duplicates = {}
    for cols in _unique_sets(gates):
        if all(c in df.columns for c in cols):
            rows = df[cols].dropna()
            duplicates[",".join(cols)] = int(len(rows) - len(rows.drop_duplicates()))
    return {"rows": int(len(df)), "types": types, "nulls": nulls, "duplicates": duplicates}


def measure_spark(df: Any, gates: "QualityGates") -> dict[str, Any]:
    """Every number in one Spark job (one aggregation over the data)."""
    from pyspark.sql import functions as F

    types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    present = [c for c in gates.max_null_fraction if c in types]
    sets = [cols for cols in _unique_sets(gates) if all(c in types for c in cols)]
    aggs = [F.count(F.lit(1)).alias("rows")]
    aggs += [F.sum(F.col(c).isNull().cast("long")).alias(f"null_{i}") for i, c in enumerate(present)]
    for i, cols in enumerate(sets):
        all_present = F.lit(True)
        for c in cols:
            all_present = all_present & F.col(c).isNotNull()
        aggs.append(F.sum(all_present.cast("long")).alias(f"nonnull_{i}"))
        aggs.append(F.countDistinct(*[F.col(c) for c in cols]).alias(f"distinct_{i}"))
    row = df.agg(*aggs).collect()[0]
    return {
        "rows": int(row["rows"]),
        "types": types,
        "nulls": {c: int(row[f"null_{i}"] or 0) for i, c in enumerate(present)},
        "duplicates": {",".join(cols): int((row[f"nonnull_{i}"] or 0) - row[f"distinct_{i}"]) for i, cols in enumerate(sets)},
    }


def judge(measured: dict[str, Any], gates: "QualityGates") -> list[str]:  # noqa: C901
    """Every failed gate, each with the measured number and the bound."""
    failures = []
    rows, types = measured["rows"], measured["types"]
    if gates.row_count:
        if gates.row_count.min is not None and rows < gates.row_count.min:
            failures.append(f"row count {rows} is below the minimum {gates.row_count.min}")
        if gates.row_count.max is not None and rows > gates.row_count.max:
            failures.append(f"row count {rows} is above the maximum {gates.row_count.max}")
    for col, expected in gates.columns.items():
        if col not in types:
            failures.append(f"required column '{col}' is missing (columns: {', '.join(types)})")
        elif expected and canonical_type(types[col]) != canonical_type(expected):
            failures.append(f"column '{col}' has type {types[col]}, expected {canonical_type(expected)}")
    for col, limit in gates.max_null_fraction.items():
        if col not in types:
            failures.append(f"column '{col}' (null check) is missing")
            continue
        fraction = measured["nulls"][col] / rows if rows else 0.0
        if fraction > limit:
            failures.append(f"column '{col}' is {fraction:.2%} null ({measured['nulls'][col]} of {rows} rows), "
                            f"above the allowed {limit:.2%}")
    for cols in _unique_sets(gates):
        key = ",".join(cols)
        if key not in measured["duplicates"]:
            failures.append(f"column(s) {key} (uniqueness check) missing")
        elif measured["duplicates"][key]:
            failures.append(f"{key} is not unique: {measured['duplicates'][key]} duplicate row(s)")
    return failures


def enforce(measured: dict[str, Any], gates: "QualityGates", log: Any) -> dict[str, Any]:
    failures = judge(measured, gates)
    summary = {"rows": measured["rows"], "nulls": measured["nulls"], "duplicates": measured["duplicates"]}
    if failures:
        raise StageFailed("data-quality gates failed: " + "; ".join(failures))
    log.info("Data-quality gates passed: %s", summary)
    return summary
