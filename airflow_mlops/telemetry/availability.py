"""Whether enough GPUs with enough free memory are there now: what GpuAvailableSensor and its
trigger poke (NVML through ``telemetry.devices``)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Sequence

from airflow_mlops._core.units import gib


@dataclass
class GpuCheck:
    done: bool
    chosen: list[int] = field(default_factory=list)  # qualifying GPUs, most free memory first, `count` of them
    free: dict[int, tuple[int, int]] = field(default_factory=dict)  # index → (free, total) bytes
    error: str | None = None  # NVML unusable here
    message: str = ""


def check_gpus(count: int, min_free_bytes: int, gpu_ids: Sequence[int] | None = None) -> GpuCheck:
    """One NVML measurement: are there ``count`` GPUs (among ``gpu_ids``) with ≥ ``min_free_bytes`` free?"""
    from airflow_mlops.telemetry.devices import list_devices
    from airflow_mlops.telemetry.nvml import NO_GPU_MESSAGE, NvmlUnavailable

    want = f"{count} GPU(s) with ≥ {gib(min_free_bytes)} free"
    try:
        devices = list_devices()
    except NvmlUnavailable as exc:
        message = f"NVML unavailable on {socket.gethostname()}: {NO_GPU_MESSAGE.split(':')[0]} ({exc}); wanted {want}"
        return GpuCheck(done=False, error=str(exc), message=message)
    pool = [d for d in devices if gpu_ids is None or d.index in gpu_ids]
    free = {d.index: (d.memory_free_bytes, d.memory_total_bytes) for d in pool}
    good = sorted((d for d in pool if d.memory_free_bytes >= min_free_bytes), key=lambda d: (-d.memory_free_bytes, d.index))
    seen = ", ".join(f"GPU{d.index} {gib(d.memory_free_bytes)} of {gib(d.memory_total_bytes)} free" for d in pool)
    among = "" if gpu_ids is None else f" among GPU(s) {list(gpu_ids)}"
    message = (f"{len(good)} of {len(pool)} GPU(s){among} had ≥ {gib(min_free_bytes)} free, wanted {count}"
               f" ({seen or 'no GPU'})")
    done = len(good) >= count
    return GpuCheck(done=done, chosen=sorted(d.index for d in good[:count]) if done else [], free=free, message=message)
