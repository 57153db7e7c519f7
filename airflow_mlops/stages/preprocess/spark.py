"""preprocess on Spark: named inputs → Spark SQL or a transform → quality gates → split → write."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.paths import import_string
from airflow_mlops._core.storage import join
from airflow_mlops.stages import quality
from airflow_mlops.stages.preprocess import named_inputs
from airflow_mlops.stages.spark_session import read, session_for, write

if TYPE_CHECKING:
    from airflow_mlops.spec.models import PreprocessStage


def run(spec: "PreprocessStage", ctx: StageContext) -> dict[str, Any]:
    spark = session_for(ctx)
    frames = {}
    for name, source in named_inputs(spec).items():
        if source.sklearn_dataset:
            from airflow_mlops.stages.data import read_input

            frames[name] = spark.createDataFrame(read_input(source, ctx.data_conn_id))
        else:
            frames[name] = read(spark, source.path, source.format)
    df = features(spark, frames, spec)
    result: dict[str, Any] = {"columns": df.columns}
    if spec.quality:
        measured = quality.measure_spark(df, spec.quality)
        result["quality"] = quality.enforce(measured, spec.quality, ctx.log)
        result["rows"] = measured["rows"]

    out = ctx.output_location(spec.output)
    ext = spec.format
    if spec.split is None:
        result["data_path"] = write(df, join(out, f"data.{ext}"), ext)
    else:
        train, test = df.randomSplit([1 - spec.split.test_fraction, spec.split.test_fraction], seed=spec.split.seed)
        result["train_path"] = write(train, join(out, f"train.{ext}"), ext)
        result["test_path"] = write(test, join(out, f"test.{ext}"), ext)
    ctx.log.info("Wrote %s", {k: v for k, v in result.items() if k.endswith("_path")})
    return result


def features(spark: Any, frames: dict[str, Any], spec: "PreprocessStage") -> Any:
    """The transform itself: SQL over the inputs as temporary views, or your function over them."""
    if spec.sql:
        for name, frame in frames.items():
            frame.createOrReplaceTempView(name)
        try:
            return spark.sql(spec.sql)
        except Exception as exc:  # Spark's AnalysisException: bad column or table names
            if type(exc).__name__ in ("AnalysisException", "ParseException"):
                raise StageFailed(f"the stage's SQL failed: {str(exc).splitlines()[0]}") from exc
            raise
    if spec.transform:
        return import_string(spec.transform)(**frames)
    return next(iter(frames.values()))
