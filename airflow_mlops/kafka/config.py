"""kafka-python client settings: one shared dict (bootstrap servers, security) split per client
class, and a redacted copy that is safe to log. Standard library only (cheap to import)."""

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
    """Accept kafka-python names and the common dotted librdkafka names."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in _DOTTED:
            if key == "ssl.endpoint.identification.algorithm":
                out["ssl_check_hostname"] = str(value).lower() not in ("", "none")
            elif _DOTTED[key]:
                out[_DOTTED[key]] = value
            continue
        out[key.replace(".", "_")] = value
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
    config = normalize(config)
    known = {k: set(_defaults(k)) for k in ("consumer", "producer", "admin")}
    unknown = sorted(set(config) - set().union(*known.values()))
    if unknown:
        raise ValueError(f"unknown kafka-python setting(s) {unknown} in the Kafka connection config")
    return {k: v for k, v in config.items() if k in known[kind]}
