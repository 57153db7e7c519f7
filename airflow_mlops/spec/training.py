"""The train stage's settings for training spread over a cluster: ``distributed`` (multi-node
``torchrun`` on Kubernetes). Spark ML training needs no block of its own: a ``pyspark.ml``
estimator on the spark backend trains on the stage's Spark session or cluster."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from airflow_mlops._core.units import Duration
from airflow_mlops.spec.base import Strict

SPARK_ML_PREFIX = "pyspark.ml."  # an estimator whose import path starts so trains on Spark


def is_spark_ml(estimator: str | None) -> bool:
    """Whether an estimator import path names a Spark ML estimator (``pyspark.ml....``)."""
    return bool(estimator) and str(estimator).startswith(SPARK_ML_PREFIX)


class Rendezvous(Strict):
    """How the ranks find each other: torchrun's ``--rdzv-backend``, the port rank 0's pod
    listens on, and how long the group may take to gather (``join_timeout``)."""

    backend: Literal["c10d"] = Field("c10d", description="torchrun's rendezvous backend.")
    port: int = Field(29500, ge=1, le=65535, description="Port of the rendezvous on pod 0 (MASTER_PORT).")
    timeout: Duration = Field(timedelta(minutes=15), description="How long the ranks may take to join.")



class Distributed(Strict):
    """Multi-node training with torchrun on Kubernetes: ``nodes`` pods, each holding the stage's
    resources (its GPUs) and running ``nproc_per_node`` processes; world size = nodes × nproc_per_node."""

    nodes: int = Field(..., ge=1, le=1000, description="How many pods (one per node), each with the stage's resources.")
    nproc_per_node: int | None = Field(
        None, ge=1, le=64, description="Processes per pod; default: the GPUs per pod (resources.gpu), else 1.")
    launcher: Literal["torchrun", "python"] = Field(
        "torchrun", description="torchrun, or 'python' for `python -m torch.distributed.run` (the same launcher).")
    rendezvous: Rendezvous = Field(default_factory=Rendezvous, description="How the pods find each other "
                                   "(torchrun's c10d rendezvous).")

    def processes(self, gpus_per_node: int | None) -> int:
        """Processes per pod: ``nproc_per_node``, else the GPUs each pod holds, else 1."""
        return self.nproc_per_node or gpus_per_node or 1
