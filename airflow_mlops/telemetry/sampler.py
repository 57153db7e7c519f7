"""The NVML sampler: a thread that records utilization, memory, power, temperature and energy of
the task's GPUs while training runs, and hands the points to sinks (e.g. ``mlflow_sink.MlflowSink``).

    with NvmlSampler(interval_s=1.0, devices=[0, 1], sinks=[mlflow_sink]) as sampler:
        train()
    sampler.summary()   # mean/max utilization, peak memory, energy J, GPU-hours, ...

Metric points go to the sinks in batches (every ``flush_interval_s`` and at stop), named
``gpu/<index>/<metric>`` with ``step`` = sample index: under a prefix of their own, not MLflow's
``system/``. Without an NVIDIA driver the sampler logs one line (``nvml.NO_GPU_MESSAGE``) and is
a quiet no-op: training goes on without GPU metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from airflow_mlops.telemetry.nvml import NO_GPU_MESSAGE, NvmlUnavailable, as_text, load_nvml, shutdown_nvml

log = logging.getLogger(__name__)

PREFIX = "gpu"
FLUSH_INTERVAL_S = 30.0  # see NvmlSampler

# (key, value, timestamp in ms, step): what a sink receives, in batches.
MetricPoint = tuple[str, float, int, int]
Sink = Callable[[list[MetricPoint]], Any]


@dataclass
class Reading:
    """One device at one instant. ``None`` where the device does not support the query."""

    device: int
    step: int
    timestamp: float  # time.time()
    utilization: float | None  # % of the sample period a kernel ran
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_w: float | None
    temperature_c: float | None
    energy_j: float | None  # since the sampler started

    def metrics(self) -> dict[str, float]:
        names = {
            "utilization": self.utilization, "memory_used_bytes": self.memory_used_bytes,
            "power_w": self.power_w, "temperature_c": self.temperature_c, "energy_j": self.energy_j,
        }
        return {k: float(v) for k, v in names.items() if v is not None}


@dataclass
class _DeviceStats:
    samples: int = 0
    util_n: int = 0
    util_sum: float = 0.0
    util_max: float | None = None
    memory_peak: int | None = None
    memory_total: int | None = None
    power_n: int = 0
    power_sum: float = 0.0
    power_max: float | None = None
    temp_max: float | None = None
    energy_j: float | None = None
    energy_source: str | None = None  # "counter" or "power integration"


@dataclass
class _Device:
    index: int
    handle: Any
    name: str = ""
    energy_base_mj: int | None = None  # total-energy counter when sampling started
    last_power: tuple[float, float] | None = None  # (monotonic time, W) for the integration fallback
    integrated_j: float = 0.0
    stats: _DeviceStats = field(default_factory=_DeviceStats)


class NvmlSampler:
    """Sample NVML every ``interval_s`` seconds in a daemon thread while the ``with`` block runs.

    :param interval_s: seconds between samples (one sample is also taken at start and at stop).
    :param devices: NVML indices to sample; ``None``: every GPU; ``[]``: none (a quiet no-op, for
        a task given no GPUs).
    :param sinks: callables receiving batches of ``(key, value, timestamp_ms, step)`` points,
        e.g. :class:`MlflowSink`. A failing sink is logged once and does not stop training.
    :param flush_interval_s: how often buffered points go to the sinks (and at stop). MLflow's
        SQL stores cost about 150 µs per point in batches of 1 000 and several times that in small
        ones: 30 s (1 200 points for 8 GPUs) keeps 1 Hz sampling under 1 % of a core.
    :param nvml: the NVML module to use instead of ``pynvml`` (tests).
    """

    def __init__(
        self,
        interval_s: float = 1.0,
        devices: Sequence[int] | None = None,
        *,
        sinks: Iterable[Sink] = (),
        flush_interval_s: float = FLUSH_INTERVAL_S,
        prefix: str = PREFIX,
        nvml: Any = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.requested = None if devices is None else [int(d) for d in devices]
        self.sinks = list(sinks)
        self.flush_interval_s = float(flush_interval_s)
        self.prefix = prefix
        self.available = False
        self.reason: str | None = None
        self.samples = 0
        self.thread_cpu_s = 0.0  # CPU time the sampler took (thread_time), sinks included, for the benchmark
        self.sink_cpu_s = 0.0  # of which handing points to the sinks (e.g. MLflow log_batch)
        self._nvml = nvml
        self._devices: list[_Device] = []
        self._latest: dict[int, Reading] = {}
        self._pending: list[MetricPoint] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_wall: float | None = None
        self._started: float | None = None
        self._stopped: float | None = None
        self._last_flush = 0.0
        self._sink_failed: set[int] = set()
        self._sample_failed = False

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> "NvmlSampler":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "NvmlSampler":
        self._started = self._last_flush = time.monotonic()
        self._started_wall = time.time()
        if self.requested == []:
            self.reason = "no GPUs assigned to this task"
            return self
        if self._nvml is None:
            try:
                self._nvml = load_nvml()
            except NvmlUnavailable as exc:
                self.reason = str(exc)
                log.warning("%s (%s)", NO_GPU_MESSAGE, exc)
                return self
        else:
            try:
                self._nvml.nvmlInit()
            except self._nvml.NVMLError as exc:
                self.reason = f"NVML: {exc} ({type(exc).__name__})"
                log.warning("%s (%s)", NO_GPU_MESSAGE, self.reason)
                return self
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            indices = list(range(count)) if self.requested is None else self.requested
            missing = [i for i in indices if not 0 <= i < count]
            if missing:
                raise ValueError(f"GPU index(es) {missing} do not exist: NVML sees {count} GPU(s)")
            for index in indices:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                device = _Device(index=index, handle=handle, name=as_text(nvml.nvmlDeviceGetName(handle)))
                device.energy_base_mj = self._query(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
                self._devices.append(device)
        except Exception:
            shutdown_nvml(nvml)
            raise
        if not self._devices:
            self.reason = "NVML sees no GPU"
            log.warning("%s (%s)", NO_GPU_MESSAGE, self.reason)
            shutdown_nvml(nvml)
            return self
        self.available = True
        log.info("Sampling NVML every %.3g s on GPU(s) %s (%s)", self.interval_s,
                 [d.index for d in self._devices], ", ".join(sorted({d.name for d in self._devices})))
        cpu = time.thread_time()
        self._safe_sample()
        self.thread_cpu_s += time.thread_time() - cpu
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped is not None:
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if self.available:
            cpu = time.thread_time()
            self._safe_sample()
            self._stopped = time.monotonic()
            self.flush()
            self.thread_cpu_s += time.thread_time() - cpu
            shutdown_nvml(self._nvml)
        else:
            self._stopped = time.monotonic()

    def _loop(self) -> None:
        cpu = time.thread_time()
        next_at = time.monotonic() + self.interval_s
        try:
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                next_at += self.interval_s
                self._safe_sample()
                if time.monotonic() - self._last_flush >= self.flush_interval_s:
                    self.flush()
        finally:
            self.thread_cpu_s += time.thread_time() - cpu

    # -- sampling -----------------------------------------------------------------------------

    def _safe_sample(self) -> None:
        try:
            self.sample()
        except Exception:  # noqa: BLE001 - telemetry must never end training
            if not self._sample_failed:  # once, not every second
                self._sample_failed = True
                log.warning("NVML sample failed; training goes on, later failures are not logged", exc_info=True)

    def _query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """NVML call, or None where the device does not support it (NVMLError_NotSupported and
        friends: many consumer GPUs lack power or energy counters)."""
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            return None

    def sample(self) -> None:  # noqa: C901
        """Take one sample of every device now (the thread does this every interval)."""
        nvml = self._nvml
        step = self.samples
        now, mono = time.time(), time.monotonic()
        readings = []
        for d in self._devices:
            util = self._query(nvml.nvmlDeviceGetUtilizationRates, d.handle)
            memory = self._query(nvml.nvmlDeviceGetMemoryInfo, d.handle)
            power_mw = self._query(nvml.nvmlDeviceGetPowerUsage, d.handle)
            temp = self._query(nvml.nvmlDeviceGetTemperature, d.handle, nvml.NVML_TEMPERATURE_GPU)
            power_w = power_mw / 1000.0 if power_mw is not None else None
            energy_j = None
            if d.energy_base_mj is not None:
                total_mj = self._query(nvml.nvmlDeviceGetTotalEnergyConsumption, d.handle)
                if total_mj is not None:
                    energy_j = (total_mj - d.energy_base_mj) / 1000.0
                    d.stats.energy_source = "counter"
            if energy_j is None and power_w is not None:
                # No energy counter (pre-Volta GPUs): integrate power over time (trapezoids).
                if d.last_power is not None:
                    t0, p0 = d.last_power
                    d.integrated_j += (mono - t0) * (p0 + power_w) / 2.0
                d.last_power = (mono, power_w)
                energy_j = d.integrated_j
                d.stats.energy_source = "power integration"
            readings.append(Reading(
                device=d.index, step=step, timestamp=now,
                utilization=float(util.gpu) if util is not None else None,
                memory_used_bytes=int(memory.used) if memory is not None else None,
                memory_total_bytes=int(memory.total) if memory is not None else None,
                power_w=power_w, temperature_c=float(temp) if temp is not None else None, energy_j=energy_j,
            ))
        ms = int(now * 1000)
        with self._lock:
            for d, r in zip(self._devices, readings):
                s = d.stats
                s.samples += 1
                if r.utilization is not None:
                    s.util_n += 1
                    s.util_sum += r.utilization
                    s.util_max = r.utilization if s.util_max is None else max(s.util_max, r.utilization)
                if r.memory_used_bytes is not None:
                    s.memory_peak = r.memory_used_bytes if s.memory_peak is None else max(s.memory_peak, r.memory_used_bytes)
                    s.memory_total = r.memory_total_bytes
                if r.power_w is not None:
                    s.power_n += 1
                    s.power_sum += r.power_w
                    s.power_max = r.power_w if s.power_max is None else max(s.power_max, r.power_w)
                if r.temperature_c is not None:
                    s.temp_max = r.temperature_c if s.temp_max is None else max(s.temp_max, r.temperature_c)
                if r.energy_j is not None:
                    s.energy_j = r.energy_j
                self._latest[d.index] = r
                for name, value in r.metrics().items():
                    self._pending.append((f"{self.prefix}/{d.index}/{name}", value, ms, step))
            self.samples += 1

    # -- results ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand the buffered points to the sinks (called every ``flush_interval_s`` and at stop)."""
        with self._lock:
            points, self._pending = self._pending, []
            self._last_flush = time.monotonic()
        if not points:
            return
        cpu = time.thread_time()
        try:
            self._to_sinks(points)
        finally:
            self.sink_cpu_s += time.thread_time() - cpu

    def _to_sinks(self, points: list[MetricPoint]) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                sink(points)
            except Exception:  # noqa: BLE001 - a tracking outage must not end training
                if i not in self._sink_failed:
                    self._sink_failed.add(i)
                    log.warning("Could not record %d GPU metric point(s) with %r; training goes on", len(points), sink,
                                exc_info=True)

    @property
    def devices(self) -> list[int]:
        return [d.index for d in self._devices]

    @property
    def elapsed_s(self) -> float:
        if self._started is None:
            return 0.0
        return (self._stopped or time.monotonic()) - self._started

    def latest(self) -> dict[int, Reading]:
        """The last reading of each device (what Prometheus shows)."""
        with self._lock:
            return dict(self._latest)

    def summary(self) -> dict[str, Any]:
        """Mean/max utilization, peak memory, energy, GPU-hours (devices × elapsed hours)."""
        with self._lock:
            stats = {d.index: (d.name, asdict(d.stats)) for d in self._devices}
        elapsed = self.elapsed_s
        per_device: dict[int, dict[str, Any]] = {}
        util_n = util_sum = power_n = power_sum = 0.0
        util_max = memory_peak = power_max = temp_max = energy = None
        sources = set()
        for index, (name, s) in stats.items():
            per_device[index] = {
                "name": name,
                "utilization_mean": s["util_sum"] / s["util_n"] if s["util_n"] else None,
                "utilization_max": s["util_max"],
                "memory_peak_bytes": s["memory_peak"],
                "memory_total_bytes": s["memory_total"],
                "power_mean_w": s["power_sum"] / s["power_n"] if s["power_n"] else None,
                "power_max_w": s["power_max"],
                "temperature_max_c": s["temp_max"],
                "energy_j": s["energy_j"],
            }
            util_n += s["util_n"]
            util_sum += s["util_sum"]
            power_n += s["power_n"]
            power_sum += s["power_sum"]
            util_max = _max(util_max, s["util_max"])
            memory_peak = _max(memory_peak, s["memory_peak"])
            power_max = _max(power_max, s["power_max"])
            temp_max = _max(temp_max, s["temp_max"])
            if s["energy_j"] is not None:
                energy = (energy or 0.0) + s["energy_j"]
            if s["energy_source"]:
                sources.add(s["energy_source"])
        return {
            "available": self.available,
            "reason": self.reason,
            "devices": list(stats),
            "names": [name for name, _ in stats.values()],
            "count": len(stats),
            "samples": self.samples,
            "interval_s": self.interval_s,
            "elapsed_s": elapsed,
            "gpu_hours": len(stats) * elapsed / 3600.0,
            "utilization_mean": util_sum / util_n if util_n else None,
            "utilization_max": util_max,
            "memory_peak_bytes": memory_peak,  # the highest of any one device
            "power_mean_w": power_sum / power_n if power_n else None,
            "power_max_w": power_max,
            "temperature_max_c": temp_max,
            "energy_j": energy,  # all devices together
            "energy_source": ", ".join(sorted(sources)) or None,
            "per_device": per_device,
            "sampler_cpu_s": self.thread_cpu_s,
        }


def _max(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
