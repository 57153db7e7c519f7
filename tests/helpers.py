"""Small helpers shared by the tests."""

from __future__ import annotations

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
