"""KafkaLagSensor and the Kafka connection helper, against the embedded broker."""

from __future__ import annotations

import json
import logging
import time

import pytest

from tests.kafka_helpers import config, produce, shared_broker, unique


@pytest.fixture(scope="session")
def broker():
    return shared_broker()


@pytest.fixture
def kafka_conn(broker, monkeypatch):
    conn_id = unique("kafka").replace("-", "_")
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                       json.dumps({"conn_type": "kafka", "host": broker.bootstrap_servers}))
    return conn_id


def commit(broker, topic: str, group: str, count: int) -> None:
    """Consume ``count`` records of a one-partition topic in ``group`` and commit them."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
                             session_timeout_ms=6000, heartbeat_interval_ms=1000, **config(broker))
    try:
        got = 0
        while got < count:
            got += sum(len(v) for v in consumer.poll(timeout_ms=1000, max_records=count - got).values())
        consumer.commit()
    finally:
        consumer.close(autocommit=False)


def sensor(**kwargs):
    from airflow_mlops.sensors.kafka import KafkaLagSensor

    return KafkaLagSensor(task_id=unique("sense"), **kwargs)


def test_new_records_waits_for_records_then_returns_the_lag(broker, kafka_conn):
    topic, group = unique("events"), unique("group")
    broker.create_topic(topic, 3)
    s = sensor(topics=topic, group_id=group, condition="new_records", threshold=5, kafka_conn_id=kafka_conn)
    first = s.poke({})
    assert not first.is_done

    produce(broker, topic, [(f"k{i}".encode(), b"x") for i in range(4)])
    assert not s.poke({}).is_done  # 4 < 5
    produce(broker, topic, [(b"k4", b"x")])
    done = s.poke({})
    assert done.is_done
    assert done.xcom_value["lag"] == 5
    assert sum(p["lag"] for p in done.xcom_value["partitions"].values()) == 5
    assert set(done.xcom_value["partitions"]) == {f"{topic}:{p}" for p in range(3)}


def test_lag_below_counts_from_the_committed_offsets(broker, kafka_conn):
    topic, group = unique("events"), unique("group")
    broker.create_topic(topic, 1)
    produce(broker, topic, [(f"k{i}".encode(), b"x" * 1024) for i in range(300)])
    s = sensor(topics=[topic], group_id=group, condition="lag_below", threshold=50, kafka_conn_id=kafka_conn)
    assert not s.poke({}).is_done  # never committed: all 300 count

    commit(broker, topic, group, 200)
    assert not s.poke({}).is_done  # 100 left
    commit(broker, topic, group, 60)
    done = s.poke({})
    assert done.is_done
    assert done.xcom_value["partitions"] == {f"{topic}:0": {"highwater": 300, "committed": 260, "lag": 40}}


def test_a_missing_topic_fails_at_once_with_a_did_you_mean(broker, kafka_conn):
    """A typo must not be waited on until the sensor's timeout (7 days by default)."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.kafka.topics import topic_names

    topic = unique("transactions")
    broker.create_topic(topic, 1)
    typo = topic.replace("transactions", "transaction")
    s = sensor(topics=typo, group_id=unique("group"), kafka_conn_id=kafka_conn, poke_interval=0.2, timeout=600)
    started = time.monotonic()
    with pytest.raises(AirflowFailException) as info:
        s.execute({})
    assert time.monotonic() - started < 30
    assert str(info.value) == (f"Kafka topic '{typo}' does not exist on the brokers (did you mean '{topic}'?); create "
                               "it or fix the name (or set wait_for_missing_topics=True to wait for it to be created)")
    assert typo not in topic_names({"bootstrap_servers": broker.bootstrap_servers})  # looking created nothing


def test_wait_for_missing_topics_waits_and_the_timeout_message_says_why(broker, kafka_conn, caplog):
    from airflow.sdk.exceptions import AirflowSensorTimeout

    topic = unique("absent")
    s = sensor(topics=topic, group_id=unique("group"), kafka_conn_id=kafka_conn, poke_interval=0.2, timeout=1,
               wait_for_missing_topics=True)
    with caplog.at_level(logging.INFO):
        with pytest.raises(AirflowSensorTimeout) as info:
            s.execute({})
    message = str(info.value)
    assert f"Kafka lag of group '{s.group_id}' on ['{topic}'] did not reach lag < 1 within 1 s" in message
    assert f"last measurement: topic(s) ['{topic}'] do not exist" in message

    present = unique("events")
    broker.create_topic(present, 1)
    produce(broker, present, [(b"k", b"v")] * 3)
    s = sensor(topics=present, group_id=unique("group"), kafka_conn_id=kafka_conn, poke_interval=0.2, timeout=1)
    with pytest.raises(AirflowSensorTimeout, match=r"did not reach lag < 1 .*last measurement: lag 3 over 1 partition"):
        s.execute({})


def test_deferred_sensor_waits_in_the_triggerer_through_airflow(broker, kafka_conn, airflow_db, dags_folder, capfd):
    """dag.test() runs the triggers in this process, as a triggerer would; the trigger reads the
    connection and measures the lag off the event loop."""
    from airflow.dag_processing.dagbag import DagBag

    topic, group = unique("events"), unique("group")
    absent = topic.replace("events", "event")  # a typo
    broker.create_topic(topic, 2)
    produce(broker, topic, [(f"k{i}".encode(), b"x") for i in range(3)])
    (dags_folder / "deferred_kafka.py").write_text(f"""
# An Airflow DAG whose Kafka sensors defer to the triggerer.
from airflow.sdk import DAG
from airflow_mlops.sensors.kafka import KafkaLagSensor

with DAG("deferred_kafka", schedule=None):
    KafkaLagSensor(task_id="records", topics={topic!r}, group_id={group!r}, condition="new_records", threshold=3,
                   kafka_conn_id={kafka_conn!r}, deferrable=True, poke_interval=1, timeout=60)
    KafkaLagSensor(task_id="never", topics={absent!r}, group_id={group!r}, kafka_conn_id={kafka_conn!r},
                   deferrable=True, poke_interval=0.5, timeout=600, retries=3)
""")
    dr = DagBag(dag_folder=str(dags_folder)).dags["deferred_kafka"].test()
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert {k: ti.state for k, ti in tis.items()} == {"records": "success", "never": "failed"}
    lag = tis["records"].xcom_pull(task_ids="records")
    assert lag["lag"] == 3 and set(lag["partitions"]) == {f"{topic}:0", f"{topic}:1"}
    log = "".join(capfd.readouterr())
    assert log.count("Pausing task as DEFERRED") == 2
    # The typo ends the wait at once, failed without its retries, with the did-you-mean.
    assert tis["never"].try_number == 1
    assert f"Kafka topic '{absent}' does not exist on the brokers (did you mean '{topic}'?)" in log
    assert "did not reach" not in log


def test_sensor_arguments_are_checked_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match="condition must be 'lag_below' or 'new_records', got 'lag_above'"):
        sensor(topics="t", group_id="g", condition="lag_above")
    with pytest.raises(ValueError, match="threshold must be a whole number ≥ 1, got 0"):
        sensor(topics="t", group_id="g", threshold=0)
    with pytest.raises(ValueError, match="topics must be a topic name or a non-empty list"):
        sensor(topics=[], group_id="g")
    assert sensor(topics="t", group_id="g", mode="reschedule").mode == "reschedule"  # Airflow's own mode


def test_connection_config_passes_settings_through_and_logs_no_secret(monkeypatch, caplog, capfd):
    from airflow_mlops.hooks.kafka import KafkaConnectionHook, kafka_config_from_connection

    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_SASL", json.dumps({
        "conn_type": "kafka", "host": "b1:9093,b2", "port": 9094, "login": "scorer", "password": "pa55-w0rd-xyz",
        "extra": {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "ssl_cafile": "/etc/ca.pem",
                  "request_timeout_ms": 5000},
    }))
    assert kafka_config_from_connection("kafka_sasl") == {
        "bootstrap_servers": "b1:9093,b2:9094", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "ssl_cafile": "/etc/ca.pem", "request_timeout_ms": 5000, "sasl_plain_username": "scorer",
        "sasl_plain_password": "pa55-w0rd-xyz",
    }
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        KafkaConnectionHook("kafka_sasl").get_config()
    logged = caplog.text + "".join(capfd.readouterr())  # Airflow's hook logger is structlog's
    assert "pa55-w0rd-xyz" not in logged
    assert "'sasl_plain_password': '***'" in logged and "SCRAM-SHA-512" in logged

    # A URI (query values typed) and the librdkafka names of apache-kafka provider connections.
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_URI", "kafka://u:secret-1@broker:9092?security_protocol=SASL_SSL"
                                                 "&request_timeout_ms=7000&ssl_check_hostname=false")
    assert kafka_config_from_connection("kafka_uri") == {
        "bootstrap_servers": "broker:9092", "security_protocol": "SASL_SSL", "request_timeout_ms": 7000,
        "ssl_check_hostname": False, "sasl_plain_username": "u", "sasl_plain_password": "secret-1",
        "sasl_mechanism": "PLAIN",
    }
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_RDK", json.dumps({"conn_type": "kafka", "extra": {
        "bootstrap.servers": "k:9092", "security.protocol": "sasl_plaintext", "sasl.mechanisms": "plain",
        "sasl.username": "a", "sasl.password": "b-secret", "group.id": "ignored"}}))
    assert kafka_config_from_connection("kafka_rdk") == {
        "bootstrap_servers": "k:9092", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "a", "sasl_plain_password": "b-secret",
    }
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_EMPTY", json.dumps({"conn_type": "kafka"}))
    with pytest.raises(ValueError, match="has no bootstrap servers"):
        kafka_config_from_connection("kafka_empty")


@pytest.mark.parametrize("engine, logged_key", [("confluent", "sasl.password"), ("kafka-python", "sasl_plain_password")])
def test_unknown_settings_are_named_and_the_stream_logs_only_redacted_config(broker, caplog, engine, logged_key):
    from airflow_mlops.kafka.config import for_client
    from airflow_mlops.stream import run_stream
    from airflow_mlops.stream._model import ScoringModel

    with pytest.raises(ValueError, match=r"unknown kafka-python setting\(s\) \['sasl_passwrd'\]"):
        for_client({"bootstrap_servers": "x", "sasl_passwrd": "y"}, "consumer")

    topic, out = unique("in"), unique("out")
    broker.create_topic(topic, 1)
    broker.create_topic(out, 1)
    model = ScoringModel(model=None, uri="none", version="0")
    secret = "never-log-me-123"
    with caplog.at_level(logging.INFO, logger="airflow_mlops.stream"):
        summary = run_stream(
            {"topics": topic, "output_topic": out, "group_id": unique("g"), "max_duration": 1,
             "idle_timeout": None, "engine": engine},
            {**config(broker), "sasl_plain_username": "u", "sasl_plain_password": secret, "sasl_mechanism": "PLAIN",
             "security_protocol": "PLAINTEXT"},
            model=model,
        )
    assert summary["stopped_by"] == "max_duration"
    assert f"'{logged_key}': '***'" in caplog.text
    assert secret not in caplog.text
