"""Ending a task's work when the process that launched it is gone.

Airflow 3.3 starts each task runner in a process group of its own, under a supervisor process in
the worker. When the worker dies with its supervisor (SIGKILL, the OOM killer, a Celery worker
restarted hard), the task runner lives on as an orphan: it cannot report its outcome any more,
Airflow retries the task on another worker after the heartbeat timeout, and the orphan meanwhile
finishes the same training and registers a second model version (seen on the deployment test:
two versions for one task). ``end_with_parent`` stops that: a daemon thread notices the parent's
death within ``interval`` seconds and ends this process, and the processes of its group with it
when it leads one (a spark-submit, a trainer's data loaders). A stage pod is not a process here:
it keeps running, and the retry takes it over.

The training subprocess (``stages/train/runner.py``) calls it too, so it ends with its task.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_started: set[int] = set()  # the pids that watch: once per process, forks included


def end_with_parent(interval: float = 1.0, what: str = "task") -> None:
    """Start (once per process) the watch that ends this process when its parent dies.

    Does nothing in a process whose parent is already init (1): there is nothing to watch, as
    with ``airflow dags test`` run from a container's entry point."""
    pid, parent = os.getpid(), os.getppid()
    if pid in _started or parent == 1:
        return
    _started.add(pid)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                break
        try:  # its stderr most likely went to the dead parent: nobody may read this
            sys.stderr.write(f"airflow-mlops: the process that started this {what} (pid {parent}) is gone; "
                             f"ending pid {pid}: a retry of the {what} does its work\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a broken pipe must not keep the orphan alive
            pass
        if os.getpgrp() == pid:  # its own group: the processes it started go too
            os.killpg(pid, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="airflow-mlops-end-with-parent", daemon=True).start()
