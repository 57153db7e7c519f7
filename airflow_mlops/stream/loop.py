"""The streaming-inference loop, plain Python (no Airflow): consume a micro-batch → score it →
produce predictions and dead letters → wait until the broker acknowledged all of them → commit
exactly the consumed offsets. A crash anywhere before the commit means the batch is consumed
again on the next run: at-least-once, with at most one batch of duplicates per crash.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

from airflow_mlops.kafka.config import for_client, redact
from airflow_mlops.stream.errors import DeliveryFailed, RecordFailed, StreamError
from airflow_mlops.stream.spec import StreamSpec

log = logging.getLogger("airflow_mlops.stream")

# Producer settings that served throughput here (override through StreamSpec.producer_config):
# a batch is flushed before its commit anyway, so a short linger only groups sends.
PRODUCER_DEFAULTS: dict[str, Any] = {"acks": "all", "linger_ms": 5, "batch_size": 256 * 1024}
CONSUMER_DEFAULTS: dict[str, Any] = {}


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
    :param tracking_uri: MLflow tracking/registry URI for ``models:/`` URIs; default MLflow's.
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

    from airflow_mlops.stages.context import import_string
    from airflow_mlops.stream.model import load_scoring_model
    from airflow_mlops.stream.scoring import BatchScorer

    log_ = logger or log
    spec = spec if isinstance(spec, StreamSpec) else StreamSpec.model_validate(spec)
    if not spec.group_id:
        raise StreamError("the stream needs a consumer group id (group_id)")
    if model is None:
        if not spec.model_uri:
            raise StreamError("the stream needs a model URI (model_uri)")
        model = load_scoring_model(spec.model_uri, tracking_uri)
    decoder = import_string(spec.decoder)
    scorer = BatchScorer(spec, model, decoder)
    consumer_cfg, producer_cfg = build_clients(spec, kafka_config)
    rebalance_errors = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError)

    log_.info(
        "Streaming %s → %s (dead letters: %s) with %s (version %s), group %s, batches of %d; stops after %s",
        spec.input_topics, spec.output_topic, spec.dead_letter_topic or "none, a bad record fails the run",
        model.uri, model.version, spec.group_id, spec.batch_size,
        ", ".join(f"{k}={v}" for k, v in (("max_records", spec.max_records), ("max_seconds", spec.max_seconds),
                                          ("idle_timeout_s", spec.idle_timeout_s)) if v) or "nothing (no bound set)",
    )
    log_.info("Kafka consumer config: %s", redact(consumer_cfg))
    log_.info("Kafka producer config: %s", redact(producer_cfg))

    consumer = KafkaConsumer(**consumer_cfg)
    try:
        producer = KafkaProducer(**producer_cfg)
    except BaseException:
        consumer.close(autocommit=False)
        raise
    consumer.subscribe(spec.input_topics)
    # Joining a group can take a session timeout for a dead member to expire, then the join itself.
    join_allowance = 2 * consumer.config["session_timeout_ms"] / 1000.0

    records_in = predictions_out = dead_letters = batches = commit_failures = 0
    partitions_seen: set[str] = set()
    started = time.monotonic()
    first_record_at: float | None = None
    last_commit_at = started
    last_activity = started
    last_progress = started
    assignment: set[Any] = set()
    stopped_by = "running"
    send = producer.send
    out_topic, dlq_topic = spec.output_topic, spec.dead_letter_topic
    headers = scorer.headers

    def progress(final: bool = False) -> None:
        window = (last_commit_at - first_record_at) if first_record_at else 0.0
        rate = records_in / window if window > 0 else 0.0
        log_.info(
            "%s: %d records in, %d predictions out, %d dead letters, %d batches, %.0f records/s, lag %s",
            "Done" if final else "Progress", records_in, predictions_out, dead_letters, batches, rate, _lag(consumer),
        )

    try:
        while True:
            now = time.monotonic()
            if spec.max_records is not None and records_in >= spec.max_records:
                stopped_by = "max_records"
                break
            if spec.max_seconds is not None and now - started >= spec.max_seconds:
                stopped_by = "max_seconds"
                break
            if stop is not None and stop.is_set():
                stopped_by = "stop_requested"
                break
            if spec.idle_timeout_s is not None:
                allowance = 0.0 if assignment else join_allowance
                if now - last_activity >= spec.idle_timeout_s + allowance:
                    stopped_by = "idle_timeout"
                    break
            if now - last_progress >= spec.progress_interval_s:
                progress()
                last_progress = now

            want = spec.batch_size
            if spec.max_records is not None:
                want = min(want, spec.max_records - records_in)
            timeout_ms = spec.poll_timeout_ms
            if spec.max_seconds is not None:
                timeout_ms = max(1, min(timeout_ms, int((spec.max_seconds - (now - started)) * 1000)))
            polled = consumer.poll(timeout_ms=timeout_ms, max_records=want)
            current = consumer.assignment()
            if current != assignment:
                log_.info("Assigned partitions: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in current) or "none")
                assignment = current
                last_activity = time.monotonic()  # a fresh idle window after each (re)balance
            if not polled:
                continue
            # Fill the micro-batch from what is already fetched, without waiting.
            records = [r for batch in polled.values() for r in batch]
            while len(records) < want:
                more = consumer.poll(timeout_ms=0, max_records=want - len(records))
                if not more:
                    break
                for batch in more.values():
                    records.extend(batch)
            if first_record_at is None:
                first_record_at = time.monotonic()

            offsets: dict[Any, int] = {}
            for r in records:
                offsets[(r.topic, r.partition)] = r.offset + 1  # records of a partition come in order

            outputs, dead = scorer.score(records)
            if dead and not dlq_topic:
                first = dead[0]
                r = first.record
                raise RecordFailed(
                    f"record {r.topic}:{r.partition}@{r.offset} failed to {first.stage}: "
                    f"{type(first.error).__name__}: {first.error} (set dead_letter_topic to divert such records; "
                    f"this batch was not committed)"
                )
            futures = [send(out_topic, value=value, key=key, headers=headers) for key, value in outputs]
            for letter in dead:
                futures.append(send(dlq_topic, value=letter.record.value, key=letter.record.key,
                                    headers=letter.headers(model.version)))
            producer.flush()
            failed = [f for f in futures if f.failed()]
            if failed:
                raise DeliveryFailed(
                    f"{len(failed)} of {len(futures)} records of this batch were not acknowledged by the broker "
                    f"({failed[0].exception!r}); the batch was not committed and will be consumed again"
                )
            commit = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
            try:
                consumer.commit(commit)
            except rebalance_errors as exc:
                # The partitions moved to another consumer while this batch was scored; it will
                # consume them again from the last commit (the at-least-once duplicates).
                commit_failures += 1
                log_.warning("Commit of %d records failed after a rebalance (%s); they will be consumed again",
                             len(records), type(exc).__name__)
            last_commit_at = last_activity = time.monotonic()
            records_in += len(records)
            predictions_out += len(outputs)
            dead_letters += len(dead)
            batches += 1
            partitions_seen.update(f"{t}:{p}" for t, p in offsets)
            if dead:
                log_.warning("%d record(s) of this batch went to %s; first: %s at %s:%d@%d: %s", len(dead), dlq_topic,
                             dead[0].stage, dead[0].record.topic, dead[0].record.partition, dead[0].record.offset,
                             str(dead[0].error)[:300])
        final_lag = _lag(consumer)
        progress(final=True)
    finally:
        try:
            producer.close(timeout=30)
        finally:
            consumer.close(autocommit=False)

    window = (last_commit_at - first_record_at) if first_record_at else 0.0
    summary = {
        "records_in": records_in,
        "predictions_out": predictions_out,
        "dead_letters": dead_letters,
        "batches": batches,
        "elapsed_s": round(time.monotonic() - started, 3),
        "rate_per_s": round(records_in / window, 1) if window > 0 else 0.0,
        "final_lag": final_lag,
        "stopped_by": stopped_by,
        "commit_failures": commit_failures,
        "partitions": sorted(partitions_seen),
        "model_uri": model.uri,
        "model_version": model.version,
        "group_id": spec.group_id,
        "input_topics": spec.input_topics,
        "output_topic": spec.output_topic,
        "dead_letter_topic": spec.dead_letter_topic,
    }
    log_.info("Stream summary: %s", summary)
    return summary
