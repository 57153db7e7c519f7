"""serve on Spark: score a dataset with the validated model version through mlflow.pyfunc.spark_udf,
or, for a Spark ML model (logged with the Spark flavour), with its own transform on the executors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.mlflow import use_store
from airflow_mlops._core.storage import join
from airflow_mlops.stages.serve.model import serving_model
from airflow_mlops.stages.spark_session import read, session_for, write

if TYPE_CHECKING:
    from airflow_mlops.spec.models import ServeStage


def run(spec: "ServeStage", ctx: StageContext) -> dict[str, Any]:
    import mlflow
    from pyspark.sql import functions as F

    spark = session_for(ctx)
    served = serving_model(spec.model, ctx)
    model_uri = served["model_uri"]
    source = spec.input.path if spec.input else ctx.find("test_path")
    df = read(spark, source, spec.input.format if spec.input else None)
    use_store(ctx.mlflow)
    signature = mlflow.models.get_model_info(model_uri).signature
    columns = signature.inputs.input_names() if signature else df.columns
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StageFailed(f"the data to score lacks the model's input columns {missing}")
    if "spark" in (mlflow.models.get_model_info(model_uri).flavors or {}):
        # A Spark ML model (the spark train stage's): its own transform runs on the executors, the
        # JVM way; its pyfunc flavour would start a Spark session inside every Python worker.
        model = mlflow.spark.load_model(model_uri)
        scored = model.transform(df).select(*df.columns, F.col("prediction"))
    else:
        # env_manager="local": the executors use this environment, which already has the model's libraries.
        predict = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager="local", result_type=result_type(signature))
        scored = df.withColumn("prediction", predict(F.struct(*[F.col(c) for c in columns])))
    path = write(scored, join(ctx.output_location(spec.output), f"predictions.{spec.format}"), spec.format)
    rows = read(spark, path, spec.format).count()  # from the written files: the model runs once
    ctx.log.info("Scored %s rows with %s into %s", rows, model_uri, path)
    return {"predictions_path": path, "rows": rows, **served}


def result_type(signature: Any) -> str:
    """A scalar Spark type matching the model's output, so predictions look like pandas' do.

    Without it MLflow maps a 1-D tensor output (what scikit-learn's predict gives) to an array
    column holding one value per row.
    """
    if signature is None or signature.outputs is None:
        return "double"
    kind = signature.outputs.numpy_types()[0].kind
    return {"i": "long", "u": "long", "f": "double", "b": "boolean"}.get(kind, "string")
