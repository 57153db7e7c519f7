"""What Airflow's own UI shows of the package, made right: each stage task's operator column says
what it is (``train (batch)``), a broken pipeline's errors are tasks on its placeholder DAG's own
page, and the connection types give Airflow 3's connection editor a form without flask-appbuilder."""

from __future__ import annotations

import logging

import pytest

from tests.helpers import write


def _serialized_tasks(dag) -> dict[str, dict]:
    """What the api-server gets for each task: the DAG as Airflow serializes it."""
    from airflow.serialization.serialized_objects import DagSerialization

    data = DagSerialization.to_dict(dag)["dag"]["tasks"]
    return {t["__var"]["task_id"]: t["__var"] for t in data}


def test_stage_tasks_show_kind_and_backend_as_their_operator(dags_folder, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, "p.yaml", """
        id: p
        stages:
          preprocess:
            input: {sklearn_dataset: iris}
            backend: spark
          train:
            estimator: sklearn.linear_model.LogisticRegression
            target: target
          validate:
            thresholds: {accuracy: {min: 0.5}}
            backend: kubernetes
            kubernetes: {image: "python:3.11"}
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dag = bag.dags["p"]
    assert {t.task_id: t.operator_name for t in dag.tasks} == {
        "preprocess.run": "preprocess (spark)", "train.run": "train (batch)", "validate.run": "validate (kubernetes)"}
    serialized = _serialized_tasks(dag)
    assert serialized["train.run"]["_operator_name"] == "train (batch)"
    assert serialized["train.run"]["task_type"] == "StageOperator"  # the class stays what it is


def test_placeholder_dag_lists_each_error_as_a_task(dags_folder):
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, "churn.yaml", """
        id: churn
        stages:
          train:
            estimator: sklearn.svm.SVC
            target: y
            resources: {gpu: 0.5}
          validate:
            thresholds: {accuracy: {min: 0.5}}
            alias: [x]
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    dag = bag.dags["churn"]
    shown = {t.task_id: (t.task_display_name, t.operator_name) for t in dag.tasks}
    assert shown == {
        "invalid_pipeline": ("✗ churn.yaml is invalid: 2 error(s), fix the YAML", "invalid pipeline"),
        "error_1": ("churn.yaml:6:22 stages.train.resources.gpu: expected a whole number of GPUs, got 0.5",
                    "YAML error"),
        "error_2": ("churn.yaml:9:12 stages.validate.alias: expected a string, got ['x']", "YAML error"),
    }
    # Triggered, the first task fails; the error tasks never run.
    assert dag.get_task("error_1").upstream_task_ids == {"invalid_pipeline"}


def test_connection_forms_come_from_provider_info(caplog):
    from airflow.providers_manager import ProvidersManager

    from airflow_mlops.provider import get_provider_info

    forms = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    assert forms["mlflow"]["hook-name"] == "MLflow"
    assert forms["mlflow"]["ui-field-behaviour"] == {
        "hidden-fields": ["extra"],
        "relabeling": {"host": "Tracking URI or host", "schema": "Scheme (http/https)",
                       "login": "Username (basic auth)", "password": "Password (basic auth)"},
        "placeholders": {"host": "http://mlflow:5000, mlflow.example.com/tracking or sqlite:////srv/mlflow/mlflow.db",
                         "schema": "https"}}
    assert forms["mlops_kafka"]["ui-field-behaviour"]["relabeling"]["host"] == "Bootstrap servers"
    assert "kafka" not in forms  # the official Kafka provider owns that type

    with caplog.at_level(logging.INFO):
        manager = ProvidersManager()
        behaviour = manager.field_behaviours["mlflow"]
        hooks = manager.hooks  # imports every hook, the way the api-server's connection form does
    assert behaviour["relabeling"]["host"] == "Tracking URI or host"
    assert hooks["mlflow"].hook_name == "MLflow"
    ours = [r.getMessage() for r in caplog.records if "airflow_mlops" in r.getMessage()]
    assert not [m for m in ours if "UI widgets will be missing" in m or "deprecated" in m], ours


def test_gpu_telemetry_of_a_version_as_the_models_page_shows_it(monkeypatch, tmp_path):
    """GpuTrainOperator's training on two GPUs (FAKE NVML: no GPU here; tests/fake_nvml.py), read
    back by the UI's reader: mean utilisation, peak memory, energy in kWh, max temperature."""
    import mlflow

    from airflow_mlops.stages.train.measure import TrainingRun
    from airflow_mlops.ui import data, pages
    from tests.fake_nvml import FakeGpu, FakeNvml, GiB, install
    from tests.helpers import train_job

    install(monkeypatch, FakeNvml([
        FakeGpu(memory_used=[3 * GiB], utilization=[40, 60], temperature=[50, 71], energy_mj=[0, 1_800_000_000]),
    ]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    job = train_job(tmp_path, gpus=1, sample_interval_s=0.2, flush_interval_s=0.5)
    TrainingRun(job).run()
    client = mlflow.MlflowClient(tracking_uri=job.tracking_uri)
    (model,) = data.models(client, "http://mlflow.example")
    (v1,) = model["versions"]
    assert (model["name"], v1["dag_id"], v1["dag_run_id"], v1["task_id"]) == ("gpu_model", "p", "run-1", "train")
    gpu = v1["gpu"]
    assert gpu["available"] is True and gpu["reason"] is None and gpu["names"] == "NVIDIA Fake H100"
    assert gpu["energy_kwh"] == pytest.approx(0.5)  # 1.8e6 J
    assert gpu["memory_peak_gib"] == 3 and gpu["temperature_max_c"] == 71
    assert 40 <= gpu["utilization_mean"] <= 60
    assert v1["cost"]["gpu_hours"] > 0 and v1["prices"]["gpu_hour"] == 2.5
    assert v1["mlflow_run_url"] == f"http://mlflow.example/#/experiments/{client.get_run(v1['run_id']).info.experiment_id}" \
                                   f"/runs/{v1['run_id']}"
    text = pages.gpu_text(gpu)
    assert "energy 0.5 kWh" in text and "peak memory 3 GiB" in text and "max temperature 71 °C" in text


def test_training_tries_that_kubernetes_ended_are_listed_with_the_model(tmp_path, caplog):
    """A try whose pod Kubernetes ended registered no version: its worker's record (on the try's
    own run when there is one, else a small FAILED run) shows with the model, newest first, with
    its DAG run, try and reason; a record that cannot be written is a warning, nothing more."""
    import mlflow

    from airflow_mlops._core.context import MlflowTarget
    from airflow_mlops.stages.train.failures import FAILURE_REASON_TAG, FAILURE_TAG, record_failure
    from airflow_mlops.stages.train.measure import TrainingRun
    from airflow_mlops.ui import data, pages
    from tests.helpers import train_job

    job = train_job(tmp_path)
    client = mlflow.MlflowClient(tracking_uri=job.tracking_uri)
    experiment = client.get_experiment_by_name("gpu") or client.get_experiment(client.create_experiment(
        "gpu", artifact_location=str(tmp_path / "artifacts")))
    started = client.create_run(experiment.experiment_id, tags=job.tags)  # try 1's run, its pod then evicted
    evicted = record_failure(job.target(), job.tags, reason="Evicted", message="stage 'train': pod ns/p-train-x "
                             "was evicted by Kubernetes (Evicted: The node was low on resource: memory.)")
    assert evicted == started.info.run_id
    assert client.get_run(evicted).info.status == "FAILED"
    TrainingRun(job.model_copy(update={"tags": {**job.tags, "airflow.try_number": "2"}})).run()  # try 2 registers v1
    oom_tags = {**job.tags, "airflow.run_id": "run-2", "airflow_mlops.task_key": "p/run-2/train"}
    oom = record_failure(job.target(), oom_tags, reason="OOMKilled", message="stage 'train' ran out of memory: "
                         "Kubernetes killed pod ns/p-train-y (OOMKilled: exit code 137) at its memory limit of 1Gi.")
    run = client.get_run(oom)  # no run of that try: a small FAILED one, with the Airflow tags
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_REASON_TAG] == "OOMKilled"
    assert run.data.tags["airflow.run_id"] == "run-2" and "memory limit of 1Gi" in run.data.tags[FAILURE_TAG]

    (model,) = data.models(client, "http://mlflow.example")
    assert [v["version"] for v in model["versions"]] == ["1"]
    shown = [(f["dag_id"], f["dag_run_id"], f["try_number"], f["reason"]) for f in model["failed_trainings"]]
    assert shown == [("p", "run-2", "1", "OOMKilled"), ("p", "run-1", "1", "Evicted")]
    latest = model["failed_trainings"][0]
    assert latest["dag_run_url"] == "/dags/p/runs/run-2" and latest["mlflow_run_url"].endswith(f"/runs/{oom}")
    html = pages.models_page([model], "sqlite:///x", airflow="/airflow")
    table = html.split('<table class="failed-trainings">')[1]
    assert "Failed trainings" in html and '<a href="/airflow/dags/p/runs/run-2">p / run-2</a>' in table
    assert "OOMKilled" in table and "at its memory limit of 1Gi" in table and "Evicted" in table

    # A model whose only training so far was killed has no version, and is still listed, with it.
    first = job.target()
    first.registered_model = "new_model"
    record_failure(first, {**oom_tags, "airflow.dag_id": "q", "airflow_mlops.task_key": "q/run-2/train"}, reason="OOMKilled", message="ran out of memory")
    listed = {m["name"]: m for m in data.models(client, "http://mlflow.example")}
    assert sorted(listed) == ["gpu_model", "new_model"]
    assert [f["reason"] for f in listed["gpu_model"]["failed_trainings"]] == ["OOMKilled", "Evicted"]  # not new_model's
    new = data.model(client, "new_model", "http://mlflow.example")
    assert (new["versions"], new["dag_ids"], [f["reason"] for f in new["failed_trainings"]]) == ([], ["q"], ["OOMKilled"])
    assert "No version registered yet" in pages.model_section(new, "")
    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found"):
        data.model(client, "no_such_model", "http://mlflow.example")

    lost = MlflowTarget(tracking_uri="http://127.0.0.1:9", experiment="gpu", registered_model="gpu_model")
    with caplog.at_level(logging.WARNING):
        assert record_failure(lost, job.tags, reason="Evicted", message="evicted") is None
    assert "Could not record the failure (Evicted) of this training try in MLflow" in caplog.text


def test_the_plugin_and_its_app_import_nothing_heavy():
    """Airflow imports the plugin in every component, and the api-server builds its app at start:
    MLflow, pandas and the rest come only with the first request (a fresh interpreter)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys\nfrom airflow_mlops.ui.plugin import MlopsUiPlugin\nplugin = MlopsUiPlugin()\n"
            "apps = plugin.fastapi_apps\nassert apps[0]['url_prefix'] == '/mlops'\n"
            "heavy = {'mlflow', 'pandas', 'sklearn', 'pyspark', 'kafka', 'pynvml', 'kubernetes'}\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
