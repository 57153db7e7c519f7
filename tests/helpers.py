"""Small helpers shared by the tests."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def extra_links(dag_id: str, run_id: str, task_id: str) -> dict[str, str | None]:
    """What the Airflow UI gets from the API server for a task instance's extra links."""
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    app = create_app()  # also sets up the auth manager
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    response = TestClient(app).get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links",
        headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()["extra_links"]


def train_job(tmp_path: Path, **kwargs):
    """A GpuTrainJob for the train tests: the forest entrypoint, a SQLite MLflow store and a
    checkpoint folder under ``tmp_path``, the tags of try 1 of task 'train'; ``kwargs`` override."""
    from airflow_mlops.stages.train.job import GpuTrainJob
    from tests.conftest import REPO

    base = dict(entrypoint="tests.gpu_entrypoints:train_forest", hyperparams={"n_estimators": 5, "random_state": 0},
                checkpoint_dir=str(tmp_path / "ckpt"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                experiment="gpu", registered_model="gpu_model", artifact_location=str(tmp_path / "artifacts"),
                run_name="p.train", env={"PYTHONPATH": str(REPO)},
                tags={"airflow_mlops.task_key": "p/run-1/train", "airflow.try_number": "1", "airflow.task_id": "train",
                      "airflow.run_id": "run-1", "airflow.dag_id": "p"})
    base.update(kwargs)
    return GpuTrainJob(**base)


def checkpoint_tries(checkpoint_dir) -> list[dict]:
    """What each try of a tests.gpu_entrypoints training saw (its ``tries.jsonl``)."""
    import json

    return [json.loads(line) for line in (Path(checkpoint_dir) / "tries.jsonl").read_text().splitlines()]


def release_asset_names(prefix: str) -> None:
    """Deactivate the assets whose name starts with ``prefix`` in the session's metadata DB.

    An earlier test's pipeline of the same id (under another AIRFLOW_MLOPS_HOME, so other URIs)
    leaves its same-named assets active; Airflow then keeps the new ones inactive and refuses the
    tasks that produce them (AirflowInactiveAssetInInletOrOutletException). In a deployment the
    scheduler's orphanage pass settles this; tests run no scheduler."""
    from airflow.models.asset import AssetActive
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(AssetActive).where(AssetActive.name.startswith(prefix)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process, what: str, timeout: float, interval: float = 0.5, detail=lambda: "") -> None:
    """Until ``url`` answers (a server ``process`` started): RuntimeError ``<what> did not
    start<detail()>`` after ``timeout`` seconds, or as soon as the process has died."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{what} did not start{detail()}") from None
            time.sleep(interval)


def stop_process_groups(processes) -> None:
    """SIGTERM each process's group, wait up to 30 s in all, then SIGKILL what is left."""
    import os
    import signal
    import subprocess
    import time

    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
