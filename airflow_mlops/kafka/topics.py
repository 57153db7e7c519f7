"""Put records on a topic and read a topic to its end: for demos, tests and looking at what a
streaming run produced. kafka-python is imported inside the functions (DAG files stay cheap)."""

from __future__ import annotations

import time
from typing import Any, Iterable


def produce(bootstrap_servers: str, topic: str, items: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """Send ``(key, value)`` pairs and wait until the broker has acknowledged every one."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in items]
        producer.flush()
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()
    return len(futures)


def read_to_end(bootstrap_servers: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic``, up to each partition's high-water mark, without joining a
    consumer group or committing anything."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=100)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            raise ValueError(f"topic {topic} does not exist on {bootstrap_servers}")
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if all(consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                   for tp in partitions):
                return records
        raise TimeoutError(f"could not read {topic} to its end within {timeout} s")
    finally:
        consumer.close(autocommit=False)


def headers(record: Any) -> dict[str, str]:
    """A record's headers as text."""
    return {k: v.decode() for k, v in record.headers or []}
