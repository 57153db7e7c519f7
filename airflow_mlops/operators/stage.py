"""StageOperator: one built-in stage (preprocess, train, validate, serve, drift) run in the worker,
from a hand-written DAG. The public face of the batch backend's operator
(``airflow_mlops.backends.stage``), and of the same stage run on the other backends:
``SparkStageOperator`` (embedded Spark or spark-submit, ``spark=``), ``KubernetesStageOperator``
(a pod, ``kubernetes=``) and ``KubernetesModelServerOperator`` (online serving on Kubernetes).
Those three are imported when first named, so this module stays cheap to import."""

from __future__ import annotations

import importlib
from typing import Any

from airflow_mlops.backends.stage import StageOperator

_ON_OTHER_BACKENDS = {
    "SparkStageOperator": "airflow_mlops.backends.spark.operator",
    "KubernetesStageOperator": "airflow_mlops.backends.kubernetes.pod",
    "KubernetesModelServerOperator": "airflow_mlops.backends.kubernetes.serving",
}

__all__ = ["StageOperator", *_ON_OTHER_BACKENDS]  # noqa: PLE0604


def __getattr__(name: str) -> Any:
    if name in _ON_OTHER_BACKENDS:
        return getattr(importlib.import_module(_ON_OTHER_BACKENDS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
