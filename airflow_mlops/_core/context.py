"""What a stage gets to run: its spec, where to write, where MLflow is, what upstream produced.

Everything here is plain data, so the same stage code runs in the Airflow worker, on Spark or in a
pod (the pod receives this context as JSON through ``python -m airflow_mlops.runtime``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_mlops._core.errors import StageFailed


@dataclass
class MlflowTarget:
    tracking_uri: str
    experiment: str
    registered_model: str
    artifact_location: str | None = None
    ui_url: str | None = None  # for links to runs; see hooks.mlflow


@dataclass
class StageContext:
    pipeline_id: str
    stage_name: str
    run_key: str  # the Airflow run id, made safe for paths
    data_dir: str  # absolute root for this pipeline's data
    mlflow: MlflowTarget
    # Results of the stages this one (transitively) depends on, nearest first.
    upstream: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # Airflow ids, recorded on MLflow runs
    backend: str = "batch"
    # Embedded Spark session settings ({"master", "conf"}); None under spark-submit, where the
    # cluster's own configuration applies.
    spark: dict[str, Any] | None = None
    # What the stage holds ({cpu, memory, gpu} as in the YAML) and the pipeline's price table:
    # a training stage records its cost from them.
    resources: dict[str, Any] | None = None
    prices: dict[str, float] | None = None
    gpu_metrics: dict[str, Any] | None = None  # sample interval, Prometheus port / Pushgateway

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"airflow_mlops.stages.{self.stage_name}")

    def output_dir(self, override: str | None = None) -> Path:
        """``override`` if the spec names an output, else ``<data_dir>/<stage>/<run key>``."""
        path = Path(override) if override else Path(self.data_dir) / self.stage_name / self.run_key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def find(self, key: str, *, required: bool = True) -> Any:
        """The nearest upstream stage's value for ``key`` (e.g. ``model_uri``, ``test_path``)."""
        for _name, result in self.upstream:
            if key in result:
                return result[key]
        if required:
            have = ", ".join(sorted({k for _, r in self.upstream for k in r})) or "nothing"
            raise StageFailed(
                f"stage '{self.stage_name}' needs '{key}' from an upstream stage, but upstream stages gave: {have}"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageContext":
        data = dict(data)
        data["mlflow"] = MlflowTarget(**data["mlflow"])
        data["upstream"] = [tuple(item) for item in data.get("upstream", [])]
        return cls(**data)


