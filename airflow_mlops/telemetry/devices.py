"""Which GPUs exist here and which a task gets: NVML's device list with free memory now, the
freest ``count`` of them (GPU indices as users write them: ``spec.gpu_train.parse_gpu_ids``).

    devices = list_devices()              # raises NvmlUnavailable without a driver
    chosen = choose_devices(2, devices)   # raises NotEnoughGpus
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from airflow_mlops._core.units import gib
from airflow_mlops.telemetry.nvml import NotEnoughGpus, as_text, load_nvml, shutdown_nvml


@dataclass
class DeviceInfo:
    """One GPU as NVML sees it now; memory in bytes."""

    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_free_bytes: int


def list_devices() -> list[DeviceInfo]:
    """Every GPU NVML sees, with its free memory now. Raises NvmlUnavailable."""
    nvml = load_nvml()
    try:
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(DeviceInfo(
                index=index, name=as_text(nvml.nvmlDeviceGetName(handle)), uuid=as_text(nvml.nvmlDeviceGetUUID(handle)),
                memory_total_bytes=int(memory.total), memory_free_bytes=int(memory.free),
            ))
        return devices
    finally:
        shutdown_nvml(nvml)


def choose_devices(count: int, devices: list[DeviceInfo], among: Sequence[int] | None = None) -> list[int]:
    """``count`` GPUs for a task: those with the most free memory first (ties: lower index),
    restricted to ``among`` (e.g. the worker's own CUDA_VISIBLE_DEVICES) when given."""
    pool = [d for d in devices if among is None or d.index in among]
    if count > len(pool):
        seen = ", ".join(f"GPU{d.index} {gib(d.memory_free_bytes)} free" for d in pool) or "none"
        raise NotEnoughGpus(f"asked for {count} GPU(s) but only {len(pool)} can be used here ({seen})")
    pool.sort(key=lambda d: (-d.memory_free_bytes, d.index))
    return sorted(d.index for d in pool[:count])
