"""The package on a production-shaped deployment (``tests/deployment/stack.py``): Postgres, Redis,
CeleryExecutor with two workers that share no disk, an MLflow server on Postgres with artifacts in
a bucket, stage data in the bucket. Runs are triggered through the REST API, as the UI does.

One deployment for the module (it takes a few minutes to start here); the tests run in file order
and build on each other's runs where said.
"""

from __future__ import annotations

import os
import re
import time

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
