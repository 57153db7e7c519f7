"""A task runner whose worker died ends itself (``_core/orphan.py``), with what it started:
real processes, the parent killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO

# The parent: starts the "task runner" in a process group of its own (as Airflow 3.3's
# supervisor does), prints its pid, and waits.
PARENT = """
import subprocess, sys, time
# The task's stderr is a pipe the parent holds, as Airflow's supervisor holds a socket: when the
# parent dies, writing to it fails.
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True,
                         stderr=subprocess.PIPE)
print(child.pid, flush=True)
time.sleep(300)
"""
# The task runner: watches its parent, starts a grandchild in its group (a spark-submit, a data
# loader), writes both pids, and works for a long time.
TASK = """
import subprocess, sys, time
from airflow_mlops._core.orphan import end_with_parent
end_with_parent(interval=0.2)
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[1], "w").write(f"{helper.pid}")
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_task_whose_worker_died_ends_with_what_it_started(tmp_path):
    helper_file = tmp_path / "helper.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, TASK, str(helper_file)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    task = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not (helper_file.exists() and helper_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    helper = int(helper_file.read_text())
    time.sleep(1)
    assert alive(task) and alive(helper)  # the watch leaves a task with its worker alone

    parent.send_signal(signal.SIGKILL)  # the worker dies; the task runner is orphaned
    parent.wait(10)
    deadline = time.monotonic() + 20
    while (alive(task) or alive(helper)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(task), "the orphaned task runner went on working"
    assert not alive(helper), "what the task runner started went on working"
