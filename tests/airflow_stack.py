"""A real Airflow deployment for tests: its own AIRFLOW_HOME and SQLite metadata DB, and the
api-server, scheduler (LocalExecutor), dag-processor and triggerer each as their own process, as a
platform team runs them. Slow to start (a minute or two on a busy machine): one per test session,
shared by the tests that need what only separate processes show (a trigger run by
``airflow triggerer``, a connection found only in the metadata DB, the UI in a browser).

Nothing of the test process's Airflow settings leaks in: every ``AIRFLOW__*`` and ``AIRFLOW_CONN_*``
variable is dropped from the environment the processes get.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port, stop_process_groups

BIN = Path(sys.executable).parent
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# The loader file (Airflow's safe-mode discovery reads only files that say "airflow" and "dag").
LOADER = ("# Airflow DAGs from the pipeline YAMLs in this folder\n"
          "from airflow_mlops import load_pipelines\n\nload_pipelines(globals())\n")


class AirflowStack:
    """``start()`` migrates the DB and starts the four components; ``stop()`` ends them.

    :param home: an empty folder: AIRFLOW_HOME, the DB, the dags folder (``home/dags``), the logs
        and each component's output (``home/<component>.out``).
    """

    def __init__(self, home: Path):
        self.home = Path(home)
        self.dags = self.home / "dags"
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "MLFLOW_"))}
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM="4",
            AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="600",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.home / 'airflow.db'}",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{self.port}",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{self.port}/execution/",
            # Every process signs and checks the task tokens with the same secret.
            AIRFLOW__API_AUTH__JWT_SECRET="airflow-mlops-tests-only",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
            AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="2",
            AIRFLOW_MLOPS_HOME=str(self.home / "mlops"),
            PYTHONUNBUFFERED="1",
        )
        self.env = env

    # -- life ---------------------------------------------------------------------------------

    def start(self, timeout: float = 300) -> "AirflowStack":
        self.dags.mkdir(parents=True, exist_ok=True)
        self.cli("db", "migrate", timeout=timeout)
        for name in COMPONENTS:
            out = open(self.home / f"{name}.out", "wb")
            args = [str(BIN / "airflow"), name] + (["--port", str(self.port)] if name == "api-server" else [])
            self.processes[name] = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                    cwd=self.home, start_new_session=True)
        self.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        stop_process_groups(self.processes.values())

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        """Until ``/api/v2/monitor/health`` reports scheduler, triggerer and dag processor healthy."""
        deadline = time.monotonic() + timeout
        health: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=5) as r:
                    health = json.load(r)
                if all((health.get(part) or {}).get("status") == "healthy"
                       for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                    return health
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"Airflow did not become healthy in {timeout:.0f} s: {health}\n{self.output_tail()}")

    def _check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow component(s) exited: {dead}\n{self.output_tail()}")

    # -- use ----------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 300) -> str:
        """``airflow <args>`` against this deployment; its stdout, or RuntimeError with its output."""
        done = subprocess.run([str(BIN / "airflow"), *args], env=self.env, cwd=self.home, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}"
                               f"\n{done.stderr[-3000:]}")
        return done.stdout

    def cli_json(self, *args: str) -> Any:
        """``airflow <args> -o json``, parsed (lines Airflow logs to stdout before the JSON skipped)."""
        out = self.cli(*args, "-o", "json")
        start = min((i for i in (out.find("\n["), out.find("\n{")) if i >= 0), default=-1)
        text = out if out.lstrip().startswith(("[", "{")) else out[start + 1:] if start >= 0 else "[]"
        return json.loads(text.strip() or "[]")

    def output(self, component: str) -> str:
        return (self.home / f"{component}.out").read_text(errors="replace")

    def output_tail(self, lines: int = 40) -> str:
        return "\n".join(f"--- {name} ---\n" + "\n".join(self.output(name).splitlines()[-lines:])
                         for name in self.processes)

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Until the dag processor has parsed ``dag_id`` into the metadata DB."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            listed = self.cli_json("dags", "list")
            if any(d.get("dag_id") == dag_id for d in listed):
                return
            time.sleep(3)
        errors = self.cli("dags", "list-import-errors")
        raise TimeoutError(f"DAG {dag_id} was not parsed in {timeout:.0f} s; import errors:\n{errors}")

    def run_dag(self, dag_id: str, timeout: float = 300) -> dict[str, str]:
        """Unpause and trigger ``dag_id``, wait for the run to finish; ``{task_id: state}``."""
        self.cli("dags", "unpause", dag_id)
        run_id = f"test__{int(time.time() * 1000)}"
        self.cli("dags", "trigger", dag_id, "--run-id", run_id)
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            rows = self.cli_json("tasks", "states-for-dag-run", dag_id, run_id)
            states = {row["task_id"]: row["state"] for row in rows}
            if states and all(s in ("success", "failed", "skipped", "upstream_failed") for s in states.values()):
                return states
            time.sleep(3)
        raise TimeoutError(f"run {run_id} of {dag_id} did not finish in {timeout:.0f} s: {states}\n"
                           f"{self.output_tail()}")

    def task_log(self, dag_id: str, task_id: str) -> str:
        """Every log file the task wrote (all tries), concatenated."""
        files = sorted((self.home / "logs").glob(f"dag_id={dag_id}/**/task_id={task_id}/**/*.log"))
        return "\n".join(f.read_text(errors="replace") for f in files)
