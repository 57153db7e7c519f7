"""The Kafka broker lost under a running stream and under the lag sensor (issue: a dependency
failing under a task ends in bounded time, with one message to act on and the right retry
decision). The real tansu broker is stopped by its PID; each test has a broker of its own.

tansu's storage here is memory (its other engines need S3 or PostgreSQL, neither of which this
machine has), so a stopped broker comes back empty: the "start the broker again" step is shown
as a fresh broker on the same address, where the topic is gone and the rerun fails at once,
without retry (a missing topic is permanent). Resuming from the committed offsets after an
interruption is covered with a broker that keeps running (test_stream.py, SIGKILL mid-run).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from airflow_mlops._core.outcome import EXIT_FAILED
from airflow_mlops.kafka.broker import EmbeddedBroker
from tests.conftest import REPO
from tests.kafka_helpers import FAST_GROUP, SLOW_LINEAR, produce_json, register_pyfunc, unique

BROKER_TIMEOUT = 5.0
# The run must end within broker_timeout plus one flush/commit wait and the process's own exit.
BOUND_S = 3 * BROKER_TIMEOUT + 15


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('loss-mlflow') / 'mlflow.db'}"
    saved = mlflow.get_tracking_uri()
    register_pyfunc(uri, "slow", SLOW_LINEAR)
    mlflow.set_tracking_uri(saved)
    return uri


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    from airflow_mlops.kafka.lag import group_lag

    lag = group_lag({"bootstrap_servers": bootstrap}, group, [topic], timeout_s=5)
    return sum(p["committed"] or 0 for p in lag.partitions.values())


@pytest.mark.parametrize("engine", ["confluent", "kafka-python"])
def test_broker_stopped_mid_stream_ends_bounded_with_one_retryable_message(engine, slow_model, tmp_path):
    broker = EmbeddedBroker().start()
    try:
        n, topic, out, group = 12000, unique("in"), unique("out"), unique("group")
        broker.create_topic(topic, 2)
        broker.create_topic(out, 2)
        produce_json(broker, topic, {f"k{i}": {"a": i, "b": 0.5} for i in range(n)})
        spec = {"topics": topic, "output_topic": out, "group_id": group, "model_uri": "models:/slow@champion",
                "batch_size": 50, "idle_timeout": 30, "broker_timeout": BROKER_TIMEOUT, "engine": engine,
                "consumer_config": FAST_GROUP}
        argv = [sys.executable, "-m", "airflow_mlops.stream", "--spec", json.dumps(spec), "--bootstrap-servers",
                broker.bootstrap_servers, "--tracking-uri", slow_model]
        # A run that overstays its bound is aborted; faulthandler then prints where each thread was.
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while committed_total(broker.bootstrap_servers, group, topic) < 300:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "no progress"
                time.sleep(0.1)
            before_stop = committed_total(broker.bootstrap_servers, group, topic)
            broker.stop()
            stopped_at = time.monotonic()
            try:
                _, stderr = proc.communicate(timeout=BOUND_S + 30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)
                err = proc.communicate()[1]
                at = err.find("Fatal Python error")
                dump = err[at:err.find("\nExtension modules", at)] if at >= 0 else ""
                log = "\n".join(line for line in err[:at if at >= 0 else None].splitlines() if not line.startswith("%"))
                pytest.fail(f"still running {BOUND_S + 30} s after the broker stopped:\n{log[-4000:]}\n{dump}")
            took = time.monotonic() - stopped_at
        finally:
            proc.kill()
        assert took < BOUND_S, f"took {took:.0f} s:\n{stderr[-3000:]}"
        assert proc.returncode == 1, stderr[-3000:]  # retryable: not EXIT_FAILED
        assert "Traceback" not in stderr
        message = stderr[stderr.index("error: "):]
        servers = broker.bootstrap_servers
        assert f"error: Kafka broker (bootstrap servers {servers}) did not answer within 5 s (broker_timeout)" in message
        assert re.search(rf"during batch \d+ of the stream \['{topic}'\] → {out}", message)
        assert "retry: yes" in message and "to do: start the broker" in message
        assert "a rerun resumes from the committed offsets" in message
        kept = re.search(r"kept: (\d+) records consumed, (\d+) predictions and 0 dead letters produced in \d+ batches; "
                         r"offsets committed up to (.*)", message)
        assert kept, message
        consumed, produced = int(kept[1]), int(kept[2])
        committed = {m[0]: int(m[1]) for m in re.findall(rf"{topic}\[(\d)\]=(\d+)", kept[3])}
        # What the message says was committed: at least what the broker showed before it stopped,
        # never more than was produced (and acknowledged).
        assert before_stop <= sum(committed.values()) <= produced <= consumed <= n
        assert sum(committed.values()) < n  # the loss landed mid-stream

        # The broker "comes back" (memory storage: empty): the rerun fails at once, without retry.
        fresh = EmbeddedBroker(port=broker.port).start()
        try:
            started = time.monotonic()
            rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            assert rerun.returncode == EXIT_FAILED, rerun.stderr[-3000:]
            assert f"input topic '{topic}' does not exist" in rerun.stderr and "Traceback" not in rerun.stderr
            assert time.monotonic() - started < 60
        finally:
            fresh.stop()
    finally:
        broker.stop()


@pytest.mark.parametrize("engine", ["confluent", "kafka-python"])
def test_broker_down_at_start_is_retryable_and_bounded(engine):
    from airflow_mlops.stream import BrokerLost, run_stream
    from airflow_mlops.stream._model import ScoringModel

    broker = EmbeddedBroker().start()
    address = broker.bootstrap_servers
    broker.stop()
    started = time.monotonic()
    with pytest.raises(BrokerLost) as caught:
        run_stream({"topics": "t", "output_topic": "o", "group_id": "g", "engine": engine, "broker_timeout": 3},
                   {"bootstrap_servers": address}, model=ScoringModel(model=None, uri="none", version="0"))
    assert time.monotonic() - started < 20
    assert caught.value.retryable is True
    assert str(caught.value).startswith(f"Kafka broker (bootstrap servers {address}) did not answer within 3 s")
    assert "during the start of the stream ['t'] → o (nothing consumed)" in str(caught.value)


def test_lag_sensor_with_the_broker_lost_fails_bounded_and_retryable(monkeypatch):
    from airflow_mlops._core.errors import DependencyFailed
    from airflow_mlops.sensors.kafka import KafkaLagSensor

    broker = EmbeddedBroker().start()
    address = broker.bootstrap_servers
    broker.stop()
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_GONE", json.dumps({"conn_type": "kafka", "extra": {
        "bootstrap.servers": address}}))
    sensor = KafkaLagSensor(task_id="lag", topics="t", group_id="g", kafka_conn_id="kafka_gone", lag_timeout=3)
    started = time.monotonic()
    with pytest.raises(DependencyFailed) as caught:
        sensor.poke({})
    assert time.monotonic() - started < 15
    assert caught.value.retryable is True
    text = str(caught.value)
    assert text.startswith(f"Kafka broker (bootstrap servers {address}) did not answer within 3 s")
    assert "during measuring the lag of consumer group 'g' on ['t']" in text and "to do: start the broker" in text


def test_the_operator_lets_airflow_retry_a_lost_broker(monkeypatch, tmp_path, caplog):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.operators.stream import StreamInferenceOperator
    from airflow_mlops.stream import BrokerLost

    broker = EmbeddedBroker().start()
    address = broker.bootstrap_servers
    broker.stop()
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DOWN", json.dumps({"conn_type": "kafka", "extra": {
        "bootstrap.servers": address}}))
    op = StreamInferenceOperator(task_id="score", kafka_conn_id="kafka_down", topics="t", output_topic="o",
                                 model_uri="models:/m/1", broker_timeout=2,
                                 mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    with pytest.raises(BrokerLost) as caught:  # not AirflowFailException: Airflow's retries apply
        op.execute({})
    assert not isinstance(caught.value, AirflowFailException) and caught.value.retryable
    assert str(caught.value).startswith(f"Kafka broker (bootstrap servers {address}) did not answer within 2 s")
