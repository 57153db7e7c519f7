"""Kafka client settings: one shared dict in kafka-python's names (bootstrap servers, security)
split per kafka-python client class, the same dict in librdkafka's names for confluent-kafka
(``librdkafka_config``), and a redacted copy that is safe to log. Standard library only (cheap to
import)."""

from __future__ import annotations

from typing import Any, Mapping

from airflow_mlops._core.secrets import REDACTED, is_secret

# Settings named the librdkafka / Java way (as in apache-airflow-providers-apache-kafka's
# connections) → kafka-python's names, so an existing "kafka" connection works as it is.
_DOTTED = {
    "bootstrap.servers": "bootstrap_servers",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "sasl.kerberos.service.name": "sasl_kerberos_service_name",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "ssl.endpoint.identification.algorithm": None,  # handled below
    "client.id": "client_id",
    "group.id": None,  # a per-task setting, never a connection one
}


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy to log: secret values replaced by ``***`` (nested mappings too)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if is_secret(str(key)) and value is not None:
            out[key] = REDACTED
        elif isinstance(value, Mapping):
            out[key] = redact(value)
        else:
            out[key] = value
    return out


def normalize(config: Mapping[str, Any]) -> dict[str, Any]:
    """Accept kafka-python names and the common dotted librdkafka names (translated); any other
    dotted name is kept as it is."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in _DOTTED:
            if key == "ssl.endpoint.identification.algorithm":
                out["ssl_check_hostname"] = str(value).lower() not in ("", "none")
            elif _DOTTED[key]:
                out[_DOTTED[key]] = value
            continue
        # Other dotted (librdkafka) names stay as they are: for_client takes those kafka-python
        # knows under its own name, and librdkafka_config passes them all on.
        out[key] = value
    if "sasl_mechanism" in out and isinstance(out["sasl_mechanism"], str):
        out["sasl_mechanism"] = out["sasl_mechanism"].upper()
    if "security_protocol" in out and isinstance(out["security_protocol"], str):
        out["security_protocol"] = out["security_protocol"].upper()
    return out


def _defaults(kind: str) -> Mapping[str, Any]:
    if kind == "consumer":
        from kafka import KafkaConsumer

        return KafkaConsumer.DEFAULT_CONFIG
    if kind == "producer":
        from kafka import KafkaProducer

        return KafkaProducer.DEFAULT_CONFIG
    from kafka import KafkaAdminClient

    return KafkaAdminClient.DEFAULT_CONFIG


def for_client(config: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The subset of a shared connection config that ``kind`` ('consumer', 'producer', 'admin')
    accepts. A key that none of the three accepts is an error, named (kafka-python's own error
    would come later and for one client only)."""
    # A librdkafka setting kafka-python lacks (``socket.timeout.ms`` in a connection made for the
    # official provider) is that engine's business only: left out here, used by confluent-kafka.
    known = {k: set(_defaults(k)) for k in ("consumer", "producer", "admin")}
    every = set().union(*known.values())
    config = {(k.replace(".", "_") if "." in k else k): v for k, v in normalize(config).items()
              if "." not in k or k.replace(".", "_") in every}
    unknown = sorted(set(config) - every)
    if unknown:
        raise ValueError(f"unknown kafka-python setting(s) {unknown} in the Kafka connection config")
    return {k: v for k, v in config.items() if k in known[kind]}


# kafka-python names → librdkafka's, where they are not just "_" → ".".
_TO_LIBRDKAFKA = {v: k for k, v in _DOTTED.items() if v and k != "sasl.mechanisms"}
_TO_LIBRDKAFKA.update({"fetch_max_wait_ms": "fetch.wait.max.ms", "max_partition_fetch_bytes": "max.partition.fetch.bytes",
                       "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
                       "delivery_timeout_ms": "delivery.timeout.ms"})
# kafka-python settings with no librdkafka counterpart (or one the engine sets itself).
_KAFKA_PYTHON_ONLY = {"api_version", "api_version_auto_timeout_ms", "max_poll_records", "bootstrap_timeout_ms",
                      "key_serializer", "value_serializer", "key_deserializer", "value_deserializer",
                      "ssl_check_hostname", "consumer_timeout_ms", "max_block_ms", "selector", "sock_chunk_bytes",
                      "sock_chunk_buffer_count", "metrics_enabled", "metric_group_prefix", "partitioner"}


def librdkafka_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The same settings for confluent-kafka (librdkafka names): ``{"bootstrap_servers": "b:9092",
    "sasl_plain_username": "u"}`` → ``{"bootstrap.servers": "b:9092", "sasl.username": "u"}``.
    Dotted names pass through; kafka-python-only settings (``api_version``, ``max_poll_records``…)
    are dropped; ``ssl_check_hostname=False`` becomes ``ssl.endpoint.identification.algorithm=none``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if "." in key:
            out[key] = value
        elif key in _TO_LIBRDKAFKA:
            out[_TO_LIBRDKAFKA[key]] = value
        elif key == "ssl_check_hostname":
            out["ssl.endpoint.identification.algorithm"] = "https" if value else "none"
        elif key not in _KAFKA_PYTHON_ONLY:
            out[key.replace("_", ".")] = value
    if isinstance(out.get("bootstrap.servers"), (list, tuple)):
        out["bootstrap.servers"] = ",".join(out["bootstrap.servers"])
    return out
