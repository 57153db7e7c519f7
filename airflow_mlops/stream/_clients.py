"""The small client interface the streaming loop runs on, one implementation per engine
(``_kafka_python.py``, ``_confluent.py``; ``loop.open_clients`` picks one). The loop
(``loop.py``) is written once against it.

A ``StreamClients`` holds one consumer (in the run's group, subscribed to the input topics) and
one producer. Records it returns have ``topic``, ``partition``, ``offset``, ``key``, ``value``,
``headers`` (a list of ``(str, bytes)``). Partitions are ``(topic, partition)`` tuples and offsets
the next offset to read (Kafka's commit convention).

Errors: ``Rebalanced`` when a commit failed because the group re-formed; ``BrokerUnreachable``
when the brokers did not answer within the run's ``broker_timeout`` (the loop turns it into one
``BrokerLost`` message with what was kept); ``DeliveryFailed`` when the broker refused records.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

ENGINES = ("confluent", "kafka-python")


class Rebalanced(Exception):
    """A commit failed because the partitions moved to another member of the group."""


class BrokerUnreachable(Exception):
    """The brokers did not answer within the bound (``StreamSpec.broker_timeout``)."""


class StreamClients(Protocol):
    engine: str
    session_timeout_s: float
    # The loop sets this: called in the loop's own thread to settle the pending batch around a
    # rebalance: before the partitions are taken away (confluent), or from the first poll after
    # it (kafka-python rebalances on its IO thread; its commit keeps the partitions still held).
    on_revoke: Callable[[], None] | None

    def configs_to_log(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(consumer, producer) settings, secrets redacted."""

    def topic_names(self, timeout_s: float) -> set[str]:
        """Every topic the brokers have (one metadata request that creates nothing)."""

    def ensure_created(self, topics: Sequence[str]) -> None:
        """Have the broker auto-create ``topics`` (``MissingTopic`` if it does not)."""

    def subscribe(self, topics: Sequence[str]) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> list[Any]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""

    def assignment(self) -> set[tuple[str, int]]: ...

    def produce(self, topic: str, items: Sequence[tuple[bytes | None, bytes | None]], headers: Any) -> None:
        """Send ``(key, value)`` pairs keyed the way Kafka's default partitioner does (murmur2);
        ``headers``: one list for all, or a callable ``i -> list`` per item. Acknowledgements are
        awaited by ``flush``."""

    def flush(self) -> None:
        """Wait until every record produced since the last flush is acknowledged (all in-sync
        replicas). ``DeliveryFailed`` / ``BrokerUnreachable`` otherwise."""

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit exactly ``offsets``, synchronously. ``Rebalanced`` / ``BrokerUnreachable``."""

    def rewind(self, touched: set[tuple[str, int]], reset: str) -> None:
        """Seek the still-assigned partitions of ``touched`` back to the group's committed offsets."""

    def lag(self) -> int | None:
        """Σ highwater − position over the assigned partitions (from fetch responses)."""

    def reachable(self) -> bool:
        """Whether a broker answers now (cheap; may probe briefly when in doubt)."""

    def close(self) -> None: ...

