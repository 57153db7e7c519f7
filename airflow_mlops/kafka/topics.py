"""Put records on a topic and read a topic to its end: for demos, tests and looking at what a
streaming run produced; which topics exist, with a did-you-mean for a name that does not.
kafka-python is imported inside the functions (DAG files stay cheap)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any


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


def topic_names(kafka_config: Mapping[str, Any], timeout_s: float = 15.0) -> set[str]:
    """The names of the topics the brokers have (those these credentials may see), from one
    metadata request that never creates a topic. Bounded: ``timeout_s`` to reach a broker and
    as much again for the answer; an unreachable cluster raises kafka-python's error."""
    from kafka import KafkaAdminClient

    from airflow_mlops.kafka.config import for_client

    wait_ms = max(1, int(timeout_s * 1000))
    admin = KafkaAdminClient(**{**for_client(kafka_config, "admin"), "request_timeout_ms": wait_ms,
                                "bootstrap_timeout_ms": wait_ms})
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``known``, or a short list of what exists."""
    import difflib

    visible = sorted(t for t in known if not t.startswith("__"))  # not __consumer_offsets & co.
    close = difflib.get_close_matches(name, visible, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if not visible:
        return " (the brokers have no topics)"
    shown = ", ".join(f"'{t}'" for t in visible[:10])
    return f" (topics there: {shown}{f' and {len(visible) - 10} more' if len(visible) > 10 else ''})"


def missing_topic_message(role: str, name: str, known: Iterable[str], remedy: str) -> str:
    """``<role> topic 'name' does not exist (did you mean …?); <remedy>``."""
    return f"{role} topic '{name}' does not exist on the brokers{did_you_mean(name, known)}; {remedy}"
