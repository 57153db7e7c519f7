"""This package beside Airflow's own Kafka provider (apache-airflow-providers-apache-kafka, both
installed here): no connection type registered twice, and one ``kafka`` connection made for the
official provider read by both hooks against the real embedded broker."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.kafka_helpers import shared_broker, unique


def test_both_providers_register_their_own_connection_types_without_a_warning():
    # A fresh interpreter: ProvidersManager registers once per process and logs the collision then.
    code = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
hooks = pm.hooks
print("KAFKA", hooks["kafka"].hook_class_name)
print("MLOPS", hooks["mlops_kafka"].hook_class_name)
print("PROVIDERS", sorted(p for p in pm.providers if "kafka" in p or "mlops" in p))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "KAFKA airflow.providers.apache.kafka.hooks.base.KafkaBaseHook" in text
    assert "MLOPS airflow_mlops.hooks.kafka.KafkaConnectionHook" in text
    assert "apache-airflow-providers-apache-kafka" in text and "airflow-mlops" in text
    assert "already registered" not in text


def test_one_official_kafka_connection_serves_both_hooks_and_no_secret_is_logged(monkeypatch, caplog, capfd):
    from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

    from airflow_mlops.hooks.kafka import KafkaConnectionHook, kafka_config_from_connection
    from airflow_mlops.kafka.config import librdkafka_config
    from airflow_mlops.kafka.topics import topic_names

    broker = shared_broker()
    topic = unique("shared")
    broker.create_topic(topic, 2)
    conn_id = unique("official").replace("-", "_")
    # What a user creates for the official provider: type kafka, librdkafka keys in the extra only.
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "kafka", "extra": {
        "bootstrap.servers": broker.bootstrap_servers, "security.protocol": "PLAINTEXT",
        "sasl.username": "scorer", "sasl.password": "s3cret-never-logged", "socket.timeout.ms": 10000}}))

    # The official provider's hook (confluent-kafka AdminClient) sees the broker's topics...
    official = KafkaAdminClientHook(kafka_config_id=conn_id).get_conn
    assert topic in official.list_topics(timeout=10).topics
    # ... and so does ours, with both engines' settings made from the same connection.
    config = kafka_config_from_connection(conn_id)
    assert config["bootstrap_servers"] == broker.bootstrap_servers and config["socket.timeout.ms"] == 10000
    assert topic in topic_names(config, 10)
    rdk = librdkafka_config(config)
    assert rdk["bootstrap.servers"] == broker.bootstrap_servers and rdk["sasl.password"] == "s3cret-never-logged"
    assert rdk["socket.timeout.ms"] == 10000 and rdk["security.protocol"] == "PLAINTEXT"
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        KafkaConnectionHook(conn_id).get_config()
    logged = caplog.text + "".join(capfd.readouterr())
    assert "s3cret-never-logged" not in logged and "***" in logged


def test_the_form_s_security_fields_reach_the_client_config():
    """What the connection form stores (the fields by name, or prefixed as older forms did; an
    empty field means not set) becomes the client's settings."""
    from airflow.models import Connection

    from airflow_mlops.hooks.kafka import kafka_config

    conn = Connection(conn_id="k", conn_type="mlops_kafka", host="b1:9092", login="svc", password="pw",
                      extra=json.dumps({"security_protocol": "SASL_SSL", "extra__mlops_kafka__sasl_mechanism":
                                        "SCRAM-SHA-512", "ssl_cafile": ""}))
    config = kafka_config(conn, "k")
    assert (config["security_protocol"], config["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert "ssl_cafile" not in config and config["sasl_plain_username"] == "svc"
