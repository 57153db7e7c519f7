"""Where results go: the tracking URI precedence, with connections from Airflow's own env-var backend."""

from __future__ import annotations

import json

from airflow_mlops.hooks.mlflow import resolve_target
from airflow_mlops.spec.models import MlflowSettings


def test_precedence_yaml_then_connection_then_env_then_local_sqlite(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_TRACKING", json.dumps(
        {"conn_type": "mlflow", "host": "mlflow.internal", "port": 5000, "schema": "https", "login": "ml", "password": "s3cret"}
    ))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    monkeypatch.setenv("AIRFLOW_MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)

    both = MlflowSettings(tracking_uri="http://from-yaml:5000", conn_id="tracking")
    assert resolve_target(both, "p").tracking_uri == "http://from-yaml:5000"

    target = resolve_target(MlflowSettings(conn_id="tracking", experiment="e", registered_model="m"), "p")
    assert (target.tracking_uri, target.experiment, target.registered_model) == ("https://mlflow.internal:5000", "e", "m")
    assert target.artifact_location is None  # a server decides where its artifacts go
    import os

    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ml"

    assert resolve_target(MlflowSettings(), "p").tracking_uri == "http://from-env:5000"

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    local = resolve_target(MlflowSettings(), "pipe")
    assert local.tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert local.tracking_uri.startswith("sqlite:////")  # absolute: the same store from every worker
    assert local.artifact_location == str(tmp_path / "home" / "mlartifacts")
    assert (local.experiment, local.registered_model) == ("pipe", "pipe")


def test_connection_host_may_hold_the_whole_uri(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_TRACKING_URI", json.dumps({"conn_type": "mlflow", "host": "http://tracking:5000"}))
    assert resolve_target(MlflowSettings(conn_id="tracking_uri"), "p").tracking_uri == "http://tracking:5000"
