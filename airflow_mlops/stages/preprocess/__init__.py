"""preprocess (pandas): read (or call your function) → transform → steps → quality gates →
train/test split → write."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.paths import import_string
from airflow_mlops.stages import quality
from airflow_mlops.stages.data import read_input, write_dataset

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.spec.models import PreprocessStage, Step


def run(spec: "PreprocessStage", ctx: StageContext) -> dict[str, Any]:
    import pandas as pd

    if spec.callable:
        produced = import_string(spec.callable)(**spec.kwargs)
        if isinstance(produced, dict):
            return produced  # the function wrote its own outputs and hands back their references
        if not isinstance(produced, pd.DataFrame):
            raise StageFailed(
                f"preprocess callable '{spec.callable}' must return a pandas DataFrame or a dict of references, "
                f"got {type(produced).__name__}"
            )
        df = produced
    else:
        frames = {name: read_input(source, ctx.data_conn_id) for name, source in named_inputs(spec).items()}
        df = import_string(spec.transform)(**frames) if spec.transform else next(iter(frames.values()))
    ctx.log.info("Read %d rows × %d columns", len(df), df.shape[1])
    for step in spec.steps:
        df = apply_step(df, step)
    if df.empty:
        raise StageFailed("preprocess produced no rows: check the input and the steps")
    result: dict[str, Any] = {"rows": len(df), "columns": list(map(str, df.columns))}
    if spec.quality:
        result["quality"] = quality.enforce(quality.measure_pandas(df, spec.quality), spec.quality, ctx.log)

    out = ctx.output_dir(spec.output)
    ext = spec.format
    if spec.split is None:
        result["data_path"] = write_dataset(df, out / f"data.{ext}", ext)
    else:
        from sklearn.model_selection import train_test_split

        stratify = df[spec.split.stratify] if spec.split.stratify else None
        train, test = train_test_split(
            df, test_size=spec.split.test_fraction, random_state=spec.split.seed, stratify=stratify
        )
        result["train_path"] = write_dataset(train, out / f"train.{ext}", ext)
        result["test_path"] = write_dataset(test, out / f"test.{ext}", ext)
        result.update(train_rows=len(train), test_rows=len(test))
    ctx.log.info("Wrote %s", {k: v for k, v in result.items() if k.endswith("_path")})
    return result


def named_inputs(spec: "PreprocessStage") -> dict[str, Any]:
    """``inputs`` as given, or the single ``input`` under the name ``data``."""
    return dict(spec.inputs) if spec.inputs else {"data": spec.input}


def apply_step(df: "pd.DataFrame", step: "Step") -> "pd.DataFrame":
    if step.dropna is not None:
        subset = step.dropna if isinstance(step.dropna, list) else None
        return df.dropna(subset=subset) if step.dropna is not False else df
    if step.drop is not None:
        return df.drop(columns=step.drop)
    if step.rename is not None:
        return df.rename(columns=step.rename)
    if step.fillna is not None:
        return df.fillna(step.fillna)
    return df.query(step.query)
