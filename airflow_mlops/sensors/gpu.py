"""GpuAvailableSensor: wait until N GPUs with at least M free memory exist (NVML).

Put it in front of a ``GpuTrainOperator`` on a shared GPU machine; its XCom value is the list of
GPU indices that qualified, which the training task can take as ``gpu_ids``.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from airflow.sdk.bases.sensor import BaseSensorOperator

from airflow_mlops._core.errors import ArgumentsError
from airflow_mlops._core.extras import require
from airflow_mlops._core.units import gib, parse_bytes
from airflow_mlops.sensors import seconds
from airflow_mlops.telemetry.availability import check_gpus


class GpuAvailableSensor(BaseSensorOperator):
    """Wait until ``count`` GPUs each have at least ``min_free_memory`` free.

    :param count: how many GPUs (default 1).
    :param min_free_memory: bytes, or a quantity like ``'16Gi'`` / ``'500Mi'`` (default 0: any).
    :param gpu_ids: only consider these GPU indices (templated).
    :param fail_without_nvml: no NVIDIA driver/GPU where the poke runs: fail at once (default)
        rather than wait out the timeout; False keeps poking (when pokes may land on other workers).
    :param deferrable: wait in the triggerer (``GpuAvailableTrigger``), which polls NVML on the
        triggerer's host: only where a triggerer runs on the GPU machine. Otherwise prefer
        ``mode="reschedule"``.

    XCom: the qualifying GPU indices (``count`` of them, most free memory first, sorted).
    On timeout the message says how many GPUs had how much free memory at the last poke.
    """

    template_fields: Sequence[str] = ("gpu_ids",)
    ui_color = "#eaf5d3"

    def __init__(
        self,
        *,
        count: int = 1,
        min_free_memory: int | str = 0,
        gpu_ids: Sequence[int] | str | None = None,
        fail_without_nvml: bool = True,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require("gpu", f"{type(self).__name__}(task_id={self.task_id!r})")
        owner = f"GpuAvailableSensor(task_id={self.task_id!r})"
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ArgumentsError.one(owner, "count", f"count must be a whole number ≥ 1, got {count!r}")
        try:
            self.min_free_bytes = parse_bytes(min_free_memory)
        except ValueError as exc:
            raise ArgumentsError.one(owner, "min_free_memory", f"min_free_memory: {exc}") from None
        if gpu_ids is not None and not (isinstance(gpu_ids, str) and "{{" in gpu_ids):
            from airflow_mlops.spec.gpu_train import parse_gpu_ids

            gpu_ids = parse_gpu_ids(gpu_ids, lambda m: ArgumentsError.one(owner, "gpu_ids", m))
        self.count = count
        self.min_free_memory = min_free_memory
        self.gpu_ids = gpu_ids
        self.fail_without_nvml = fail_without_nvml
        self.deferrable = deferrable
        self._last = "no poke yet"

    def _ids(self) -> list[int] | None:
        if self.gpu_ids is None:
            return None
        from airflow_mlops.spec.gpu_train import parse_gpu_ids

        return parse_gpu_ids(self.gpu_ids, ValueError)

    def goal(self) -> str:
        return f"{self.count} GPU(s) with ≥ {gib(self.min_free_bytes)} free"

    def poke(self, context: Any) -> Any:
        from airflow.sdk import PokeReturnValue

        check = check_gpus(self.count, self.min_free_bytes, self._ids())
        self._last = check.message
        if check.error is not None:
            if self.fail_without_nvml:
                from airflow_mlops._core.outcome import failed

                raise failed(f"{check.message}. (fail_without_nvml=False keeps waiting instead)")
            self.log.warning("%s; poking again in %s s", check.message, self.poke_interval)
            return False
        self.log.info("%s: %s", "GPUs available" if check.done else "Waiting for GPUs", check.message)
        return PokeReturnValue(is_done=check.done, xcom_value=check.chosen if check.done else None)

    def execute(self, context: Any) -> Any:
        from airflow_mlops._core.compat import AirflowSensorTimeout
        from airflow_mlops._core.outcome import timed_out

        if self.deferrable:
            from airflow_mlops.sensors.triggers import GpuAvailableTrigger

            self.defer(
                trigger=GpuAvailableTrigger(count=self.count, min_free_bytes=self.min_free_bytes, gpu_ids=self._ids(),
                                            poll_interval=seconds(self.poke_interval),
                                            deadline=time.time() + seconds(self.timeout)),
                method_name="execute_complete",
            )
        try:
            return super().execute(context)
        except AirflowSensorTimeout as exc:
            raise timed_out(self._timeout_message(self._last)) from exc

    def _timeout_message(self, last: str) -> str:
        return f"timed out after {seconds(self.timeout):.0f} s waiting for {self.goal()}; at the last poke: {last}"

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        from airflow_mlops._core.compat import AirflowException
        from airflow_mlops._core.outcome import timed_out

        event = event or {}
        status = event.get("status")
        if status == "success":
            self.log.info("GPUs available: %s", event.get("message"))
            return event.get("gpu_ids")
        if status == "timeout":
            raise timed_out(self._timeout_message(event.get("message", "")))
        raise AirflowException(f"waiting for {self.goal()} failed in the triggerer: {event.get('message', event)}")
