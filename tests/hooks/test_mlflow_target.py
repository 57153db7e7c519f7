"""Where results go: the tracking URI precedence, with connections from Airflow's own env-var backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_mlops._core.mlflow import use_credentials
from airflow_mlops.hooks.mlflow import resolve_target
from airflow_mlops.spec.models import MlflowSettings
from tests.conftest import REPO
from tests.helpers import write


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
    # The login goes with the target, never into the resolving process's environment.
    assert target.credentials == {"MLFLOW_TRACKING_USERNAME": "ml", "MLFLOW_TRACKING_PASSWORD": "s3cret"}
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ

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


# -- Airflow connections, however the form was filled ----------------------------------------------

CONNECTION_FORMS = [
    pytest.param({"conn_type": "mlflow", "host": "mlflow.internal", "port": 5000, "schema": "https"},
                 "https://mlflow.internal:5000", id="host-port-scheme-in-schema"),
    pytest.param({"conn_type": "mlflow", "host": "http://mlflow:5000"}, "http://mlflow:5000", id="uri-in-host"),
    pytest.param({"conn_type": "mlflow", "host": "http://mlflow", "port": 5000}, "http://mlflow:5000",
                 id="uri-in-host-port-field"),
    pytest.param({"conn_type": "mlflow", "host": "http://mlflow:5000", "port": 6000}, "http://mlflow:5000",
                 id="uri-in-host-keeps-its-port"),
    pytest.param({"conn_type": "mlflow", "host": "mlflow.example.com/tracking", "port": 8443, "schema": "https"},
                 "https://mlflow.example.com:8443/tracking", id="host-with-path-and-port"),
    pytest.param({"conn_type": "mlflow", "host": "https://mlflow.example.com/tracking/", "port": 8443},
                 "https://mlflow.example.com:8443/tracking", id="uri-with-path-and-port-field"),
    pytest.param({"conn_type": "http", "host": "mlflow", "port": 5000}, "http://mlflow:5000", id="http-type"),
    pytest.param({"conn_type": "https", "host": "mlflow.example.com"}, "https://mlflow.example.com", id="https-type"),
    pytest.param({"conn_type": "http", "host": "mlflow", "schema": "https"}, "https://mlflow",
                 id="http-type-https-schema"),
    pytest.param("https://mlflow.example.com:443/tracking", "https://mlflow.example.com:443/tracking",
                 id="uri-form-path-lands-in-schema"),
    pytest.param("mlflow://mlflow:5000/tracking", "http://mlflow:5000/tracking", id="uri-form-mlflow-type"),
    pytest.param({"conn_type": "mlflow", "host": "sqlite:////srv/mlflow/mlflow.db"}, "sqlite:////srv/mlflow/mlflow.db",
                 id="sqlite-in-host"),
    pytest.param("sqlite:////srv/mlflow/mlflow.db", "sqlite:////srv/mlflow/mlflow.db", id="uri-form-sqlite"),
    pytest.param({"conn_type": "sqlite", "host": "/srv/mlflow/mlflow.db"}, "sqlite:////srv/mlflow/mlflow.db",
                 id="sqlite-type-path-in-host"),
    pytest.param({"conn_type": "mlflow", "host": "postgresql://ml:pw@db:5432/mlflow"},
                 "postgresql://ml:pw@db:5432/mlflow", id="database-uri-kept-as-written"),
]


@pytest.mark.parametrize("conn, expected", CONNECTION_FORMS)
def test_every_way_of_filling_the_connection_form_gives_the_tracking_uri(monkeypatch, conn, expected):
    monkeypatch.setenv("AIRFLOW_CONN_TRACKING_FORM", conn if isinstance(conn, str) else json.dumps(conn))
    assert resolve_target(MlflowSettings(conn_id="tracking_form"), "p").tracking_uri == expected


@pytest.mark.parametrize("conn", [
    pytest.param({"conn_type": "mlflow", "host": "mlflow:5000", "login": "ml", "password": "s3cr@t/x"}, id="fields"),
    pytest.param({"conn_type": "mlflow", "host": "http://ml:s3cr%40t%2Fx@mlflow:5000"}, id="userinfo-in-host"),
    pytest.param("https://ml:s3cr%40t%2Fx@mlflow:5000", id="uri-form"),
])
def test_credentials_become_mlflows_basic_auth_variables_never_part_of_the_uri(monkeypatch, conn):
    from airflow_mlops._core.context import StageContext
    from airflow_mlops._core.mlflow import use_credentials

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_TRACKING_AUTH", conn if isinstance(conn, str) else json.dumps(conn))
    target = resolve_target(MlflowSettings(conn_id="tracking_auth"), "p")
    uri = target.tracking_uri
    assert uri.endswith("://mlflow:5000") and "@" not in uri and "s3cr" not in uri
    assert target.credentials == {"MLFLOW_TRACKING_USERNAME": "ml", "MLFLOW_TRACKING_PASSWORD": "s3cr@t/x"}
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ  # resolving writes nothing into the process
    # Never shown, never serialised to a pod or spark-submit (they get a Secret / the environment).
    assert "s3cr" not in repr(target)
    ctx = StageContext(pipeline_id="p", stage_name="train", run_key="r", data_dir="/d", mlflow=target)
    assert "s3cr" not in json.dumps(ctx.to_dict()) and "s3cr" not in repr(ctx)
    # A task's own process gets them where MLflow's fluent API reads them, when its operator says so.
    use_credentials(target)
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("ml", "s3cr@t/x")


# -- one rule for every source of the URI --------------------------------------------------------


def test_a_relative_store_from_the_environment_or_a_connection_fails_and_writes_nothing(monkeypatch, tmp_path):
    from airflow_mlops.hooks.mlflow import TrackingUriError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    with pytest.raises(TrackingUriError) as info:
        resolve_target(MlflowSettings(), "p")
    assert str(info.value) == (
        "MLflow tracking URI from $MLFLOW_TRACKING_URI: a relative SQLite path depends on each worker's current "
        "directory; use an absolute one, e.g. 'sqlite:////srv/mlflow/mlflow.db' (four slashes), got "
        "'sqlite:///mlflow.db'. Nothing was written.")

    for conn, got in [({"conn_type": "mlflow", "host": "sqlite:///mlflow.db"}, "sqlite:///mlflow.db"),
                      ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
                      ({"conn_type": "mlflow", "host": "file:mlruns"}, "file:mlruns")]:
        monkeypatch.setenv("AIRFLOW_CONN_RELATIVE", conn if isinstance(conn, str) else json.dumps(conn))
        with pytest.raises(TrackingUriError, match=rf"^MLflow tracking URI from Airflow connection 'relative': a "
                                                   rf"relative .* got '{got}'"):
            resolve_target(MlflowSettings(conn_id="relative"), "p")
    for uri in ("mlruns", "./mlruns", "sqlite://", "sqlite:///:memory:"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(TrackingUriError, match=r"(relative file-store path|in-memory SQLite store)"):
            resolve_target(MlflowSettings(), "p")
    for fine in ("http://mlflow:5000", "databricks", "file:///srv/mlruns", "/srv/mlruns",
                 "sqlite:////srv/m.db?timeout=9"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", fine)
        assert resolve_target(MlflowSettings(), "p").tracking_uri == fine
    assert list(tmp_path.iterdir()) == []


def test_home_and_variables_in_the_setting_are_expanded_in_the_worker_then_checked(monkeypatch, tmp_path):
    from airflow_mlops.hooks.mlflow import TrackingUriError

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STORE_DIR", "relative/dir")
    home = resolve_target(MlflowSettings(tracking_uri="sqlite:///~/m.db"), "p")
    assert home.tracking_uri == f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(TrackingUriError, match=r"a relative SQLite path .* got 'sqlite:///relative/dir/m.db'"):
        resolve_target(MlflowSettings(tracking_uri="sqlite:///$STORE_DIR/m.db"), "p")
    with pytest.raises(TrackingUriError, match=r"tracking_uri setting: environment variable \$NOT_SET_ANYWHERE"):
        resolve_target(MlflowSettings(tracking_uri="sqlite:///$NOT_SET_ANYWHERE/m.db"), "p")


def test_operator_arguments_with_a_relative_store_fail_when_the_dag_is_parsed(tmp_path):
    from airflow_mlops.operators.backup import BackupOperator
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.operators.retention import RetentionCleanupOperator
    from airflow_mlops.operators.stream import StreamInferenceOperator

    relative = "a relative SQLite path depends on each worker's current directory"
    with pytest.raises(ValueError, match=relative):
        GpuTrainOperator(task_id="t", entrypoint="tests.gpu_entrypoints:train",
                         mlflow={"tracking_uri": "sqlite:///m.db"})
    with pytest.raises(ValueError, match=relative):
        RetentionCleanupOperator(task_id="r", policies=[{"root": str(tmp_path), "max_age": "30d"}],
                                 mlflow={"tracking_uri": "sqlite:///m.db"})
    with pytest.raises(ValueError, match=relative):
        BackupOperator(task_id="b", target=str(tmp_path / "b"),
                       sources=[{"kind": "mlflow", "tracking_uri": "sqlite:///m.db"}])
    with pytest.raises(ValueError, match=r"tracking_uri: a relative file-store path"):
        StreamInferenceOperator(task_id="s", topics="a", output_topic="b", model_uri="models:/m/1",
                                mlflow={"tracking_uri": "mlruns"})
    with pytest.raises(ValueError, match=r"tracking_uri: a relative file-store path"):  # the deprecated spelling
        StreamInferenceOperator(task_id="s", topics="a", output_topic="b", model_uri="models:/m/1",
                                tracking_uri="mlruns")


def test_python_apis_refuse_a_relative_store_before_touching_mlflow(monkeypatch, tmp_path):
    from airflow_mlops.hooks.mlflow import TrackingUriError
    from airflow_mlops.lifecycle.retention import run_retention
    from airflow_mlops.stream import run_stream

    monkeypatch.chdir(tmp_path)
    policy = {"policies": [{"kind": "mlflow_runs", "experiments": ["e"], "keep_last": 1}]}
    with pytest.raises(TrackingUriError, match=r"^MLflow tracking URI from the tracking_uri argument: a relative"):
        run_retention(policy, tracking_uri="sqlite:///mlflow.db")
    spec = {"topics": "a", "output_topic": "b", "group_id": "g", "model_uri": "models:/m/1"}
    nowhere = {"bootstrap_servers": "127.0.0.1:1"}  # checked before Kafka is reached
    with pytest.raises(TrackingUriError, match=r"^MLflow tracking URI from tracking_uri: a relative file-store path"):
        run_stream(spec, nowhere, tracking_uri="mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # no tracking_uri: not MLflow's ./mlflow.db
    with pytest.raises(TrackingUriError, match=r"^MLflow tracking URI from \$MLFLOW_TRACKING_URI: a relative SQLite"):
        run_stream(spec, nowhere)
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_refuses_a_relative_tracking_uri_from_the_flag_or_the_environment(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    flag = subprocess.run([sys.executable, "-m", "airflow_mlops.cli", "rollback", "m", "--tracking-uri",
                           "sqlite:///mlflow.db"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert flag.returncode == 2
    assert ("argument --tracking-uri: a relative SQLite path depends on each worker's current directory; use an "
            "absolute one, e.g. 'sqlite:////srv/mlflow/mlflow.db' (four slashes), got 'sqlite:///mlflow.db'"
            ) in flag.stderr
    from_env = subprocess.run([sys.executable, "-m", "airflow_mlops.cli", "rollback", "m"], cwd=tmp_path,
                              env={**env, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, capture_output=True,
                              text=True, check=False)
    assert from_env.returncode == 1
    assert "MLflow tracking URI from $MLFLOW_TRACKING_URI: a relative SQLite path" in from_env.stderr
    stream = subprocess.run([sys.executable, "-m", "airflow_mlops.stream", "--spec", "{}", "--tracking-uri", "mlruns"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert stream.returncode == 2 and "argument --tracking-uri: a relative file-store path" in stream.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_pipeline_run_with_a_relative_tracking_uri_in_the_environment_fails_and_writes_nothing(
        airflow_db, mlops_home, dags_folder, monkeypatch, tmp_path, capfd):
    """Before: the stages used ./mlflow.db of the worker's current directory and succeeded."""
    from airflow.dag_processing.dagbag import DagBag

    work = tmp_path / "worker-cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    write(dags_folder, "relative_env.yaml", """
        id: relative_env
        dag: {retries: 2}
        stages:
          preprocess:
            input: {sklearn_dataset: iris}
          train:
            estimator: sklearn.linear_model.LogisticRegression
            target: target
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    dr = bag.dags["relative_env"].test()
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert tis["preprocess.run"].state == "failed" and tis["preprocess.run"].try_number == 1
    assert tis["train.run"].state == "upstream_failed"
    assert "MLflow tracking URI from $MLFLOW_TRACKING_URI: a relative SQLite path" in "".join(capfd.readouterr())
    assert list(work.iterdir()) == []


# -- a real tracking server behind a path, with basic auth ------------------------------------------


@pytest.fixture
def mlflow_behind_a_path(tmp_path):
    """``mlflow server`` on a free port, reached through a small proxy that serves it under
    ``/tracking`` and admits only requests with basic auth ``ml:s3cret`` (what a reverse proxy
    in front of a tracking server does)."""
    import base64
    import http.server
    import threading
    import urllib.error
    import urllib.request

    from tests.servers import TrackingServer

    server = TrackingServer(tmp_path).start()
    port = server.port
    seen: list[str] = []
    expected = "Basic " + base64.b64encode(b"ml:s3cret").decode()

    class Proxy(http.server.BaseHTTPRequestHandler):
        def _forward(self):
            authorized = self.headers.get("Authorization") == expected
            seen.append(f"{self.command} {self.path} auth={'ok' if authorized else 'no'}")
            if not self.path.startswith("/tracking/") or self.headers.get("Authorization") != expected:
                self.send_response(401 if self.path.startswith("/tracking/") else 404)
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            request = urllib.request.Request(f"http://127.0.0.1:{port}{self.path[len('/tracking'):]}", data=body,
                                             method=self.command,
                                             headers={"Content-Type": self.headers.get("Content-Type",
                                                                                        "application/json")})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, payload = response.status, response.read()
            except urllib.error.HTTPError as exc:
                status, payload = exc.code, exc.read()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_DELETE = _forward

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield proxy.server_address[1], seen
    finally:
        proxy.shutdown()
        server.stop()


def test_a_connection_with_a_path_port_and_login_reaches_a_real_tracking_server(mlflow_behind_a_path, monkeypatch):
    """Before: the port was appended after the path ('http://127.0.0.1/tracking:PORT')."""
    import mlflow

    port, seen = mlflow_behind_a_path
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_TRACKING_SERVER", json.dumps(
        {"conn_type": "mlflow", "host": "127.0.0.1/tracking", "port": port, "login": "ml", "password": "s3cret"}))
    target = resolve_target(MlflowSettings(conn_id="tracking_server"), "p")
    assert target.tracking_uri == f"http://127.0.0.1:{port}/tracking"
    use_credentials(target)  # what a task's operator does with the target it resolved
    client = mlflow.MlflowClient(tracking_uri=target.tracking_uri)
    experiment_id = client.create_experiment("through-the-connection")
    assert client.get_experiment_by_name("through-the-connection").experiment_id == experiment_id
    assert seen and all(line.endswith("auth=ok") and " /tracking/api/" in line for line in seen)


def test_the_api_server_reads_a_store_behind_basic_auth_without_the_login_in_its_environment(
        mlflow_behind_a_path, monkeypatch):
    """The UI's reader takes the connection's login per client (basic auth on its own requests):
    the api-server's os.environ, which every request thread and child process shares, never holds
    it (before: resolving the connection wrote MLFLOW_TRACKING_USERNAME/PASSWORD into it). A
    refused login's message names the store without the password."""
    from airflow_mlops.ui import data

    port, seen = mlflow_behind_a_path
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AIRFLOW__MLOPS__TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW__MLOPS__CONN_ID", "ui_store")
    monkeypatch.setenv("AIRFLOW_CONN_UI_STORE", json.dumps(
        {"conn_type": "mlflow", "host": "127.0.0.1/tracking", "port": port, "login": "ml", "password": "s3cret"}))
    uri, credentials = data.store()
    assert uri == f"http://127.0.0.1:{port}/tracking"
    assert [e.name for e in data.reader(uri, credentials).search_experiments()] == ["Default"]
    assert seen and all(line.endswith("auth=ok") for line in seen)
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(os.environ)
    # The connection type's hook gives the same kind of client, for hand-written tasks.
    from airflow_mlops.hooks.mlflow_conn import MlflowConnectionHook

    assert [e.name for e in MlflowConnectionHook("ui_store").get_conn().search_experiments()] == ["Default"]
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(os.environ)

    wrong = {**credentials, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    with pytest.raises(Exception) as refused:
        data.reader(uri, wrong).search_experiments()
    message = data.unreachable(uri, refused.value, "listing experiments")
    assert "401" in message and "not-the-password" not in message
    assert message.startswith(f"MLflow tracking store ({uri})")


def test_a_changed_artifact_location_of_an_existing_experiment_is_said_at_run_time(tmp_path, caplog):
    """MLflow fixes an experiment's artifact location at creation: a pipeline that later names
    another one gets a warning in the task log naming both and what to do (before: not a word)."""
    import logging

    import mlflow

    from airflow_mlops._core.context import MlflowTarget
    from airflow_mlops._core.mlflow import experiment_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    first = MlflowTarget(tracking_uri=uri, experiment="churn", registered_model="churn",
                         artifact_location=str(tmp_path / "old"))
    created = experiment_id(client, first)
    moved = MlflowTarget(tracking_uri=uri, experiment="churn", registered_model="churn",
                         artifact_location=str(tmp_path / "new"))
    def said():
        return [r for r in caplog.records if r.name == "airflow_mlops.mlflow"]
    with caplog.at_level(logging.WARNING, logger="airflow_mlops.mlflow"):
        assert experiment_id(client, first) == created
        assert not said()  # the same location: nothing to say
        assert experiment_id(client, moved) == created
    (record,) = said()
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith(
        f"mlflow.artifact_location is {tmp_path / 'new'}, but the experiment 'churn' already exists with its artifacts "
        f"at {tmp_path / 'old'}: MLflow fixes an experiment's location when it is created")
    assert "name a new experiment (mlflow.experiment)" in record.getMessage()
