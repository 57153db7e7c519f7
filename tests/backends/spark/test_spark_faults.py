"""The Spark master failing under a task, on a real standalone cluster (a Master and a Worker
started with spark-class from the pyspark install, on 127.0.0.1): spark-submit and the embedded
session against a stopped master, a Spark Connect URL where nothing listens, and a master URL
Spark cannot parse. Each ends within ``spark.connect_timeout`` with one DependencyFailed message
and the right retry decision; once the master is back the same stage runs and leaves no
application registered.

The embedded-session cases run in a fresh interpreter: a session another test left active in
this process would be reused instead of the master under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO
from tests.helpers import free_port, write
from tests.servers import SparkStandalone

SQL = "SELECT segment, COUNT(*) AS n FROM customers GROUP BY segment"
CUSTOMERS = "id,segment\n1,retail\n2,retail\n3,business\n"
CONF = {"spark.executor.memory": "512m", "spark.cores.max": "1", "spark.sql.shuffle.partitions": "2",
        "spark.ui.enabled": "false"}


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    cluster = SparkStandalone(tmp_path_factory.mktemp("spark-standalone"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def inputs(tmp_path):
    return {"customers": str(write(tmp_path, "customers.csv", CUSTOMERS))}


def context(tmp_path, spark=None):
    from airflow_mlops._core.context import MlflowTarget, StageContext

    target = MlflowTarget(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e", registered_model="m",
                          artifact_location=str(tmp_path / "artifacts"))
    return StageContext(pipeline_id="p", stage_name="features", run_key="r1", data_dir=str(tmp_path / "data"),
                        mlflow=target, engine="spark", spark=spark)


def run_in_fresh_interpreter(tmp_path, inputs, spark: dict) -> dict:
    """SparkFeatureOperator(**spark).run(...) in a new Python process (the worker's embedded
    session); what it returned or raised, and how long it took."""
    script = write(tmp_path, "embedded.py", f"""
        import json, time
        from airflow_mlops._core.context import MlflowTarget, StageContext
        from airflow_mlops.operators.spark import SparkFeatureOperator

        op = SparkFeatureOperator(task_id="features", inputs={inputs!r}, sql={SQL!r}, output={str(tmp_path / 'out')!r},
                                  **{spark!r})
        target = MlflowTarget(tracking_uri="sqlite:///{tmp_path / 'mlflow.db'}", experiment="e", registered_model="m",
                              artifact_location="{tmp_path / 'artifacts'}")
        ctx = StageContext(pipeline_id="p", stage_name="features", run_key="r1", data_dir="{tmp_path / 'data'}",
                           mlflow=target, engine="spark", spark=op.spark_session_settings())
        started = time.monotonic()
        try:
            outcome = {{"result": op.run(ctx)}}
            from pyspark.sql import SparkSession
            SparkSession.getActiveSession().stop()  # as the worker's process ends
        except Exception as exc:
            outcome = {{"type": type(exc).__name__, "message": str(exc),
                        "retryable": getattr(exc, "retryable", None)}}
        outcome["seconds"] = time.monotonic() - started
        print("OUTCOME " + json.dumps(outcome))
        """)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1"})
    line = next((x for x in done.stdout.splitlines() if x.startswith("OUTCOME ")), None)
    assert line, f"no outcome (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads(line[len("OUTCOME "):])


def test_spark_submit_with_the_master_stopped_fails_within_connect_timeout_then_runs(
    standalone, inputs, tmp_path, monkeypatch
):
    from airflow_mlops._core.errors import DependencyFailed
    from airflow_mlops.operators.spark import SparkFeatureOperator
    from airflow_mlops.stages.data import read_dataset

    monkeypatch.setenv("AIRFLOW_CONN_SPARK_STANDALONE", json.dumps({"conn_type": "spark", "host": standalone.url}))
    op = SparkFeatureOperator(task_id="features", inputs=inputs, sql=SQL, output=str(tmp_path / "out"),
                              conn_id="spark_standalone", conf=CONF, connect_timeout="3s")
    standalone.stop()
    started = time.monotonic()
    with pytest.raises(DependencyFailed) as info:
        op.run(context(tmp_path))
    assert 3 <= time.monotonic() - started < 8
    message = str(info.value)
    assert message.startswith(f"Spark master ({standalone.url}) accepted no connection within 3s "
                              "(spark.connect_timeout; last error: ConnectionRefusedError")
    assert "during spark-submit of stage 'features' (Spark connection 'spark_standalone')" in message
    assert "kept: no application is left on the master" in message
    assert "to do: start the Spark master" in message
    assert info.value.retryable and "retry: yes" in message
    assert list((tmp_path / "out").iterdir()) == []  # nothing written

    # The master answers the check, then goes away before spark-submit's driver (a JVM that takes
    # seconds to start) registers: Spark would retry it 3 x 20 s; the task ends 3 s after the first refusal.
    standalone.start()
    threading.Timer(1.0, standalone.stop).start()
    started = time.monotonic()
    with pytest.raises(DependencyFailed) as info:
        op.run(context(tmp_path))
    assert time.monotonic() - started < 40  # JVM start + connect_timeout, not Spark's 60 s loop
    assert "spark-submit was stopped before the master took the application" in str(info.value)
    assert "Failed to connect to master" in str(info.value) and info.value.retryable

    standalone.start()
    result = op.run(context(tmp_path))
    got = read_dataset(result["data_path"]).sort_values("segment")
    assert got.to_dict("list") == {"segment": ["business", "retail"], "n": [1, 2]}
    state = standalone.state()
    assert state["activeapps"] == []  # the driver ended: nothing left registered
    assert [app["name"] for app in state["completedapps"]] == ["airflow-mlops p.features"]


def test_embedded_session_with_the_master_stopped_fails_within_connect_timeout_then_runs(
    standalone, inputs, tmp_path
):
    spark = {"master": standalone.url, "conf": CONF, "connect_timeout": "3s"}
    standalone.stop()
    outcome = run_in_fresh_interpreter(tmp_path, inputs, spark)
    assert outcome["type"] == "DependencyFailed" and outcome["retryable"] is True, outcome
    assert 3 <= outcome["seconds"] < 8, outcome
    assert outcome["message"].startswith(f"Spark master ({standalone.url}) accepted no connection within 3s")
    assert "during creating the Spark session 'airflow-mlops p.features'" in outcome["message"]
    assert "kept: nothing ran on Spark: the stage wrote no output" in outcome["message"]

    standalone.start()
    outcome = run_in_fresh_interpreter(tmp_path, inputs, spark)
    assert outcome.get("result", {}).get("columns") == ["segment", "n"], outcome
    state = standalone.state()
    assert state["activeapps"] == []
    assert [app["name"] for app in state["completedapps"]] == ["airflow-mlops p.features"]


def test_a_spark_connect_url_where_nothing_listens_and_an_invalid_master(tmp_path, inputs):
    nothing = f"sc://127.0.0.1:{free_port()}"
    outcome = run_in_fresh_interpreter(tmp_path, inputs, {"master": nothing, "connect_timeout": "2s"})
    assert outcome["type"] == "DependencyFailed" and outcome["retryable"] is True, outcome
    assert 2 <= outcome["seconds"] < 6, outcome
    assert outcome["message"].startswith(f"Spark master ({nothing}) accepted no connection within 2s")

    outcome = run_in_fresh_interpreter(tmp_path, inputs, {"master": "spark://127.0.0.1"})  # no port
    assert outcome["type"] == "AirflowFailException", outcome  # no retry: it would read the same URL
    assert outcome["seconds"] < 2, outcome
    assert outcome["message"].startswith("Spark master (spark://127.0.0.1) is not a master URL Spark understands")
    assert "retry: no" in outcome["message"]


def test_master_urls_and_what_is_checked():
    from airflow_mlops._core.errors import DependencyFailed
    from airflow_mlops.stages.spark_master import master_endpoints

    assert master_endpoints("local[*]") == master_endpoints("yarn") == master_endpoints("k8s://https://k:6443") == []
    assert master_endpoints("spark://a:7077,b:7078") == [("a", 7077), ("b", 7078)]
    assert master_endpoints("sc://connect.example") == [("connect.example", 15002)]
    assert master_endpoints("sc://h:443/;token=x") == [("h", 443)]
    for bad in ("spark://a", "sparc://a:1", "sc://", "local[x]"):
        with pytest.raises(DependencyFailed) as info:
            master_endpoints(bad)
        assert info.value.retryable is False, bad


def test_spark_settings_bound_has_a_default_and_reads_durations():
    from airflow_mlops.spec.models import KubernetesSettings, SparkSettings

    assert SparkSettings().connect_timeout.total_seconds() == 60
    assert SparkSettings(connect_timeout="5s").connect_timeout.total_seconds() == 5
    assert KubernetesSettings().api_timeout.total_seconds() == 60
    assert KubernetesSettings(api_timeout="2m").api_timeout.total_seconds() == 120


def test_a_worker_killed_under_a_spark_submit_leaves_no_application_and_the_retry_submits_again(
    standalone, inputs, tmp_path, monkeypatch
):
    """What a lost worker costs on a Spark cluster: SIGKILL the process running a stage's
    spark-submit (and its driver: PySpark applications run their driver on the submitting worker;
    Spark's standalone cluster deploy mode, which the provider can re-attach to, does not take
    Python applications) once the master runs the application. The master ends the application,
    nothing is written, and the retry submits again and writes the output whole."""
    import signal

    from airflow_mlops.operators.spark import SparkFeatureOperator
    from airflow_mlops.stages.data import read_dataset

    conn = json.dumps({"conn_type": "spark", "host": standalone.url})
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_STANDALONE", conn)
    out = tmp_path / "out"
    script = write(tmp_path, "submit.py", f"""
        from tests.backends.spark.test_spark_faults import context
        from airflow_mlops.operators.spark import SparkFeatureOperator
        from pathlib import Path

        op = SparkFeatureOperator(task_id="features", inputs={inputs!r}, sql={SQL!r}, output={str(out)!r},
                                  conn_id="spark_standalone", conf={CONF!r}, connect_timeout="30s")
        op.run(context(Path({str(tmp_path)!r})))
        """)
    before = len(standalone.state()["completedapps"])
    with open(tmp_path / "first_try.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while not standalone.state()["activeapps"] and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "first_try.log").read_text()[-3000:]
            time.sleep(0.2)
        assert standalone.state()["activeapps"], "the application never ran on the master"
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker, spark-submit and the driver: no clean-up
        worker.wait(30)
    deadline = time.monotonic() + 60
    while standalone.state()["activeapps"] and time.monotonic() < deadline:
        time.sleep(0.5)
    state = standalone.state()
    assert state["activeapps"] == []  # the master ended the application with its driver
    assert len(state["completedapps"]) == before + 1
    assert not list(out.rglob("*.parquet"))  # nothing half written

    op = SparkFeatureOperator(task_id="features", inputs=inputs, sql=SQL, output=str(out),
                              conn_id="spark_standalone", conf=CONF, connect_timeout="30s")
    result = op.run(context(tmp_path))  # the retry: submitted again
    got = read_dataset(result["data_path"]).sort_values("segment")
    assert got.to_dict("list") == {"segment": ["business", "retail"], "n": [1, 2]}
    assert len(standalone.state()["completedapps"]) == before + 2
