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

# The same for every try of a task instance (dag/run/task ids, no try number): a retry finds its earlier work.
TASK_KEY_TAG = "airflow_mlops.task_key"


def run_tags(ti: Any, run_id: str) -> dict[str, str]:
    """The Airflow task instance an MLflow run belongs to, as its tags: the one set every stage and
    GpuTrainOperator record (``telemetry.cost`` and Prometheus labels read them back)."""
    return {
        "airflow.dag_id": ti.dag_id,
        "airflow.run_id": run_id,
        "airflow.task_id": ti.task_id,
        "airflow.try_number": str(ti.try_number),
        TASK_KEY_TAG: f"{ti.dag_id}/{run_id}/{ti.task_id}",
    }


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
    data_dir: str  # absolute root for this pipeline's data: a local path or an object-storage URI
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
    # The Airflow connection for object-storage URIs of data_dir, inputs and outputs (None: the
    # scheme's default connection; see _core.storage).
    data_conn_id: str | None = None

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"airflow_mlops.stages.{self.stage_name}")

    def output_location(self, override: str | None = None) -> str:
        """Where the stage writes: ``override`` if the spec names an output, else
        ``<data_dir>/<stage>/<run key>``, as a location (a local path, created; or a URI: object
        stores have no folders to create). This is what goes downstream and to Spark."""
        from airflow_mlops._core.storage import is_remote, join, local_path

        location = override or join(self.data_dir, self.stage_name, self.run_key)
        if not is_remote(location):
            location = local_path(location)
            Path(location).mkdir(parents=True, exist_ok=True)
        return location

    def output_dir(self, override: str | None = None) -> Any:
        """``output_location`` as a path object: ``pathlib.Path`` for a local folder,
        ``ObjectStoragePath`` for a URI (through ``data_conn_id``). Both take ``/`` and ``open()``;
        ``_core.storage.location_of`` gives back the location to hand downstream."""
        return self.open(self.output_location(override))

    def open(self, location: str) -> Any:
        """``location`` (a path, or a URI an upstream stage wrote) as a path object, through this
        task's data connection (see ``output_dir``)."""
        from airflow_mlops._core.storage import open_location

        return open_location(location, self.data_conn_id)

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


