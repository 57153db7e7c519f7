"""serve, online mode, on one machine: an MLflow model server for the validated version, checked
with a real prediction over REST before the task succeeds. A newer version replaces the server
the pipeline started before (its PID is kept beside the stage's outputs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops._core.context import StageContext
from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.paths import mlops_home
from airflow_mlops._core.storage import is_remote
from airflow_mlops.stages.data import read_dataset, read_input

if TYPE_CHECKING:
    from airflow_mlops.spec.models import ServeStage

START_TIMEOUT_S = 120


def run(spec: "ServeStage", ctx: StageContext) -> dict[str, Any]:
    from airflow_mlops.stages.serve.model import serving_model

    served = serving_model(spec.model, ctx)
    model_uri = served["model_uri"]
    # Per pipeline, not per run; the server runs on this worker, so its state is on this worker's
    # disk (under AIRFLOW_MLOPS_HOME when data_dir is object storage).
    root = Path(mlops_home()) / "serving" / ctx.pipeline_id if is_remote(ctx.data_dir) else Path(ctx.data_dir)
    state = root / ctx.stage_name / "online.json"
    stop_previous(state, ctx)
    env = {**os.environ, "MLFLOW_TRACKING_URI": ctx.mlflow.tracking_uri, "MLFLOW_REGISTRY_URI": ctx.mlflow.tracking_uri,
           # MLflow starts `uvicorn` from PATH: put this interpreter's scripts first, since a worker
           # started as .venv/bin/airflow has no activated virtualenv.
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    log_path = state.with_name("online-server.log")
    state.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", spec.host, "-p", str(spec.port), "-w", str(spec.workers)]
    # Its own session: the server outlives this task (that is the point), and a later run can stop it.
    with open(log_path, "ab") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://{spec.host}:{spec.port}"
    state.write_text(json.dumps({"pid": server.pid, "endpoint": endpoint, "model_uri": model_uri}))
    ctx.log.info("Started the MLflow model server for %s at %s (pid %d, log %s)", model_uri, endpoint, server.pid, log_path)
    wait_ready(endpoint, server, log_path)

    sample = read_input(spec.input, ctx.data_conn_id) if spec.input else read_dataset(ctx.find("test_path"), conn_id=ctx.data_conn_id)
    answer = predict(endpoint, sample.head(5), ctx.find("features", required=False))
    ctx.log.info("The server answered a prediction for 5 rows: %s", answer)
    return {"endpoint": f"{endpoint}/invocations", "pid": server.pid, **served, "sample_predictions": answer}


def stop_previous(state: Path, ctx: StageContext) -> None:
    if not state.exists():
        return
    old = json.loads(state.read_text())
    try:
        os.killpg(old["pid"], signal.SIGTERM)
        ctx.log.info("Stopped the model server for %s (pid %d)", old["model_uri"], old["pid"])
    except ProcessLookupError:
        return
    for _ in range(100):  # the port must be free before the new server binds it
        try:
            os.kill(old["pid"], 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(old["pid"], signal.SIGKILL)


def wait_ready(endpoint: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            raise StageFailed(f"the model server exited with code {server.returncode}:\n" + "\n".join(tail))
        try:
            with urllib.request.urlopen(f"{endpoint}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise StageFailed(f"the model server at {endpoint} did not answer /ping within {START_TIMEOUT_S}s (log: {log_path})")


def predict(endpoint: str, rows: Any, features: list[str] | None) -> list[Any]:
    frame = rows[features] if features else rows
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
    request = urllib.request.Request(f"{endpoint}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"]
