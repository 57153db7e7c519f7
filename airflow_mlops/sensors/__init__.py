"""Sensors: Kafka consumer lag (``sensors.kafka``), free GPUs (``sensors.gpu``) and their triggers.
Heavy clients are imported in ``poke()``, never when a DAG file is parsed."""

from __future__ import annotations

from datetime import timedelta


def seconds(value: float | timedelta) -> float:
    """A sensor's ``timeout`` / ``poke_interval``: Airflow accepts seconds or a timedelta."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
