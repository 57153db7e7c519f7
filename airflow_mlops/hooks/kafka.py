"""Kafka settings from an Airflow connection, for the stream engines (kafka-python, confluent-kafka).

Any connection id works, whatever its type: a ``kafka`` connection made for Airflow's own
``apache-airflow-providers-apache-kafka`` (librdkafka settings in the extra, e.g.
``{"bootstrap.servers": "broker:9092", "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
"sasl.username": ..., "sasl.password": ...}``) is read as it is. This package registers its own
connection form under the type ``mlops_kafka`` (never ``kafka``, which that provider owns);
connections created with type ``kafka`` through this package's older form keep working.

The connection: **host** = bootstrap servers (``broker1:9092,broker2:9092``; a **port** is added
to hosts that have none), **login/password** = SASL username/password (``sasl_plain_username``
/ ``sasl_plain_password``), **extra** = a JSON object of client settings, e.g.

    {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "ssl_cafile": "/etc/ssl/ca.pem"}

Names in the librdkafka style of the apache-kafka provider's connections (``bootstrap.servers``,
``security.protocol``, ``sasl.username``…) are translated to kafka-python's; other dotted names
are kept for the confluent engine (``airflow_mlops.kafka.config.librdkafka_config`` turns the
whole config into librdkafka's names), so such a connection works as it is with both engines.
As an environment variable, JSON (several brokers)::

    AIRFLOW_CONN_KAFKA_DEFAULT='{"conn_type": "kafka", "host": "broker1:9092,broker2:9092",
        "login": "scorer", "password": "...", "extra": {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"}}'

or a URI (one broker): ``kafka://scorer:pass@broker1:9092?security_protocol=SASL_SSL&sasl_mechanism=PLAIN``.
Secrets are never logged: log ``redact(config)``.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseHook

from airflow_mlops._core.secrets import is_secret
from airflow_mlops.kafka.config import normalize, redact

__all__ = ["KafkaConnectionHook", "kafka_config_from_connection", "redact"]


def kafka_config_from_connection(conn_id: str) -> dict[str, Any]:
    """The client config (kafka-python names, plus librdkafka-only dotted settings; shared by
    consumer, producer and admin) of an Airflow connection."""
    from airflow_mlops._core.connections import connection

    return kafka_config(connection(conn_id, "the Kafka connection (kafka_conn_id)"), conn_id)


async def async_kafka_config_from_connection(conn_id: str) -> dict[str, Any]:
    """The same, from a trigger: the triggerer's event loop must not block on the lookup."""
    return kafka_config(await BaseHook.aget_connection(conn_id), conn_id)


def kafka_config(conn: Any, conn_id: str) -> dict[str, Any]:
    """The kafka-python config of a connection object."""
    extra = conn.extra_dejson if conn.extra else {}
    if not isinstance(extra, dict):
        raise ValueError(f"the extra of Kafka connection '{conn_id}' must be a JSON object")
    # The connection form's own fields (CONN_FIELDS) may be stored prefixed, as older Airflow
    # forms did: extra__mlops_kafka__security_protocol. An empty form field means "not set".
    extra = {k.removeprefix(f"extra__{KafkaConnectionHook.conn_type}__"): v for k, v in extra.items()
             if v not in ("", None)}
    # extra_dejson of a URI-defined connection holds strings: numbers and booleans come back typed.
    config = normalize({k: _typed(k, v) for k, v in extra.items()})
    servers = config.pop("bootstrap_servers", None)
    if conn.host:
        hosts = [h.strip() for h in conn.host.split(",") if h.strip()]
        if conn.port:
            hosts = [h if ":" in h else f"{h}:{conn.port}" for h in hosts]
        servers = ",".join(hosts)
    if not servers:
        raise ValueError(
            f"Kafka connection '{conn_id}' has no bootstrap servers: set its host to 'broker1:9092,broker2:9092'"
        )
    config["bootstrap_servers"] = servers
    if conn.login:
        config.setdefault("sasl_plain_username", conn.login)
    if conn.password:
        config.setdefault("sasl_plain_password", conn.password)
    if ("sasl_plain_username" in config) and "sasl_mechanism" not in config:
        config["sasl_mechanism"] = "PLAIN"
    if "sasl_mechanism" in config and "security_protocol" not in config:
        config["security_protocol"] = "SASL_PLAINTEXT"
    return config


_NUMERIC_SUFFIXES = ("_ms", "_bytes", "_size", "_records", "_connection", "retries")


def _typed(key: str, value: Any) -> Any:
    """Settings from a URI's query string are strings: make numbers, booleans and versions typed
    (never touching secrets or names)."""
    if not isinstance(value, str) or is_secret(key):
        return value
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if key.replace(".", "_").endswith(_NUMERIC_SUFFIXES) and text.lstrip("-").isdigit():
        return int(text)
    if key == "api_version":
        parts = text.strip("()[] ").replace(",", ".").split(".")
        if all(p.strip().isdigit() for p in parts):
            return tuple(int(p) for p in parts)
    return value


class KafkaConnectionHook(BaseHook):
    """The ``mlops_kafka`` connection form in the Airflow UI, and the config it holds. (The type
    ``kafka`` belongs to apache-airflow-providers-apache-kafka; its connections are read too.)"""

    conn_name_attr = "kafka_conn_id"
    default_conn_name = "kafka_default"
    conn_type = "mlops_kafka"
    hook_name = "Kafka (airflow-mlops stream)"

    def __init__(self, kafka_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kafka_conn_id = kafka_conn_id

    # The security settings as fields of Airflow's connection form (provider info "conn-fields",
    # stored in the extra under these names); anything else still goes into the extra's JSON.
    conn_fields: dict[str, Any] = {
        "security_protocol": {
            "label": "Security protocol",
            "description": "How clients talk to the brokers (Kafka's security.protocol).",
            "schema": {"type": ["string", "null"], "enum": ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL", None]},
        },
        "sasl_mechanism": {
            "label": "SASL mechanism",
            "description": "With SASL_PLAINTEXT or SASL_SSL: how the username and password are checked.",
            "schema": {"type": ["string", "null"],
                       "enum": ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI", None]},
        },
        "ssl_cafile": {
            "label": "CA certificate file",
            "description": "With SSL or SASL_SSL: the CA bundle on the workers that signs the brokers' certificates.",
            "schema": {"type": ["string", "null"]},
        },
    }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema"],
            "relabeling": {"host": "Bootstrap servers", "login": "SASL username", "password": "SASL password",
                           "extra": "Kafka settings (JSON): librdkafka or kafka-python names"},
            "placeholders": {
                "host": "broker1:9092,broker2:9092",
                "extra": json.dumps({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                     "ssl_cafile": "/etc/ssl/certs/ca.pem"}),
            },
        }

    def get_config(self) -> dict[str, Any]:
        config = kafka_config_from_connection(self.kafka_conn_id)
        self.log.info("Kafka connection '%s': %s", self.kafka_conn_id, redact(config))
        return config

    def test_connection(self) -> tuple[bool, str]:
        from kafka import KafkaAdminClient

        from airflow_mlops.kafka.config import for_client

        try:
            admin = KafkaAdminClient(**for_client(self.get_config(), "admin"))
            try:
                topics = admin.list_topics()
            finally:
                admin.close()
        except Exception as exc:  # shown in the UI
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"connected; {len(topics)} topic(s)"
