"""The GPU figures in Prometheus text exposition format (version 0.0.4), written by hand (the
``prometheus_client`` package is not a dependency), served for scraping while a task trains, or
pushed to a Pushgateway with an HTTP PUT.

    text = render(sampler.summary(), sampler.latest(), labels={"dag_id": ..., "task_id": ...})
    with MetricsServer(port=9400, render=lambda: ...):   # GET /metrics while training runs
        ...
    push("http://pushgateway:9091", job="airflow_mlops", grouping={"dag_id": ..., "task_id": ...}, text=text)
"""

from __future__ import annotations

import base64
import logging
import math
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NS = "airflow_mlops"

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
_COST = [
    ("task_cost_total", "gauge", "The task's cost so far (resources held × hours × prices).", "total"),
    ("task_gpu_hours_billed_total", "counter", "GPU-hours billed to the task.", "gpu_hours"),
    ("task_cpu_hours_billed_total", "counter", "CPU-hours billed to the task.", "cpu_hours"),
    ("task_memory_gib_hours_billed_total", "counter", "Memory GiB-hours billed to the task.", "memory_gib_hours"),
]

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def escape_label(value: str) -> str:
    """Label value escaping of the text format: backslash, double quote, line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(labels: Mapping[str, Any]) -> str:
    if not labels:
        return ""
    for name in labels:
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"invalid Prometheus label name {name!r}")
    return "{" + ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items()) + "}"


def render(
    summary: Mapping[str, Any] | None,
    latest: Mapping[int, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
    cost: Mapping[str, Any] | None = None,
) -> str:
    """The text exposition of the latest per-GPU readings, the task summary and its cost.

    :param summary: ``NvmlSampler.summary()`` (None or unavailable: only ``gpu_available 0``).
    :param latest: ``NvmlSampler.latest()``: device index → Reading.
    :param labels: added to every sample (e.g. dag_id, task_id, run_id).
    :param cost: ``Cost.as_dict()``.
    """
    labels = dict(labels or {})
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        if not samples:
            return
        full = f"{NS}_{name}"
        out.append(f"# HELP {full} {help_text}")
        out.append(f"# TYPE {full} {kind}")
        for extra, value in samples:
            out.append(f"{full}{_labels({**labels, **extra})} {format_value(float(value))}")

    available = bool(summary and summary.get("available"))
    family("gpu_available", "gauge", "1 if NVML found the task's GPUs, 0 if it runs without GPU metrics.",
           [({}, 1.0 if available else 0.0)])
    if available:
        readings = latest or {}
        for name, kind, help_text, attr in _PER_DEVICE:
            family(name, kind, help_text, [
                ({"gpu": str(index)}, getattr(reading, attr))
                for index, reading in sorted(readings.items()) if getattr(reading, attr, None) is not None
            ])
        for name, kind, help_text, key in _SUMMARY:
            if summary.get(key) is not None:
                family(name, kind, help_text, [({}, summary[key])])
    if cost:
        for name, kind, help_text, key in _COST:
            if cost.get(key) is not None:
                family(name, kind, help_text, [({}, cost[key])])
    return "\n".join(out) + "\n"


class MetricsServer:
    """Serve ``GET /metrics`` (the text ``render()`` returns at each scrape) in a daemon thread,
    for a Prometheus that scrapes the worker or the pod while the task trains."""

    def __init__(self, port: int, render: Callable[[], str], host: str = "0.0.0.0") -> None:
        self.render = render
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                try:
                    body = outer.render().encode()
                except Exception:  # noqa: BLE001 - a scrape must not kill the task
                    log.warning("Could not render the GPU metrics", exc_info=True)
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def __enter__(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="gpu-metrics", daemon=True)
        self._thread.start()
        log.info("Serving GPU metrics for Prometheus on port %d (/metrics)", self.port)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def _grouping_path(job: str, grouping: Mapping[str, Any]) -> str:
    """``/metrics/job/<job>/<label>/<value>...``; values that are not plain URL path text use
    the Pushgateway's ``<label>@base64/<base64url>`` form (run ids hold ``:`` and ``+``)."""
    parts = []
    for name, value in {"job": job, **grouping}.items():
        value = str(value)
        if value and re.fullmatch(r"[A-Za-z0-9_.~-]+", value):
            parts.append(f"{quote(name)}/{value}")
        else:
            encoded = base64.urlsafe_b64encode(value.encode()).decode() or "="
            parts.append(f"{quote(name)}@base64/{encoded}")
    return "/metrics/" + "/".join(parts)


def push(gateway_url: str, text: str, job: str = NS, grouping: Mapping[str, Any] | None = None,
         timeout_s: float = 10.0) -> None:
    """HTTP PUT the exposition text to a Pushgateway: replaces the metrics of that grouping key."""
    import urllib.request

    url = gateway_url.rstrip("/") + _grouping_path(job, grouping or {})
    request = urllib.request.Request(url, data=text.encode(), method="PUT", headers={"Content-Type": CONTENT_TYPE})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - the user's URL
        if response.status >= 300:
            raise RuntimeError(f"Pushgateway {url} answered HTTP {response.status}")


@contextmanager
def exported(sampler: Any, labels: Mapping[str, Any], cost: Callable[[], Mapping[str, Any]], *,
             port: int | None = None, pushgateway_url: str | None = None,
             logger: logging.Logger | None = None) -> Iterator[None]:
    """While the block runs, serve the sampler's figures and the cost so far on ``port``
    (``/metrics``, for scraping) and push them to ``pushgateway_url`` at each sampler flush; push
    once more at the end, success or not. Monitoring never fails the training: a taken port or an
    unreachable gateway is a warning. ``labels`` name the task (``dag_id``, ``task_id``,
    ``run_id``); on the gateway the run id is a label, not part of the grouping key, so each task
    keeps one series there instead of one per run."""
    logger = logger or log

    def text(extra: Mapping[str, Any]) -> str:
        return render(sampler.summary(), sampler.latest(), extra, dict(cost()))

    push_now: Callable[..., None] | None = None
    if pushgateway_url:
        grouping = {k: v for k, v in labels.items() if k != "run_id"}
        push_labels = {"run_id": labels["run_id"]} if "run_id" in labels else {}

        def push_now(_points: Any = None) -> None:
            push(pushgateway_url, text(push_labels), grouping=grouping)

        sampler.sinks.append(push_now)
    server = None
    if port is not None:
        try:
            server = MetricsServer(port, lambda: text(labels))
        except OSError as exc:  # e.g. the port is taken by another task on this worker
            logger.warning("Cannot serve GPU metrics on port %s (%s): training goes on without it", port, exc)
    try:
        if server:
            server.__enter__()
        yield
    finally:
        if server:
            server.__exit__(None, None, None)
        if push_now:
            try:
                push_now()
            except Exception:  # noqa: BLE001 - monitoring must not fail a training
                logger.warning("Could not push the final GPU metrics to %s", pushgateway_url, exc_info=True)
