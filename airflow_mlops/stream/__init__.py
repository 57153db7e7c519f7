"""Streaming inference, plain Python: Kafka topic → micro-batches → MLflow pyfunc model → Kafka
topic, at-least-once, with a dead-letter topic. ``run_stream(spec, kafka_config)`` is the whole
loop; the Airflow operator (``airflow_mlops.operators.stream``) and the serve stage call it, and
``python -m airflow_mlops.stream`` runs it from a shell or a pod. Importing this package is cheap
(pydantic only); Kafka, MLflow and pandas are imported when a stream runs."""

from __future__ import annotations

from airflow_mlops.spec.stream import StreamServeSettings, StreamSpec
from airflow_mlops.stream.errors import (
    BatchFailed,
    BrokerLost,
    DeliveryFailed,
    MissingTopic,
    RecordFailed,
    StreamError,
)
from airflow_mlops.stream.loop import run_stream

__all__ = ["BatchFailed", "BrokerLost", "DeliveryFailed", "MissingTopic", "RecordFailed", "StreamError", "StreamServeSettings",
           "StreamSpec", "run_stream"]
