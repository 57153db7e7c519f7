"""The streaming-inference loop, plain Python (no Airflow): consume a micro-batch → score it →
produce predictions and dead letters → wait until the broker acknowledged all of them → commit
exactly the consumed offsets. A crash anywhere before the commit means the batch is consumed
again on the next run: at-least-once, with at most one batch of duplicates per crash.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any, Mapping

from airflow_mlops.kafka.config import for_client, redact
from airflow_mlops.spec.stream import StreamSpec
from airflow_mlops.stream._partition import partitions_for_keys
from airflow_mlops.stream.errors import DeliveryFailed, RecordFailed, StreamError

log = logging.getLogger("airflow_mlops.stream")

# Producer settings that served throughput here (override through StreamSpec.producer_config):
# a batch is flushed before its commit anyway, so a short linger only groups sends.
PRODUCER_DEFAULTS: dict[str, Any] = {"acks": "all", "linger_ms": 5, "batch_size": 256 * 1024}
# The consumer never creates a topic: a mistyped input topic would be created empty and read as such.
CONSUMER_DEFAULTS: dict[str, Any] = {"allow_auto_create_topics": False}


def _lag(consumer: Any) -> int | None:
    """Records not yet consumed on this consumer's partitions: Σ highwater − position. (Not
    ``end_offsets()``, which is wrong on some Kafka-compatible brokers, tansu among them.)"""
    total, known = 0, False
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        total += max(0, highwater - consumer.position(tp))
        known = True
    return total if known else None


class _Run:
    """The state of one run, batch to batch.

    Pipelined: batch N is produced, then batch N+1 is consumed and scored while the broker
    acknowledges N; only then is N flushed (every future acknowledged) and committed, and N+1
    produced. At most one batch is ever produced but uncommitted — what a crash can duplicate.

    If N's commit fails because the group rebalanced (kafka-python 3 rebalances on its own IO
    thread, where a listener may not block to flush), N is left to whoever owns its partitions
    now, N+1 is dropped unproduced, and the partitions still assigned here are rewound to their
    committed offsets: one batch of duplicates per rebalance at most, nothing skipped.
    """

    def __init__(self, spec: StreamSpec, scorer: Any, model: Any, log_: logging.Logger, rebalance_errors: tuple,
                 offset_and_metadata: Any, topic_partition: Any) -> None:
        self.spec, self.scorer, self.model, self.log = spec, scorer, model, log_
        self.rebalance_errors = rebalance_errors
        self.OffsetAndMetadata, self.TopicPartition = offset_and_metadata, topic_partition
        self.consumer: Any = None
        self.producer: Any = None
        self.hash_keys = True  # off when the producer has a partitioner of its own
        self.rebalancing = False  # a commit failed on a rebalance: the group is re-forming
        self.pending: tuple[list[Any], dict[Any, int], int] | None = None  # futures, offsets, records
        self.records_in = self.predictions_out = self.dead_letters = self.batches = self.commit_failures = 0
        self.partitions_seen: set[str] = set()
        self.started = time.monotonic()
        self.first_record_at: float | None = None
        self.last_commit_at = self.started

    def process(self, records: list[Any]) -> None:
        """Score a batch (while the previous one is being acknowledged), settle the previous
        one, then produce this one."""
        if self.first_record_at is None:
            self.first_record_at = time.monotonic()
        self.records_in += len(records)
        offsets: dict[Any, int] = {}
        for r in records:
            offsets[(r.topic, r.partition)] = r.offset + 1  # records of a partition come in order

        outputs, dead = self.scorer.score(records)
        dlq_topic = self.spec.dead_letter_topic
        if dead and not dlq_topic:
            first = dead[0]
            r = first.record
            raise RecordFailed(
                f"record {r.topic}:{r.partition}@{r.offset} failed to {first.stage}: "
                f"{type(first.error).__name__}: {first.error} (set dead_letter_topic to divert such records; "
                f"this batch was not committed)"
            )
        if not self.settle():
            self.rewind(set(offsets))
            self.records_in -= len(records)  # dropped: consumed again after the rewind
            return
        send, out_topic, headers = self.producer.send, self.spec.output_topic, self.scorer.headers
        keys = [key for key, _ in outputs]
        if self.hash_keys and outputs and None not in keys:
            # The partitions the default partitioner would pick, hashed for the whole batch at once.
            partitions = partitions_for_keys(keys, self.producer.partitions_for(out_topic))
            futures = [send(out_topic, value=value, key=key, headers=headers, partition=partition)
                       for (key, value), partition in zip(outputs, partitions)]
        else:
            futures = [send(out_topic, value=value, key=key, headers=headers) for key, value in outputs]
        for letter in dead:
            futures.append(send(dlq_topic, value=letter.record.value, key=letter.record.key,
                                headers=letter.headers(self.model.version)))
        self.pending = (futures, offsets, len(records))
        self.predictions_out += len(outputs)
        self.dead_letters += len(dead)
        self.batches += 1
        self.partitions_seen.update(f"{t}:{p}" for t, p in offsets)
        if dead:
            self.log.warning("%d record(s) of this batch went to %s; first: %s at %s:%d@%d: %s", len(dead), dlq_topic,
                             dead[0].stage, dead[0].record.topic, dead[0].record.partition, dead[0].record.offset,
                             str(dead[0].error)[:300])

    def settle(self) -> bool:
        """Wait until the broker acknowledged every record of the pending batch, then commit
        exactly its offsets. False if the commit failed because the group rebalanced."""
        if self.pending is None:
            return True
        futures, offsets, count = self.pending
        self.pending = None
        self.producer.flush()
        failed = [f for f in futures if f.failed()]
        if failed:
            raise DeliveryFailed(
                f"{len(failed)} of {len(futures)} records of a batch were not acknowledged by the broker "
                f"({failed[0].exception!r}); the batch was not committed and will be consumed again"
            )
        OffsetAndMetadata, TopicPartition = self.OffsetAndMetadata, self.TopicPartition
        commit = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            self.consumer.commit(commit)
        except self.rebalance_errors as exc:
            # The partitions moved to another consumer first; it consumes them again from the
            # last commit (the at-least-once duplicates).
            self.commit_failures += 1
            self.log.warning("Commit of %d records failed after a rebalance (%s); they will be consumed again",
                             count, type(exc).__name__)
            self.rewind(set(offsets))
            self.rebalancing = True
            return False
        self.last_commit_at = time.monotonic()
        return True

    def rewind(self, touched: set[tuple[str, int]]) -> None:
        """Seek the partitions still assigned here back to the group's committed offsets."""
        TopicPartition = self.TopicPartition
        assigned = self.consumer.assignment()
        for topic, partition in sorted(touched):
            tp = TopicPartition(topic, partition)
            if tp not in assigned:
                continue
            try:
                committed = self.consumer.committed(tp)
                if committed is not None:
                    self.consumer.seek(tp, committed)
                elif self.spec.auto_offset_reset == "earliest":
                    self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek_to_end(tp)
            except Exception as exc:  # the partition moved on meanwhile: its new owner reads it
                self.log.info("Could not rewind %s:%d after the rebalance (%r)", topic, partition, exc)

    def progress(self, final: bool = False) -> None:
        window = (self.last_commit_at - self.first_record_at) if self.first_record_at else 0.0
        rate = self.records_in / window if window > 0 else 0.0
        self.log.info(
            "%s: %d records in, %d predictions out, %d dead letters, %d batches, %.0f records/s, lag %s",
            "Done" if final else "Progress", self.records_in, self.predictions_out, self.dead_letters, self.batches,
            rate, _lag(self.consumer),
        )


def build_clients(spec: StreamSpec, kafka_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    consumer = {
        **CONSUMER_DEFAULTS,
        **for_client(kafka_config, "consumer"),
        "group_id": spec.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": spec.auto_offset_reset,
        "max_poll_records": spec.batch_size,
        **spec.consumer_config,
    }
    producer = {**PRODUCER_DEFAULTS, **for_client(kafka_config, "producer"), **spec.producer_config}
    return consumer, producer


def run_stream(
    spec: StreamSpec | Mapping[str, Any],
    kafka_config: Mapping[str, Any],
    *,
    tracking_uri: str | None = None,
    model: Any = None,
    logger: logging.Logger | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run one bounded streaming-inference pass and return its summary.

    :param spec: a ``StreamSpec`` (or its dict); needs ``group_id`` and ``model_uri`` (unless
        ``model`` is given).
    :param kafka_config: kafka-python settings shared by consumer and producer:
        ``bootstrap_servers`` and any security settings (``security_protocol``, ``sasl_*``,
        ``ssl_*``). Logged redacted only.
    :param tracking_uri: MLflow tracking/registry URI for ``models:/`` URIs; default:
        ``$MLFLOW_TRACKING_URI``, else the store under ``$AIRFLOW_MLOPS_HOME`` (never MLflow's own
        default, a database in the current directory). A relative local store is refused.
    :param model: an already loaded ``ScoringModel`` (benchmarks, tests).
    :param stop: an event that ends the run after the current batch.
    """
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.errors import (
        CommitFailedError,
        IllegalGenerationError,
        RebalanceInProgressError,
        UnknownMemberIdError,
    )
    from kafka.structs import OffsetAndMetadata, TopicPartition

    from airflow_mlops._core.paths import import_string
    from airflow_mlops.stream._model import load_scoring_model
    from airflow_mlops.stream._preflight import create_by_producing, missing_outputs
    from airflow_mlops.stream._scoring import BatchScorer

    log_ = logger or log
    spec = spec if isinstance(spec, StreamSpec) else StreamSpec.model_validate(spec)
    if not spec.group_id:
        raise StreamError("the stream needs a consumer group id (group_id)")
    if model is None:
        if not spec.model_uri:
            raise StreamError("the stream needs a model URI (model_uri)")
        from airflow_mlops.hooks.mlflow import resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(tracking_uri)  # a relative local store fails here
    # Before the model is loaded: a mistyped topic fails in seconds, having consumed nothing.
    to_create = missing_outputs(spec, kafka_config, log_)
    if model is None:
        model = load_scoring_model(spec.model_uri, tracking_uri)
    decoder = import_string(spec.decoder)
    scorer = BatchScorer(spec, model, decoder)
    consumer_cfg, producer_cfg = build_clients(spec, kafka_config)
    rebalance_errors = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError)

    log_.info(
        "Streaming %s → %s (dead letters: %s) with %s (version %s), group %s, batches of %d; stops after %s",
        spec.input_topics, spec.output_topic, spec.dead_letter_topic or "none, a bad record fails the run",
        model.uri, model.version, spec.group_id, spec.batch_size,
        ", ".join(f"{k}={v}" for k, v in (("max_records", spec.max_records), ("max_duration", spec.max_duration),
                                          ("idle_timeout", spec.idle_timeout)) if v) or "nothing (no bound set)",
    )
    log_.info("Kafka consumer config: %s", redact(consumer_cfg))
    log_.info("Kafka producer config: %s", redact(producer_cfg))

    run = _Run(spec, scorer, model, log_, rebalance_errors, OffsetAndMetadata, TopicPartition)
    run.hash_keys = "partitioner" not in producer_cfg
    run.consumer = consumer = KafkaConsumer(**consumer_cfg)
    try:
        run.producer = KafkaProducer(**producer_cfg)
        create_by_producing(run.producer, to_create)
    except BaseException:
        if run.producer is not None:
            run.producer.close(timeout=5)
        consumer.close(autocommit=False)
        raise
    consumer.subscribe(spec.input_topics)
    # Joining a group can take a session timeout for a dead member to expire, then the join itself.
    join_allowance = 2 * consumer.config["session_timeout_ms"] / 1000.0

    # The heap of an Airflow worker with MLflow, pandas and a model loaded is large; each full
    # collection the run's allocations trigger would walk all of it. Freeze what exists now (it
    # is not garbage) for the length of the run, and hand it back to the collector afterwards.
    gc.collect()
    gc.freeze()
    started = run.started
    last_activity = last_progress = started
    assignment: set[Any] = set()
    stopped_by = "running"
    try:
        while True:
            now = time.monotonic()
            if spec.max_records is not None and run.records_in >= spec.max_records:
                stopped_by = "max_records"
                break
            if spec.max_duration is not None and now - started >= spec.max_duration:
                stopped_by = "max_duration"
                break
            if stop is not None and stop.is_set():
                stopped_by = "stop_requested"
                break
            if spec.idle_timeout is not None:
                allowance = join_allowance if run.rebalancing or not assignment else 0.0
                if now - last_activity >= spec.idle_timeout + allowance:
                    stopped_by = "idle_timeout"
                    break
            if now - last_progress >= spec.progress_interval:
                run.progress()
                last_progress = now

            want = spec.batch_size
            if spec.max_records is not None:
                want = min(want, spec.max_records - run.records_in)
            timeout_ms = spec.poll_timeout_ms
            if spec.max_duration is not None:
                timeout_ms = max(1, min(timeout_ms, int((spec.max_duration - (now - started)) * 1000)))
            polled = consumer.poll(timeout_ms=timeout_ms, max_records=want)
            current = consumer.assignment()
            if current != assignment:
                log_.info("Assigned partitions: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in current) or "none")
                assignment = current
                run.rebalancing = False
                last_activity = time.monotonic()  # a fresh idle window after each (re)balance
            if not polled:
                run.settle()  # nothing new: don't hold a produced batch uncommitted while idle
                continue
            records = [r for batch in polled.values() for r in batch]
            run.process(records)
            if not run.rebalancing:
                last_activity = time.monotonic()
        run.settle()
        final_lag = _lag(consumer)
        run.progress(final=True)
    except BaseException:
        # What was produced and acknowledged before the failure may still be committed; the
        # failing batch itself was never sent.
        try:
            run.settle()
        except Exception as exc:  # the original error matters more
            log_.warning("Could not commit the last acknowledged batch: %r", exc)
        raise
    finally:
        gc.unfreeze()
        try:
            run.producer.close(timeout=30)
        finally:
            consumer.close(autocommit=False)

    records_in, first_record_at, last_commit_at = run.records_in, run.first_record_at, run.last_commit_at
    window = (last_commit_at - first_record_at) if first_record_at else 0.0
    summary = {
        "records_in": records_in,
        "predictions_out": run.predictions_out,
        "dead_letters": run.dead_letters,
        "batches": run.batches,
        "elapsed_s": round(time.monotonic() - started, 3),
        "rate_per_s": round(records_in / window, 1) if window > 0 else 0.0,
        "final_lag": final_lag,
        "stopped_by": stopped_by,
        "commit_failures": run.commit_failures,
        "partitions": sorted(run.partitions_seen),
        "model_uri": model.uri,
        "model_version": model.version,
        "group_id": spec.group_id,
        "input_topics": spec.input_topics,
        "output_topic": spec.output_topic,
        "dead_letter_topic": spec.dead_letter_topic,
    }
    log_.info("Stream summary: %s", summary)
    return summary
