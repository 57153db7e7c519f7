"""The package on a production-shaped deployment (``tests/deployment/stack.py``): Postgres, Redis,
CeleryExecutor with two workers that share no disk, an MLflow server on Postgres with artifacts in
a bucket, stage data in the bucket. Runs are triggered through the REST API, as the UI does.

One deployment for the module (it takes a few minutes to start here); the tests run in file order
and build on each other's runs where said.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.deployment import stack

pytestmark = pytest.mark.skipif(stack.available() is not None and not os.environ.get("CI"),
                                reason=stack.available() or "")

LOADER = "# Airflow DAGs from the pipeline YAMLs in this folder\nfrom airflow_mlops import load_pipelines\n\n" \
         "load_pipelines(globals())\n"


def batch_pipeline(pid: str, bucket: str, queues: dict[str, str] | None = None) -> str:
    """The demo's batch pipeline (example_configs/breast_cancer.yaml) with its data in the bucket,
    MLflow through the deployment's connection, and each stage on the queue given."""
    q = queues or {}

    def on(stage: str) -> str:
        return f"\n    queue: {q[stage]}" if stage in q else ""
    return f"""
id: {pid}
dag: {{schedule: null, retries: 1, retry_delay: 5s}}
data_dir: s3://{bucket}/pipelines/{pid}
data_conn_id: stage_data
mlflow: {{conn_id: mlflow_server, registered_model: {pid}_model}}
stages:
  preprocess:
    input: {{sklearn_dataset: breast_cancer}}
    split: {{test_fraction: 0.25, stratify: target, seed: 7}}{on("preprocess")}
  train:
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {{n_estimators: 20, max_depth: 6, random_state: 7}}
    target: target{on("train")}
  validate:
    thresholds: {{accuracy: {{min: 0.9}}}}{on("validate")}
  serve:
    mode: batch{on("serve")}
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    why = stack.available()
    if why:
        pytest.fail(f"the deployment tests need {why}")
    started = time.monotonic()
    d = stack.Deployment(tmp_path_factory.mktemp("deployment"))
    try:
        d.start()
    except BaseException:
        print(d.output_tail())
        d.stop()
        raise
    print(f"deployment up in {time.monotonic() - started:.0f} s")
    yield d
    d.stop()


def mlflow_client(d: stack.Deployment):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=d.mlflow_uri, registry_uri=d.mlflow_uri)


def test_stages_forced_onto_two_workers_pass_their_data_through_the_bucket(deployment):
    d = deployment
    queues = {"preprocess": "a", "train": "b", "validate": "a", "serve": "b"}
    d.publish({"pipelines.py": LOADER, "spread.yaml": batch_pipeline("spread", d.bucket, queues)})
    d.wait_for_dags(["spread"])
    started = time.monotonic()
    run_id = d.trigger("spread")
    states = d.wait_for_run("spread", run_id)
    took = time.monotonic() - started
    assert states == {"preprocess.run": "success", "train.run": "success", "validate.run": "success",
                      "serve.run": "success"}, d.output_tail()
    # Each task's log is where it ran: every stage on the worker of its queue.
    ran_on = {task: w for w in stack.WORKERS for task in d.worker_logs(w, "spread", run_id)}
    assert ran_on == {"preprocess.run": "a", "train.run": "b", "validate.run": "a", "serve.run": "b"}
    # The logs a data scientist reads: short, no library noise, MLflow's registry notices not as errors.
    for task, worker in (("train.run", "b"), ("serve.run", "b")):
        lines = [json.loads(line) for p in d.worker_logs(worker, "spread", run_id)[task]
                 for line in p.read_text(errors="replace").splitlines() if line.startswith("{")]
        assert 10 < len(lines) < 100, (task, len(lines))
        assert not [x for x in lines if "DeprecatedImportWarning" in json.dumps(x)], task
        assert not [x["event"] for x in lines if x.get("level") in ("error", "warning")], task
    train = [json.loads(line)["event"] for p in d.worker_logs("b", "spread", run_id)["train.run"]
             for line in p.read_text(errors="replace").splitlines() if line.startswith("{")]
    assert any(e.startswith("Hyperparameters: {'n_estimators': 20") for e in train), train
    assert any(e.startswith("MLflow: Created version '1'") for e in train), train
    # The data is in the bucket, nowhere on a worker's disk.
    keys = d.s3.keys(d.bucket, "pipelines/spread/")
    assert [re.sub(r"/[^/]+/([^/]+)$", r"/<run>/\1", k) for k in keys] == [
        "pipelines/spread/preprocess/<run>/test.parquet", "pipelines/spread/preprocess/<run>/train.parquet",
        "pipelines/spread/serve/<run>/predictions.parquet"]
    for w in stack.WORKERS:
        assert not list((d.worker_home(w) / "mlops").rglob("*.parquet")), w
        assert not list(d.worker_home(w).rglob("s3:*")), w
    client = mlflow_client(d)
    versions = client.search_model_versions("name = 'spread_model'")
    assert [str(v.version) for v in versions] == ["1"]
    assert {k: str(v) for k, v in client.get_registered_model("spread_model").aliases.items()} == {"champion": "1"}
    # The model's artifacts went through the server into the bucket.
    assert any(k.startswith("mlflow/") for k in d.s3.keys(d.bucket, "mlflow/"))
    print(f"one batch run across two workers: {took:.0f} s")


SLOW_TRAIN = """
import time


def fit_slowly(train, test, target, features, params):
    \"\"\"Fits, then takes its time: long enough for the test to kill the worker under it.\"\"\"
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(train[features], train[target])
    time.sleep(float(params.get("sleep", 0)))
    return model, {"accuracy": float(model.score(test[features], test[target]))}
"""


def test_a_worker_killed_under_training_costs_no_duplicate_work(deployment):
    """SIGKILL the Celery worker (and its task processes) while it trains: the task is retried on
    the other worker, the run ends green with one registered version, and the bucket holds only
    whole datasets."""
    d = deployment
    text = batch_pipeline("lost", d.bucket).replace(
        "    estimator: sklearn.ensemble.RandomForestClassifier\n"
        "    params: {n_estimators: 20, max_depth: 6, random_state: 7}\n",
        "    callable: slow_train:fit_slowly\n    params: {sleep: 20}\n")
    assert "slow_train:fit_slowly" in text
    d.publish({"slow_train.py": SLOW_TRAIN, "lost.yaml": text})
    d.wait_for_dags(["lost"])
    run_id = d.trigger("lost")
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        for w in stack.WORKERS:
            logs = d.worker_logs(w, "lost", run_id).get("train.run", [])
            if any("MLflow run" in p.read_text(errors="replace") for p in logs):
                victim = w
        time.sleep(1)
    assert victim is not None, d.output_tail()
    d.kill(f"worker-{victim}")
    killed_at = time.monotonic()
    try:
        states = d.wait_for_run("lost", run_id)
    finally:
        d.start_worker(victim)
    survivor = next(w for w in stack.WORKERS if w != victim)
    assert states == {"preprocess.run": "success", "train.run": "success", "validate.run": "success",
                      "serve.run": "success"}, d.output_tail()
    ti = d.task_instance("lost", run_id, "train.run")
    assert ti["try_number"] == 2
    assert "train.run" in d.worker_logs(survivor, "lost", run_id)
    client = mlflow_client(d)
    assert [str(v.version) for v in client.search_model_versions("name = 'lost_model'")] == ["1"]
    runs = client.search_runs([client.get_experiment_by_name("lost").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # the lost try's run, closed by the retry
    keys = d.s3.keys(d.bucket, "pipelines/lost/")
    assert all(k.endswith((".parquet",)) for k in keys) and len(keys) == 3, keys
    print(f"worker {victim} killed under training; the run ended green {time.monotonic() - killed_at:.0f} s later")


def _group_rss_mib(pgid: int) -> float:
    """Resident memory of every process in process group ``pgid`` (a worker and its task
    processes), MiB, from /proc."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24: rss in pages
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


def test_twenty_runs_of_five_pipelines_at_once_all_end_green_with_nothing_missing(deployment):
    import threading

    d = deployment
    pipelines = [f"load_{i}" for i in range(5)]
    d.publish({f"{pid}.yaml": batch_pipeline(pid, d.bucket) for pid in pipelines})
    d.wait_for_dags(pipelines)
    peak = {w: 0.0 for w in stack.WORKERS}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for w in stack.WORKERS:
                peak[w] = max(peak[w], _group_rss_mib(d.processes[f"worker-{w}"].pid))
            stop.wait(1)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    runs = [(pid, d.trigger(pid)) for _ in range(4) for pid in pipelines]  # 20 runs, triggered at once
    try:
        states = {(pid, run): d.wait_for_run(pid, run, timeout=2400) for pid, run in runs}
    finally:
        stop.set()
        sampler.join()
    took = time.monotonic() - started
    failed = {key: s for key, s in states.items() if set(s.values()) != {"success"}}
    assert not failed, failed
    client = mlflow_client(d)
    from airflow_mlops._core.names import safe_run_key

    for pid in pipelines:
        versions = client.search_model_versions(f"name = '{pid}_model'")
        by_run = sorted(client.get_run(v.run_id).data.tags["airflow.run_id"] for v in versions)
        assert by_run == sorted(run for p, run in runs if p == pid), pid  # one version per run, none twice
        keys = d.s3.keys(d.bucket, f"pipelines/{pid}/")
        for p, run in runs:
            if p == pid:
                key = safe_run_key(run)
                assert {f"pipelines/{pid}/preprocess/{key}/train.parquet", f"pipelines/{pid}/preprocess/{key}/test.parquet",
                        f"pipelines/{pid}/serve/{key}/predictions.parquet"} <= set(keys), (pid, run)
    ran = {w: sum(len(d.worker_logs(w, p, run)) for p, run in runs) for w in stack.WORKERS}
    assert all(ran.values()), ran  # both workers took part
    print(f"20 runs of 5 pipelines (80 tasks): all green in {took:.0f} s; tasks per worker {ran}; "
          f"peak resident memory per worker (its task processes included): "
          + ", ".join(f"{w} {peak[w]:.0f} MiB" for w in stack.WORKERS))


def test_a_stream_run_and_a_run_started_by_a_kafka_message_on_the_deployment(deployment):
    """The stream pipeline scores records with the champion an earlier run promoted (through the
    MLflow server), on a worker, with the Kafka connection stored in Postgres; a pipeline with
    ``dag.trigger.kafka`` is started by one message (the triggerer watches the topic) and runs green
    with its data in the bucket."""
    import json

    from sklearn.datasets import load_breast_cancer

    from tests.kafka_helpers import produce, read_all, shared_broker, unique

    d = deployment
    broker = shared_broker()
    records, scored, dead, labels = unique("tumours"), unique("scored"), unique("dlq"), unique("labels")
    for topic in (records, scored, dead, labels):
        broker.create_topic(topic, 1)
    kafka = {"bootstrap.servers": broker.bootstrap_servers, "auto.offset.reset": "earliest",
             "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
    d.cli("connections", "add", "kafka_deploy", "--conn-type", "kafka", "--conn-extra",
          json.dumps({**kafka, "group.id": unique("scoring")}))
    d.cli("connections", "add", "kafka_watch", "--conn-type", "kafka", "--conn-extra",
          json.dumps({**kafka, "group.id": unique("watcher")}))
    d.publish({"scoring.yaml": f"""
id: scoring
dag: {{schedule: null}}
mlflow: {{conn_id: mlflow_server, registered_model: spread_model}}
stages:
  serve:
    mode: stream
    queue: b
    stream:
      kafka_conn_id: kafka_deploy
      topics: {records}
      output_topic: {scored}
      dead_letter_topic: {dead}
      model_uri: models:/spread_model@champion
      output_fields: [id]
      batch_size: 50
      idle_timeout: 5
      max_duration: 300
""", "on_labels.yaml": batch_pipeline("on_labels", d.bucket).replace(
        "dag: {schedule: null, retries: 1, retry_delay: 5s}",
        f"dag:\n  retries: 1\n  trigger: {{kafka: {{topics: [{labels}], connection: kafka_watch}}}}")})
    d.wait_for_dags(["scoring", "on_labels"])
    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(100)
    rows = [(f"t-{i}".encode(), json.dumps({"id": f"t-{i}", **row}).encode())
            for i, row in enumerate(frame.to_dict(orient="records"))]
    produce(broker, records, rows + [(b"t-garbled", b"{not json")])
    run_id = d.trigger("scoring")
    assert d.wait_for_run("scoring", run_id) == {"serve.run": "success"}, d.output_tail()
    predictions = {json.loads(r.value)["id"] for r in read_all(broker, scored)}
    assert predictions == {f"t-{i}" for i in range(100)}
    assert [r.key for r in read_all(broker, dead)] == [b"t-garbled"]
    assert "serve.run" in d.worker_logs("b", "scoring", run_id)

    d.api("PATCH", "/dags/on_labels", {"is_paused": False})
    produce(broker, labels, [(b"labels-1", b'{"rows": 569}')])
    runs: list = []
    deadline = time.monotonic() + 300
    while not runs and time.monotonic() < deadline:
        time.sleep(3)
        runs = d.api("GET", "/dags/on_labels/dagRuns")["dag_runs"]
    assert runs, "no run was queued by the message\n" + d.output_tail()
    assert runs[0]["run_type"] == "asset_triggered", runs
    states = d.wait_for_run("on_labels", runs[0]["dag_run_id"])
    assert set(states.values()) == {"success"}, states
    assert d.s3.keys(d.bucket, "pipelines/on_labels/preprocess/")


BACKUP_DAG = """
# Airflow DAG: back up the deployment's MLflow (Postgres + bucket), restore it elsewhere
from airflow.sdk import DAG
from airflow_mlops.operators.backup import BackupOperator, RestoreOperator

with DAG("mlflow_backup", schedule=None):
    backup = BackupOperator(
        task_id="backup", target="s3://{bucket}/backups", conn_id="stage_data", name="mlflow", queue="a",
        sources=[{{"kind": "mlflow", "backend_store_uri": "{db}", "artifacts": "s3://{bucket}/mlflow",
                   "artifacts_conn_id": "stage_data"}}])
    restore = RestoreOperator(
        task_id="restore", target="s3://{bucket}/backups", conn_id="stage_data", name="mlflow", queue="b",
        dest="{dest}", mlflow_backend_store_uri="{restored_db}", mlflow_artifacts="s3://{restored}/mlflow",
        mlflow_artifacts_conn_id="stage_data")
    backup >> restore
"""


def _registry(client) -> dict:
    """What a restore must give back, read through the MLflow client."""
    out: dict = {"experiments": {}, "models": {}}
    for e in client.search_experiments():
        runs = client.search_runs([e.experiment_id])
        out["experiments"][e.name] = sorted((r.info.run_id, r.info.status, tuple(sorted(r.data.metrics.items())))
                                            for r in runs)
    for m in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{m.name}'")
        out["models"][m.name] = {"versions": sorted((str(v.version), v.run_id) for v in versions),
                                 "aliases": {k: str(v) for k, v in (m.aliases or {}).items()}}
    return out


def test_the_mlflow_store_on_postgres_and_its_bucket_are_backed_up_and_restored_elsewhere(deployment, tmp_path):
    """A BackupOperator on worker a dumps the tracking server's Postgres database and copies its
    artifact bucket into a snapshot in the bucket; a RestoreOperator on worker b restores it into
    an empty database and an empty bucket. A second tracking server on those serves the same
    experiments, runs, versions and aliases, and the same model artifacts."""
    from tests.servers import TrackingServer

    d = deployment
    restored_bucket = d.s3.bucket("restored")
    restored_db = d.postgres.create("mlflow_restored")
    d.publish({"mlflow_backup.py": BACKUP_DAG.format(
        bucket=d.bucket, db=d.postgres.url("mlflow"), dest=tmp_path / "restore", restored_db=restored_db,
        restored=restored_bucket)})
    d.wait_for_dags(["mlflow_backup"])
    before = _registry(mlflow_client(d))
    assert before["models"], "the earlier tests registered models to back up"
    run_id = d.trigger("mlflow_backup")
    states = d.wait_for_run("mlflow_backup", run_id)
    assert states == {"backup": "success", "restore": "success"}, d.output_tail()
    assert d.s3.keys(d.bucket, "backups/")
    server = TrackingServer(tmp_path, backend_store_uri=restored_db, artifacts_destination=f"s3://{restored_bucket}/mlflow",
                            env=d.s3.env, log=tmp_path / "restored-mlflow.out").start(300)
    port = server.port
    try:
        import mlflow

        restored = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{port}", registry_uri=f"http://127.0.0.1:{port}")
        assert _registry(restored) == before
        # The artifacts came back too: a champion's model files download from the restored server.
        name, model = next(iter(before["models"].items()))
        version = restored.get_model_version(name, model["aliases"]["champion"])
        mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
        mlflow.set_registry_uri(f"http://127.0.0.1:{port}")
        files = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}",
                                                    dst_path=str(tmp_path / "model"))
        assert list(Path(files).rglob("MLmodel")), files
    finally:
        server.stop()


RETENTION_DAG = """
# Airflow DAG: keep the newest version of each load_* model (and every version behind an alias)
from airflow.sdk import DAG
from airflow_mlops.operators.retention import RetentionCleanupOperator

with DAG("mlflow_retention", schedule=None):
    RetentionCleanupOperator(
        task_id="cleanup", mlflow={"conn_id": "mlflow_server"},
        policies=[{"kind": "mlflow_model_versions", "models": ["load_*"], "keep_last": 1}])
"""


def test_a_retention_run_through_the_tracking_server_keeps_the_newest_and_every_aliased_version(deployment):
    d = deployment
    client = mlflow_client(d)
    before = {m.name: ({str(v.version) for v in client.search_model_versions(f"name = '{m.name}'")},
                       {str(v) for v in (m.aliases or {}).values()})
              for m in client.search_registered_models() if m.name.startswith("load_")}
    assert before and all(len(versions) == 4 for versions, _ in before.values()), before
    d.publish({"mlflow_retention.py": RETENTION_DAG})
    d.wait_for_dags(["mlflow_retention"])
    run_id = d.trigger("mlflow_retention")
    assert d.wait_for_run("mlflow_retention", run_id) == {"cleanup": "success"}, d.output_tail()
    for name, (versions, aliased) in before.items():
        newest = max(versions, key=int)
        kept = {str(v.version) for v in client.search_model_versions(f"name = '{name}'")}
        assert kept == aliased | {newest}, (name, kept, aliased)
