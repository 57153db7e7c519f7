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

import queue
import threading
from typing import Any, Callable, Protocol, Sequence

ENGINES = ("confluent", "kafka-python")


class Rebalanced(Exception):
    """A commit failed because the partitions moved to another member of the group."""


class BrokerUnreachable(Exception):
    """The brokers did not answer within the bound (``StreamSpec.broker_timeout``)."""


class BoundedCalls:
    """Runs a client call that takes no timeout (librdkafka's synchronous ``commit``, ``close``)
    on one daemon thread and waits for it at most ``timeout_s``: a broker that stops answering
    mid-request can leave such a call waiting for good. A call past its bound raises
    ``BrokerUnreachable``; the thread stays with it (a daemon: it never holds up the process's
    exit) and every later call is refused at once (``stuck``), since it would queue behind."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.stuck: str | None = None  # what the call that overran its bound was

    def _serve(self) -> None:
        while True:
            fn, box, done = self._jobs.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the waiting caller
                box.append((False, exc))
            done.set()

    def __call__(self, what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
        if self.stuck is not None:
            raise BrokerUnreachable(f"{what}: not tried, {self.stuck} is still waiting for the broker")
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="kafka-bounded-calls", daemon=True)
            self._thread.start()
        box: list[tuple[bool, Any]] = []
        done = threading.Event()
        self._jobs.put((fn, box, done))
        if not done.wait(timeout_s):
            self.stuck = what
            raise BrokerUnreachable(f"{what}: no answer within {timeout_s:.0f} s")
        ok, value = box[0]
        if ok:
            return value
        raise value


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
        """Whether a broker answers now (waits about a second at most; called only while idle)."""

    def close(self) -> None: ...

