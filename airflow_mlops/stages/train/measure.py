"""How one training try is measured and recorded, the same for both kinds of training (the YAML
train stage's built-in fit, in this process; GpuTrainOperator's entrypoint, in a subprocess):

    result = TrainingRun(job, log=log, on_run=push_link).run()   # the XCom result; kill() stops it

1. the trainer prepares (the built-in one reads its datasets; an entrypoint gets its checkpoint folder);
2. if an earlier try of the same task instance (the ``airflow_mlops.task_key`` tag) already
   registered a model version, that run and version are reused: nothing is trained or recorded;
3. the GPUs are assigned (``stages.train.gpus``) and the MLflow run is created with the Airflow
   tags, the GPU tags and the hyperparams (plus ``gpus``) as params;
4. NVML samples those GPUs into the run (``gpu/<i>/...``) while the trainer trains, optionally
   served / pushed for Prometheus with the cost so far;
5. the GPU summary (``gpu/...``) and the cost (``cost/...`` metrics, ``airflow_mlops.cost.*``
   tags) are recorded on the run, failed tries included, and the version is tagged with the
   task's tags and ``airflow_mlops.gpu.available``.

Order, so that nothing is half-made: the model is logged before its version is created (MLflow's
``log_model``; a script's model is registered after it was logged), so no version exists without
its model. A tracking server lost under a try ends it with a retryable ``DependencyFailed`` naming
the run and the versions registered so far; the next try marks a version an unfinished earlier try
registered (``airflow_mlops.incomplete_try``) and trains again.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from airflow_mlops._core.units import gib
from airflow_mlops.stages.train.gpus import GpuAssignment, assign_gpus
from airflow_mlops.stages.train.job import (
    CHECKPOINT_TAG,
    ENTRYPOINT_TAG,
    GPU_AVAILABLE_TAG,
    GPU_IDS_TAG,
    GPU_NAMES_TAG,
    GPU_REASON_TAG,
    TASK_KEY_TAG,
    GpuTrainJob,
    prometheus_labels,
    run_url,
    ui_base,
)
from airflow_mlops.telemetry.cost import COST_PREFIX, TaskResources, mlflow_tags, resources_from, task_cost
from airflow_mlops.telemetry.sampler import PREFIX as GPU_PREFIX

INCOMPLETE_TAG = "airflow_mlops.incomplete_try"


class TrainingRun:
    """One try of a training job. ``run()`` returns the XCom result; ``kill()`` stops the training.

    :param log: where the try logs (the task's logger).
    :param on_run: called with ``(run_id, url)`` as soon as the MLflow run exists (or is reused):
        the operator pushes the "MLflow run" link, also for a try that fails later.
    """

    def __init__(self, job: GpuTrainJob, log: logging.Logger | None = None,
                 on_run: Callable[[str, str], None] | None = None) -> None:
        self.job = job
        self.log = log or logging.getLogger("airflow_mlops.stages.train")
        self.on_run = on_run
        self.run_id: str | None = None  # the MLflow run of this try, once created
        self.version: str | None = None  # the model version this try registered, once registered
        if job.builtin is not None and job.builtin.engine == "spark":
            from airflow_mlops.stages.train.spark_ml import SparkMlTrainer

            self.trainer: Any = SparkMlTrainer(job, self.log)
        elif job.builtin is not None:
            from airflow_mlops.stages.train.builtin import BuiltinTrainer

            self.trainer = BuiltinTrainer(job, self.log)
        else:
            from airflow_mlops.stages.train.process import EntrypointProcess

            self.trainer = EntrypointProcess(job, self.log)

    def run(self) -> dict[str, Any]:
        """Train once, measured and recorded. Result: ``run_id``, ``experiment_id``,
        ``mlflow_run_url``, ``model_name``, ``model_version``, ``model_uri``, ``metrics``,
        ``checkpoint_dir``, ``gpu`` (see ``GpuAssignment.result``), ``cost`` (``Cost.as_dict()``,
        money in the price table's currency, hours, seconds), ``prices``, ``reused``, and what the
        trainer adds (the built-in one: ``target``, ``features``). Raises StageFailed when the
        training refused its input or the GPUs asked for do not exist (no retry),
        DependencyFailed when the tracking server fails under it (retryable unless it refused the
        credentials), and the trainer's own errors otherwise."""
        from airflow_mlops._core.mlflow_faults import tracking_server

        job = self.job
        extra = self.trainer.prepare()
        during = f"training run '{job.run_name}' (task {job.tags.get(TASK_KEY_TAG) or 'outside Airflow'})"
        with tracking_server(job.tracking_uri, during, logger=self.log, kept=self._kept):
            return self._run(extra)

    def _kept(self) -> str:
        """What this try left in MLflow when the server failed under it."""
        job = self.job
        if self.run_id is None:
            return "nothing was recorded: the MLflow run was not created yet"
        version = (f"model version {self.version} of '{job.registered_model}' registered with its model (the "
                   "next try marks it " + INCOMPLETE_TAG + ")" if self.version is not None
                   else f"no version of '{job.registered_model}' registered by this try")
        return f"MLflow run {self.run_id} (left unfinished; the next try starts a new run); {version}"

    def _run(self, extra: dict[str, Any]) -> dict[str, Any]:
        from airflow_mlops._core import mlflow as tracking

        job = self.job
        reused = self.earlier()
        if reused is not None:
            return {**reused, **extra}
        # A client, never MLflow's process-wide URIs (mlflow.set_tracking_uri also exports them
        # to the environment, where the next task in this process would take them for the user's).
        client = tracking.client(job.target())
        experiment_id = tracking.experiment_id(client, job.target())
        base = ui_base(job.tracking_uri, job.ui_url)

        mark_incomplete_tries(client, experiment_id, job.tags.get(TASK_KEY_TAG), self.log)
        gpus = assign_gpus(job.gpus, job.gpu_ids, self.log, asked_by=job.gpus_asked_by)
        run_id = client.create_run(experiment_id, run_name=job.run_name, tags=self._run_tags(gpus)).info.run_id
        self.run_id = run_id
        url = run_url(base, experiment_id, run_id)
        self.log.info("MLflow run %s: %s", run_id, url)
        if self.on_run:
            self.on_run(run_id, url)
        log_params(client, run_id, {**{k: param(v) for k, v in job.hyperparams.items()}, "gpus": str(len(gpus.ids))})
        self.log.info("Hyperparameters: %s", job.hyperparams or "none given (the estimator's defaults)")

        held = resources_from(job.resources, gpus_held=len(gpus.ids) if gpus.available else 0)
        if job.pods > 1:  # a torchrun group: every pod holds the same, for as long as rank 0 runs
            held = TaskResources(gpu=held.gpu * job.pods, cpu=held.cpu * job.pods,
                                 memory_gib=held.memory_gib * job.pods)
        outcome, summary, cost = self._measured(client, run_id, gpus, held)
        version = outcome.get("model_version")
        self.version = None if version is None else str(version)
        if version is not None:
            for key, value in {**job.tags, GPU_AVAILABLE_TAG: str(gpus.available).lower()}.items():
                client.set_model_version_tag(job.registered_model, str(version), key, value)
            self.log.info("Registered model '%s' version %s (run %s)", job.registered_model, version, run_id)
        metrics = outcome.get("metrics")
        if metrics is None:
            metrics = model_metrics(client.get_run(run_id).data.metrics)
        return {
            **common_result(job, run_id, experiment_id, url, version, metrics),
            "gpu": gpus.result(summary),
            "cost": cost.as_dict() if cost is not None else None,
            "reused": False,
            **extra,
        }

    def earlier(self) -> dict[str, Any] | None:
        """The result of an earlier try of this task instance that registered a version (the
        ``airflow_mlops.task_key`` tag), reused as it was recorded; None when there is none.
        A torchrun group's launcher asks before it starts any pod."""
        from airflow_mlops._core import mlflow as tracking

        job = self.job
        client = tracking.client(job.target())
        experiment_id = tracking.experiment_id(client, job.target())
        earlier = registered_by_earlier_try(client, experiment_id, job.tags.get(TASK_KEY_TAG), job.registered_model)
        if not earlier:
            return None
        run_id, version = earlier
        self.log.info("An earlier try of this task already registered '%s' version %s (run %s): reusing it, "
                      "not registering a duplicate", job.registered_model, version, run_id)
        url = run_url(ui_base(job.tracking_uri, job.ui_url), experiment_id, run_id)
        if self.on_run:
            self.on_run(run_id, url)
        return reused_result(client.get_run(run_id), job, version, url)

    def _run_tags(self, gpus: GpuAssignment) -> dict[str, str]:
        job = self.job
        tags = {
            **job.tags,
            "mlflow.runName": job.run_name,
            GPU_AVAILABLE_TAG: str(gpus.available).lower(),
            GPU_IDS_TAG: ",".join(map(str, gpus.ids)),
            GPU_NAMES_TAG: ", ".join(gpus.names),
            ENTRYPOINT_TAG: job.trains(),
        }
        if job.checkpoint_dir:
            tags[CHECKPOINT_TAG] = job.checkpoint_dir
        if gpus.reason:
            tags[GPU_REASON_TAG] = gpus.reason[:5000]
        return tags

    def _measured(self, client: Any, run_id: str, gpus: GpuAssignment,
                  held: TaskResources) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """Train with NVML sampling (and Prometheus) around it; record the summary and the cost
        whatever happens. Returns (the trainer's outcome, the GPU summary, the Cost)."""
        from airflow_mlops.telemetry.mlflow_sink import MlflowSink
        from airflow_mlops.telemetry.prometheus import exported
        from airflow_mlops.telemetry.sampler import NvmlSampler

        job = self.job
        sampler = NvmlSampler(job.sample_interval_s, gpus.sampled, sinks=[MlflowSink(client, run_id)],
                              flush_interval_s=job.flush_interval_s)
        started = time.monotonic()
        export = exported(sampler, prometheus_labels(job.tags),
                          lambda: task_cost(held, time.monotonic() - started, job.prices).as_dict(),
                          port=job.prometheus_port, pushgateway_url=job.pushgateway_url, logger=self.log)
        wall: float | None = None
        status = "FAILED"
        cost = None
        summary: dict[str, Any] = {}
        server_gone = False
        try:
            with export, sampler:
                started = time.monotonic()
                try:
                    outcome = self.trainer.train(client, run_id, gpus)
                finally:
                    wall = time.monotonic() - started
            status = "FINISHED"
        except Exception as exc:
            from airflow_mlops._core.mlflow_faults import failed

            # The tracking server is gone: recording the cost would only wait for it once more.
            server_gone = failed(exc, job.tracking_uri, "") is not None
            raise
        finally:
            summary = sampler.summary()
            if wall is not None:
                cost = task_cost(held, wall, job.prices)
            if not server_gone:
                self._record(client, run_id, summary, cost, held, status)
        return outcome, summary, cost

    def _record(self, client: Any, run_id: str, summary: dict, cost: Any, held: TaskResources, status: str) -> None:
        from mlflow.entities import Metric, RunTag

        from airflow_mlops.telemetry.mlflow_sink import summary_metrics

        prices = self.job.prices
        now = int(time.time() * 1000)
        metrics = summary_metrics(summary) if summary.get("available") else {}
        tags = {}
        if cost is not None:
            metrics.update(cost.metrics())
            tags.update(mlflow_tags(cost, prices, held))
            self.log.info("Cost: %.4f (%.4f GPU-h × %s, %.4f CPU-h × %s, %.4f GiB-h × %s) over %.1f s", cost.total,
                          cost.gpu_hours, prices.gpu_hour, cost.cpu_hours, prices.cpu_hour,
                          cost.memory_gib_hours, prices.memory_gib_hour, cost.wall_seconds or 0.0)
        if summary.get("available"):
            self.log.info("GPU summary: %d GPU(s), utilization mean %s%% max %s%%, peak memory %s, energy %s J, %.4f GPU-h",
                          summary["count"], _fmt(summary["utilization_mean"]), _fmt(summary["utilization_max"]),
                          gib(summary["memory_peak_bytes"], 2), _fmt(summary["energy_j"]), summary["gpu_hours"])
        try:
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run_id, status)
        except Exception as exc:  # noqa: BLE001 - never hide the training's own outcome behind this
            if status == "FINISHED":
                raise
            from airflow_mlops._core.mlflow_faults import classify

            # A lost server is reported once, by the try's own error: no traceback ahead of it.
            self.log.warning("Could not record the cost of the failed try in MLflow: %s",
                             str(exc).splitlines()[0][:300], exc_info=classify(exc) is None)

    def kill(self) -> None:
        """Stop the training (the operator's ``on_kill``)."""
        self.trainer.kill()


def registered_by_earlier_try(client: Any, experiment_id: str, task_key: str | None,
                              registered_model: str) -> tuple[str, str] | None:
    """``(run id, version)`` when an earlier try of the task instance ``task_key`` (the
    ``airflow_mlops.task_key`` run tag: dag/run/task ids, no try number) finished its run and
    registered a version of ``registered_model``; else None."""
    if not task_key:
        return None
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TASK_KEY_TAG}` = '{task_key}' and attributes.status = 'FINISHED'"
    )
    for run in runs:
        for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            if version.name == registered_model:
                return run.info.run_id, str(version.version)
    return None


def mark_incomplete_tries(client: Any, experiment_id: str, task_key: str | None, log: logging.Logger) -> None:
    """Earlier tries of the task instance ``task_key`` that did not finish (the tracking server
    failed under them): their runs still RUNNING are marked FAILED, and the versions they
    registered are tagged ``airflow_mlops.incomplete_try=true``, so that no one takes them for a
    finished training; those keep their model (it was logged first)."""
    if not task_key:
        return
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TASK_KEY_TAG}` = '{task_key}' and attributes.status != 'FINISHED'")
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED")
            log.info("Run %s of an earlier try did not finish (the tracking server failed under it): marked FAILED",
                     run.info.run_id)
        for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            if (version.tags or {}).get(INCOMPLETE_TAG) != "true":
                client.set_model_version_tag(version.name, str(version.version), INCOMPLETE_TAG, "true")
                log.warning("Model '%s' version %s was registered by an earlier try that did not finish (run %s): "
                            "tagged %s=true", version.name, version.version, run.info.run_id, INCOMPLETE_TAG)


def model_metrics(logged: dict[str, float]) -> dict[str, float]:
    """The model's metrics among a run's: without the GPU telemetry and cost logged beside them."""
    return {k: v for k, v in logged.items() if k.split("/", 1)[0] not in (COST_PREFIX, GPU_PREFIX)}


def common_result(job: GpuTrainJob, run_id: str, experiment_id: str, url: str, version: Any,
                  metrics: dict[str, float]) -> dict[str, Any]:
    """The result keys every try has, new or reused."""
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "mlflow_run_url": url,
        "model_name": job.registered_model,
        "model_version": None if version is None else str(version),
        "model_uri": f"models:/{job.registered_model}/{version}" if version is not None else None,
        "metrics": metrics,
        "checkpoint_dir": job.checkpoint_dir,
        "prices": job.prices.model_dump(),
    }


def reused_result(run: Any, job: GpuTrainJob, version: str, url: str) -> dict[str, Any]:
    """The result of a try that reused an earlier try's run and version: its figures as recorded then."""
    m, t = run.data.metrics, run.data.tags
    cost = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(f"{COST_PREFIX}/")} or None
    return {
        **common_result(job, run.info.run_id, run.info.experiment_id, url, version, model_metrics(m)),
        "checkpoint_dir": t.get(CHECKPOINT_TAG, job.checkpoint_dir),
        "gpu": {"available": t.get(GPU_AVAILABLE_TAG) == "true",
                "ids": [int(i) for i in t.get(GPU_IDS_TAG, "").split(",") if i],
                "reason": t.get(GPU_REASON_TAG)},
        "cost": cost,
        "reused": True,
    }


def param(value: Any) -> str:
    """An MLflow param value: strings as they are, anything else as JSON; at most 6000 characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


def log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """Log params in batches of 100 (MLflow's limit per call)."""
    from mlflow.entities import Param

    items = list(params.items())
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.1f}"


