"""StageOperator: runs one pipeline stage's code inside the Airflow worker (the batch backend)."""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator

from airflow_mlops.gpu.cost import PriceTable, as_prices
from airflow_mlops.operators.links import MlflowRunLink
from airflow_mlops.spec.models import GpuMetricsSettings, MlflowSettings, Resources


class StageOperator(BaseOperator):
    """Run a built-in stage (preprocess, train, validate, serve) in the worker.

    :param stage: the stage's validated spec.
    :param pipeline_id: the pipeline id, used for MLflow names and data paths (default: the DAG id).
    :param stage_name: the stage's name in the pipeline.
    :param mlflow: MLflow settings; resolved to a tracking URI when the task runs.
    :param data_dir: root folder for the stage's outputs.
    :param upstream_tasks: ``(stage_name, task_id)`` of the stages this one depends on, nearest
        first; their XCom results (references, never data) reach the stage.
    :param stage_resources: what the stage holds (cpu / memory / whole GPUs): a pod's requests
        and limits on Kubernetes, and what a train stage's cost is billed for.
    :param prices: the price table for that cost (default 2.5 per GPU-hour, 0.1 per CPU-hour,
        0.05 per GiB-hour).
    :param gpu_metrics: a train stage's NVML sampling interval, Prometheus port and Pushgateway.
    """

    ui_color = "#e8f4fd"
    operator_extra_links = (MlflowRunLink(),)  # train stages return their run's URL

    def __init__(
        self,
        *,
        stage: Any,
        pipeline_id: str | None = None,
        stage_name: str,
        mlflow: MlflowSettings | None = None,
        data_dir: str | None = None,
        upstream_tasks: Sequence[tuple[str, str]] = (),
        stage_resources: Resources | dict[str, Any] | None = None,
        prices: PriceTable | dict[str, float] | None = None,
        gpu_metrics: GpuMetricsSettings | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.pipeline_id = pipeline_id
        self.stage_name = stage_name
        self.mlflow = mlflow or MlflowSettings()
        self.data_dir = data_dir
        self.upstream_tasks = list(upstream_tasks)
        self.stage_resources = None if stage_resources is None else Resources.model_validate(stage_resources)
        # Bad settings fail when the DAG is parsed, not when the task runs.
        self.prices = as_prices(prices)
        self.gpu_metrics = GpuMetricsSettings.model_validate(gpu_metrics or {})

    def stage_context(self, context: Any) -> Any:
        from airflow_mlops.hooks.mlflow import resolve_target
        from airflow_mlops.stages.context import StageContext, mlops_home, safe_run_key

        ti = context["ti"]
        upstream = [(name, ti.xcom_pull(task_ids=task_id) or {}) for name, task_id in self.upstream_tasks]
        pipeline_id = self.pipeline_id or ti.dag_id
        return StageContext(
            pipeline_id=pipeline_id,
            stage_name=self.stage_name,
            run_key=safe_run_key(context["run_id"]),
            data_dir=self.data_dir or str(mlops_home() / "data" / pipeline_id),
            mlflow=resolve_target(self.mlflow, pipeline_id),
            upstream=upstream,
            resources=self.stage_resources.model_dump(exclude_none=True, exclude={"profile"}) if self.stage_resources else None,
            prices=self.prices.model_dump(),
            gpu_metrics=self.gpu_metrics.model_dump(),
            tags={
                "airflow.dag_id": ti.dag_id,
                "airflow.run_id": context["run_id"],
                "airflow.task_id": ti.task_id,
                "airflow.try_number": str(ti.try_number),
                # The same for every try of this task instance: lets a retry find its earlier work.
                "airflow_mlops.task_key": f"{ti.dag_id}/{context['run_id']}/{ti.task_id}",
            },
        )

    def execute(self, context: Any) -> dict[str, Any]:
        ctx = self.stage_context(context)
        self.log.info("Stage '%s' (%s) of pipeline '%s'", self.stage_name, self.stage.kind, ctx.pipeline_id)
        result = self.run(ctx, context)
        self.mlflow_run_url = result.get("mlflow_run_url")  # train stages: for MlflowRunLink
        self.log.info("Stage '%s' result: %s", self.stage_name, result)
        return result

    def run(self, ctx: Any, context: Any = None) -> dict[str, Any]:
        """Run the stage in this process. Backends that run it elsewhere override this."""
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.stages import StageFailed, StageSkipped, run_stage

        try:
            return run_stage(self.stage, ctx)
        except StageFailed as exc:
            raise stage_failed(str(exc)) from exc
        except StageSkipped as exc:
            raise AirflowSkipException(str(exc)) from exc


def stage_failed(message: str) -> Exception:
    """Deterministic failures (a metric under its threshold, a missing column): retrying would
    only repeat them, so the task fails without using up its retries."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message)
