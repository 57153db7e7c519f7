"""An S3-protocol server on loopback for the tests: moto's standalone server (the one s3fs's own test
suite runs against), from its own virtualenv ``.venv-moto`` that ``scripts/setup.sh`` creates (moto
pins libraries Airflow needs other versions of). One server per test session; each test makes its
own bucket. Clients find it through the standard ``AWS_ENDPOINT_URL`` variables and dummy keys,
as a deployment's workers would find MinIO or a cloud endpoint."""

from __future__ import annotations

import os
import subprocess
import urllib.request
import uuid
from pathlib import Path

from tests.conftest import REPO
from tests.helpers import free_port, wait_for_http

MOTO = REPO / ".venv-moto" / "bin" / "moto_server"


class S3Server:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "S3Server":
        if not MOTO.exists():
            raise RuntimeError(f"{MOTO} is missing: run scripts/setup.sh (it installs moto[server] there)")
        log = open(self.folder / "moto.log", "w")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_http(f"{self.endpoint}/moto-api/", self.process, "moto server", 60, interval=0.2,
                      detail=lambda: f": {(self.folder / 'moto.log').read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    @property
    def env(self) -> dict[str, str]:
        """What a worker needs to reach it: the endpoint and (any) keys, the standard variables."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def bucket(self, prefix: str = "bucket") -> str:
        """A new bucket's name."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(keys)


def s3_environment(server: S3Server, monkeypatch) -> None:
    """This process (and the processes it starts) reaching ``server`` as its S3."""
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    os.environ.pop("AWS_PROFILE", None)
