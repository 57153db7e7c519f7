"""One training try, measured and recorded (airflow_mlops.stages.train.measure.TrainingRun) for a
GpuTrainJob with an entrypoint (stages.train.process), and the GPU assignment (stages.train.gpus).

No machine here has an NVIDIA GPU: the GPUs below are a FAKE NVML module (tests/fake_nvml.py) in
the worker process, where TrainingRun samples them; the training subprocess, MLflow (SQLite) and
the registered model are real.
"""

from __future__ import annotations

import logging

import pytest

from tests.fake_nvml import FakeGpu, FakeNvml, GiB, NVMLError_DriverNotLoaded, install
from tests.helpers import checkpoint_tries, train_job


def test_job_on_fake_gpus_picks_the_freest_samples_them_and_bills_them(monkeypatch, tmp_path):
    import mlflow

    from airflow_mlops.stages.train.measure import TrainingRun

    install(monkeypatch, FakeNvml([
        FakeGpu(memory_used=[60 * GiB], utilization=[5]),
        FakeGpu(memory_used=[2 * GiB], utilization=[70, 95]),
        FakeGpu(memory_used=[4 * GiB], utilization=[40, 60], energy_mj=[0, 100_000, 250_000]),
    ]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    job = train_job(tmp_path, gpus=2, sample_interval_s=0.2, flush_interval_s=0.5,
                    resources={"cpu": "4", "memory": "8Gi"})
    result = TrainingRun(job).run()
    assert result["gpu"]["available"] is True and result["gpu"]["ids"] == [1, 2]
    seen = checkpoint_tries(tmp_path / "ckpt")[0]
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "1,2"
    client = mlflow.MlflowClient(tracking_uri=job.tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.data.tags["airflow_mlops.gpu.available"] == "true" and run.data.tags["airflow_mlops.gpu.ids"] == "1,2"
    history = client.get_metric_history(result["run_id"], "gpu/1/utilization")
    assert len(history) >= 3 and [h.step for h in history] == list(range(len(history)))
    assert history[0].value == 70 and history[-1].value == 95
    assert not client.get_metric_history(result["run_id"], "gpu/0/utilization")  # not given to the task
    m = run.data.metrics
    assert m["gpu/count"] == 2 and m["gpu/utilization_max"] == 95
    assert m["gpu/memory_peak_bytes"] == 4 * GiB
    assert m["gpu/energy_j"] == pytest.approx(250.0)
    # billed: 2 GPUs (the ones given), 4 CPUs, 8 GB for the training's wall-clock
    hours = m["cost/wall_seconds"] / 3600
    assert m["cost/gpu_hours"] == pytest.approx(2 * hours)
    assert m["cost/total"] == pytest.approx(2 * hours * 2.5 + 4 * hours * 0.1 + 8 * hours * 0.05)
    assert m["gpu/hours"] == pytest.approx(2 * hours, rel=0.05)
    assert client.get_model_version("gpu_model", "1").tags["airflow_mlops.gpu.available"] == "true"


def test_a_gpu_count_or_ids_that_do_not_exist_fail_without_retry_and_without_a_run(monkeypatch, tmp_path):
    """More GPUs than exist, or an id NVML does not know, is a refusal (StageFailed: Airflow does
    not retry it) naming the setting, before any MLflow run is created (FAKE NVML: two GPUs)."""
    import mlflow

    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops.stages.train.measure import TrainingRun

    install(monkeypatch, FakeNvml([FakeGpu(), FakeGpu()]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(StageFailed, match=r"^gpus: asked for 3 GPU\(s\) but only 2 can be used here"):
        TrainingRun(train_job(tmp_path, gpus=3)).run()
    with pytest.raises(StageFailed, match=r"^gpu_ids: GPU id\(s\) \[5\] do not exist here: NVML sees 2 GPU\(s\)"):
        TrainingRun(train_job(tmp_path, gpu_ids=[0, 5])).run()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_runs([client.get_experiment_by_name("gpu").experiment_id]) == []


def test_the_log_says_which_gpus_training_really_uses(monkeypatch, caplog):
    """Issue 19, item 6: the operator logged '1 GPU(s)' and then trained on none. The assignment
    now says what training gets: the GPUs it runs on, or none seen by NVML (FAKE NVML below)."""
    from airflow_mlops.stages.train.gpus import assign_gpus

    log = logging.getLogger("test.assign")
    install(monkeypatch, FakeNvml([FakeGpu()], init_error=NVMLError_DriverNotLoaded))
    with caplog.at_level(logging.INFO):
        none = assign_gpus(1, None, log)
    assert not none.available and "asked for 1 GPU(s), training with none seen by NVML" in caplog.text
    install(monkeypatch, FakeNvml([FakeGpu(memory_used=[2 * GiB]), FakeGpu(memory_used=[30 * GiB])]))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        chosen = assign_gpus(1, None, log)
    assert chosen.visible == [0] and "Training on 1 GPU(s): GPU0" in caplog.text
    assert chosen.cuda_env() == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_without_a_count_training_gets_what_the_process_sees(monkeypatch, caplog):
    """Neither gpus nor gpu_ids (a YAML train stage without resources, a pod): every GPU the
    worker's CUDA_VISIBLE_DEVICES allows, and the variable is left as it is (FAKE NVML)."""
    from airflow_mlops.stages.train.gpus import assign_gpus

    install(monkeypatch, FakeNvml([FakeGpu(), FakeGpu(), FakeGpu()]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    seen = assign_gpus(None, None, logging.getLogger("test.assign"))
    assert (seen.visible, seen.sampled, seen.ids, seen.available) == (None, [0, 2], [0, 2], True)
    assert seen.cuda_env() == {}
    install(monkeypatch, FakeNvml([FakeGpu()], init_error=NVMLError_DriverNotLoaded))
    with caplog.at_level(logging.INFO):
        none = assign_gpus(None, None, logging.getLogger("test.assign"))
    assert (none.available, none.ids, none.cuda_env()) == (False, [], {})
    assert "Driver Not Loaded" in none.reason and "no NVIDIA driver/GPU found" in caplog.text


def test_a_job_trains_exactly_one_thing(tmp_path):
    """What to train is one of the stage's built-in fit (with its datasets) or an entrypoint,
    script or module (with a checkpoint folder): the job says so when it is built."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"exactly one of builtin, entrypoint, script or module; got \[\]"):
        train_job(tmp_path, entrypoint=None)
    with pytest.raises(ValidationError, match=r"got \['entrypoint', 'module'\]"):
        train_job(tmp_path, module="tests.gpu_entrypoints")
    with pytest.raises(ValidationError, match="a built-in training job needs data="):
        train_job(tmp_path, entrypoint=None, builtin={"estimator": "sklearn.dummy.DummyClassifier"})
    with pytest.raises(ValidationError, match="a training script needs checkpoint_dir="):
        train_job(tmp_path, entrypoint=None, script="train.py", checkpoint_dir=None)
    builtin = train_job(tmp_path, entrypoint=None, builtin={"estimator": "sklearn.dummy.DummyClassifier"},
                        data={"train_path": "/d/train.csv", "target": "y"}, checkpoint_dir=None)
    assert builtin.trains() == "sklearn.dummy.DummyClassifier"
