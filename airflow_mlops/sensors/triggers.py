"""Triggers for the deferrable sensors. They run in Airflow's triggerer process.

``KafkaLagTrigger`` measures a consumer group's lag from the triggerer, which must reach the
brokers; it reads the Kafka connection there.

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

from airflow_mlops.kafka.lag import LagCheck, check_lag
from airflow_mlops.telemetry.availability import GpuCheck, check_gpus


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
            if _expired(self.deadline):
                yield TriggerEvent({"status": "timeout", "message": check.message})
                return
            self.log.info("Waiting for GPUs: %s", check.message)
            await _next_poll(self.poll_interval, self.deadline)


class KafkaLagTrigger(BaseTrigger):
    """Fire when a consumer group's lag meets ``KafkaLagSensor``'s condition.

    Events: ``{"status": "success", "lag": {...}, "measured": ...}``, ``{"status": "timeout",
    "measured": ...}`` once ``deadline`` (epoch seconds) passes, ``{"status": "missing", "message":
    ...}`` when a topic does not exist (unless ``wait_for_missing_topics``), or ``{"status":
    "error", "message": ...}`` when the connection or the brokers fail (as a failing poke would).
    """

    def __init__(self, kafka_conn_id: str, group_id: str, topics: list[str], condition: str, threshold: int,
                 lag_timeout_s: float = 15.0, poll_interval: float = 60.0, deadline: float | None = None,
                 wait_for_missing_topics: bool = False) -> None:
        super().__init__()
        self.kafka_conn_id = kafka_conn_id
        self.group_id = group_id
        self.topics = list(topics)
        self.condition = condition
        self.threshold = threshold
        self.lag_timeout_s = lag_timeout_s
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.wait_for_missing_topics = wait_for_missing_topics

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"kafka_conn_id": self.kafka_conn_id, "group_id": self.group_id, "topics": self.topics,
             "condition": self.condition, "threshold": self.threshold, "lag_timeout_s": self.lag_timeout_s,
             "poll_interval": self.poll_interval, "deadline": self.deadline,
             "wait_for_missing_topics": self.wait_for_missing_topics},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_mlops.hooks.kafka import async_kafka_config_from_connection

        try:
            config = await async_kafka_config_from_connection(self.kafka_conn_id)
        except Exception as exc:  # noqa: BLE001 - reported to the task, which fails with it
            yield TriggerEvent({"status": "error", "message": f"Kafka connection '{self.kafka_conn_id}': {exc}"})
            return
        while True:
            try:
                # kafka-python blocks: keep it off the triggerer's event loop.
                check: LagCheck = await asyncio.to_thread(check_lag, config, self.group_id, self.topics,
                                                          self.condition, self.threshold, self.lag_timeout_s,
                                                          self.wait_for_missing_topics)
            except Exception as exc:  # noqa: BLE001
                yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"})
                return
            if check.missing:
                yield TriggerEvent({"status": "missing", "message": check.missing})
                return
            if check.done:
                yield TriggerEvent({"status": "success", "lag": check.lag, "measured": check.measured})
                return
            if _expired(self.deadline):
                yield TriggerEvent({"status": "timeout", "measured": check.measured})
                return
            self.log.info("Kafka lag of group '%s' on %s: %s; waiting", self.group_id, self.topics, check.measured)
            await _next_poll(self.poll_interval, self.deadline)


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


async def _next_poll(poll_interval: float, deadline: float | None) -> None:
    """Sleep until the next poll, or until the deadline if that comes first."""
    await asyncio.sleep(poll_interval if deadline is None else min(poll_interval, max(0.0, deadline - time.time())))
