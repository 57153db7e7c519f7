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

    served = serving_model(spec.model, ctx)
    model_uri = served["model_uri"]
    df = read_input(spec.input, ctx.data_conn_id) if spec.input else read_dataset(ctx.find("test_path"), conn_id=ctx.data_conn_id)
    use_store(ctx.mlflow)
    model = mlflow.pyfunc.load_model(model_uri)
    schema = model.metadata.get_input_schema()
    columns = schema.input_names() if schema else [c for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StageFailed(f"the data to score lacks the model's input columns {missing}")
    ctx.log.info("Scoring %d rows with %s", len(df), model_uri)
    out = df.copy()
    out["prediction"] = model.predict(df[columns])
    path = write_dataset(out, ctx.output_dir() / f"predictions.{spec.format}", spec.format)
    ctx.log.info("Wrote %d predictions to %s", len(out), path)
    return {"predictions_path": path, "rows": len(out), **served}
