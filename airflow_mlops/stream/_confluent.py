"""The confluent-kafka (librdkafka) engine of the streaming loop (see ``_clients.py``).

librdkafka does the per-record work in C: keys are hashed by its ``murmur2_random`` partitioner
(the Java client's default, so predictions land where kafka-python's would), acknowledgements are
counted by a delivery callback that fires for failures only (``delivery.report.only.error``).
Offsets are committed with ``commit(offsets=..., asynchronous=False)`` after ``flush()``, and a
rebalance first settles the pending batch (``on_revoke`` runs in the loop's own thread here).
Every wait is bounded by ``spec.broker_timeout``: ``message.timeout.ms``, ``socket.timeout.ms``,
``flush(timeout)``; the synchronous ``commit`` and ``close``, which take no timeout, run on a
thread that the loop stops waiting for after ``broker_timeout`` (``BoundedCalls``). A loop that
polls nothing asks the broker for metadata (``reachable``) rather than inferring its state from
librdkafka's error callbacks.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Callable, Iterator, Mapping, Sequence

from airflow_mlops.kafka.config import librdkafka_config, normalize, redact
from airflow_mlops.stream._clients import BoundedCalls, BrokerUnreachable, Rebalanced
from airflow_mlops.stream.errors import DeliveryFailed, MissingTopic

Record = namedtuple("Record", "topic partition offset key value headers")



class MessageBatch(Sequence):
    """The records of one ``consume()``, kept as librdkafka's messages. What the loop needs of
    every record (values, keys, offsets) is read column by column (``value_list``, ``key_list``,
    ``next_offsets``: one C-level pass each); a ``Record`` is made only for a record looked at
    one by one (a dead letter, a batch with a bad record)."""

    __slots__ = ("messages",)

    def __init__(self, messages: list[Any]) -> None:
        self.messages = messages

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [_record(m) for m in self.messages[i]]
        return _record(self.messages[i])

    def __iter__(self) -> Iterator[Any]:
        return map(_record, self.messages)

    def value_list(self) -> list[bytes | None]:
        from confluent_kafka import Message

        return list(map(Message.value, self.messages))

    def key_list(self) -> list[bytes | None]:
        from confluent_kafka import Message

        return list(map(Message.key, self.messages))

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) → the offset after its last record here (records of a partition
        come in order: the last one wins)."""
        from confluent_kafka import Message

        ms = self.messages
        last = dict(zip(zip(map(Message.topic, ms), map(Message.partition, ms)), map(Message.offset, ms)))
        return {tp: offset + 1 for tp, offset in last.items()}


def _record(m: Any) -> Record:
    return Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers())


# linger.ms 5 (librdkafka's own default): with 0 each produce() of a batch wakes the sender and
# the batch leaves as many small requests. Stream benchmark, 100k records, one run each:
# raw pipe 94k → 210k msg/s, the operator 52k → 122k msg/s.
PRODUCER_DEFAULTS: dict[str, Any] = {"acks": "all", "linger.ms": 5, "partitioner": "murmur2_random"}
# librdkafka stops fetching a partition whose prefetch queue is over its thresholds and, by
# default, waits a whole second (fetch.queue.backoff.ms 1000) before it looks again: a loop that
# scores for a few milliseconds between polls then finds the queue empty and waits. Measured
# with the raw pipe of the stream benchmark and a 3 ms pause per 1000 records: 76k msg/s with
# the default, 149k with 10 ms (244k → 266k without the pause).
CONSUMER_DEFAULTS: dict[str, Any] = {"allow.auto.create.topics": False, "fetch.queue.backoff.ms": 10}


def build_configs(spec: Any, kafka_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    shared = librdkafka_config(normalize(kafka_config))
    timeout_ms = max(1000, int(spec.broker_timeout * 1000))
    consumer = {
        **CONSUMER_DEFAULTS,
        **shared,
        "socket.timeout.ms": timeout_ms,
        "group.id": spec.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": spec.auto_offset_reset,
        **librdkafka_config(normalize(spec.consumer_config)),
    }
    producer = {
        **PRODUCER_DEFAULTS,
        **shared,
        "socket.timeout.ms": timeout_ms,
        "message.timeout.ms": timeout_ms,
        "request.timeout.ms": min(30_000, timeout_ms),
        # Room for a whole batch of predictions and its dead letters before a flush.
        "queue.buffering.max.messages": max(100_000, 4 * spec.batch_size),
        **librdkafka_config(normalize(spec.producer_config)),
        "delivery.report.only.error": True,
    }
    return consumer, producer


class ConfluentClients:
    engine = "confluent"

    def __init__(self, spec: Any, kafka_config: Mapping[str, Any]) -> None:
        from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

        self.spec, self.timeout_s = spec, spec.broker_timeout
        self.KafkaError, self.KafkaException, self.TopicPartition = KafkaError, KafkaException, TopicPartition
        self.Message = Message
        self.rebalance_codes = {getattr(KafkaError, n) for n in ("REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION",
                                                                 "UNKNOWN_MEMBER_ID", "_ASSIGNMENT_LOST", "_STATE",
                                                                 "FENCED_INSTANCE_ID") if hasattr(KafkaError, n)}
        self.unreachable_codes = {getattr(KafkaError, n) for n in (
            "_ALL_BROKERS_DOWN", "_TRANSPORT", "_MSG_TIMED_OUT", "_TIMED_OUT", "REQUEST_TIMED_OUT",
            "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "_WAIT_COORD", "_RESOLVE", "NETWORK_EXCEPTION")
            if hasattr(KafkaError, n)}
        self.consumer_cfg, self.producer_cfg = build_configs(spec, kafka_config)
        self.max_message_bytes = int(self.producer_cfg.get("message.max.bytes", 1_000_000))
        self.on_revoke: Callable[[], None] | None = None
        self.failures: list[Any] = []  # delivery errors since the last flush
        self.sent = 0
        self.revoke_error: BaseException | None = None
        # The assignment changes only inside a rebalance callback (run from consume() in this
        # thread); asking librdkafka for it after every poll costs ~0.5 ms, so it is cached.
        self._assigned: set[tuple[str, int]] | None = None
        self.session_timeout_s = float(self.consumer_cfg.get("session.timeout.ms", 45000)) / 1000.0
        self.bounded = BoundedCalls()
        self._in_rebalance = False  # inside librdkafka's rebalance callback (see commit)
        self.consumer = Consumer(self.consumer_cfg)
        self.producer = Producer({**self.producer_cfg, "on_delivery": self._delivered})

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(err)

    def configs_to_log(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return redact(self.consumer_cfg), redact(self.producer_cfg)

    def topic_names(self, timeout_s: float) -> set[str]:
        try:
            return set(self.consumer.list_topics(timeout=timeout_s).topics)
        except self.KafkaException as exc:
            raise BrokerUnreachable(f"no metadata within {timeout_s:.0f} s: {exc}") from exc

    def ensure_created(self, topics: Sequence[str]) -> None:
        for topic in topics:
            try:
                meta = self.producer.list_topics(topic=topic, timeout=self.timeout_s).topics.get(topic)
            except self.KafkaException as exc:
                raise BrokerUnreachable(f"no metadata for '{topic}' within {self.timeout_s:.0f} s") from exc
            if meta is None or meta.error is not None or not meta.partitions:
                raise MissingTopic(f"topic '{topic}' does not exist and the broker did not create it "
                                   f"({meta.error if meta is not None else 'no metadata'}); create it. "
                                   "Nothing was consumed.")

    def subscribe(self, topics: Sequence[str]) -> None:
        def assigned(consumer: Any, partitions: Any) -> None:
            self._assigned = None

        def revoked(consumer: Any, partitions: Any) -> None:
            self._assigned = None
            if self.on_revoke is not None:
                self._in_rebalance = True
                try:
                    self.on_revoke()  # flush and commit the pending batch while the partitions are ours
                except BaseException as exc:  # raised from poll(), not inside librdkafka
                    self.revoke_error = exc
                finally:
                    self._in_rebalance = False

        # on_lost too (a lost assignment would otherwise call on_revoke): the cache must drop.
        self.consumer.subscribe(list(topics), on_assign=assigned, on_revoke=revoked,
                                on_lost=lambda consumer, partitions: assigned(consumer, partitions))

    def poll(self, timeout_s: float, max_records: int) -> Sequence[Any]:
        messages = self.consumer.consume(num_messages=max_records, timeout=timeout_s)
        if self.revoke_error is not None:
            error, self.revoke_error = self.revoke_error, None
            raise error
        errors = list(map(self.Message.error, messages))
        if errors.count(None) != len(errors):
            kept = []
            for m in messages:
                err = m.error()
                if err is None:
                    kept.append(m)
                elif err.fatal():
                    raise self.KafkaException(err)
                # else informational (partition EOF and the like)
            messages = kept
        return MessageBatch(messages) if messages else []

    def assignment(self) -> set[tuple[str, int]]:
        if self._assigned is None:
            self._assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        return set(self._assigned)

    def produce(self, topic: str, items: Sequence[tuple[bytes | None, bytes | None]], headers: Any) -> None:
        produce, poll = self.producer.produce, self.producer.poll
        if callable(headers):  # dead letters: headers of their own
            for i, (key, value) in enumerate(items):
                h = headers(i)
                try:
                    produce(topic, value, key, headers=h)
                except BufferError:  # the local queue is full: let librdkafka send some first
                    poll(0.05)
                    produce(topic, value, key, headers=h)
        else:  # predictions: the same headers for all (no per-record work beyond produce itself)
            for key, value in items:
                try:
                    produce(topic, value, key, headers=headers)
                except BufferError:
                    poll(0.05)
                    produce(topic, value, key, headers=headers)
        self.sent += len(items)

    def flush(self) -> None:
        if not self.sent:
            return
        sent, self.sent = self.sent, 0
        left = self.producer.flush(self.timeout_s + 5)
        failures, self.failures = self.failures, []
        if left:
            raise BrokerUnreachable(f"{left} of {sent} records not acknowledged within {self.timeout_s:.0f} s")
        if not failures:
            return
        if all(f.code() in self.unreachable_codes for f in failures):
            raise BrokerUnreachable(f"{len(failures)} of {sent} records not acknowledged ({failures[0].str()})")
        raise DeliveryFailed(
            f"{len(failures)} of {sent} records of a batch were not acknowledged by the broker "
            f"({failures[0].str()}); the batch was not committed and will be consumed again")

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit ``offsets`` and wait for the coordinator's answer, at most ``broker_timeout``
        (librdkafka's own wait has no bound: a commit sent to a broker that dies mid-request was
        seen to wait for good). Inside the rebalance callback the commit is made in the
        callback's own thread, unbounded: made from another thread while a revoke was under way
        it was once seen to get no answer for 30 s from a running broker. A partition the answer
        marks failed fails the commit."""
        TopicPartition = self.TopicPartition
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]

        def call() -> Any:
            return self.consumer.commit(offsets=tps, asynchronous=False)

        try:
            # in librdkafka's rebalance callback: committed in the callback's thread, as before
            done = call() if self._in_rebalance else self.bounded("commit", call, self.timeout_s)
        except self.KafkaException as exc:
            self._commit_failed(exc.args[0] if exc.args else None, exc)
            raise
        for tp in done or ():
            if tp.error is not None:
                self._commit_failed(tp.error, None)
                raise self.KafkaException(tp.error)

    def _commit_failed(self, error: Any, exc: BaseException | None) -> None:
        """Raise what a commit failing with ``error`` (a ``KafkaError``) means to the loop, if it is
        a rebalance or a lost broker; return for any other error (the caller raises it)."""
        code = error.code() if hasattr(error, "code") else None
        text = str(exc or error)
        if code in self.rebalance_codes:
            raise Rebalanced(text) from exc
        if code in self.unreachable_codes:
            raise BrokerUnreachable(f"commit: {text}") from exc

    def rewind(self, touched: set[tuple[str, int]], reset: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        TopicPartition = self.TopicPartition
        assigned = self.assignment()
        for topic, partition in sorted(touched):
            if (topic, partition) not in assigned:
                continue
            try:
                committed = self.consumer.committed([TopicPartition(topic, partition)], timeout=self.timeout_s)[0]
                offset = committed.offset if committed.offset >= 0 else (
                    OFFSET_BEGINNING if reset == "earliest" else OFFSET_END)
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except self.KafkaException:  # the partition moved on meanwhile: its new owner reads it
                pass

    def lag(self) -> int | None:
        """Σ highwater − the group's committed offset over the assigned partitions: the backlog the
        group really has (positions are this consumer's alone and are reset by a rebalance). The
        highwater is the one fetch responses carried (ListOffsets is not trusted: some brokers
        answer it wrong); a partition this run never fetched is left out, not counted whole."""
        assigned = self.consumer.assignment()
        if not assigned:
            return None
        try:
            committed = self.consumer.committed(assigned, timeout=self.timeout_s)
        except self.KafkaException:
            return None
        total, known = 0, False
        for tp in committed:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                continue
            total += max(0, high - (tp.offset if tp.offset >= 0 else low))
            known = True
        return total if known else None

    def reachable(self) -> bool:
        """Whether a broker answers a metadata request for the first input topic within 1 s (at
        most ``broker_timeout``). Called by the loop at most once a second, and only while it
        polls nothing: records flowing prove the broker."""
        try:
            self.consumer.list_topics(topic=self.spec.input_topics[0], timeout=min(1.0, self.timeout_s))
        except self.KafkaException:
            return False
        return True

    def close(self) -> None:
        # Settled batches left nothing behind; what is still queued belongs to a batch whose flush
        # failed (never committed, consumed again by the next run): drop it rather than wait again.
        # Closing leaves the group (bounded by librdkafka at about session.timeout.ms, not
        # trusted): waited for at most that plus broker_timeout, and skipped when a commit is
        # still stuck (it would wait behind it).
        try:
            self.producer.purge()
            self.producer.flush(0)
        finally:
            self.bounded("close", self.consumer.close, self.session_timeout_s + self.timeout_s)
