"""train on the spark backend: a Spark ML estimator (or your callable) fitted on the stage's Spark
session or cluster (``stages.train.spark_ml``), measured and recorded by the same ``TrainingRun``
as every other training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext

if TYPE_CHECKING:
    from airflow_mlops.spec.models import TrainStage


def run(spec: "TrainStage", ctx: StageContext) -> dict[str, Any]:
    """The train stage on Spark: ``TrainingRun`` (NVML, cost, MLflow, reuse on retry) around a
    Spark ML fit. See ``stages.train.measure.TrainingRun.run`` for the result and errors."""
    from airflow_mlops.stages.train.job import job_for_stage
    from airflow_mlops.stages.train.measure import TrainingRun

    return TrainingRun(job_for_stage(spec, ctx), log=ctx.log).run()
