"""Triggers for the deferrable sensors. They run in Airflow's triggerer process.

``GpuAvailableTrigger`` polls NVML **on the triggerer's host**: deferring a GPU sensor only makes
sense where a triggerer runs on the GPU machine the training will use (a single GPU box, or a
triggerer per GPU node). Elsewhere, use the sensor's ``mode="reschedule"``, which pokes on a
worker. A triggerer without an NVIDIA driver ends the wait at once with an error event that
says so, rather than waiting out the timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_mlops.sensors.gpu import GpuCheck, check_gpus


class GpuAvailableTrigger(BaseTrigger):
    """Fire when ``count`` GPUs (among ``gpu_ids``, or any) each have ≥ ``min_free_bytes`` free.

    Events: ``{"status": "success", "gpu_ids": [...], "message": ...}``,
    ``{"status": "timeout", "message": ...}`` once ``deadline`` (epoch seconds) passes, with the
    last measurement, or ``{"status": "error", "message": ...}`` when NVML is unusable here.
    """

    def __init__(self, count: int, min_free_bytes: int, gpu_ids: list[int] | None = None,
                 poll_interval: float = 30.0, deadline: float | None = None) -> None:
        super().__init__()
        self.count = count
        self.min_free_bytes = min_free_bytes
        self.gpu_ids = gpu_ids
        self.poll_interval = poll_interval
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"count": self.count, "min_free_bytes": self.min_free_bytes, "gpu_ids": self.gpu_ids,
             "poll_interval": self.poll_interval, "deadline": self.deadline},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            # NVML calls block (an ioctl each): keep them off the triggerer's event loop.
            check: GpuCheck = await asyncio.to_thread(check_gpus, self.count, self.min_free_bytes, self.gpu_ids)
            if check.error is not None:
                yield TriggerEvent({"status": "error", "message": check.message})
                return
            if check.done:
                yield TriggerEvent({"status": "success", "gpu_ids": check.chosen, "message": check.message})
                return
            if self.deadline is not None and time.time() >= self.deadline:
                yield TriggerEvent({"status": "timeout", "message": check.message})
                return
            self.log.info("Waiting for GPUs: %s", check.message)
            wait = self.poll_interval
            if self.deadline is not None:
                wait = min(wait, max(0.0, self.deadline - time.time()))
            await asyncio.sleep(wait)
