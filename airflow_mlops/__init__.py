"""airflow-mlops: YAML-driven MLOps pipelines and operators for Apache Airflow 3.

Public names are imported lazily, so ``import airflow_mlops`` stays cheap in DAG files.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_pipelines": "airflow_mlops.factory.loader",
    "SparkFeatureOperator": "airflow_mlops.operators.spark",
    "RetentionCleanupOperator": "airflow_mlops.operators.retention",
    "BackupOperator": "airflow_mlops.operators.backup",
    "RestoreOperator": "airflow_mlops.operators.backup",
    "GpuTrainOperator": "airflow_mlops.operators.gpu_train",
    "PromotionApprovalOperator": "airflow_mlops.operators.approval",
    "GpuAvailableSensor": "airflow_mlops.sensors.gpu",
    "PriceTable": "airflow_mlops.spec.prices",
    "StreamInferenceOperator": "airflow_mlops.operators.stream",
    "KafkaLagSensor": "airflow_mlops.sensors.kafka",
    "read_pipeline": "airflow_mlops.factory.pipelines",
    "PipelineSpecError": "airflow_mlops.spec.errors",
}

# Exported here before 0.2; still served, with a warning naming where they live now.
_MOVED = {
    "StageOperator": "airflow_mlops.operators.stage",
    "EmbeddedBroker": "airflow_mlops.kafka.broker",
}

__all__ = [  # noqa: PLE0604 (the names of _PUBLIC, written out for readers and linters)
    "load_pipelines", "SparkFeatureOperator", "RetentionCleanupOperator", "BackupOperator", "RestoreOperator",
    "GpuTrainOperator", "PromotionApprovalOperator", "GpuAvailableSensor", "PriceTable", "StreamInferenceOperator", "KafkaLagSensor",
    "read_pipeline", "PipelineSpecError", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    if name in _MOVED:
        import warnings

        warnings.warn(f"'from airflow_mlops import {name}' is deprecated: import it from {_MOVED[name]}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'airflow_mlops' has no attribute {name!r}")
