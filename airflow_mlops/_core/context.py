"""What a stage gets to run: its spec, where to write, where MLflow is, what upstream produced.

Everything here is plain data, so the same stage code runs in the Airflow worker, on Spark or in a
pod (the pod receives this context as JSON through ``python -m airflow_mlops.runtime``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_mlops._core.errors import StageFailed

# A serve stage's Kafka client config (JSON) in a pod, from a Secret: never in the payload, which
# shows in the pod spec and the process list.
KAFKA_CONFIG_ENV = "AIRFLOW_MLOPS_KAFKA_CONFIG"

# The same for every try of a task instance (dag/run/task ids, no try number): a retry finds its earlier work.
TASK_KEY_TAG = "airflow_mlops.task_key"

# ``StageContext.engine`` in the JSON a pod or spark-submit reads: the key and values earlier
# releases wrote and read (``"backend": "batch" | "spark"``, where "batch" meant pandas), so a
# worker and a pod image of different releases still understand each other.
_WIRE_ENGINE = {"pandas": "batch", "spark": "spark"}
_ENGINE_OF_WIRE = {wire: engine for engine, wire in _WIRE_ENGINE.items()}


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
    # MLFLOW_TRACKING_USERNAME/PASSWORD of the connection the URI came from ({} for none). Never
    # serialised (to_dict leaves them out: a pod gets them from a Secret) nor shown (repr).
    credentials: dict[str, str] = field(default_factory=dict, repr=False, compare=False)


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
    # Which of the kind's engines computes the stage: "pandas" (``stages/<kind>/__init__.py``) or
    # "spark" (``stages/<kind>/spark.py``). The backend chooses it (``StageOperator.engine``); the
    # stage's code never learns which backend runs it.
    engine: str = "pandas"
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
    # The Kafka client config of a serve stage in stream mode, from its ``kafka_conn_id``, resolved
    # by the operator (hooks.kafka): secrets included, so never serialised (to_dict) nor shown.
    kafka: dict[str, Any] | None = field(default=None, repr=False)

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
        """The context as JSON types, for ``python -m airflow_mlops.runtime``: the fields by name,
        except ``engine``, which travels as ``"backend": "batch" | "spark"`` (what pod images of
        earlier releases read), and without the MLflow credentials and the Kafka config, which
        travel by Secret reference or the environment, never in arguments."""
        data = asdict(self)
        data["backend"] = _WIRE_ENGINE[data.pop("engine")]
        data["mlflow"].pop("credentials", None)
        data.pop("kafka", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageContext":
        """The context ``to_dict`` wrote. The engine is read from ``"engine"`` (``pandas`` /
        ``spark``) or, as earlier releases and ``to_dict`` write it, ``"backend"`` (``batch`` /
        ``spark``). Raises KeyError on an engine it does not know, TypeError on an unknown field."""
        data = dict(data)
        wire = data.pop("backend", None)
        if wire is not None and "engine" not in data:
            data["engine"] = _ENGINE_OF_WIRE[wire]
        data["mlflow"] = MlflowTarget(**data["mlflow"])
        data["upstream"] = [tuple(item) for item in data.get("upstream", [])]
        if data.get("kafka") is None and os.environ.get(KAFKA_CONFIG_ENV):  # a pod: from its Secret
            import json

            data["kafka"] = json.loads(os.environ[KAFKA_CONFIG_ENV])
        return cls(**data)


