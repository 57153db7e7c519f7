"""The kafka-python engine of the streaming loop (see ``_clients.py`` for the interface).

Every wait is bounded by ``spec.broker_timeout``: the producer's ``max_block_ms`` and
``delivery_timeout_ms``, ``flush(timeout)``, ``commit(timeout_ms)``, ``close(timeout_ms)``.
kafka-python hashes keys in pure Python inside ``send()``; the batch's partitions are computed
here with numpy instead (the same murmur2, ``_partition.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from airflow_mlops.kafka.config import for_client, redact
from airflow_mlops.stream._clients import BrokerUnreachable, Rebalanced
from airflow_mlops.stream._partition import partitions_for_keys
from airflow_mlops.stream.errors import DeliveryFailed

# Producer settings that served throughput here (override through StreamSpec.producer_config):
# a batch is flushed before its commit anyway, so a short linger only groups sends.
PRODUCER_DEFAULTS: dict[str, Any] = {"acks": "all", "linger_ms": 5, "batch_size": 256 * 1024}
# The consumer never creates a topic: a mistyped input topic would be created empty and read as such.
CONSUMER_DEFAULTS: dict[str, Any] = {"allow_auto_create_topics": False}


def bounded_producer(timeout_s: float, linger_ms: int) -> dict[str, Any]:
    """Producer timeouts so that no send, flush or delivery outlasts ``timeout_s``."""
    total = max(2000, int(timeout_s * 1000))
    request = max(1000, min(30_000, total - linger_ms - 100))
    return {"max_block_ms": total, "request_timeout_ms": request, "delivery_timeout_ms": max(total, request + linger_ms)}


def bounded_client(timeout_s: float) -> dict[str, Any]:
    """Both clients: the first connection (bootstrap) within ``timeout_s``, reconnects tried often
    enough to notice a broker that is back."""
    total = max(1000, int(timeout_s * 1000))
    return {"bootstrap_timeout_ms": total, "reconnect_backoff_max_ms": max(1000, min(30_000, total // 4))}


def build_configs(spec: Any, kafka_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    consumer = {
        **CONSUMER_DEFAULTS,
        **bounded_client(spec.broker_timeout),
        **for_client(kafka_config, "consumer"),
        "group_id": spec.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": spec.auto_offset_reset,
        "max_poll_records": spec.batch_size,
        **for_client(spec.consumer_config, "consumer"),
    }
    producer = {**PRODUCER_DEFAULTS, **bounded_client(spec.broker_timeout), **for_client(kafka_config, "producer")}
    producer = {**producer, **bounded_producer(spec.broker_timeout, producer["linger_ms"]),
                **for_client(spec.producer_config, "producer")}
    return consumer, producer


class KafkaPythonClients:
    engine = "kafka-python"

    def __init__(self, spec: Any, kafka_config: Mapping[str, Any]) -> None:
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.errors import (
            CommitFailedError,
            CoordinatorNotAvailableError,
            IllegalGenerationError,
            KafkaConnectionError,
            KafkaTimeoutError,
            NodeNotReadyError,
            RebalanceInProgressError,
            RequestTimedOutError,
            UnknownMemberIdError,
        )
        from kafka.structs import OffsetAndMetadata, TopicPartition

        self.spec, self.kafka_config = spec, kafka_config
        self.timeout_s = spec.broker_timeout
        self.max_message_bytes = int(kafka_config.get("max_request_size", 1_048_576))
        self.rebalance_errors = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError,
                                 UnknownMemberIdError)
        self.unreachable_errors = (KafkaTimeoutError, NodeNotReadyError,
                                   CoordinatorNotAvailableError, KafkaConnectionError, RequestTimedOutError)
        self.KafkaTimeoutError = KafkaTimeoutError
        self.OffsetAndMetadata, self.TopicPartition = OffsetAndMetadata, TopicPartition
        self.consumer_cfg, self.producer_cfg = build_configs(spec, kafka_config)
        self.hash_keys = "partitioner" not in self.producer_cfg
        self.on_revoke: Callable[[], None] | None = None
        self.rebalances = self.rebalances_settled = 0  # counted on the IO loop, acted on in poll()
        self.futures: list[Any] = []
        self.consumer = self.producer = None
        try:
            self.consumer = KafkaConsumer(**self.consumer_cfg)
            self.producer = KafkaProducer(**self.producer_cfg)
        except self.unreachable_errors as exc:
            self.close()
            raise BrokerUnreachable(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.session_timeout_s = self.consumer.config["session_timeout_ms"] / 1000.0

    def configs_to_log(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return redact(self.consumer_cfg), redact(self.producer_cfg)

    def topic_names(self, timeout_s: float) -> set[str]:
        from airflow_mlops.kafka.topics import topic_names

        return topic_names(self.kafka_config, timeout_s)

    def ensure_created(self, topics: Sequence[str]) -> None:
        from airflow_mlops.stream._preflight import create_by_producing

        create_by_producing(self.producer, list(topics))

    def subscribe(self, topics: Sequence[str]) -> None:
        from kafka import ConsumerRebalanceListener

        clients = self

        class CountRebalances(ConsumerRebalanceListener):
            """Runs on the client's IO loop, where nothing may block: it only counts, and
            ``poll`` acts on the count in the loop's thread. Registering a listener at all
            matters: kafka-python (3.0) stops fetching the partitions being revoked, from the
            revocation until the new assignment, only when one is registered."""

            def on_partitions_revoked(self, revoked: Any) -> None:
                clients.rebalances += 1

            def on_partitions_assigned(self, assigned: Any) -> None:
                clients.rebalances += 1

        self.consumer.subscribe(list(topics), listener=CountRebalances())

    def poll(self, timeout_s: float, max_records: int) -> list[Any]:
        """Records, or none after a rebalance: then the pending batch is settled (``on_revoke``;
        ``commit`` keeps only the partitions still assigned here) and every assigned partition
        is sought back to the group's committed offset before anything more is read.

        The seek matters: kafka-python keeps a partition's old position when the member never
        saw the assignment in between (its sync was superseded while another member read and
        committed that partition), and would read it all again from there. Found under load
        with two members: hundreds of records scored twice, no commit failed."""
        polled = self.consumer.poll(timeout_ms=max(1, int(timeout_s * 1000)), max_records=max_records)
        if self.rebalances != self.rebalances_settled:
            self.rebalances_settled = self.rebalances
            if self.on_revoke is not None:
                self.on_revoke()
            self.rewind(self.assignment(), self.spec.auto_offset_reset)
            return []  # not scored: consumed again from the committed offsets
        return [r for batch in polled.values() for r in batch]

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def produce(self, topic: str, items: Sequence[tuple[bytes | None, bytes | None]], headers: Any) -> None:
        send, futures = self.producer.send, self.futures
        per_item = callable(headers)
        keys = [key for key, _ in items]
        if self.hash_keys and items and None not in keys:
            # The partitions the default partitioner would pick, hashed for the whole batch at once.
            partitions = partitions_for_keys(keys, self._partitions(topic))
            for i, ((key, value), partition) in enumerate(zip(items, partitions)):
                futures.append(send(topic, value=value, key=key, partition=partition,
                                    headers=headers(i) if per_item else headers))
        else:
            for i, (key, value) in enumerate(items):
                futures.append(send(topic, value=value, key=key, headers=headers(i) if per_item else headers))

    def _partitions(self, topic: str) -> Any:
        try:
            return self.producer.partitions_for(topic)
        except self.KafkaTimeoutError as exc:
            raise BrokerUnreachable(f"no metadata for topic '{topic}' within {self.timeout_s:.0f} s") from exc

    def flush(self) -> None:
        futures, self.futures = self.futures, []
        if not futures:
            return
        try:
            self.producer.flush(timeout=self.timeout_s + 5)
        except self.KafkaTimeoutError as exc:
            raise BrokerUnreachable(f"{sum(not f.is_done for f in futures)} of {len(futures)} records not "
                                    f"acknowledged within {self.timeout_s:.0f} s") from exc
        failed = [f for f in futures if f.failed()]
        if not failed:
            return
        if all(isinstance(f.exception, self.unreachable_errors) for f in failed):
            raise BrokerUnreachable(f"{len(failed)} of {len(futures)} records not acknowledged "
                                    f"({type(failed[0].exception).__name__}: {failed[0].exception})")
        raise DeliveryFailed(
            f"{len(failed)} of {len(futures)} records of a batch were not acknowledged by the broker "
            f"({failed[0].exception!r}); the batch was not committed and will be consumed again"
        )

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commits the offsets of the partitions still assigned here; ``Rebalanced`` if some
        moved away (a broker takes any member's commit for any partition: a stale one would
        move the new owner's offset back)."""
        assigned = self.consumer.assignment()
        commit = {tp: self.OffsetAndMetadata(o, "", -1) for tp, o in
                  ((self.TopicPartition(t, p), o) for (t, p), o in offsets.items()) if tp in assigned}
        try:
            if commit:
                self.consumer.commit(commit, timeout_ms=int(self.timeout_s * 1000))
        except self.rebalance_errors as exc:
            raise Rebalanced(type(exc).__name__) from exc
        except self.unreachable_errors as exc:
            raise BrokerUnreachable(f"commit: {type(exc).__name__}: {exc}") from exc
        if len(commit) < len(offsets):
            raise Rebalanced(f"{len(offsets) - len(commit)} of {len(offsets)} partitions moved to another member")

    def rewind(self, touched: set[tuple[str, int]], reset: str) -> None:
        assigned = self.consumer.assignment()
        for topic, partition in sorted(touched):
            tp = self.TopicPartition(topic, partition)
            if tp not in assigned:
                continue
            try:
                committed = self.consumer.committed(tp)
                if committed is not None:
                    self.consumer.seek(tp, committed)
                elif reset == "earliest":
                    self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek_to_end(tp)
            except Exception:  # the partition moved on meanwhile: its new owner reads it
                pass

    def lag(self) -> int | None:
        """Σ highwater − the group's committed offset over the assigned partitions (see the
        confluent engine's): the group's real backlog, not this consumer's positions."""
        total, known = 0, False
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                done = self.consumer.committed(tp)
            except Exception:  # noqa: BLE001 - the coordinator is not answering: the position instead
                done = None
            total += max(0, highwater - (done if done is not None else self.consumer.position(tp)))
            known = True
        return total if known else None

    def reachable(self) -> bool:
        # kafka-python has no public "connected" query: its client's connection table, read only.
        client = self.consumer._client
        return any(client.connected(b.node_id) for b in client.cluster.brokers())

    def close(self) -> None:
        try:
            if self.producer is not None:
                self.producer.close(timeout=min(30, self.timeout_s))
        finally:
            if self.consumer is not None:
                self.consumer.close(autocommit=False, timeout_ms=int((self.session_timeout_s + self.timeout_s) * 1000))
