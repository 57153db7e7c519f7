"""What the UI tests share: an MLflow store filled by really running the demo pipeline through
Airflow (``dag.test()``: v1 promoted, v2 rejected by the champion comparison; two drift runs), a
real ``airflow api-server`` with the package's plugin, and headless Chromium.

The plugin is found through the ``airflow.plugins`` entry point of the installed package. When the
installed metadata predates that entry point (an editable install made before it was added), a
throw-away ``*.dist-info`` declaring it is put on the api-server's PYTHONPATH instead — the same
discovery path Airflow uses, nothing copied into a plugins folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

from tests.airflow_stack import BIN, free_port
from tests.conftest import REPO

ENTRY_POINT = "airflow_mlops = airflow_mlops.ui.plugin:MlopsUiPlugin"


def plugin_path(folder: Path) -> str:
    """PYTHONPATH for the api-server: the repository, and a dist-info declaring the entry point
    when the installed package's metadata lacks it."""
    declared = any(ep.value == "airflow_mlops.ui.plugin:MlopsUiPlugin"
                   for ep in metadata.entry_points(group="airflow.plugins"))
    paths = [str(REPO)]
    if not declared:
        info = folder / "airflow_mlops_ui_entry_point-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: airflow-mlops-ui-entry-point\nVersion: 0\n")
        (info / "entry_points.txt").write_text(f"[airflow.plugins]\n{ENTRY_POINT}\n")
        paths.append(str(folder))
    return os.pathsep.join(paths)


def http(url: str, token: str | None = None, timeout: float = 30) -> tuple[int, str]:
    """``(status, body)`` of a GET (errors included)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class ApiServer:
    """``airflow api-server`` on a free port against the test session's metadata DB."""

    def __init__(self, home: Path, mlops_home: Path, all_admins: bool, **config: str):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW__API"))}
        env.update(
            PYTHONPATH=plugin_path(home / "entry-point"),
            AIRFLOW_MLOPS_HOME=str(mlops_home),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=str(all_admins),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
            AIRFLOW__API_AUTH__JWT_SECRET="airflow-mlops-ui-tests-only",
            AIRFLOW__API__BASE_URL=self.url,
            PYTHONUNBUFFERED="1",
        )
        env.update({f"AIRFLOW__{k.upper().replace('.', '__')}": v for k, v in config.items()})
        (home / "passwords.json").write_text(json.dumps({"admin": "ui-test-password"}))
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> "ApiServer":
        out = open(self.home / "api-server.out", "wb")
        self.process = subprocess.Popen([str(BIN / "airflow"), "api-server", "--port", str(self.port)], env=self.env,
                                        stdout=out, stderr=subprocess.STDOUT, cwd=self.home, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"api-server exited {self.process.returncode}:\n{self.output()[-4000:]}")
            try:
                if http(f"{self.url}/api/v2/monitor/health", timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"api-server not up in {timeout:.0f} s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return (self.home / "api-server.out").read_text(errors="replace")

    def token(self) -> str:
        request = urllib.request.Request(f"{self.url}/auth/token", method="POST",
                                         data=json.dumps({"username": "admin", "password": "ui-test-password"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["access_token"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(binary: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM after the page's scripts ran (``--dump-dom``); with ``screenshot``, also a PNG of
    the page at 1280×800."""
    base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1280,800", "--virtual-time-budget=15000"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    if dom.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom {url} exited {dom.returncode}:\n{dom.stderr[-3000:]}")
    if screenshot is not None:
        shot = subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=120)
        if shot.returncode != 0 or not screenshot.exists():
            raise RuntimeError(f"chromium --screenshot {url} exited {shot.returncode}:\n{shot.stderr[-3000:]}")
    return dom.stdout
