"""Which GPUs a training try gets, decided once for both kinds of training (the YAML train stage
and GpuTrainOperator's entrypoint):

    gpus = assign_gpus(job.gpus, job.gpu_ids, log, asked_by=job.gpus_asked_by)
    env.update(gpus.cuda_env())   # CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER, or {} to leave them

A count takes the GPUs with the most free memory (among the worker's own CUDA_VISIBLE_DEVICES);
ids take exactly those; neither takes what this process sees. Without an NVIDIA driver the
assignment says so in one log line, and training goes on without GPU metrics.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

from pydantic import BaseModel, Field

from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.units import gib
from airflow_mlops.telemetry.devices import choose_devices, list_devices
from airflow_mlops.telemetry.nvml import NO_GPU_MESSAGE, NotEnoughGpus, NvmlUnavailable

AskedBy = Literal["gpus", "resources.gpu"]
# Why a try trains on CPU when it asked for no GPU, as each setting says it (tags and results).
NO_GPU_ASKED = {"gpus": "no GPUs requested (gpus=0)", "resources.gpu": "the stage's resources ask for no GPU"}
# The GPU summary figures a result carries (``NvmlSampler.summary()`` keys).
SUMMARY_KEYS = ("samples", "utilization_mean", "utilization_max", "memory_peak_bytes", "energy_j", "gpu_hours",
                "power_mean_w", "power_max_w", "temperature_max_c")


class GpuAssignment(BaseModel):
    """The GPUs one try trains on.

    ``visible``: the NVML indices ``CUDA_VISIBLE_DEVICES`` names (``None``: leave the variable as
    the process has it); ``sampled``: the indices NVML samples (``[]`` without a driver);
    ``available``: NVML sees the GPUs; ``reason``: why not, when not; ``names``: GPU models."""

    visible: list[int] | None
    sampled: list[int]
    available: bool
    reason: str | None = None
    names: list[str] = Field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        """The GPUs the try holds, as NVML indices (tags ``airflow_mlops.gpu.ids``, the result's ``gpu.ids``)."""
        return list(self.visible) if self.visible is not None else list(self.sampled)

    def cuda_env(self) -> dict[str, str]:
        """The environment that gives CUDA these GPUs, numbered as NVML numbers them (PCI bus order);
        ``{}`` when the process keeps what it sees. CUDA reads it when it first initialises."""
        if self.visible is None:
            return {}
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.visible)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    def result(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The result's ``gpu`` entry: ``available``, ``ids``, ``names``, ``reason``, and the
        summary's figures (``SUMMARY_KEYS``) when NVML sampled them."""
        out: dict[str, Any] = {"available": self.available, "ids": self.ids, "names": self.names, "reason": self.reason}
        for key in SUMMARY_KEYS:
            if summary.get("available") and summary.get(key) is not None:
                out[key] = summary[key]
        return out


def visible_in_worker() -> list[int] | None:
    """The worker's own ``CUDA_VISIBLE_DEVICES`` as NVML indices, when it pins the worker to some
    GPUs by index; ``None`` when unset, empty, or UUIDs / MIG ids."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None or not value.strip():
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:  # UUIDs or MIG ids: not restricted by index here
        return None


def assign_gpus(gpus: int | None, gpu_ids: list[int] | None, log: logging.Logger,
                asked_by: AskedBy = "gpus") -> GpuAssignment:
    """The GPUs for a try: ``gpus`` (how many; 0: none, on CPU) or ``gpu_ids`` (which); with
    neither, the GPUs this process sees. ``asked_by`` names the setting in messages.

    Raises StageFailed (no retry) when fewer GPUs exist than asked for, or an id does not exist."""
    if gpus is None and gpu_ids is None:
        return _what_the_process_sees(log)
    if gpu_ids is None and not gpus:
        reason = NO_GPU_ASKED[asked_by]
        log.info("%s: training on CPU, CUDA_VISIBLE_DEVICES=''", reason[0].upper() + reason[1:])
        return GpuAssignment(visible=[], sampled=[], available=False, reason=reason)
    try:
        devices = list_devices()
    except NvmlUnavailable as exc:
        log.warning("%s (%s); asked for %s, training with none seen by NVML", NO_GPU_MESSAGE, exc,
                    f"{gpus} GPU(s)" if gpu_ids is None else f"GPU(s) {gpu_ids}")
        return GpuAssignment(visible=list(gpu_ids or []), sampled=[], available=False, reason=str(exc))
    by_index = {d.index: d for d in devices}
    try:
        if gpu_ids is not None:
            missing = [i for i in gpu_ids if i not in by_index]
            if missing:
                raise NotEnoughGpus(f"GPU id(s) {missing} do not exist here: NVML sees {len(devices)} GPU(s) "
                                    f"({', '.join(f'GPU{d.index} {d.name}' for d in devices) or 'none'})")
            chosen = list(gpu_ids)
        else:
            chosen = choose_devices(int(gpus or 0), devices, among=visible_in_worker())
    except NotEnoughGpus as exc:
        raise StageFailed(f"{'gpu_ids' if gpu_ids is not None else asked_by}: {exc}") from exc
    log.info("Training on %d GPU(s): %s", len(chosen), ", ".join(f"GPU{i}" for i in chosen) or "none")
    for i in chosen:
        d = by_index[i]
        log.info("GPU%d: %s, %s of %s free", i, d.name, gib(d.memory_free_bytes), gib(d.memory_total_bytes))
    return GpuAssignment(visible=chosen, sampled=chosen, available=True, names=[by_index[i].name for i in chosen])


def _what_the_process_sees(log: logging.Logger) -> GpuAssignment:
    """No count, no ids: the GPUs this process sees (in a pod: the pod's), CUDA_VISIBLE_DEVICES untouched.
    Nothing asked for a GPU, so finding none is logged at INFO (a CPU-only pipeline is no fault)."""
    try:
        devices = list_devices()
    except NvmlUnavailable as exc:
        log.info("%s (%s)", NO_GPU_MESSAGE, exc)
        return GpuAssignment(visible=None, sampled=[], available=False, reason=str(exc))
    among = visible_in_worker()
    seen = [d for d in devices if among is None or d.index in among]
    if not seen:
        log.info("%s (NVML sees no GPU this process may use)", NO_GPU_MESSAGE)
        return GpuAssignment(visible=None, sampled=[], available=False, reason="NVML sees no GPU")
    log.info("Training on the %d GPU(s) this process sees: %s", len(seen), ", ".join(f"GPU{d.index}" for d in seen))
    return GpuAssignment(visible=None, sampled=[d.index for d in seen], available=True, names=[d.name for d in seen])
