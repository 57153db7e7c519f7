"""Consumer-group lag, measured without joining the group: Σ over partitions of
highwater − committed offset.

The highwater mark comes from a fetch response (``consumer.highwater()``), not from
``end_offsets()``/ListOffsets, which some Kafka-compatible brokers (tansu) answer wrongly. A
partition the group never committed counts from the start of its log, as a consumer with
``auto_offset_reset='earliest'`` would read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from airflow_mlops.kafka.config import for_client


@dataclass
class GroupLag:
    group_id: str
    total: int = 0
    partitions: dict[str, dict[str, Any]] = field(default_factory=dict)  # "topic:p" → highwater, committed, lag
    missing_topics: list[str] = field(default_factory=list)
    known_topics: list[str] = field(default_factory=list)  # what exists, when some topic is missing
    unknown_partitions: list[str] = field(default_factory=list)  # no highwater within the timeout

    @property
    def complete(self) -> bool:
        return not self.missing_topics and not self.unknown_partitions

    def as_dict(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "lag": self.total, "partitions": self.partitions,
                "missing_topics": self.missing_topics, "unknown_partitions": self.unknown_partitions}


def group_lag(  # noqa: C901
    kafka_config: Mapping[str, Any], group_id: str, topics: Sequence[str], *, timeout_s: float = 15.0
) -> GroupLag:
    """The lag of ``group_id`` on ``topics``. Bounded: the brokers must answer a metadata request
    within ``timeout_s`` seconds (and as much again for the answer), else ``DependencyFailed``
    (retryable: "Kafka broker (...) did not answer ..."); highwater marks not read within
    ``timeout_s`` are listed in ``unknown_partitions``."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    from airflow_mlops.kafka.topics import topic_names

    result = GroupLag(group_id=group_id)
    try:
        known = topic_names(kafka_config, timeout_s)
    except Exception as exc:  # kafka-python's errors for unreachable brokers
        from airflow_mlops._core.errors import DependencyFailed

        servers = kafka_config.get("bootstrap_servers") or kafka_config.get("bootstrap.servers")
        raise DependencyFailed(
            "Kafka broker", address=f"bootstrap servers {servers}",
            failure=f"did not answer within {timeout_s:g} s [{type(exc).__name__}: {exc}]",
            during=f"measuring the lag of consumer group '{group_id}' on {list(topics)}",
            action="start the broker (or restore the network path to it); the next try measures again",
            retryable=True) from exc
    result.missing_topics = [t for t in topics if t not in known]
    if result.missing_topics:
        result.known_topics = sorted(known)
        return result
    consumer = KafkaConsumer(
        **for_client(kafka_config, "consumer"),
        group_id=group_id,  # only to read the group's committed offsets; never subscribes or commits
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        # Only a highwater mark is wanted from each fetch, not the data behind it.
        max_partition_fetch_bytes=64 * 1024,
        fetch_max_bytes=1024 * 1024,
    )
    try:
        partitions: list[Any] = []
        for topic in topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                result.missing_topics.append(topic)
                continue
            partitions.extend(TopicPartition(topic, p) for p in sorted(ids))
        if result.missing_topics:
            result.known_topics = sorted(known)
        if not partitions:
            return result
        consumer.assign(partitions)
        committed: dict[Any, int | None] = {}
        for tp in partitions:
            committed[tp] = consumer.committed(tp)
            if committed[tp] is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed[tp])
        start = {tp: consumer.position(tp) for tp in partitions}  # resolves the log start where needed
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=100, max_records=100_000)
            if all(consumer.highwater(tp) is not None for tp in partitions):
                break
        for tp in partitions:
            name = f"{tp.topic}:{tp.partition}"
            highwater = consumer.highwater(tp)
            if highwater is None:
                result.unknown_partitions.append(name)
                continue
            lag = max(0, highwater - start[tp])
            result.partitions[name] = {"highwater": highwater, "committed": committed[tp], "lag": lag}
            result.total += lag
    finally:
        consumer.close(autocommit=False)
    return result


Condition = Literal["lag_below", "new_records"]


@dataclass
class LagCheck:
    done: bool
    measured: str  # what was seen, for the log and the timeout message
    lag: dict[str, Any] | None = None  # the XCom value, once done
    missing: str | None = None  # topics that do not exist, with a did-you-mean: the wait ends failed


def check_lag(config: dict[str, Any], group_id: str, topics: list[str], condition: Condition, threshold: int,
              lag_timeout_s: float, wait_for_missing_topics: bool = False) -> LagCheck:
    """One measurement of the group's lag, judged against the condition (the sensor's poke and
    the trigger's poll alike). Unknown highwater marks are "not yet"; a missing topic is
    ``missing`` (a typo would otherwise be waited on until the timeout), or "not yet" with
    ``wait_for_missing_topics``."""
    from airflow_mlops.kafka.topics import missing_topic_message

    lag = group_lag(config, group_id, topics, timeout_s=lag_timeout_s)
    if lag.missing_topics:
        if wait_for_missing_topics:
            return LagCheck(False, f"topic(s) {lag.missing_topics} do not exist")
        return LagCheck(False, f"topic(s) {lag.missing_topics} do not exist", missing="; ".join(
            missing_topic_message("Kafka", t, lag.known_topics, "create it or fix the name (or set "
                                  "wait_for_missing_topics=True to wait for it to be created)")
            for t in lag.missing_topics))
    if lag.unknown_partitions:
        return LagCheck(False, f"no highwater mark for {lag.unknown_partitions} within {lag_timeout_s} s")
    done = lag.total < threshold if condition == "lag_below" else lag.total >= threshold
    per_partition = {p: v["lag"] for p, v in lag.partitions.items()}
    return LagCheck(done, f"lag {lag.total} over {len(lag.partitions)} partition(s) (per partition: {per_partition})",
                    lag.as_dict() if done else None)
