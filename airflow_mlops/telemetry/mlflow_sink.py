"""How the sampler's figures reach MLflow: its points in batches (:class:`MlflowSink`, a sampler
sink) and its summary as flat metrics (:func:`summary_metrics`). MLflow is imported when a batch is
logged, not at module level.

    sampler = NvmlSampler(1.0, [0], sinks=[MlflowSink(client, run_id)])
    ...
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in summary_metrics(sampler.summary()).items()])
"""

from __future__ import annotations

from typing import Any

from airflow_mlops.telemetry.sampler import PREFIX, MetricPoint


def summary_metrics(summary: dict[str, Any], prefix: str = PREFIX) -> dict[str, float]:
    """The summary as flat MLflow metrics (``gpu/utilization_mean``, ``gpu/hours``, ...)."""
    names = {
        "count": "count", "gpu_hours": "hours", "utilization_mean": "utilization_mean",
        "utilization_max": "utilization_max", "memory_peak_bytes": "memory_peak_bytes", "energy_j": "energy_j",
        "power_mean_w": "power_mean_w", "power_max_w": "power_max_w", "temperature_max_c": "temperature_max_c",
        "samples": "samples",
    }
    return {f"{prefix}/{name}": float(summary[key]) for key, name in names.items() if summary.get(key) is not None}


class MlflowSink:
    """Log sampler points to one MLflow run with ``MlflowClient.log_batch`` (≤ 1000 per call,
    MLflow's limit), so that 1 Hz sampling costs one request per flush, not one per point."""

    BATCH = 1000

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def __call__(self, points: list[MetricPoint]) -> None:
        from mlflow.entities import Metric

        for i in range(0, len(points), self.BATCH):
            chunk = points[i:i + self.BATCH]
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in chunk])

    def __repr__(self) -> str:
        return f"MlflowSink(run {self.run_id})"
