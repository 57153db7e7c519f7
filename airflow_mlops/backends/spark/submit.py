"""spark-submit bounded by ``spark.connect_timeout`` when the standalone master goes away.

Before submitting, the master must accept a connection (``stages.spark_master.check_master``).
If it goes away between that check and the application's registration, Spark's client logs
"Failed to connect to master" and tries again every 20 s, three times, fixed: ``MasterWatch``
reads spark-submit's output as the provider's hook logs it and stops spark-submit (the hook's
``on_kill``) once the master has refused it for ``connect_timeout`` seconds with no
"Connected to Spark cluster" line. A driver stopped before registering leaves no application on
the master; one that registered is not watched (the master keeps running applications going).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

REGISTERED = "Connected to Spark cluster"  # StandaloneSchedulerBackend, once the master took the app
REFUSED = "Failed to connect to master"  # StandaloneAppClient, each failed attempt


class MasterWatch:
    """Watches one spark-submit of ``hook`` (a SparkSubmitHook) for ``timeout`` seconds of refusal.

    ``gave_up``: True once it stopped spark-submit; ``refused_for``: seconds the master refused."""

    def __init__(self, hook: Any, timeout: float):
        self.hook, self.timeout = hook, timeout
        self.registered = threading.Event()
        self.done = threading.Event()
        self.refused_since: float | None = None
        self.gave_up = False
        self.refused_for = 0.0
        self.last_line = ""
        process_log = getattr(hook, "_process_spark_submit_log", None)
        if process_log is None:  # a provider without it: the check before submitting still holds
            return

        def watched(itr: Iterator[Any]) -> Any:
            return process_log(self._lines(itr))

        hook._process_spark_submit_log = watched

    def _lines(self, itr: Iterator[Any]) -> Iterator[Any]:
        for line in itr:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
            if REGISTERED in text:
                self.registered.set()
            elif REFUSED in text and self.refused_since is None:
                self.refused_since = time.monotonic()
                self.last_line = text.strip()
            yield line

    def __enter__(self) -> "MasterWatch":
        threading.Thread(target=self._watch, name="spark-master-watch", daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()

    def _watch(self) -> None:
        while not self.done.wait(0.5):
            if self.registered.is_set():
                return
            if self.refused_since is not None and time.monotonic() - self.refused_since >= self.timeout:
                self.refused_for = time.monotonic() - self.refused_since
                self.gave_up = True
                self.hook.on_kill()
                return
