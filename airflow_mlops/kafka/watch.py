"""Filters for a pipeline's ``dag.trigger.kafka`` (the official Kafka provider's message-queue
trigger calls them in the triggerer with each confluent-kafka ``Message``). Standard library only."""

from __future__ import annotations

from typing import Any


def any_message(message: Any) -> dict[str, Any]:
    """Every message starts a run; the asset event's extra says which one:
    ``{"topic": str, "partition": int, "offset": int, "key": str | None}``."""
    key = message.key()
    return {"topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
            "key": key.decode("utf-8", "replace") if isinstance(key, bytes) else key}
