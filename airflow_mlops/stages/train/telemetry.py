"""GPU telemetry and cost around the YAML ``train`` stage (``airflow_mlops.stages.train``), which
runs in-process in the worker (batch backend) or in a pod (``python -m airflow_mlops.runtime``);
``stages.run_stage`` calls this for every train stage.

    result = run_train_stage(spec, ctx)  # resources, prices and UI URL from the context

The stage itself is unchanged: it logs params/metrics/model and registers the version (reusing an
earlier try's version on retry). Around it, the stage gets the GPUs its resources ask for (see
``_stage_gpus``) and NVML samples them; the points go to the stage's MLflow run as soon as it
exists (found by its task-key and try-number tags), and when the stage returns, the GPU summary,
``gpu.available`` tag and the cost are recorded on that run and added to the result, with
``mlflow_run_url`` for the "MLflow run" extra link. A retry that reused an earlier try's version records nothing new.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.paths import environ_kept
from airflow_mlops.spec.prices import PriceTable
from airflow_mlops.stages.train.job import (
    GPU_AVAILABLE_TAG,
    TASK_KEY_TAG,
    _visible_in_worker,
    assign_gpus,
    prometheus_labels,
    run_url,
    ui_base,
)
from airflow_mlops.telemetry.cost import as_prices, mlflow_tags, resources_from, task_cost
from airflow_mlops.telemetry.mlflow_sink import summary_metrics
from airflow_mlops.telemetry.nvml import NotEnoughGpus
from airflow_mlops.telemetry.prometheus import exported
from airflow_mlops.telemetry.sampler import FLUSH_INTERVAL_S, MetricPoint, NvmlSampler

log = logging.getLogger("airflow_mlops.stages.train.telemetry")
MAX_BUFFERED_POINTS = 500_000  # before the run exists (~hours of data loading at 1 Hz × 8 GPUs)


class _StageRunSink:
    """Buffers points until the stage's MLflow run exists, then logs them to it in batches."""

    def __init__(self, ctx: Any, started_ms: int) -> None:
        self.ctx = ctx
        self.started_ms = started_ms
        self.run_id: str | None = None
        self.buffer: list[MetricPoint] = []
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from airflow_mlops._core.mlflow import client

            self._client = client(self.ctx.mlflow)
        return self._client

    def find_run(self) -> str | None:
        key = self.ctx.tags.get(TASK_KEY_TAG)
        if not key:
            return None
        experiment = self.client().get_experiment_by_name(self.ctx.mlflow.experiment)
        if experiment is None:
            return None
        runs = self.client().search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{TASK_KEY_TAG}` = '{key}' and attributes.status = 'RUNNING'",
            max_results=10,
        )
        mine = [r for r in runs if r.info.start_time >= self.started_ms - 1000]
        return mine[0].info.run_id if mine else None

    def __call__(self, points: list[MetricPoint]) -> None:
        self.buffer.extend(points)
        if len(self.buffer) > MAX_BUFFERED_POINTS:
            del self.buffer[: len(self.buffer) - MAX_BUFFERED_POINTS]
        if self.run_id is None:
            self.run_id = self.find_run()
        if self.run_id is not None:
            self.drain()

    def drain(self) -> None:
        from airflow_mlops.telemetry.mlflow_sink import MlflowSink

        points, self.buffer = self.buffer, []
        if points and self.run_id:
            MlflowSink(self.client(), self.run_id)(points)


@contextmanager
def _stage_gpus(wanted: int | None) -> Iterator[tuple[list[int] | None, str | None]]:
    """The GPUs the stage trains on: ``(NVML indices to sample, why there are none)``.

    When the stage's resources say how many GPUs (0 included), it gets that many, those with the
    most free memory, named in ``CUDA_VISIBLE_DEVICES`` while it runs, as GpuTrainOperator does
    for its subprocess: on a shared GPU worker the other GPUs are other tasks' work. CUDA reads the
    variable when it first initialises, and every Airflow task is a fresh process. Without
    resources, the stage has what this process sees (in a pod: the pod's GPUs).
    """
    if wanted is None:
        yield _visible_in_worker(), None
        return
    if wanted == 0:
        log.info("The stage's resources ask for no GPU: training on CPU, CUDA_VISIBLE_DEVICES=''")
        visible, sampled, reason = [], [], "the stage's resources ask for no GPU"
    else:
        try:
            assignment = assign_gpus(wanted, None, log)
        except NotEnoughGpus as exc:
            raise StageFailed(f"resources.gpu: {exc}") from exc
        visible, sampled, reason = assignment.visible, assignment.sampled, assignment.reason
    with environ_kept("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        os.environ.update(CUDA_VISIBLE_DEVICES=",".join(map(str, visible)), CUDA_DEVICE_ORDER="PCI_BUS_ID")
        yield sampled, reason


def run_train_stage(
    spec: Any,
    ctx: Any,
    *,
    resources: Any = None,
    prices: PriceTable | dict | None = None,
    sample_interval_s: float | None = None,
    flush_interval_s: float = FLUSH_INTERVAL_S,
    ui_url: str | None = None,
) -> dict[str, Any]:
    """``run_stage(spec, ctx)`` for a train stage, with NVML sampling, GPU tags and cost.

    :param resources: what the stage holds (``Resources`` or ``{cpu, memory, gpu}``); default:
        the context's, else the GPUs sampled, 1 CPU, 1Gi.
    :param prices: the price table (default: the context's, else 2.5 / 0.1 / 0.05 per hour).
    :param sample_interval_s: seconds between NVML samples (default: the context's
        ``gpu_metrics``, which may also name a Prometheus port and a Pushgateway; else 1).
    :param ui_url: base URL of the MLflow UI (default: the context's MLflow target's).
    """
    from airflow_mlops.stages._engine import run_stage_code

    resources = ctx.resources if resources is None else resources
    prices = as_prices(ctx.prices if prices is None else prices)
    ui_url = ctx.mlflow.ui_url if ui_url is None else ui_url
    started_ms = int(time.time() * 1000)
    sink = _StageRunSink(ctx, started_ms)
    settings = ctx.gpu_metrics or {}
    wanted = None if resources is None else resources_from(resources, gpus_held=0).gpu
    started = time.monotonic()
    with _stage_gpus(wanted) as (devices, reason):
        sampler = NvmlSampler(sample_interval_s or settings.get("sample_interval", 1.0), devices, sinks=[sink],
                              flush_interval_s=flush_interval_s)

        holding = resources_from(resources, gpus_held=len(devices or []))

        def cost_so_far() -> dict[str, Any]:  # for Prometheus, while the stage runs
            return task_cost(holding, time.monotonic() - started, prices).as_dict()

        with exported(sampler, prometheus_labels(ctx.tags), cost_so_far, port=settings.get("prometheus_port"),
                      pushgateway_url=settings.get("pushgateway_url"), logger=log), sampler:
            result = run_stage_code(spec, ctx)
    wall = time.monotonic() - started
    summary = sampler.summary()
    if reason and not summary["available"]:
        summary["reason"] = reason

    client = sink.client()
    run = client.get_run(result["run_id"])
    url = run_url(ui_base(ctx.mlflow.tracking_uri, ui_url), run.info.experiment_id, run.info.run_id)
    result["mlflow_run_url"] = url
    if run.info.start_time < started_ms - 1000:
        log.info("The stage reused run %s of an earlier try: its GPU figures and cost stay as recorded then",
                 run.info.run_id)
        return result

    from mlflow.entities import Metric, RunTag

    sink.run_id = run.info.run_id
    sink.drain()
    held = resources_from(resources, gpus_held=summary["count"] if summary["available"] else 0)
    cost = task_cost(held, wall, prices)
    metrics = {**(summary_metrics(summary) if summary["available"] else {}), **cost.metrics()}
    tags = {GPU_AVAILABLE_TAG: str(summary["available"]).lower(),
            "airflow_mlops.gpu.ids": ",".join(map(str, summary["devices"])),
            **mlflow_tags(cost, prices, held)}
    if summary["reason"]:
        tags["airflow_mlops.gpu.reason"] = summary["reason"][:5000]
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    if result.get("model_version") is not None:
        client.set_model_version_tag(result["model_name"], str(result["model_version"]), GPU_AVAILABLE_TAG,
                                     tags[GPU_AVAILABLE_TAG])
    log.info("Train stage cost %.4f over %.1f s (%d GPU(s) held, GPU metrics: %s)", cost.total, wall, held.gpu,
             "yes" if summary["available"] else f"no — {summary['reason']}")
    result["gpu"] = {"available": summary["available"], "ids": summary["devices"], "reason": summary["reason"],
                     **{k: summary[k] for k in ("utilization_mean", "utilization_max", "memory_peak_bytes", "energy_j",
                                                "gpu_hours") if summary["available"]}}
    result["cost"] = cost.as_dict()
    return result
