"""A real ``mlflow server`` failing under train, validate, serve and retention: killed under a
running training (unreachable), frozen with SIGSTOP under validate/serve/retention (a hung server:
every request times out), and a small real HTTP server answering 401 or 503 in its place. Each
ends within the bound set by ``$AIRFLOW_MLOPS_MLFLOW_TIMEOUT`` with one DependencyFailed and the
right retry decision; once the server is back, the same stage or cleanup succeeds and finishes.

One server for the module (it takes ~45 s to start on these machines); NVML is absent here, so
training falls back to no GPU (the real fallback, no fake).
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from airflow_mlops._core.errors import DependencyFailed
from airflow_mlops._core.mlflow_faults import TIMEOUT_ENV, http_env
from tests.servers import TrackingServer

SLACK_S = 15.0  # a busy 2-core machine: generous, the bound itself is what is asserted on


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = TrackingServer(tmp_path_factory.mktemp("tracking"))
    s.start()
    yield s
    s.stop()


CONTROL: dict[str, TrackingServer] = {}


def fit_then_lose_the_server(train, test, target, features, params):
    """A train callable: fits, then kills the tracking server before the stage logs anything more."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=300).fit(train[features], train[target])
    CONTROL["server"].stop()
    CONTROL["stopped_at"] = time.monotonic()
    return model, {"accuracy": float(model.score(test[features], test[target]))}


def contexts(tmp_path: Path, uri: str, model: str):
    from airflow_mlops._core.context import MlflowTarget, StageContext

    target = MlflowTarget(tracking_uri=uri, experiment=model, registered_model=model, artifact_location=None)

    def ctx(stage: str, upstream=()):
        return StageContext(pipeline_id="p", stage_name=stage, run_key="run-1", data_dir=str(tmp_path / "data"),
                            mlflow=target, upstream=list(upstream),
                            tags={"airflow_mlops.task_key": f"p/run-1/{stage}", "airflow.try_number": "1"})
    return ctx


def prepared(tmp_path: Path, uri: str, model: str):
    from airflow_mlops.spec.models import DataInput, PreprocessStage
    from airflow_mlops.stages import run_stage

    ctx = contexts(tmp_path, uri, model)
    return ctx, run_stage(PreprocessStage(input=DataInput(sklearn_dataset="iris")), ctx("preprocess"))


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0]


def test_the_bound_is_one_setting_that_sets_mlflows_http_retries():
    for bound in (2, 4, 6, 60, 600):
        env = http_env(bound)
        retries, per_try = int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), int(env["MLFLOW_HTTP_REQUEST_TIMEOUT"])
        sleeps = 2 if retries >= 2 else 0
        assert (retries + 1) * per_try + sleeps <= bound  # every try timing out still ends within it
        assert env["MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER"] == "false" and env["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] == "0"
    assert http_env(60) == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "19",
                            "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false"}


def test_a_server_killed_under_training_ends_the_try_then_the_retry_trains_and_registers(
        server, tmp_path, monkeypatch, caplog):
    import mlflow

    from airflow_mlops.spec.models import TrainStage
    from airflow_mlops.stages import run_stage

    monkeypatch.setenv(TIMEOUT_ENV, "6")
    CONTROL["server"] = server
    ctx, prep = prepared(tmp_path, server.uri, "killed")
    spec = TrainStage(callable="tests._core.test_mlflow_faults:fit_then_lose_the_server", target="target")
    try:
        with pytest.raises(DependencyFailed) as err:
            run_stage(spec, ctx("train", [("preprocess", prep)]))
        took = time.monotonic() - CONTROL["stopped_at"]
    finally:
        server.start()
    assert took < 2 * 6 + SLACK_S  # the failing request, then MLflow's own end_run
    assert err.value.retryable is True
    assert first_line(err.value) == (f"MLflow tracking server ({server.uri}) is unreachable (within "
                                     f"${TIMEOUT_ENV}=6 s per request) during training run 'p.train' "
                                     "(task p/run-1/train)")
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    (failed_run,) = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert f"kept: MLflow run {failed_run.info.run_id} (left unfinished" in str(err.value)
    assert "no version of 'killed' registered by this try" in str(err.value)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors[0].getMessage() == str(err.value)  # one message, first; later layers add none
    assert not client.search_model_versions("name = 'killed'")  # no version without its model

    # The server is back: the same stage trains again and registers the version.
    ctx, prep = prepared(tmp_path, server.uri, "killed")
    CONTROL["server"] = None  # the callable would stop it again: use a plain estimator this time
    spec = TrainStage(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300}, target="target")
    result = run_stage(spec, ctx("train", [("preprocess", prep)]))
    assert result["model_version"] == "1"
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    assert [v.version for v in client.search_model_versions("name = 'killed'")] == ["1"]
    assert client.get_run(failed_run.info.run_id).info.status == "FAILED"  # the lost try's run, closed by the retry


def test_a_hung_server_under_validate_and_serve_times_out_then_they_finish(server, tmp_path, monkeypatch):
    import mlflow

    from airflow_mlops.spec.models import ServeStage, TrainStage, ValidateStage
    from airflow_mlops.stages import run_stage

    ctx, prep = prepared(tmp_path, server.uri, "hung")
    train = run_stage(TrainStage(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300},
                                 target="target"), ctx("train", [("preprocess", prep)]))
    monkeypatch.setenv(TIMEOUT_ENV, "4")
    upstream = [("train", train), ("preprocess", prep)]
    for stage, name in ((ValidateStage(thresholds={"accuracy": {"min": 0.5}}), "validate"), (ServeStage(), "serve")):
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(DependencyFailed) as err:
                run_stage(stage, ctx(name, upstream))
            took = time.monotonic() - started
        finally:
            server.resume()
        assert took < 4 + SLACK_S, name
        assert err.value.retryable is True
        assert first_line(err.value) == (f"MLflow tracking server ({server.uri}) timed out (within ${TIMEOUT_ENV}=4 s "
                                         f"per request) during stage '{name}' ({name}) of pipeline 'p'")
        result = run_stage(stage, ctx(name, upstream))  # back: the same stage finishes the work
        if name == "validate":
            upstream.insert(0, ("validate", result))
            client = mlflow.MlflowClient(tracking_uri=server.uri)
            assert client.get_model_version_by_alias("hung", "champion").version == train["model_version"]
        else:
            assert result["rows"] > 0 and Path(result["predictions_path"]).exists()


def test_retention_against_a_hung_server_is_retried_and_a_rerun_deletes_what_it_planned(server, tmp_path, monkeypatch):
    import mlflow

    from airflow_mlops.lifecycle.retention import run_retention
    from airflow_mlops.operators.retention import RetentionCleanupOperator

    client = mlflow.MlflowClient(tracking_uri=server.uri)
    experiment = client.create_experiment("retained")
    for _ in range(3):
        client.set_terminated(client.create_run(experiment).info.run_id)
    policies = [{"kind": "mlflow_runs", "experiments": ["retained"], "keep_last": 1}]
    monkeypatch.setenv(TIMEOUT_ENV, "4")
    op = RetentionCleanupOperator(task_id="cleanup", policies=policies, mlflow={"tracking_uri": server.uri})
    server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(DependencyFailed) as err:
            op.execute({})
        took = time.monotonic() - started
    finally:
        server.resume()
    assert took < 4 + SLACK_S and err.value.retryable is True
    assert first_line(err.value).startswith(f"MLflow tracking server ({server.uri}) timed out")
    assert "during retention cleanup (planning)" in first_line(err.value)
    assert "kept: nothing was deleted" in str(err.value)
    summary = run_retention({"policies": policies}, tracking_uri=server.uri)
    assert summary["dry_run"] is False and summary["items"] == 2
    assert len(client.search_runs([experiment])) == 1


def send(handler: http.server.BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Answering(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's ``status`` (a tracking server behind a proxy that
    refuses the credentials, or one that is failing)."""

    status = 401
    seen: list[str] = []

    def _answer(self):
        self.seen.append(self.path)
        body = b"<html>denied</html>" if self.status < 500 else b"<html>unavailable</html>"
        send(self, self.status, "text/html", body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    def make(status: int):
        handler = type("Handler", (Answering,), {"status": status, "seen": []})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        made.append(httpd)
        return f"127.0.0.1:{httpd.server_address[1]}", handler
    made: list = []
    yield make
    for httpd in made:
        httpd.shutdown()


def test_refused_credentials_fail_without_retry_and_5xx_is_retried_within_the_bound(answering, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.backends.stage import StageOperator
    from airflow_mlops.spec.models import ValidateStage

    monkeypatch.setenv(TIMEOUT_ENV, "10")
    address, _ = answering(401)
    uri = f"http://ml:s3cret@{address}"
    ctx = contexts(tmp_path, uri, "denied")
    upstream = [("train", {"model_name": "denied", "model_version": "1"})]
    op = StageOperator(task_id="validate", stage=ValidateStage(), stage_name="validate")
    with pytest.raises(AirflowFailException) as err:  # ends the task: no retries
        op.run(ctx("validate", upstream))
    message = str(err.value)
    assert message.startswith(f"MLflow tracking server (http://{address}) refused the credentials (401/403) "
                              "during stage 'validate' (validate) of pipeline 'p'")
    assert "s3cret" not in message and "retry: no" in message

    address, handler = answering(503)
    ctx = contexts(tmp_path, f"http://{address}", "failing")
    started = time.monotonic()
    with pytest.raises(DependencyFailed) as err:
        op.run(ctx("validate", upstream))
    assert time.monotonic() - started < 10 + SLACK_S
    assert err.value.retryable is True and len(handler.seen) == 3  # the first try and 2 retries, then it stops
    assert first_line(err.value).startswith(f"MLflow tracking server (http://{address}) kept answering HTTP 503")


def test_in_a_pod_the_runtime_exits_as_a_failed_stage_or_a_crash(answering, tmp_path):
    """What a pod or spark-submit runs: a refused credential is a failed stage (no retry), a failing
    server a crash (Airflow retries); the message is in stderr either way."""
    from airflow_mlops._core.outcome import EXIT_FAILED
    from airflow_mlops._core.result import FAILED_PREFIX, outcome_files
    from airflow_mlops.backends.runtime import encode_payload
    from airflow_mlops.spec.models import ValidateStage

    upstream = [("train", {"model_name": "m", "model_version": "1"})]
    for status, code in ((401, EXIT_FAILED), (503, 1)):
        address, _ = answering(status)
        ctx = contexts(tmp_path, f"http://{address}", "m")("validate", upstream)
        result_file = tmp_path / f"result-{status}.json"
        done = subprocess.run(
            [sys.executable, "-m", "airflow_mlops.runtime", "--payload", encode_payload(ValidateStage(), ctx),
             "--result-file", str(result_file)],
            capture_output=True, text=True, timeout=120, env={**os.environ, TIMEOUT_ENV: "5"})
        assert done.returncode == code, done.stderr[-2000:]
        assert f"MLflow tracking server (http://{address})" in done.stderr
        if code == EXIT_FAILED:
            assert FAILED_PREFIX + f"MLflow tracking server (http://{address}) refused" in done.stderr
            assert outcome_files(result_file)[0].read_text().startswith("MLflow tracking server")


def test_a_version_left_by_a_try_the_server_failed_under_is_marked_and_its_run_closed(tmp_path):
    """The server went away after a try registered its version but before the try finished (its
    run still RUNNING): the next try closes that run as FAILED, tags the version
    ``airflow_mlops.incomplete_try`` (its model is there: it was logged first) and trains anew."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from airflow_mlops.spec.models import TrainStage
    from airflow_mlops.stages import run_stage
    from airflow_mlops.stages.train.measure import INCOMPLETE_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx, prep = prepared(tmp_path, uri, "left")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("left", artifact_location=str(tmp_path / "artifacts"))
    lost = client.create_run(experiment, tags={"airflow_mlops.task_key": "p/run-1/train"}).info.run_id
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(experiment_id=experiment)
    with mlflow.start_run(run_id=lost):
        mlflow.sklearn.log_model(LogisticRegression().fit([[0], [1]], [0, 1]), name="model",
                                 registered_model_name="left")
    client.update_run(lost, status="RUNNING")  # as the lost try left it
    assert client.get_run(lost).info.status == "RUNNING"

    spec = TrainStage(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300}, target="target")
    result = run_stage(spec, ctx("train", [("preprocess", prep)]))
    assert result["model_version"] == "2" and result["reused"] is False
    assert client.get_run(lost).info.status == "FAILED"
    assert client.get_model_version("left", "1").tags.get(INCOMPLETE_TAG) == "true"
    assert INCOMPLETE_TAG not in client.get_model_version("left", "2").tags


class FailingOneCall(http.server.BaseHTTPRequestHandler):
    """A proxy in front of the real tracking server that forwards every request but one call: the
    first request whose path starts with one of ``fail_paths`` and the client's own retries of it
    get ``status`` (a 5xx, a 403) or, with status 0, no answer until the client gives up (a hung
    call). Once the client moves on to another request, everything is forwarded again."""

    upstream = ""
    fail_paths: tuple[str, ...] = ()
    status = 503
    failed: list[str] = []
    state: dict = {}

    def _answer(self):
        failing = self.state.get("path")
        if not self.state.get("done") and (self.path == failing or (
                failing is None and self.path.startswith(self.fail_paths))):
            self.state["path"] = self.path
            self.failed.append(self.path)
            if self.status == 0:
                time.sleep(30)
                return
            send(self, self.status, "text/html", b"<html>denied</html>" if self.status < 500 else
                 b"<html>unavailable</html>")
            return
        if failing is not None:
            self.state["done"] = True
        length = int(self.headers.get("Content-Length") or 0)
        request = urllib.request.Request(self.upstream + self.path, data=self.rfile.read(length) if length else None,
                                         method=self.command, headers={k: v for k, v in self.headers.items()
                                                                       if k.lower() not in ("host", "connection")})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, headers, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        send(self, status, headers.get("Content-Type", "application/json"), body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args):
        pass


def test_a_failed_champion_read_never_promotes_the_candidate_unchecked(server, tmp_path, monkeypatch):
    """The registry read that finds the champion fails (503, 403, hung) on a real tracking server:
    the validate stage fails with one DependencyFailed (retryable but for 403), and nothing moves —
    the champion keeps its alias, no 'previous-champion', no decision on the candidate. With the
    call answered again, the same stage compares the candidate with the champion as it should."""
    import mlflow

    from airflow_mlops.spec.models import TrainStage, ValidateStage
    from airflow_mlops.stages import run_stage

    monkeypatch.setenv(TIMEOUT_ENV, "4")
    ctx, prep = prepared(tmp_path, server.uri, "guarded")
    train = TrainStage(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300}, target="target")
    validate = ValidateStage(thresholds={"accuracy": {"min": 0.5}}, compare={"accuracy": {"min_improvement": 0.5}})
    first = run_stage(train, ctx("train", [("preprocess", prep)]))
    run_stage(validate, ctx("validate", [("train", first), ("preprocess", prep)]))  # v1: the champion
    second = run_stage(train, ctx("retrain", [("preprocess", prep)]))  # another task: a new version
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    client = mlflow.MlflowClient(tracking_uri=server.uri)

    from airflow_mlops._core.errors import StageFailed

    # The champion's alias is read through the registered model (GetRegisteredModel: what the stage
    # does) or through MLflow's alias endpoint (GetModelVersionByAlias): whichever the stage
    # asks, that call fails, and the stage either stops or, never having asked, judges correctly.
    for status in (503, 403, 0):
        for call in ("/api/2.0/mlflow/registered-models/get", "/api/2.0/mlflow/registered-models/alias"):
            handler = type("Handler", (FailingOneCall,), {
                "upstream": server.uri, "status": status, "failed": [], "state": {}, "fail_paths": (call,)})
            httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            try:
                proxied = contexts(tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}", "guarded")
                with pytest.raises((DependencyFailed, StageFailed)) as err:
                    run_stage(validate, proxied("validate", [("train", second), ("preprocess", prep)]))
            finally:
                httpd.shutdown()
            model = client.get_registered_model("guarded")
            assert model.aliases == {"champion": "1"}, (status, call)  # nothing promoted, no previous-champion
            if handler.failed:  # the stage asked: it stopped, with the server's fault, nothing decided
                assert isinstance(err.value, DependencyFailed), (status, call, err.value)
                assert err.value.retryable is (status != 403), (status, call)
                assert "during stage 'validate' (validate) of pipeline 'p'" in first_line(err.value)
                assert "airflow_mlops.decision" not in client.get_model_version("guarded", "2").tags
            else:  # never asked that way: the comparison happened (v2 cannot gain 50% on the same data)
                assert not isinstance(err.value, DependencyFailed) and "vs champion 1" in str(err.value), err.value
                client.delete_model_version_tag("guarded", "2", "airflow_mlops.decision")

    # Answered again: v2 is compared with v1 (the same data cannot gain 50%): rejected, v1 defends.
    with pytest.raises(StageFailed, match="vs champion 1"):
        run_stage(validate, ctx("validate", [("train", second), ("preprocess", prep)]))
    assert client.get_registered_model("guarded").aliases == {"champion": "1"}
    assert client.get_model_version("guarded", "2").tags["airflow_mlops.decision"] == "rejected"
