"""serve (batch mode): score a dataset with the validated model version through mlflow.pyfunc."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.mlflow import use_store
from airflow_mlops.stages.data import read_dataset, read_input, write_dataset
from airflow_mlops.stages.serve.model import serving_model

if TYPE_CHECKING:
    from airflow_mlops.spec.models import ServeStage


def run(spec: "ServeStage", ctx: StageContext) -> dict[str, Any]:
    if spec.mode == "online":
        from airflow_mlops.stages.serve import online

        return online.run(spec, ctx)
    if spec.mode == "stream":
        from airflow_mlops.stages.serve.stream import run_serve_stream

        return run_serve_stream(spec.stream, ctx, spec.model)
    import mlflow

    from airflow_mlops._core.compat import import_skops_io

    served = serving_model(spec.model, ctx)
    model_uri = served["model_uri"]
    df = read_input(spec.input, ctx.data_conn_id) if spec.input else read_dataset(ctx.find("test_path"), conn_id=ctx.data_conn_id)
    use_store(ctx.mlflow)
    import_skops_io()  # before MLflow loads a scikit-learn model: see there
    model = mlflow.pyfunc.load_model(model_uri)
    schema = model.metadata.get_input_schema()
    columns = schema.input_names() if schema else [c for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StageFailed(f"the data to score lacks the model's input columns {missing}")
    where = spec.input.path or spec.input.sklearn_dataset if spec.input else ctx.find("test_path")
    reasons = signature_problems(df, schema)
    result: dict[str, Any] = {}
    if reasons is not None and reasons.notna().any():
        bad = reasons.notna()
        if spec.on_bad_rows == "fail":
            raise StageFailed(f"stage '{ctx.stage_name}': {int(bad.sum())} of {len(df)} rows of {where} do not fit the "
                              f"signature of {model_uri}: {summary(reasons)}. Set on_bad_rows: set_aside to score the "
                              "others and keep these in rejected." + spec.format)
        rejected = df[bad].copy()
        rejected["rejected_reason"] = reasons[bad]
        result["rejected_path"] = write_dataset(rejected, ctx.output_dir() / f"rejected.{spec.format}", spec.format)
        result["rejected_rows"] = int(bad.sum())
        ctx.log.warning("%d of %d rows set aside in %s: %s", int(bad.sum()), len(df), result["rejected_path"],
                        summary(reasons))
        df = df[~bad]
    df = as_signature_types(df, schema)
    ctx.log.info("Scoring %d rows with %s", len(df), model_uri)
    out = df.copy()
    try:
        out["prediction"] = model.predict(df[columns])
    except mlflow.exceptions.MlflowException as exc:  # MLflow's message would carry the whole frame
        import re

        found = re.search(r"Error: (.*)$", str(exc).strip(), re.DOTALL)
        first = (found.group(1) if found else type(exc).__name__).strip().splitlines()[0][:300]
        raise StageFailed(f"stage '{ctx.stage_name}': the model {model_uri} refused the rows of {where}: {first}") \
            from None
    path = write_dataset(out, ctx.output_dir() / f"predictions.{spec.format}", spec.format)
    ctx.log.info("Wrote %d predictions to %s", len(out), path)
    return {"predictions_path": path, "rows": len(out), **result, **served}


_INTEGER = ("long", "integer")
_NUMBER = ("double", "float", "long", "integer")


def signature_problems(df: Any, schema: Any) -> Any:
    """Per row, why it does not fit the model's input ``schema`` (a pandas Series of str, None
    where it fits); None without a column signature, or when every row fits. Checks what MLflow's
    enforcement refuses with a traceback holding the whole frame: a missing value in an integer or
    boolean column, and values that are not numbers in a numeric one. A column whose dtype
    already rules a fault out is not scanned (a float column holds no text; an integer one no
    fraction), so a clean frame of numbers costs next to nothing."""
    import pandas as pd

    if schema is None or not getattr(schema, "has_input_names", lambda: False)():
        return None
    reasons = None

    def mark(bad: Any, why: str) -> None:
        nonlocal reasons
        if not bad.any():
            return
        if reasons is None:
            reasons = pd.Series([None] * len(df), index=df.index, dtype=object)
        reasons[bad & reasons.isna()] = why

    for col in schema.inputs:
        name, kind = col.name, getattr(col.type, "name", str(col.type))
        if name not in df.columns:
            continue
        values = df[name]
        numeric = values.dtype.kind in "biuf"
        # numpy ints and bools hold no missing value; pandas' nullable ones (Int64, boolean) can.
        can_miss = values.dtype.kind not in "biu" or pd.api.types.is_extension_array_dtype(values.dtype)
        if (kind in _INTEGER or kind == "boolean") and not getattr(col, "optional", False) and can_miss:
            mark(values.isna(), f"column '{name}' is {kind} in the signature and holds no value")
        if kind in _NUMBER and not numeric:
            numbers = pd.to_numeric(values, errors="coerce")
            mark(numbers.isna() & values.notna(),
                 f"column '{name}' is {kind} in the signature and holds a value that is not a number")
        if kind in _INTEGER and values.dtype.kind not in "biu":
            numbers = values if numeric else pd.to_numeric(values, errors="coerce")
            mark(numbers.notna() & (numbers % 1 != 0),
                 f"column '{name}' is {kind} in the signature and holds a fraction")
    return reasons


def as_signature_types(df: Any, schema: Any) -> Any:
    """Integer and boolean columns of the signature given that type when every value fits (a
    column read back as float64 because it once held a missing value); MLflow refuses to
    convert them itself."""
    if schema is None or not getattr(schema, "has_input_names", lambda: False)():
        return df
    casts = {}
    for col in schema.inputs:
        kind = getattr(col.type, "name", str(col.type))
        if col.name in df.columns and df[col.name].notna().all() and df[col.name].dtype.kind == "f":
            if kind in _INTEGER and (df[col.name] % 1 == 0).all():
                casts[col.name] = "int64" if kind == "long" else "int32"
    return df.astype(casts) if casts else df


def summary(reasons: Any) -> str:
    """``column 'age' is long in the signature and holds no value (12 rows); ...``, no data."""
    counts = reasons.dropna().value_counts()
    return "; ".join(f"{why} ({n} row{'s' if n != 1 else ''})" for why, n in counts.items())
