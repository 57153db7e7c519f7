"""``BoundedCalls``: a client call that takes no timeout (librdkafka's synchronous commit and
close) is waited for at most its bound. The broker-loss test (test_stream_broker_loss.py) is where
a real commit overran: sent to a broker that died mid-request, it waited past 60 s."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_mlops.stream._clients import BoundedCalls, BrokerUnreachable


def test_results_and_errors_come_back_from_the_thread():
    calls = BoundedCalls()
    assert calls("commit", lambda: [1, 2], 5) == [1, 2]
    with pytest.raises(KeyError, match="boom"):
        calls("commit", lambda: {}["boom"], 5)
    assert calls("close", lambda: threading.current_thread().name, 5) == "kafka-bounded-calls"
    assert calls.stuck is None


def test_a_call_past_its_bound_is_a_lost_broker_and_later_calls_are_refused_at_once():
    calls = BoundedCalls()
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=r"^commit: no answer within 1 s$"):
        calls("commit", release.wait, 1.0)
    assert 0.9 <= time.monotonic() - started < 30
    assert calls.stuck == "commit"
    ran = []  # refused, not queued behind the stuck call (which would wait its 60 s bound)
    with pytest.raises(BrokerUnreachable, match="close: not tried, commit is still waiting for the broker"):
        calls("close", lambda: ran.append(1), 60)
    assert ran == []
    release.set()  # the stuck call ends; its daemon thread never held up the test either way
