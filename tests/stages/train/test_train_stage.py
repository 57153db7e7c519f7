"""The YAML train stage (airflow_mlops.stages.train): its built-in training runs through the same
TrainingRun as GpuTrainOperator's entrypoint, so it gets the same GPUs, NVML metrics, cost, tags
and reuse on retry.

No machine here has an NVIDIA GPU: NVML is a FAKE module (tests/fake_nvml.py) in this process,
where the stage trains; MLflow (SQLite) and scikit-learn are real.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fake_nvml import FakeGpu, FakeNvml, GiB, install


def test_train_stage_records_gpu_metrics_cost_and_the_same_tags_as_the_operator(monkeypatch, tmp_path):
    import mlflow

    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import DataInput, PreprocessStage, TrainStage
    from airflow_mlops.stages import run_stage

    install(monkeypatch, FakeNvml([FakeGpu(utilization=[20, 80])]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    target = MlflowTarget(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="exp", registered_model="iris",
                          artifact_location=str(tmp_path / "artifacts"))

    def ctx(stage, upstream=()):
        return StageContext(pipeline_id="p", stage_name=stage, run_key="run-1", data_dir=str(tmp_path / "data"),
                            mlflow=target, upstream=list(upstream),
                            tags={"airflow_mlops.task_key": "p/run-1/train.run", "airflow.try_number": "1"},
                            resources={"cpu": "2", "memory": "2Gi", "gpu": 1}, prices={"gpu_hour": 4.0},
                            gpu_metrics={"sample_interval": 0.05})

    prep = run_stage(PreprocessStage(input=DataInput(sklearn_dataset="iris")), ctx("preprocess"))
    spec = TrainStage(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 500}, target="target")
    result = run_stage(spec, ctx("train", [("preprocess", prep)]))
    client = mlflow.MlflowClient(tracking_uri=target.tracking_uri)
    run = client.get_run(result["run_id"])
    assert result["model_version"] == "1" and result["gpu"]["available"] is True and result["gpu"]["ids"] == [0]
    assert result["target"] == "target" and len(result["features"]) == 4 and result["reused"] is False
    assert run.info.status == "FINISHED" and run.info.run_name == "p.train"
    assert [h.value for h in client.get_metric_history(run.info.run_id, "gpu/0/utilization")][:2] == [20, 80]
    hours = run.data.metrics["cost/wall_seconds"] / 3600
    assert run.data.metrics["cost/total"] == pytest.approx(hours * (4.0 + 2 * 0.1 + 2 * 0.05))
    assert result["cost"]["total"] == pytest.approx(run.data.metrics["cost/total"])
    assert result["mlflow_run_url"] == f"http://localhost:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    # the tags and params GpuTrainOperator's runs carry, from the same wrapper
    tags = run.data.tags
    assert (tags["airflow_mlops.gpu.available"], tags["airflow_mlops.gpu.ids"]) == ("true", "0")
    assert tags["airflow_mlops.gpu.names"] == "NVIDIA Fake H100"
    assert tags["airflow_mlops.entrypoint"] == "sklearn.linear_model.LogisticRegression"
    assert tags["airflow_mlops.task_key"] == "p/run-1/train.run" and "airflow_mlops.cost.prices" in tags
    params = dict(run.data.params)
    assert 0 < int(params.pop("train_rows")) < 150  # iris' training split
    assert params == {"max_iter": "500", "gpus": "1", "features": "4"}
    assert run.data.metrics["accuracy"] == result["metrics"]["accuracy"] and set(result["metrics"]) == {"accuracy"}
    version = client.get_model_version("iris", "1")
    assert version.tags["airflow_mlops.gpu.available"] == "true" and version.tags["airflow.try_number"] == "1"

    # a retry of the same task instance reuses the run and version, and reports them as recorded
    again = run_stage(spec, ctx("train", [("preprocess", prep)]))
    assert again["reused"] is True and again["run_id"] == result["run_id"] and again["model_version"] == "1"
    assert again["cost"] == pytest.approx(result["cost"]) and again["metrics"] == result["metrics"]
    assert again["features"] == result["features"]
    assert client.get_run(result["run_id"]).data.metrics["cost/total"] == run.data.metrics["cost/total"]
    assert [str(v.version) for v in client.search_model_versions("name = 'iris'")] == ["1"]


def test_train_stage_trains_on_the_gpus_its_resources_ask_for(monkeypatch, tmp_path):
    """resources.gpu: N gives the stage the N GPUs with the most free memory, named in
    CUDA_VISIBLE_DEVICES while it runs; 0 hides them all; more than exist fails clearly (FAKE NVML)."""
    import mlflow

    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import DataInput, PreprocessStage, TrainStage
    from airflow_mlops.stages import StageFailed, run_stage

    install(monkeypatch, FakeNvml([FakeGpu(memory_used=[30 * GiB]), FakeGpu(memory_used=[2 * GiB], utilization=[70])]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the worker's own: both
    target = MlflowTarget(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="exp", registered_model="m",
                          artifact_location=str(tmp_path / "artifacts"))

    def ctx(stage, upstream=(), gpu=None):
        return StageContext(pipeline_id="p", stage_name=stage, run_key="run-1", data_dir=str(tmp_path / "data"),
                            mlflow=target, upstream=list(upstream), resources=None if gpu is None else {"gpu": gpu},
                            tags={"airflow_mlops.task_key": f"p/run-1/{stage}/{gpu}", "airflow.try_number": "1"})

    prep = run_stage(PreprocessStage(input=DataInput(sklearn_dataset="iris")), ctx("preprocess"))
    spec = TrainStage(callable="tests.fixtures_code:model_that_notes_its_gpus", target="target")
    client = mlflow.MlflowClient(tracking_uri=target.tracking_uri)

    one = run_stage(spec, ctx("train", [("preprocess", prep)], gpu=1))
    run = client.get_run(one["run_id"])
    assert run.data.tags["seen.cuda_visible_devices"] == "1"  # GPU1 has 38 GiB free, GPU0 10 GiB
    assert one["gpu"]["available"] is True and one["gpu"]["ids"] == [1]
    assert client.get_metric_history(run.info.run_id, "gpu/1/utilization")[0].value == 70
    assert client.get_metric_history(run.info.run_id, "gpu/0/utilization") == []
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # the worker's own, put back

    none = run_stage(spec, ctx("train", [("preprocess", prep)], gpu=0))
    assert client.get_run(none["run_id"]).data.tags["seen.cuda_visible_devices"] == ""
    assert none["gpu"] == {"available": False, "ids": [], "names": [], "reason": "the stage's resources ask for no GPU"}

    with pytest.raises(StageFailed, match=r"resources.gpu: asked for 3 GPU\(s\) but only 2 can be used here"):
        run_stage(spec, ctx("train", [("preprocess", prep)], gpu=3))


SKOPS_IMPORT = """
import sys
import airflow.sdk  # Airflow's deprecated-module shims are loaded in every task process
import scipy.special, sklearn  # noqa: F401
if sys.argv[1] == "package":
    from airflow_mlops._core.compat import import_skops_io
    import_skops_io()
else:
    import skops.io  # noqa: F401
"""


def test_importing_skops_for_mlflow_leaves_no_deprecation_lines_in_the_task_log():
    """skops walks every loaded module at import; under Airflow each lookup in a deprecated-module
    shim warned (~1,160 lines in every train and serve log). The package's import silences them;
    the plain import, in the same process setup, shows what the test would catch."""
    def run(how: str) -> str:
        done = subprocess.run([sys.executable, "-W", "always", "-c", SKOPS_IMPORT, how], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr

    assert run("plain").count("DeprecatedImportWarning") > 100
    assert "DeprecatedImportWarning" not in run("package")
