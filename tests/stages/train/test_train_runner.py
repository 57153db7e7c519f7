"""``python -m airflow_mlops.stages.train.runner``: the training process of a callable entrypoint
(``call``) and a whole job in a pod (``job``: GpuTrainOperator's kubernetes backend builds the pod,
and its very command runs here), and how each reports a refusal or a crash.

No GPU and no fake here: the real pynvml finds no driver, the training runs on CPU in real
subprocesses, into a real SQLite MLflow store.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from airflow_mlops.telemetry.nvml import NO_GPU_MESSAGE
from tests.conftest import REPO
from tests.helpers import train_job


def test_job_refusal_fails_without_retry_and_crash_reports_its_log_tail(tmp_path):
    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops.stages.train.measure import TrainingRun
    from airflow_mlops.stages.train.process import TrainingFailed

    with pytest.raises(StageFailed, match="the data is unusable for these params"):
        TrainingRun(train_job(tmp_path, entrypoint="tests.gpu_entrypoints:refuses", gpus=0)).run()
    job = train_job(tmp_path, entrypoint="tests.gpu_entrypoints:resumable", gpus=0,
                    hyperparams={"epochs": 3, "crash_after": 1}, tags={"airflow_mlops.task_key": "p/run-2/train"})
    with pytest.raises(TrainingFailed, match=r"(?s)exited with code 1.*epoch 1 checkpointed.*simulated crash after epoch 1"):
        TrainingRun(job).run()


def test_a_job_in_a_pod_that_refuses_prints_stage_failed_and_exits_3_with_its_cost_recorded(tmp_path):
    """The pod's command (``runner job --payload``): a refusal is the runtime's STAGE FAILED line
    and exit code 3 (the launcher fails the task without retry), and the failed try's run still
    has its cost."""
    import mlflow

    from airflow_mlops._core.outcome import EXIT_FAILED
    from airflow_mlops._core.result import FAILED_PREFIX
    from airflow_mlops.stages.train.runner import encode_job

    job = train_job(tmp_path, entrypoint="tests.gpu_entrypoints:refuses", gpus=0, resources={"cpu": 2})
    out = subprocess.run([sys.executable, "-m", "airflow_mlops.stages.train.runner", "job", "--payload", encode_job(job)],
                         capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == EXIT_FAILED, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{FAILED_PREFIX}the data is unusable for these params" in out.stderr
    client = mlflow.MlflowClient(tracking_uri=job.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gpu").experiment_id])
    assert run.info.status == "FAILED" and run.data.metrics["cost/total"] > 0
    assert run.data.metrics["cost/cpu_hours"] == pytest.approx(2 * run.data.metrics["cost/wall_seconds"] / 3600)


# --- the kubernetes backend: the pod, and the very command it runs ------------------------------


def test_kubernetes_backend_builds_a_gpu_pod_whose_command_runs_the_job(tmp_path):
    from airflow_mlops._core.result import RESULT_MARKER
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.stages.train.job import GpuTrainJob

    op = GpuTrainOperator(task_id="train", entrypoint="tests.gpu_entrypoints:train_forest", gpus=2,
                          resources={"cpu": 8, "memory": "32Gi"}, backend="kubernetes",
                          kubernetes={"image": "registry.example/mlops:1", "namespace": "ml"})
    job = train_job(tmp_path, gpus=2)
    pod = op.pod_operator(job).build_pod_request_obj(dry_run=True)
    container = pod.spec.containers[0]
    limits = {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert container.resources.limits == container.resources.requests == limits
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [t.key for t in pod.spec.tolerations] == ["nvidia.com/gpu"]
    assert container.command == ["python"] and container.args[:4] == ["-m", "airflow_mlops.stages.train.runner", "job", "--payload"]
    in_pod = GpuTrainJob.model_validate_json(base64.b64decode(container.args[4]))
    assert (in_pod.gpus, in_pod.gpu_ids) == (2, None)  # the device plugin picks; the pod uses what it sees
    assert in_pod.resources == {"cpu": "8", "memory": "32Gi", "gpu": 2}

    # what the pod runs, run here (no GPU here either: it says so and trains on CPU)
    out = subprocess.run([sys.executable, *container.args], capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert NO_GPU_MESSAGE in out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith(RESULT_MARKER)]
    result = json.loads(line[len(RESULT_MARKER):])
    assert result["model_version"] == "1" and result["gpu"]["available"] is False
    # billed what the pod asked for, found or not: 2 GPUs, 8 CPUs, 32 GB
    hours = result["cost"]["wall_seconds"] / 3600
    assert result["cost"]["gpu_hours"] == pytest.approx(2 * hours) and result["cost"]["memory_gib_hours"] == pytest.approx(32 * hours)
