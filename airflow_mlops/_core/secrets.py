"""Which setting names hold secrets: one word list for every redaction (Kafka client settings,
the stream spec, connection extras, pod environments)."""

from __future__ import annotations

SECRET_WORDS = ("password", "secret", "token", "credential", "keyfile", "ssl_key", "sasl_oauth", "ssl_context",
                "api_key", "apikey", "private_key")
REDACTED = "***"


def is_secret(key: str) -> bool:
    """Whether a setting named ``key`` (any case, any separator) holds a secret."""
    key = key.lower().replace(".", "_").replace("-", "_")
    return any(word in key for word in SECRET_WORDS)
