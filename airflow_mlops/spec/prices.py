"""What a training run measures and bills: the price table (what one hour of each resource costs;
``prices:`` in the YAML, ``prices=`` of GpuTrainOperator) and how NVML figures are reported
(``gpu_metrics:``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PriceTable(BaseModel):
    """Prices per hour of each resource (one currency, whichever you bill in)."""

    model_config = ConfigDict(extra="forbid")

    gpu_hour: float = Field(2.5, ge=0, description="Price of one GPU for one hour.")
    cpu_hour: float = Field(0.1, ge=0, description="Price of one CPU (core) for one hour.")
    memory_gib_hour: float = Field(0.05, ge=0, description="Price of one GiB (2^30 bytes) of memory for one hour.")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$",
                          description="ISO 4217 code of the currency the prices are in; shown with every cost.")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        """``memory_gb_hour`` (before 0.2) was always billed per GiB: still read, with a warning."""
        if isinstance(data, dict) and "memory_gb_hour" in data:
            from airflow_mlops.spec.renamed import warn_deprecated

            warn_deprecated("prices.memory_gb_hour is deprecated, use memory_gib_hour (memory is billed per GiB)")
            data = dict(data)
            old = data.pop("memory_gb_hour")
            data.setdefault("memory_gib_hour", old)
        return data


class GpuMetricsSettings(BaseModel):
    """How training tasks report NVML telemetry besides MLflow (see GpuTrainOperator)."""

    model_config = ConfigDict(extra="forbid")

    sample_interval: float = Field(1.0, gt=0, le=3600, description="Seconds between NVML samples.")
    prometheus_port: int | None = Field(
        None, ge=1, le=65535, description="Serve the figures at http://<worker or pod>:<port>/metrics while training.")
    pushgateway_url: str | None = Field(
        None, pattern=r"^https?://", description="Push the figures to this Prometheus Pushgateway while training.")
