"""The GPU figures and the cost so far for Prometheus, through the ``prometheus_client`` library:
served for scraping while a task trains (``start_http_server``) and pushed to a Pushgateway
(``push_to_gateway``, an HTTP PUT that replaces the task's group).

    with exported(sampler, {"dag_id": ..., "task_id": ..., "run_id": ...}, cost_so_far,
                  port=9400, pushgateway_url="http://pushgateway:9091") as export:
        train()          # GET :<export.port>/metrics; a push at each sampler flush and one at the end

Each exporter has a ``CollectorRegistry`` of its own (never the library's global ``REGISTRY``,
which would mix in the worker's own process metrics and other tasks' series) holding one
:class:`GpuCollector`, which reads the sampler and the cost at each scrape or push. The metric
names all start with ``airflow_mlops_``. ``prometheus_client`` is imported only when an export
starts or a collector collects, not when a DAG file imports an operator.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

log = logging.getLogger(__name__)

NS = "airflow_mlops"
JOB = NS  # the Pushgateway's job label
PUSH_TIMEOUT_S = 10.0

# (name, type, help, reading attribute) per device, from the latest sample
_PER_DEVICE = [
    ("gpu_utilization_percent", "gauge", "GPU utilization at the last sample (% of time a kernel ran).", "utilization"),
    ("gpu_memory_used_bytes", "gauge", "GPU memory used at the last sample.", "memory_used_bytes"),
    ("gpu_memory_total_bytes", "gauge", "GPU memory in all.", "memory_total_bytes"),
    ("gpu_power_watts", "gauge", "GPU power draw at the last sample.", "power_w"),
    ("gpu_temperature_celsius", "gauge", "GPU temperature at the last sample.", "temperature_c"),
    ("gpu_energy_joules_total", "counter", "GPU energy used since the task started sampling.", "energy_j"),
]
# (name, type, help, summary key) for the whole task
_SUMMARY = [
    ("gpu_utilization_mean_percent", "gauge", "Mean GPU utilization over the task so far.", "utilization_mean"),
    ("gpu_utilization_max_percent", "gauge", "Highest GPU utilization seen over the task so far.", "utilization_max"),
    ("gpu_memory_peak_bytes", "gauge", "Peak GPU memory used by any one device over the task so far.", "memory_peak_bytes"),
    ("gpu_energy_task_joules_total", "counter", "Energy used by all of the task's GPUs so far.", "energy_j"),
    ("gpu_hours_total", "counter", "GPU-hours held by the task so far (GPUs × elapsed hours).", "gpu_hours"),
    ("gpu_count", "gauge", "GPUs sampled for the task.", "count"),
]
# (name, type, help, Cost.as_dict() key)
_COST = [
    ("task_cost_total", "gauge", "The task's cost so far (resources held × hours × prices).", "total"),
    ("task_gpu_hours_billed_total", "counter", "GPU-hours billed to the task.", "gpu_hours"),
    ("task_cpu_hours_billed_total", "counter", "CPU-hours billed to the task.", "cpu_hours"),
    ("task_memory_gib_hours_billed_total", "counter", "Memory GiB-hours billed to the task.", "memory_gib_hours"),
]

# The classic (pre-UTF-8) label names, which every Prometheus and Pushgateway version accepts.
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_label_names(labels: Mapping[str, Any]) -> None:
    """:raises ValueError: a label name that is not ``[a-zA-Z_][a-zA-Z0-9_]*`` or starts with ``__``."""
    for name in labels:
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"invalid Prometheus label name {name!r}")


class GpuCollector:
    """A ``prometheus_client`` custom collector: at each ``collect()`` (a scrape or a push), the
    sampler's latest reading of each GPU (label ``gpu`` = NVML index), the task summary and the
    cost so far, every sample labelled with ``labels``.

    :param sampler: an ``NvmlSampler`` (``summary()`` and ``latest()`` are read; a sampler that
        found no GPU yields only ``airflow_mlops_gpu_available 0``).
    :param labels: label name → value added to every sample (``dag_id``, ``task_id``, ``run_id``).
    :param cost: returns ``Cost.as_dict()`` so far, or None for no cost figures.
    :raises ValueError: a label name that is not ``[a-zA-Z_][a-zA-Z0-9_]*`` or starts with ``__``.
    """

    def __init__(self, sampler: Any, labels: Mapping[str, Any],
                 cost: Callable[[], Mapping[str, Any]] | None = None) -> None:
        check_label_names(labels)
        self.sampler = sampler
        self.labels = {name: str(value) for name, value in labels.items()}
        self.cost = cost

    def collect(self) -> Iterator[Any]:
        """The metric families now (``prometheus_client.core.Metric`` objects)."""
        try:
            summary = self.sampler.summary()
            latest = self.sampler.latest()
            cost = dict(self.cost()) if self.cost else {}
        except Exception:  # a scrape must not kill the task; the library answers it with HTTP 500
            log.warning("Could not read the GPU metrics for Prometheus", exc_info=True)
            raise
        available = bool(summary and summary.get("available"))
        yield self._family("gpu_available", "gauge", "1 if NVML found the task's GPUs, 0 if it runs without GPU metrics.",
                           [({}, 1.0 if available else 0.0)])
        if available:
            readings = sorted((latest or {}).items())
            for name, kind, help_text, attr in _PER_DEVICE:
                samples = [({"gpu": str(index)}, getattr(r, attr)) for index, r in readings
                           if getattr(r, attr, None) is not None]
                if samples:
                    yield self._family(name, kind, help_text, samples)
            for name, kind, help_text, key in _SUMMARY:
                if summary.get(key) is not None:
                    yield self._family(name, kind, help_text, [({}, summary[key])])
        for name, kind, help_text, key in _COST:
            if cost.get(key) is not None:
                yield self._family(name, kind, help_text, [({}, cost[key])])

    def _family(self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]]) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        label_names = list({**self.labels, **samples[0][0]})
        family = cls(f"{NS}_{name}", help_text, labels=label_names)
        for extra, value in samples:
            values = {**self.labels, **extra}
            family.add_metric([values[k] for k in label_names], float(value))
        return family


def registry_for(sampler: Any, labels: Mapping[str, Any], cost: Callable[[], Mapping[str, Any]] | None = None) -> Any:
    """A new ``prometheus_client.CollectorRegistry`` holding one :class:`GpuCollector`."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(GpuCollector(sampler, labels, cost))
    return registry


@dataclass
class Export:
    """What :func:`exported` yields. ``port``: the port really serving ``/metrics`` (the one
    asked for, or the one the system chose for port 0); None when not serving."""

    port: int | None = None
    pushgateway_url: str | None = None


@contextmanager
def exported(sampler: Any, labels: Mapping[str, Any], cost: Callable[[], Mapping[str, Any]], *,
             port: int | None = None, pushgateway_url: str | None = None,
             logger: logging.Logger | None = None, host: str = "0.0.0.0") -> Iterator[Export]:
    """While the block runs, serve the sampler's figures and the cost so far on ``host:port``
    (``/metrics``, for scraping) and push them to ``pushgateway_url`` at each sampler flush; push
    once more at the end, success or not.

    Monitoring never fails the training: a taken port or an unreachable gateway is a warning.
    ``labels`` name the task (``dag_id``, ``task_id``, ``run_id``); on the gateway the run id is
    a label, not part of the grouping key (``job="airflow_mlops"`` and the other labels), so each
    task keeps one group there instead of one per run.

    :param cost: returns ``Cost.as_dict()`` so far (called at each scrape and push).
    :raises ValueError: a label name Prometheus does not accept (before anything starts).
    """
    check_label_names(labels)
    logger = logger or log
    export = Export(pushgateway_url=pushgateway_url)
    push_now: Callable[..., None] | None = None
    if pushgateway_url:
        from prometheus_client import push_to_gateway

        grouping = {k: str(v) for k, v in labels.items() if k != "run_id"}
        push_registry = registry_for(sampler, {"run_id": labels["run_id"]} if "run_id" in labels else {}, cost)

        def push_now(_points: Any = None) -> None:  # a sampler sink: called with each flush's points
            push_to_gateway(pushgateway_url, job=JOB, registry=push_registry, grouping_key=grouping,
                            timeout=PUSH_TIMEOUT_S)

        sampler.sinks.append(push_now)
    server = thread = None
    if port is not None:
        from prometheus_client import start_http_server

        registry = registry_for(sampler, labels, cost)
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:  # e.g. the port is taken by another task on this worker
            logger.warning("Cannot serve GPU metrics on port %s (%s): training goes on without it", port, exc)
        else:
            export.port = server.server_port
            logger.info("Serving GPU metrics for Prometheus on port %d (/metrics)", export.port)
    try:
        yield export
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
        if push_now:
            try:
                push_now()
            except Exception:  # noqa: BLE001 - monitoring must not fail a training
                logger.warning("Could not push the final GPU metrics to %s", pushgateway_url, exc_info=True)
