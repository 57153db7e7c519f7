"""StageOperator: runs one pipeline stage's code inside the Airflow worker (the batch backend)."""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator

from airflow_mlops._core.orphan import end_with_parent
from airflow_mlops._core.outcome import airflow_outcome, failed
from airflow_mlops.backends.links import MlflowRunLink
from airflow_mlops.spec.models import GpuMetricsSettings, MlflowSettings, Resources
from airflow_mlops.spec.prices import PriceTable
from airflow_mlops.spec.templating import stage_overrides
from airflow_mlops.telemetry.cost import as_prices

SKIP_REASON_KEY = "airflow_mlops.skip_reason"  # listeners.SKIP_REASON_KEY (the XCom a skipped stage leaves)


class StageOperator(BaseOperator):
    """Run a built-in stage (preprocess, train, validate, serve) in the worker.

    :param stage: the stage's validated spec.
    :param pipeline_id: the pipeline id, used for MLflow names and data paths (default: the DAG id).
    :param stage_name: the stage's name in the pipeline.
    :param mlflow: MLflow settings; resolved to a tracking URI when the task runs.
    :param data_dir: root folder for the stage's outputs: an absolute path or an object-storage URI.
    :param data_conn_id: the Airflow connection for object-storage URIs (default: the scheme's own).
    :param upstream_tasks: ``(stage_name, task_id)`` of the stages this one depends on, nearest
        first; their XCom results (references, never data) reach the stage.
    :param stage_resources: what the stage holds (cpu / memory / whole GPUs): a pod's requests
        and limits on Kubernetes, and what a train stage's cost is billed for.
    :param prices: the price table for that cost (default 2.5 per GPU-hour, 0.1 per CPU-hour,
        0.05 per GiB-hour).
    :param gpu_metrics: a train stage's NVML sampling interval, Prometheus port and Pushgateway.

    Templated: the stage's input/output paths, train ``params``, validate ``thresholds``, stream
    topics (``stage_overrides`` holds those that are templates) and ``data_dir``. Airflow renders
    them when the task runs; the stage is then validated again with its model, paths get ``~`` and
    ``$VAR`` expanded in the worker, and every backend runs that rendered stage.
    """

    template_fields: Sequence[str] = ("stage_overrides", "data_dir")
    template_fields_renderers = {"stage_overrides": "json"}
    ui_color = "#e8f4fd"
    # The engine the stage's code runs with (StageContext.engine): "pandas" here and in a pod,
    # "spark" for SparkStageOperator. Set once, where the context is built.
    engine = "pandas"
    # Where the stage runs, as the Airflow UI's operator column shows it: "train (batch)".
    backend_label = "batch"
    operator_extra_links = (MlflowRunLink(),)  # train stages return their run's URL

    def __init__(
        self,
        *,
        stage: Any,
        pipeline_id: str | None = None,
        stage_name: str,
        mlflow: MlflowSettings | None = None,
        data_dir: str | None = None,
        data_conn_id: str | None = None,
        upstream_tasks: Sequence[tuple[str, str]] = (),
        stage_resources: Resources | dict[str, Any] | None = None,
        prices: PriceTable | dict[str, float] | None = None,
        gpu_metrics: GpuMetricsSettings | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        if getattr(stage, "kind", None):
            # Airflow serializes this as the task's operator name (shown instead of the class name).
            self.custom_operator_name = f"{stage.kind} ({self.backend_label})"
        self.stage_overrides = stage_overrides(stage)
        self.pipeline_id = pipeline_id
        self.stage_name = stage_name
        self.mlflow = mlflow or MlflowSettings()
        self.data_dir = data_dir
        self.data_conn_id = data_conn_id
        self.upstream_tasks = list(upstream_tasks)
        self.stage_resources = None if stage_resources is None else Resources.model_validate(stage_resources)
        # Bad settings fail when the DAG is parsed, not when the task runs.
        self.prices = as_prices(prices)
        self.gpu_metrics = GpuMetricsSettings.model_validate(gpu_metrics or {})

    def rendered_stage(self) -> Any:
        """The stage with its templates rendered (by Airflow, into ``stage_overrides``) and its
        paths expanded, validated again; a value its model refuses fails the task, naming it."""
        from airflow_mlops.spec.templating import StageRenderError, render_stage

        try:
            return render_stage(self.stage, self.stage_overrides, self.stage_name)
        except StageRenderError as exc:
            raise failed(str(exc)) from None

    def expanded_settings(self, pipeline_id: str) -> tuple[str, MlflowSettings]:
        """``data_dir`` and the MLflow locations with ``~`` and ``$VAR`` expanded here, in the worker."""
        from pydantic import ValidationError

        from airflow_mlops._core.paths import expand_env, mlops_home, needs_expanding
        from airflow_mlops._core.storage import location_problem

        def expanded(field: str, value: str) -> str:
            try:
                return expand_env(value)
            except ValueError as exc:
                raise failed(f"stage '{self.stage_name}': {field}: {exc}") from None

        data_dir = expanded("data_dir", self.data_dir) if self.data_dir else str(mlops_home() / "data" / pipeline_id)
        problem = location_problem(data_dir) if not data_dir.startswith(("~", "$", "{")) else "it is not expanded"
        if problem:
            raise failed(f"stage '{self.stage_name}': data_dir {self.data_dir!r} once rendered and expanded is "
                               f"{data_dir!r}: {problem}")
        mlflow = self.mlflow
        changed = {k: expanded(f"mlflow.{k}", v) for k in ("tracking_uri", "artifact_location")
                   if needs_expanding(v := getattr(mlflow, k))}
        if changed:
            try:
                mlflow = MlflowSettings.model_validate({**mlflow.model_dump(exclude_unset=True), **changed})
            except ValidationError as exc:
                problems = "; ".join(f"mlflow.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise failed(f"stage '{self.stage_name}': once expanded, {problems}") from None
        return data_dir, mlflow

    def spark_session_settings(self) -> dict[str, Any] | None:
        """The embedded Spark session's ``{"master", "conf"}`` for StageContext.spark; None when
        the stage makes no session of its own (not on Spark, or under spark-submit)."""
        return None

    def stage_context(self, context: Any) -> Any:
        from airflow_mlops._core.context import StageContext, run_tags
        from airflow_mlops._core.mlflow import use_credentials
        from airflow_mlops._core.names import safe_run_key
        from airflow_mlops.hooks.mlflow import resolve_target

        ti = context["ti"]
        upstream = [(name, ti.xcom_pull(task_ids=task_id) or {}) for name, task_id in self.upstream_tasks]
        pipeline_id = self.pipeline_id or ti.dag_id
        data_dir, mlflow = self.expanded_settings(pipeline_id)
        target = resolve_target(mlflow, pipeline_id)  # the one lookup of the MLflow connection
        use_credentials(target)  # this task's process, and what it starts (spark-submit)
        # serve mode stream: its Kafka connection, looked up here once (a pod gets it from a Secret)
        kafka_conn_id = getattr(self.stage, "kafka_conn_id", None)
        kafka = None
        if kafka_conn_id:
            from airflow_mlops.hooks.kafka import kafka_config_from_connection

            kafka = kafka_config_from_connection(kafka_conn_id)
        return StageContext(
            pipeline_id=pipeline_id,
            stage_name=self.stage_name,
            run_key=safe_run_key(context["run_id"]),
            data_dir=data_dir,
            mlflow=target,
            upstream=upstream,
            engine=self.engine,
            spark=self.spark_session_settings(),
            resources=self.stage_resources.held() if self.stage_resources else None,
            prices=self.prices.model_dump(),
            gpu_metrics=self.gpu_metrics.model_dump(),
            data_conn_id=self.data_conn_id,
            kafka=kafka,
            tags=run_tags(ti, context["run_id"]),
        )

    def execute(self, context: Any) -> dict[str, Any]:
        end_with_parent()  # a worker lost under this task must not leave its work running twice
        # Rendered by now: every backend (run() here, in a pod, under spark-submit) gets this stage.
        from airflow_mlops._core.compat import AirflowSkipException
        from airflow_mlops._core.result import result_problem, shown

        self.stage = self.rendered_stage()
        try:
            # Refused before or at launch (a named connection missing, a relative tracking URI...):
            # as _core.outcome says, no retry.
            with airflow_outcome():
                ctx = self.stage_context(context)
                self.log.info("Stage '%s' (%s) of pipeline '%s'", self.stage_name, self.stage.kind, ctx.pipeline_id)
                result = self.run(ctx, context)
        except AirflowSkipException as exc:
            # Why, for the run's page: the package's listener makes it the task's and the run's note.
            self.log.info("Skipped: %s", exc)
            try:
                context["ti"].xcom_push(key=SKIP_REASON_KEY, value=str(exc))
            except Exception as push_error:  # noqa: BLE001 - the skip itself must still happen
                self.log.debug("skip reason not stored: %s", push_error)
            raise
        problem = result_problem(result, self.stage_name)
        if problem:  # never pushed to XCom, never logged whole
            raise failed(problem)
        self.mlflow_run_url = result.get("mlflow_run_url")  # train stages: for MlflowRunLink
        self.log.info("Stage '%s' result: %s", self.stage_name, shown(result))
        self.describe_asset_events(context, result)
        return result

    def describe_asset_events(self, context: Any, result: dict[str, Any]) -> None:
        """Each Asset this task publishes gets an event extra saying what this run wrote: the run,
        the stage's output locations (``*_path``: a run's folder, a day's partition) and the model
        version, so a DAG scheduled on it knows what to read."""
        if not self.outlets:
            return
        try:
            events = context["outlet_events"]
        except (KeyError, TypeError):  # called outside a task (tests, the Python API)
            return
        extra = {"dag_id": getattr(context.get("ti"), "dag_id", None), "run_id": context.get("run_id"),
                 "stage": self.stage_name,
                 **{k: v for k, v in result.items() if k.endswith("_path") or k in ("model_uri", "model_version",
                                                                                  "model_name", "rows")}}
        for asset in self.outlets:
            try:
                events[asset].extra = {**events[asset].extra, **{k: v for k, v in extra.items() if v is not None}}
            except Exception as exc:  # noqa: BLE001 - an outlet Airflow does not track (no event to describe)
                self.log.debug("No event extra for outlet %r: %s", asset, exc)

    def run(self, ctx: Any, context: Any = None) -> dict[str, Any]:
        """Run the stage in this process. Backends that run it elsewhere override this."""
        from airflow_mlops.stages import run_stage

        return self.outcome(run_stage, self.stage, ctx)

    @staticmethod
    def outcome(fn: Any, *args: Any) -> Any:
        """``fn(*args)``, a stage's errors turned into Airflow's outcomes by ``_core.outcome``:
        StageFailed fails the task (no retry), DependencyFailed as it says (already logged, first,
        by the stage), StageSkipped skips it."""
        with airflow_outcome():
            return fn(*args)
