"""A production-shaped Airflow on this machine, started by the tests: nothing shared but services.

- Postgres 15 (Debian's ``postgresql``): the Airflow metadata DB and the MLflow tracking store;
- Redis 7 (Debian's ``redis-server``): the Celery broker;
- an S3-protocol server (moto's): the stage-data bucket and MLflow's artifact store;
- ``mlflow server`` on Postgres with artifacts in the bucket (clients upload through the server);
- Airflow 3 with the CeleryExecutor: scheduler, dag-processor, triggerer and api-server as their own
  processes, and **two Celery workers**, each with its own empty ``AIRFLOW_HOME``, working
  directory, ``AIRFLOW_MLOPS_HOME``, log server port and its own copy of the dags folder (as each
  machine's git-sync would have). Worker ``a`` listens on queues ``default`` and ``a``, worker
  ``b`` on ``default`` and ``b``: a stage's ``queue:`` pins it to one.

Workers get no ``AWS_*`` or ``MLFLOW_*`` variable: they reach the bucket and MLflow only through
the Airflow connections stored in Postgres (``airflow connections add``), as on a deployment.
Everything listens on 127.0.0.1 at free ports and is stopped by PID at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port, stop_process_groups  # noqa: F401 (free_port: re-exported for the tests)
from tests.s3_helpers import S3Server
from tests.servers import TrackingServer

BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
CONTROL = ("scheduler", "dag-processor", "triggerer", "api-server")
WORKERS = ("a", "b")


def available() -> str | None:
    """Why the deployment cannot be built here, or None."""
    if not (PG_BIN / "initdb").exists():
        return "Postgres 15 is not installed (apt-get install postgresql; scripts/setup.sh does it as root)"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    return None


def _wait(check, what: str, timeout: float, alive=None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001,S110 - not up yet
            pass
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")
        time.sleep(0.5)


class Postgres:
    """One server, one superuser ``airflow`` (trust auth on 127.0.0.1), databases made on demand.
    The server refuses to run as root: as root it runs as the ``postgres`` user."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="airflow-mlops-pg-"))
        self.port = free_port()

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def start(self) -> "Postgres":
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        data = self.folder / "data"
        subprocess.run(self._as_owner([str(PG_BIN / "initdb"), "-D", str(data), "-U", "airflow", "--auth=trust"]),
                       check=True, capture_output=True)
        subprocess.run(self._as_owner([
            str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "log"), "-w", "-t", "60",
            "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=300 "
                  "-c fsync=off -c synchronous_commit=off"]) + ["start"], check=True, capture_output=True)
        return self

    def create(self, database: str) -> str:
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "airflow", database],
                       check=True, capture_output=True)
        return self.url(database)

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://airflow@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        subprocess.run(self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
                                       "stop"]), capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


class Deployment:
    """The whole deployment. ``start()`` brings up the services, migrates Airflow's DB on Postgres,
    stores the connections and starts the Airflow components; ``stop()`` ends everything."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.dags = self.home / "control" / "dags"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.postgres = Postgres()
        self.redis_port = free_port()
        self.s3 = S3Server(self.home)
        self.mlflow_port = free_port()
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self.bucket = ""

    # -- environment ----------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "MLFLOW_", "AWS_", "AIRFLOW_MLOPS"))}
        sql = self.postgres.url("airflow", "postgresql+psycopg2")
        env.update(
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="airflow.providers.celery.executors.celery_executor.CeleryExecutor",
            AIRFLOW__CORE__PARALLELISM="8",
            AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="600",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sql,
            AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            AIRFLOW__CELERY__RESULT_BACKEND=self.postgres.url("airflow", "db+postgresql"),
            AIRFLOW__CELERY__WORKER_CONCURRENCY="2",
            AIRFLOW__CELERY__SYNC_PARALLELISM="1",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__BASE_URL=self.url,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__API_AUTH__JWT_SECRET="airflow-mlops-tests-only",
            AIRFLOW__CORE__FERNET_KEY="",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
            AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="2",
            AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="1200",
            # A worker killed under a task: its task is failed (and retried) 30 s after its last heartbeat.
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="30",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _bundle(self, dags: Path) -> str:
        return json.dumps([{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                            "kwargs": {"path": str(dags)}}])

    def control_env(self) -> dict[str, str]:
        """The scheduler's, dag-processor's, triggerer's, api-server's and the CLI's."""
        env = self._base_env()
        home = self.home / "control"
        env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(self.dags),
                   AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST=self._bundle(self.dags),
                   AIRFLOW_MLOPS_HOME=str(home / "mlops"))
        return env

    def worker_home(self, name: str) -> Path:
        return self.home / f"worker-{name}"

    def worker_env(self, name: str) -> dict[str, str]:
        env = self._base_env()
        home = self.worker_home(name)
        env.update(AIRFLOW_HOME=str(home / "airflow"), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
                   AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST=self._bundle(home / "dags"),
                   AIRFLOW_MLOPS_HOME=str(home / "mlops"),
                   AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()))
        return env

    # -- life -----------------------------------------------------------------------------------

    def start(self, timeout: float = 600) -> "Deployment":
        for folder in ("control/dags", "control/mlops"):
            (self.home / folder).mkdir(parents=True, exist_ok=True)
        self.postgres.start()
        self.postgres.create("airflow")
        mlflow_db = self.postgres.create("mlflow")
        self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], os.environ.copy(), self.home)
        self.s3.start()
        self.bucket = self.s3.bucket("deployment")
        # Launched here, waited for below (it starts while the Airflow components do).
        self.mlflow = TrackingServer(self.home, backend_store_uri=mlflow_db, port=self.mlflow_port,
                                     artifacts_destination=f"s3://{self.bucket}/mlflow", log=self.home / "mlflow.out",
                                     env={**self.s3.env, "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint}).launch()
        self.processes["mlflow"] = self.mlflow.process  # stopped, and checked alive, with the others
        self.cli("db", "migrate", timeout=timeout)
        self.cli("connections", "add", "stage_data", "--conn-type", "aws", "--conn-login", "testing",
                 "--conn-password", "testing", "--conn-extra",
                 json.dumps({"endpoint_url": self.s3.endpoint, "region_name": "us-east-1"}))
        self.cli("connections", "add", "mlflow_server", "--conn-uri", self.mlflow_uri)
        for name in CONTROL:
            args = [str(BIN / "airflow"), name] + (["--port", str(self.port)] if name == "api-server" else [])
            self._spawn(name, args, self.control_env(), self.home / "control")
        for name in WORKERS:
            self.start_worker(name)
        self.mlflow.wait(timeout)
        self.wait_healthy(timeout)
        return self

    def start_worker(self, name: str) -> None:
        """Start (or start again, after ``kill``) Celery worker ``name`` on queues default and ``name``."""
        home = self.worker_home(name)
        for folder in ("airflow", "dags", "mlops", "cwd"):
            (home / folder).mkdir(parents=True, exist_ok=True)
        self._spawn(f"worker-{name}", [str(BIN / "airflow"), "celery", "worker", "-q", f"default,{name}",
                                       "--celery-hostname", f"worker_{name}@%h", "--concurrency", "2"],
                    self.worker_env(name), home / "cwd")

    def _spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        out = open(self.home / f"{name}.out", "ab")  # noqa: SIM115 - kept open for the process's life
        self.processes[name] = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a component's whole process group (a worker and the task processes it forked)."""
        process = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, sig)
            process.wait(60)

    def stop(self) -> None:
        stop_process_groups(self.processes.values())
        self.s3.stop()
        self.postgres.stop()

    def _check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items()
                if p.poll() is not None and not name.startswith("worker-")}
        if dead:
            raise RuntimeError(f"deployment component(s) exited: {dead}\n{self.output_tail()}")

    def wait_healthy(self, timeout: float) -> None:
        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as r:
                health = json.load(r)
            return all((health.get(p) or {}).get("status") == "healthy"
                       for p in ("metadatabase", "scheduler", "triggerer", "dag_processor"))
        _wait(healthy, "Airflow", timeout, self._check_alive)

    # -- use ------------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run([str(BIN / "airflow"), *args], env=self.control_env(), cwd=self.home / "control",
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        return done.stdout

    def publish(self, files: dict[str, str]) -> None:
        """Write DAG files into the dags folder of the control plane and of every worker (what each
        machine's git-sync would have)."""
        for dags in [self.dags] + [self.worker_home(w) / "dags" for w in WORKERS]:
            dags.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (dags / name).write_text(text)

    def token(self) -> str:
        request = urllib.request.Request(f"{self.url}/auth/token")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["access_token"]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The REST API, as the UI calls it."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/api/v2{path}", data=data, method=method,
                                         headers={"Authorization": f"Bearer {self.token()}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 300) -> None:
        def parsed() -> bool:
            found = {d["dag_id"] for d in self.api("GET", "/dags?limit=1000")["dags"]}
            return set(dag_ids) <= found
        try:
            _wait(parsed, f"DAGs {dag_ids}", timeout, self._check_alive)
        except TimeoutError:
            errors = self.api("GET", "/importErrors")
            raise TimeoutError(f"DAGs {dag_ids} not parsed; import errors: {errors}") from None

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, str]:
        """Until the run ends; ``{task_id: state}``."""
        from urllib.parse import quote

        states: dict[str, str] = {}

        def done() -> bool:
            nonlocal states
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id)}")
            tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances")["task_instances"]
            states = {ti["task_id"]: ti["state"] for ti in tis}
            return run["state"] in ("success", "failed")
        try:
            _wait(done, f"run {run_id} of {dag_id}", timeout, self._check_alive)
        except TimeoutError:
            raise TimeoutError(f"run {run_id} of {dag_id} did not finish: {states}\n{self.output_tail()}") from None
        return states

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        from urllib.parse import quote

        return self.api("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}")

    def worker_logs(self, name: str, dag_id: str, run_id: str) -> dict[str, list[Path]]:
        """The task log files worker ``name`` wrote for the run: ``{task_id: [files]}`` (a worker
        writes its tasks' logs into its own AIRFLOW_HOME: where a log is, the task ran)."""
        found: dict[str, list[Path]] = {}
        root = self.worker_home(name) / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for path in sorted(root.glob("task_id=*/**/*.log")):
            task = next(p for p in path.parts if p.startswith("task_id=")).split("=", 1)[1]
            found.setdefault(task, []).append(path)
        return found

    def output(self, name: str) -> str:
        path = self.home / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def output_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {name} ---\n" + "\n".join(self.output(name).splitlines()[-lines:])
                         for name in self.processes)
