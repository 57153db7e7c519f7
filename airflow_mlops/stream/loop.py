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

from airflow_mlops.spec.stream import StreamSpec
from airflow_mlops.stream._clients import ENGINES, BrokerUnreachable, Rebalanced, StreamClients
from airflow_mlops.stream._phases import clock
from airflow_mlops.stream.errors import BrokerLost, RecordFailed, StreamError

log = logging.getLogger("airflow_mlops.stream")


class _Run:
    """The state of one run, batch to batch.

    Pipelined: batch N is produced, then batch N+1 is consumed and scored while the broker
    acknowledges N; only then is N flushed (every record acknowledged) and committed, and N+1
    produced. At most one batch is ever produced but uncommitted — what a crash can duplicate.

    If N's commit fails because the group rebalanced (kafka-python rebalances on its own IO
    thread, where a listener may not block to flush, so N is settled at the first poll after it
    and only its partitions still held are committed; the confluent engine settles N before its
    partitions are revoked), N is left to whoever owns its partitions now, N+1 is dropped
    unproduced, and the partitions still assigned here are rewound to their committed offsets:
    one batch of duplicates per rebalance at most, nothing skipped.
    """

    def __init__(self, spec: StreamSpec, scorer: Any, model: Any, log_: logging.Logger, clients: StreamClients) -> None:
        self.spec, self.scorer, self.model, self.log, self.clients = spec, scorer, model, log_, clients
        self.phases = scorer.phases  # seconds per phase of the loop (see _phases.py)
        self.rebalancing = False  # a commit failed on a rebalance: the group is re-forming
        self.pending: tuple[dict[tuple[str, int], int], int] | None = None  # offsets, records
        self.records_in = self.predictions_out = self.dead_letters = self.batches = self.commit_failures = 0
        self.partitions_seen: set[str] = set()
        self.committed: dict[tuple[str, int], int] = {}  # what this run committed, per partition
        self.started = time.monotonic()
        self.first_record_at: float | None = None
        self.last_commit_at = self.started

    def process(self, records: list[Any]) -> None:
        """Score a batch (while the previous one is being acknowledged), settle the previous
        one, then produce this one."""
        if self.first_record_at is None:
            self.first_record_at = time.monotonic()
        self.records_in += len(records)
        next_offsets = getattr(records, "next_offsets", None)  # a batch that reads them in one pass
        # records of a partition come in order: the last one's offset wins
        offsets: dict[tuple[str, int], int] = next_offsets() if next_offsets is not None else \
            {(r.topic, r.partition): r.offset + 1 for r in records}

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
            self.clients.rewind(set(offsets), self.spec.auto_offset_reset)
            self.records_in -= len(records)  # dropped: consumed again after the rewind
            return
        t = clock()
        self.clients.produce(self.spec.output_topic, outputs, self.scorer.headers)
        if dead:
            version, limit = self.model.version, getattr(self.clients, "max_message_bytes", 1_000_000)
            letters = [d.payload(version, limit) for d in dead]
            self.clients.produce(dlq_topic, [(k, v) for k, v, _ in letters], lambda i: letters[i][2])
        self.phases.lap("produce", t)
        self.pending = (offsets, len(records))
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
        offsets, count = self.pending
        self.pending = None  # settled once: a failed flush must never lead to its commit later
        t = clock()
        self.clients.flush()  # DeliveryFailed / BrokerUnreachable: nothing of the batch is committed
        t = self.phases.lap("flush", t)
        try:
            self.clients.commit(offsets)
            self.phases.lap("commit", t)
        except Rebalanced as exc:
            # The partitions moved to another consumer first; it consumes them again from the
            # last commit (the at-least-once duplicates).
            self.commit_failures += 1
            self.log.warning("Commit of %d records failed after a rebalance (%s); they will be consumed again",
                             count, exc)
            self.clients.rewind(set(offsets), self.spec.auto_offset_reset)
            self.rebalancing = True
            return False
        self.committed.update(offsets)
        self.last_commit_at = time.monotonic()
        return True

    def kept(self) -> str:
        """What a failure leaves behind, for its message."""
        committed = ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(self.committed.items())) or \
            "nothing committed by this run (the group's earlier commits stand)"
        return (f"{self.records_in} records consumed, {self.predictions_out} predictions and {self.dead_letters} "
                f"dead letters produced in {self.batches} batches; offsets committed up to {committed}")

    def progress(self, final: bool = False) -> None:
        window = (self.last_commit_at - self.first_record_at) if self.first_record_at else 0.0
        rate = self.records_in / window if window > 0 else 0.0
        self.log.info(
            "%s: %d records in, %d predictions out, %d dead letters, %d batches, %.0f records/s, lag %s",
            "Done" if final else "Progress", self.records_in, self.predictions_out, self.dead_letters, self.batches,
            rate, self.clients.lag(),
        )


def open_clients(engine: str, spec: StreamSpec, kafka_config: Mapping[str, Any]) -> StreamClients:
    """The clients of ``engine`` (``confluent`` or ``kafka-python``) for ``spec``."""
    if engine == "confluent":
        from airflow_mlops.stream._confluent import ConfluentClients

        return ConfluentClients(spec, kafka_config)
    if engine == "kafka-python":
        from airflow_mlops.stream._kafka_python import KafkaPythonClients

        return KafkaPythonClients(spec, kafka_config)
    raise ValueError(f"unknown stream engine {engine!r}; one of {', '.join(ENGINES)}")


def broker_lost(spec: StreamSpec, kafka_config: Mapping[str, Any], run: _Run | None, exc: BaseException) -> BrokerLost:
    """The one message of a broker lost under the run (retryable)."""
    servers = kafka_config.get("bootstrap_servers") or kafka_config.get("bootstrap.servers") or "?"
    if isinstance(servers, (list, tuple)):
        servers = ",".join(servers)
    if run is None:
        during = f"the start of the stream {spec.input_topics} → {spec.output_topic} (nothing consumed)"
        kept = None
    else:
        during = f"batch {run.batches + 1} of the stream {spec.input_topics} → {spec.output_topic}"
        kept = run.kept()
    return BrokerLost(
        "Kafka broker", address=f"bootstrap servers {servers}",
        failure=f"did not answer within {spec.broker_timeout:g} s (broker_timeout) [{exc}]", during=during,
        kept=kept, action="start the broker (or restore the network path to it); a rerun resumes from the "
        "committed offsets (the uncommitted batch is consumed again: at most one batch of duplicates)",
        retryable=True)


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
        ``model`` is given). ``spec.engine`` picks the client: ``confluent`` or ``kafka-python``.
    :param kafka_config: settings shared by consumer and producer, in kafka-python's names
        (``bootstrap_servers``, ``security_protocol``, ``sasl_*``, ``ssl_*``) or librdkafka's
        (``bootstrap.servers``…); translated for the engine. Logged redacted only.
    :param tracking_uri: MLflow tracking/registry URI for ``models:/`` URIs; default:
        ``$MLFLOW_TRACKING_URI``, else the store under ``$AIRFLOW_MLOPS_HOME`` (never MLflow's own
        default, a database in the current directory). A relative local store is refused.
    :param model: an already loaded ``ScoringModel`` (benchmarks, tests).
    :param stop: an event that ends the run after the current batch.
    :raises MissingTopic: a topic does not exist (not retryable); ``BrokerLost``: the brokers did
        not answer within ``spec.broker_timeout`` seconds (retryable; a ``DependencyFailed``);
        ``RecordFailed``/``BatchFailed``: bad records or model (not retryable).
    """
    from airflow_mlops._core.paths import import_string
    from airflow_mlops.stream._model import load_scoring_model
    from airflow_mlops.stream._preflight import missing_outputs
    from airflow_mlops.stream._scoring import BatchScorer

    log_ = logger or log
    spec = spec if isinstance(spec, StreamSpec) else StreamSpec.model_validate(spec)
    if not spec.group_id:
        raise StreamError("the stream needs a consumer group id (group_id)")
    if model is None:
        if not spec.model_uri:
            raise StreamError("the stream needs a model URI (model_uri)")
        from airflow_mlops._core.tracking_uri import resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(tracking_uri)  # a relative local store fails here
    try:
        clients = open_clients(spec.engine, spec, kafka_config)
    except BrokerUnreachable as exc:
        raise broker_lost(spec, kafka_config, None, exc) from exc
    run: _Run | None = None
    try:
        # Before the model is loaded: a mistyped topic fails in seconds, having consumed nothing.
        to_create = missing_outputs(spec, clients.topic_names, log_)
        clients.ensure_created(to_create)
        if model is None:
            model = load_scoring_model(spec.model_uri, tracking_uri)
        scorer = BatchScorer(spec, model, import_string(spec.decoder))
        log_.info(
            "Streaming %s → %s (dead letters: %s) with %s (version %s), group %s, batches of %d, engine %s; "
            "stops after %s; a broker silent for %g s ends the run", spec.input_topics, spec.output_topic,
            spec.dead_letter_topic or "none, a bad record fails the run", model.uri, model.version, spec.group_id,
            spec.batch_size, clients.engine,
            ", ".join(f"{k}={v}" for k, v in (("max_records", spec.max_records), ("max_duration", spec.max_duration),
                                              ("idle_timeout", spec.idle_timeout)) if v) or "nothing (no bound set)",
            spec.broker_timeout,
        )
        consumer_log, producer_log = clients.configs_to_log()
        log_.info("Kafka consumer config: %s", consumer_log)
        log_.info("Kafka producer config: %s", producer_log)
        run = _Run(spec, scorer, model, log_, clients)
        summary = _loop(spec, run, clients, log_, stop)
    except BrokerUnreachable as exc:
        raise broker_lost(spec, kafka_config, run, exc) from exc
    finally:
        try:
            clients.close()
        except Exception as exc:  # closing against a lost broker: the run's own outcome matters more
            log_.warning("Closing the Kafka clients: %r", exc)
    summary.update({"model_uri": model.uri, "model_version": model.version, "group_id": spec.group_id,
                    "input_topics": spec.input_topics, "output_topic": spec.output_topic,
                    "dead_letter_topic": spec.dead_letter_topic, "engine": clients.engine})
    log_.info("Stream summary: %s", summary)
    return summary


def _loop(spec: StreamSpec, run: _Run, clients: StreamClients, log_: logging.Logger,  # noqa: C901
          stop: threading.Event | None) -> dict[str, Any]:
    clients.on_revoke = run.settle
    clients.subscribe(spec.input_topics)
    # Joining a group can take a session timeout for a dead member to expire, then the join itself.
    join_allowance = 2 * clients.session_timeout_s

    # The heap of an Airflow worker with MLflow, pandas and a model loaded is large; each full
    # collection the run's allocations trigger would walk all of it. Freeze what exists now (it
    # is not garbage) for the length of the run, and hand it back to the collector afterwards.
    gc.collect()
    gc.freeze()
    started = run.started
    last_activity = last_progress = last_probe = started
    unreachable_since: float | None = None
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
            timeout_s = spec.poll_timeout_ms / 1000.0
            if spec.max_duration is not None:
                timeout_s = max(0.001, min(timeout_s, spec.max_duration - (now - started)))
            t = clock()
            records = clients.poll(timeout_s, want)
            if run.first_record_at is not None:  # the wait for the first records is not timed
                run.phases.lap("poll", t)
            current = clients.assignment()
            if current != assignment:
                log_.info("Assigned partitions: %s", sorted(f"{t}:{p}" for t, p in current) or "none")
                assignment = current
                run.rebalancing = False
                last_activity = time.monotonic()  # a fresh idle window after each (re)balance
            if not records:
                run.settle()  # nothing new: don't hold a produced batch uncommitted while idle
                now = time.monotonic()
                if now - last_probe >= 1.0:  # records flowing prove the broker; silence is checked
                    last_probe = now
                    if clients.reachable():
                        unreachable_since = None
                    else:
                        unreachable_since = unreachable_since or now
                        if now - unreachable_since >= spec.broker_timeout:
                            raise BrokerUnreachable(f"no broker connection for {now - unreachable_since:.0f} s")
                continue
            unreachable_since = None
            run.process(records)
            if not run.rebalancing:
                last_activity = time.monotonic()
        run.settle()
        final_lag = clients.lag()
        run.progress(final=True)
    except BaseException as exc:
        # What was produced and acknowledged before the failure may still be committed; the
        # failing batch itself was never sent. Not when the broker is gone: that would only wait.
        if not isinstance(exc, BrokerUnreachable):
            try:
                run.settle()
            except Exception as settle_exc:  # the original error matters more
                log_.warning("Could not commit the last acknowledged batch: %r", settle_exc)
        raise
    finally:
        gc.unfreeze()

    window = (run.last_commit_at - run.first_record_at) if run.first_record_at else 0.0
    return {
        "records_in": run.records_in,
        "predictions_out": run.predictions_out,
        "dead_letters": run.dead_letters,
        "batches": run.batches,
        "elapsed_s": round(time.monotonic() - started, 3),
        "rate_per_s": round(run.records_in / window, 1) if window > 0 else 0.0,
        "final_lag": final_lag,
        "stopped_by": stopped_by,
        "commit_failures": run.commit_failures,
        "partitions": sorted(run.partitions_seen),
        "phases_s": run.phases.rounded(),
    }
