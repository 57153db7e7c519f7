"""train: fit a model (an estimator class with params, or your function), evaluate it on the test
split, log params/metrics/model to MLflow and register a model version, with GPU telemetry and cost.

One training path for the YAML train stage and GpuTrainOperator (the train stage run from Python):

- ``job``: the job both build (``job_for_stage`` for the YAML stage, ``GpuTrainOperator.build_job``);
- ``measure``: ``TrainingRun``, how a try is measured and recorded (NVML, cost, MLflow, reuse on retry);
- what to train: ``builtin`` (the stage's estimator/callable, in this process) or ``process``
  (the operator's entrypoint/script/module, in a subprocess; ``runner`` is that process's entry);
- ``gpus``: which GPUs a try gets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext

if TYPE_CHECKING:
    from airflow_mlops.spec.models import TrainStage


def run(spec: "TrainStage", ctx: StageContext) -> dict[str, Any]:
    """The train stage (``stages.run_stage``): ``TrainingRun(job_for_stage(spec, ctx)).run()``.
    See ``stages.train.measure.TrainingRun.run`` for the result and the errors raised."""
    from airflow_mlops.stages.train.job import job_for_stage
    from airflow_mlops.stages.train.measure import TrainingRun

    return TrainingRun(job_for_stage(spec, ctx), log=ctx.log).run()
