"""GPU training: the NVML sampler, cost, GpuTrainOperator through Airflow, the kubernetes backend's
pod, GpuAvailableSensor and its trigger (Prometheus: tests/test_telemetry_prometheus.py).

No machine here has an NVIDIA GPU or driver. Two things follow:
- the real ``pynvml`` really fails here (``NVMLError_LibraryNotFound``): the no-driver path is
  tested with it, and CPU training runs end to end through Airflow, recording that no GPU was used;
- the sampling logic is tested at the NVML boundary with a FAKE NVML module (tests/fake_nvml.py,
  declared as such), the only fake in these tests. MLflow (SQLite), Airflow (SQLite, dag.test),
  the training subprocesses and HTTP are real.
``test_real_nvml_on_a_gpu_machine`` runs the real path only where a GPU exists, and skips here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from airflow_mlops.telemetry.nvml import NO_GPU_MESSAGE
from airflow_mlops.telemetry.sampler import NvmlSampler
from tests.conftest import REPO
from tests.fake_nvml import FakeGpu, FakeNvml, GiB, NVMLError_DriverNotLoaded, install
from tests.helpers import extra_links, write


def two_gpus() -> FakeNvml:
    return FakeNvml([
        FakeGpu(utilization=[10, 50, 90, 30], memory_used=[2 * GiB, 6 * GiB, 5 * GiB, 3 * GiB],
                power_mw=[100_000, 250_000, 300_000, 150_000], temperature=[40, 55, 61, 50],
                energy_mj=[1_000_000, 1_002_000, 1_005_500, 1_009_000, 1_012_000]),
        FakeGpu(name="NVIDIA Fake A100", memory_total=40 * GiB, utilization=[0, 100], memory_used=[1 * GiB, 39 * GiB],
                power_mw=[60_000, 400_000], temperature=[35, 80], energy_mj=[5_000, 7_000, 11_000]),
    ])


# --- the sampler, at the NVML boundary (FAKE NVML) ------------------------------------------------


def test_sampler_readings_and_summary_with_the_fake_nvml(monkeypatch):
    fake = install(monkeypatch, two_gpus())
    points = []
    with NvmlSampler(interval_s=3600, sinks=[points.extend]) as sampler:  # no thread tick: samples are explicit
        sampler.sample()
        sampler.sample()
    # start, 2 explicit, stop = 4 samples per GPU
    s = sampler.summary()
    assert s["available"] is True and s["devices"] == [0, 1] and s["samples"] == 4
    assert s["names"] == ["NVIDIA Fake H100", "NVIDIA Fake A100"]
    d0, d1 = s["per_device"][0], s["per_device"][1]
    assert d0["utilization_mean"] == pytest.approx((10 + 50 + 90 + 30) / 4)
    assert d0["utilization_max"] == 90
    assert d0["memory_peak_bytes"] == 6 * GiB
    assert d0["power_max_w"] == 300.0 and d0["temperature_max_c"] == 61
    # energy: counter at start 1 000 000 mJ (read once as the base), last sample 1 012 000 mJ
    assert d0["energy_j"] == pytest.approx(12.0)
    assert d1["energy_j"] == pytest.approx((11_000 - 5_000) / 1000)
    assert d1["memory_peak_bytes"] == 39 * GiB
    assert s["memory_peak_bytes"] == 39 * GiB  # the highest of any one device
    assert s["energy_j"] == pytest.approx(18.0)
    assert s["utilization_max"] == 100
    assert s["utilization_mean"] == pytest.approx((10 + 50 + 90 + 30 + 0 + 100 + 100 + 100) / 8)
    assert s["gpu_hours"] == pytest.approx(2 * s["elapsed_s"] / 3600)
    assert s["energy_source"] == "counter"
    # points: per GPU and sample, under gpu/<index>/, step = sample index
    keys = {k for k, *_ in points}
    assert keys == {f"gpu/{i}/{m}" for i in (0, 1)
                    for m in ("utilization", "memory_used_bytes", "power_w", "temperature_c", "energy_j")}
    util0 = [(step, v) for k, v, _, step in points if k == "gpu/0/utilization"]
    assert util0 == [(0, 10.0), (1, 50.0), (2, 90.0), (3, 30.0)]
    power1 = [v for k, v, *_ in points if k == "gpu/1/power_w"]
    assert power1 == [60.0, 400.0, 400.0, 400.0]  # mW / 1000
    assert fake.initialised == 0  # nvmlShutdown was called


def test_sampler_without_energy_counter_integrates_power(monkeypatch):
    install(monkeypatch, FakeNvml([FakeGpu(energy_mj=None, power_mw=[200_000])]))
    with NvmlSampler(interval_s=0.05) as sampler:
        threading.Event().wait(0.3)
    s = sampler.summary()
    assert s["energy_source"] == "power integration"
    # 200 W constant, integrated between the first and last sample
    assert s["energy_j"] == pytest.approx(200.0 * s["elapsed_s"], rel=0.25)
    assert s["samples"] >= 3


def test_sampler_thread_logs_batches_to_mlflow(monkeypatch, tmp_path):
    import mlflow

    from airflow_mlops.telemetry.mlflow_sink import MlflowSink

    install(monkeypatch, two_gpus())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "a")))
    calls = []
    sink = MlflowSink(client, run.info.run_id)

    def counting(points):
        calls.append(len(points))
        sink(points)

    with NvmlSampler(interval_s=0.05, sinks=[counting], flush_interval_s=0.2) as sampler:
        threading.Event().wait(0.6)
    history = client.get_metric_history(run.info.run_id, "gpu/0/utilization")
    assert [m.step for m in history] == list(range(sampler.samples))
    assert [m.value for m in history][:4] == [10, 50, 90, 30]
    assert client.get_metric_history(run.info.run_id, "gpu/1/memory_used_bytes")[-1].value == 39 * GiB
    assert sum(calls) == sampler.samples * 10 and len(calls) >= 2  # several batches, not one call per point
    assert "system/" not in " ".join(client.get_run(run.info.run_id).data.metrics)


def test_no_driver_with_the_real_pynvml_logs_one_clear_line_and_is_a_noop(caplog):
    import pynvml

    with pytest.raises(pynvml.NVMLError_LibraryNotFound):  # the premise: no driver on this machine
        pynvml.nvmlInit()
    caplog.set_level(logging.INFO, logger="airflow_mlops")
    points = []
    with NvmlSampler(interval_s=0.01, sinks=[points.extend]) as sampler:
        threading.Event().wait(0.05)
    lines = [r.getMessage() for r in caplog.records if "NVIDIA" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith(NO_GPU_MESSAGE)
    assert "NVMLError_LibraryNotFound" in lines[0]
    s = sampler.summary()
    assert (s["available"], s["samples"], s["gpu_hours"], points) == (False, 0, 0.0, [])


def test_any_nvml_init_error_is_a_noop(monkeypatch, caplog):
    install(monkeypatch, FakeNvml([FakeGpu()], init_error=NVMLError_DriverNotLoaded))
    with NvmlSampler() as sampler:
        pass
    assert not sampler.available and "Driver Not Loaded" in sampler.reason
    assert NO_GPU_MESSAGE in caplog.text


def test_choose_devices_takes_those_with_most_free_memory(monkeypatch):
    from airflow_mlops.telemetry.devices import choose_devices, list_devices
    from airflow_mlops.telemetry.nvml import NotEnoughGpus

    install(monkeypatch, FakeNvml([FakeGpu(memory_used=[70 * GiB]), FakeGpu(memory_used=[10 * GiB]),
                                   FakeGpu(memory_used=[1 * GiB]), FakeGpu(memory_used=[10 * GiB])]))
    devices = list_devices()
    assert [d.memory_free_bytes // GiB for d in devices] == [10, 70, 79, 70]
    assert choose_devices(2, devices) == [1, 2]
    assert choose_devices(3, devices) == [1, 2, 3]
    assert choose_devices(1, devices, among=[0, 3]) == [3]
    with pytest.raises(NotEnoughGpus, match=r"asked for 3 GPU\(s\) but only 2 can be used here"):
        choose_devices(3, devices, among=[0, 1])


@pytest.mark.skipif(os.environ.get("AIRFLOW_MLOPS_REAL_GPU") != "1" and not Path("/dev/nvidiactl").exists(),
                    reason="no NVIDIA GPU/driver on this machine: the real NVML path runs only where one is lent")
def test_real_nvml_on_a_gpu_machine():
    import pynvml

    pynvml.nvmlInit()
    count = pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()
    with NvmlSampler(interval_s=0.2) as sampler:
        threading.Event().wait(1.5)
    s = sampler.summary()
    assert s["available"] and s["count"] == count >= 1
    assert s["samples"] >= 5
    d = s["per_device"][0]
    assert 0 <= d["utilization_max"] <= 100
    assert 0 < d["memory_peak_bytes"] <= d["memory_total_bytes"]
    assert d["power_max_w"] is None or d["power_max_w"] > 0
    assert s["energy_j"] is None or s["energy_j"] >= 0


# --- cost -------------------------------------------------------------------------------------


def test_cost_with_default_and_custom_prices():
    from airflow_mlops.spec.prices import PriceTable
    from airflow_mlops.telemetry.cost import TaskResources, cost, task_cost

    c = cost(gpu_hours=4, cpu_hours=16, memory_gib_hours=64)
    assert (c.gpu, c.cpu, c.memory) == (10.0, pytest.approx(1.6), pytest.approx(3.2))
    assert c.total == pytest.approx(14.8)
    custom = cost(4, 16, 64, {"gpu_hour": 1.0, "cpu_hour": 0.0, "memory_gib_hour": 0.01})
    assert custom.total == pytest.approx(4.64)
    # the "training" profile (4 GPUs, 16 CPUs, 64Gi) for 90 minutes
    t = task_cost(TaskResources(gpu=4, cpu=16, memory_gib=64), 90 * 60, PriceTable(gpu_hour=3.0))
    assert (t.gpu_hours, t.cpu_hours, t.memory_gib_hours) == (6.0, 24.0, 96.0)
    assert t.total == pytest.approx(6 * 3.0 + 24 * 0.1 + 96 * 0.05)
    assert t.metrics()["cost/total"] == pytest.approx(t.total) and t.metrics()["cost/wall_seconds"] == 5400
    with pytest.raises(ValueError, match="gpu_hour"):
        PriceTable(gpu_hour=-1)
    with pytest.raises(ValueError, match="Extra inputs"):
        PriceTable.model_validate({"gpu_hours": 1})


def test_resource_quantities():
    from airflow_mlops._core.units import memory_gib, parse_bytes, parse_cpu
    from airflow_mlops.spec.models import Resources
    from airflow_mlops.telemetry.cost import resources_from

    assert parse_cpu("500m") == 0.5 and parse_cpu("4") == 4 and parse_cpu(2) == 2
    assert parse_bytes("16Gi") == 16 * GiB and parse_bytes("1G") == 10**9 and parse_bytes("512Mi") == 2**29
    assert memory_gib("64Gi") == 64 and memory_gib(2 * GiB) == 2
    with pytest.raises(ValueError, match="memory quantity"):
        parse_bytes("16GB")
    r = resources_from(Resources(cpu="500m", memory="2Gi"), gpus_held=2)
    assert (r.gpu, r.cpu, r.memory_gib) == (2, 0.5, 2.0)
    assert resources_from({"gpu": 0}, gpus_held=4).gpu == 0
    assert resources_from(None, gpus_held=1).__dict__ == {"gpu": 1, "cpu": 1.0, "memory_gib": 1.0}


# --- the operator: argument checks at parse time, parse cost -----------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give exactly one of entrypoint="),
    ({"entrypoint": "a.b:c", "script": "x.py"}, "give exactly one of"),
    ({"entrypoint": "not a path"}, "entrypoint must look like 'package.module:function'"),
    ({"entrypoint": "a.b:c", "gpus": 1.5}, "gpus must be a whole number"),
    ({"entrypoint": "a.b:c", "gpus": -1}, "gpus must be a whole number"),
    ({"entrypoint": "a.b:c", "gpus": 2, "gpu_ids": [0, 1]}, "not both"),
    ({"entrypoint": "a.b:c", "gpu_ids": [0, 0]}, "distinct GPU indices"),
    ({"entrypoint": "a.b:c", "gpu_ids": "zero"}, "gpu_ids must be GPU indices"),
    ({"entrypoint": "a.b:c", "sample_interval": 0}, "sample_interval must be"),
    ({"entrypoint": "a.b:c", "sample_interval_s": 0}, "sample_interval must be"),
    ({"entrypoint": "a.b:c", "prices": {"gpu_hour": -2}}, "gpu_hour"),
    ({"entrypoint": "a.b:c", "resources": {"gpu": 0.5}}, "whole number of GPUs"),
    ({"entrypoint": "a.b:c", "resources": "huge"}, "unknown resource profile 'huge'"),
    ({"entrypoint": "a.b:c", "backend": "slurm"}, "backend must be one of"),
    ({"entrypoint": "a.b:c", "backend": "kubernetes"}, "needs kubernetes="),
    ({"entrypoint": "a.b:c", "upstream_task": "prep"}, "target= (the label column) is required"),
    ({"script": "train.py", "train_path": "/d.parquet", "target": "y"}, "hand datasets to a callable entrypoint"),
    ({"entrypoint": "a.b:c", "args": ["--x"]}, "args= are for script=/module="),
    ({"entrypoint": "a.b:c", "mlflow": {"tracking_uri": "sqlite:///rel.db"}}, "relative SQLite path"),
    ({"entrypoint": "a.b:c", "pushgateway_url": "pushgw:9091"}, "pushgateway_url must be an http"),
])
def test_operator_rejects_bad_arguments_when_the_dag_is_parsed(kwargs, message):
    from airflow_mlops.operators.gpu_train import GpuTrainOperator

    with pytest.raises(ValueError, match=re.escape(message)):
        GpuTrainOperator(task_id="t", **kwargs)


def test_dag_file_with_the_gpu_operators_parses_without_heavy_imports(tmp_path):
    # The entrypoint's module is located at parse, never run: its heavy imports stay out.
    write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/mod.py", "import pandas, sklearn\n\ndef fit(params):\n    pass\n")
    dag_file = write(tmp_path, "gpu_dag.py", """
        # Airflow DAG with the GPU operators
        from airflow.sdk import DAG
        from airflow_mlops.operators.gpu_train import GpuTrainOperator
        from airflow_mlops.sensors.gpu import GpuAvailableSensor

        with DAG("gpu_parse", schedule=None) as dag:
            wait = GpuAvailableSensor(task_id="wait", count=2, min_free_memory="16Gi", deferrable=True)
            train = GpuTrainOperator(task_id="train", entrypoint="pkg.mod:fit", gpu_ids="{{ ti.xcom_pull('wait') }}",
                                     backend="kubernetes", kubernetes={"image": "img:1"}, resources="training")
            wait >> train
        """)
    code = textwrap.dedent(f"""
        import sys
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(dag_file)!r})
        assert bag.import_errors == {{}}, bag.import_errors
        assert sorted(bag.dags["gpu_parse"].task_ids) == ["train", "wait"]
        heavy = sorted(m for m in ("mlflow", "pynvml", "pandas", "sklearn", "kubernetes", "pyspark") if m in sys.modules)
        print("HEAVY", heavy)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout


# --- GpuTrainOperator end to end through Airflow, on CPU ---------------------------------------

GPU_DAG = """
    # Airflow DAG: GpuTrainOperator on a machine without a GPU
    from datetime import timedelta

    from airflow.sdk import DAG
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.backends.stage import StageOperator
    from airflow_mlops.spec.models import DataInput, PreprocessStage

    ENV = {{"PYTHONPATH": {repo!r}}}


    class CrashAfterRegistering(GpuTrainOperator):
        \"\"\"The worker is lost after the model version was registered, before the task ended.\"\"\"

        def execute(self, context):
            result = super().execute(context)
            if context["ti"].try_number == 1:
                raise RuntimeError("worker lost after registering the model")
            return result


    with DAG("gpu_cpu", schedule=None) as dag:
        prep = StageOperator(task_id="prep", stage_name="prep", pipeline_id="gpu_cpu",
                             stage=PreprocessStage(input=DataInput(sklearn_dataset="breast_cancer")))
        forest = GpuTrainOperator(task_id="forest", entrypoint="tests.gpu_entrypoints:train_forest", env=ENV,
                                  hyperparams={{"n_estimators": 20, "random_state": 0}},
                                  mlflow={{"registered_model": "forest"}}, resources={{"cpu": 2, "memory": "4Gi"}},
                                  prices={{"cpu_hour": 0.5, "memory_gib_hour": 0.25}})
        frames = GpuTrainOperator(task_id="frames", entrypoint="tests.gpu_entrypoints:train_on_frames", env=ENV,
                                  upstream_task="prep", target="target", gpus=0, hyperparams={{"max_iter": 5000}},
                                  mlflow={{"registered_model": "frames"}}, mlflow_ui_url="https://mlflow.example.com/")
        resumable = GpuTrainOperator(task_id="resumable", entrypoint="tests.gpu_entrypoints:resumable", env=ENV,
                                     hyperparams={{"epochs": 4, "crash_after": 2}}, mlflow={{"registered_model": "resumable"}},
                                     retries=1, retry_delay=timedelta(seconds=0))
        crashy = CrashAfterRegistering(task_id="crashy", entrypoint="tests.gpu_entrypoints:train_forest", env=ENV,
                                       hyperparams={{"n_estimators": 5, "random_state": 0}},
                                       mlflow={{"registered_model": "crashy"}}, retries=1, retry_delay=timedelta(seconds=0))
        script = GpuTrainOperator(task_id="script", module="tests.gpu_entrypoints", args=["--max-depth", "2"], env=ENV,
                                  mlflow={{"registered_model": "script_tree"}})
        prep >> frames
    """


@pytest.fixture(scope="module")
def gpu_dag_run(airflow_db, tmp_path_factory):
    """One run of the DAG for the tests that read it (it trains six times: ~2-3 minutes here).
    Its own MLflow store and dags folder, like the mlops_home and dags_folder fixtures."""
    from airflow.dag_processing.dagbag import DagBag

    tmp = tmp_path_factory.mktemp("gpu_dag")
    home, folder = tmp / "mlops", tmp / "dags"
    folder.mkdir()
    bundle = {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
              "kwargs": {"path": str(folder)}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_MLOPS_HOME", str(home))
        mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
        mp.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([bundle]))
        write(folder, "gpu_cpu.py", GPU_DAG.format(repo=str(REPO)))
        bag = DagBag(dag_folder=str(folder))
        assert bag.import_errors == {}
        dag = bag.dags["gpu_cpu"]
        dr = dag.test()  # (conftest puts MLflow's process-wide URIs back after each test)
        tis = {ti.task_id: ti for ti in dr.get_task_instances()}
        yield dag, dr, tis, home


def _client(mlops_home):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")


def _runs(client, task_id):
    experiment = client.get_experiment_by_name("gpu_cpu")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`airflow.task_id` = '{task_id}'")
    return sorted(runs, key=lambda r: int(r.data.tags["airflow.try_number"]))


def _tries(checkpoint_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(checkpoint_dir) / "tries.jsonl").read_text().splitlines()]


def test_gpu_train_operator_end_to_end_on_cpu(gpu_dag_run):
    from airflow_mlops._core.names import safe_run_key

    dag, dr, tis, home = gpu_dag_run
    assert {k: ti.state for k, ti in tis.items()} == dict.fromkeys(
        ["prep", "forest", "frames", "resumable", "crashy", "script"], "success")
    client = _client(home)

    # forest: trained in a subprocess without GPUs, registered, and says no GPU was used
    result = tis["forest"].xcom_pull(task_ids="forest")
    (run,) = _runs(client, "forest")
    assert result["run_id"] == run.info.run_id and run.info.status == "FINISHED"
    assert result["model_version"] == "1" and result["model_uri"] == "models:/forest/1"
    assert [str(v.version) for v in client.search_model_versions("name = 'forest'")] == ["1"]
    version = client.get_model_version("forest", "1")
    assert version.run_id == run.info.run_id
    assert version.tags["airflow_mlops.gpu.available"] == "false"
    assert version.tags["airflow_mlops.task_key"] == f"gpu_cpu/{dr.run_id}/forest"
    tags = run.data.tags
    assert tags["airflow_mlops.gpu.available"] == "false"
    assert "NVMLError_LibraryNotFound" in tags["airflow_mlops.gpu.reason"]
    assert tags["airflow_mlops.gpu.ids"] == ""
    assert result["gpu"] == {"available": False, "ids": [], "names": [], "reason": tags["airflow_mlops.gpu.reason"]}
    assert run.data.params == {"n_estimators": "20", "random_state": "0", "gpus": "0"}
    assert run.data.metrics["accuracy"] == result["metrics"]["accuracy"] > 0.9
    assert not any(k.startswith("gpu/") for k in run.data.metrics)  # no GPU metrics without a driver
    # cost: held resources (2 CPUs, 4Gi, no GPU) × wall-clock × this task's prices
    m, cost = run.data.metrics, result["cost"]
    hours = cost["wall_seconds"] / 3600
    assert cost["gpu_hours"] == 0 and cost["cpu_hours"] == pytest.approx(2 * hours)
    assert cost["memory_gib_hours"] == pytest.approx(4 * hours)
    assert cost["total"] == pytest.approx(2 * hours * 0.5 + 4 * hours * 0.25)
    assert {k: m[f"cost/{k}"] for k in cost} == pytest.approx(cost)
    assert json.loads(tags["airflow_mlops.cost.prices"]) == {"gpu_hour": 2.5, "cpu_hour": 0.5, "memory_gib_hour": 0.25}
    # the environment the training process got
    checkpoint = home / "checkpoints" / "gpu_cpu" / safe_run_key(dr.run_id) / "forest"
    assert result["checkpoint_dir"] == tags["airflow_mlops.checkpoint_dir"] == str(checkpoint)
    (seen,) = _tries(checkpoint)
    assert seen["env"] == {"CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                           "AIRFLOW_MLOPS_CHECKPOINT_DIR": str(checkpoint), "MLFLOW_RUN_ID": run.info.run_id,
                           "AIRFLOW_MLOPS_PARAMS": json.dumps({"n_estimators": 20, "random_state": 0})}
    assert seen["checkpoint_dir"] == str(checkpoint)
    # the "MLflow run" extra link: Airflow stored what get_link returned, for the UI
    experiment_id = run.info.experiment_id
    assert result["mlflow_run_url"] == f"http://localhost:5000/#/experiments/{experiment_id}/runs/{run.info.run_id}"
    assert tis["forest"].xcom_pull(task_ids="forest", key="_link_MlflowRunLink") == result["mlflow_run_url"]
    assert tis["forest"].xcom_pull(task_ids="forest", key="mlflow_run_url") == result["mlflow_run_url"]

    # frames: datasets from the upstream preprocess stage; gpus=0 by choice; a custom UI address
    frames = tis["frames"].xcom_pull(task_ids="frames")
    assert frames["gpu"]["reason"] == "no GPUs requested (gpus=0)"
    assert frames["metrics"]["train_rows"] == 455.0 and frames["metrics"]["accuracy"] > 0.85
    assert tis["frames"].xcom_pull(task_ids="frames", key="_link_MlflowRunLink") == (
        f"https://mlflow.example.com/#/experiments/{experiment_id}/runs/{frames['run_id']}")
    assert client.get_model_version("frames", "1").run_id == frames["run_id"]

    # script: a module entrypoint logged its own model into the run; the operator registered it
    script = tis["script"].xcom_pull(task_ids="script")
    assert script["model_version"] == "1" and script["metrics"]["accuracy"] > 0.85
    assert client.get_model_version("script_tree", "1").run_id == script["run_id"]
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)  # put back by _mlflow_globals_put_back
    mlflow.set_registry_uri(client.tracking_uri)
    x = mlflow.pyfunc.load_model("models:/script_tree/1").metadata.get_input_schema().input_names()
    assert len(x) == 30  # the registered version loads, with the script's 30 input columns
    assert _tries(script["checkpoint_dir"])[0]["argv"] == ["--max-depth", "2"]


def test_retry_resumes_from_the_checkpoint_and_never_registers_twice(gpu_dag_run):
    dag, dr, tis, home = gpu_dag_run
    client = _client(home)

    # resumable: try 1 crashed after epoch 2; try 2 resumed there, in the same checkpoint folder
    assert tis["resumable"].try_number == 2
    first, second = _runs(client, "resumable")
    assert (first.info.status, second.info.status) == ("FAILED", "FINISHED")
    checkpoint = first.data.tags["airflow_mlops.checkpoint_dir"]
    assert second.data.tags["airflow_mlops.checkpoint_dir"] == checkpoint
    tries = _tries(checkpoint)
    assert [t["resumed_from"] for t in tries] == [0, 2]
    assert tries[0]["env"]["AIRFLOW_MLOPS_CHECKPOINT_DIR"] == tries[1]["env"]["AIRFLOW_MLOPS_CHECKPOINT_DIR"] == checkpoint
    assert second.data.metrics["resumed_from_epoch"] == 2 and second.data.metrics["epochs"] == 4
    assert first.data.metrics["cost/total"] > 0  # the failed try's resources are billed too
    assert [str(v.version) for v in client.search_model_versions("name = 'resumable'")] == ["1"]

    # crashy: try 1 registered version 1 then the worker was lost; try 2 reused it
    assert tis["crashy"].try_number == 2
    (only_run,) = _runs(client, "crashy")  # try 2 created no run of its own
    assert [str(v.version) for v in client.search_model_versions("name = 'crashy'")] == ["1"]
    result = tis["crashy"].xcom_pull(task_ids="crashy")
    assert result["reused"] is True and result["run_id"] == only_run.info.run_id and result["model_version"] == "1"
    assert result["cost"]["total"] == pytest.approx(only_run.data.metrics["cost/total"])
    assert tis["crashy"].xcom_pull(task_ids="crashy", key="_link_MlflowRunLink").endswith(f"/runs/{only_run.info.run_id}")


def test_cost_report_by_stage(gpu_dag_run):
    dag, dr, tis, home = gpu_dag_run
    client = _client(home)
    expected = {}
    for task in ("forest", "frames", "resumable", "crashy", "script"):
        expected[task] = sum(r.data.metrics["cost/total"] for r in _runs(client, task))
    uri = f"sqlite:///{home / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-m", "airflow_mlops.cli", "cost", dr.run_id, "--dag", "gpu_cpu",
                          "--tracking-uri", uri, "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["stage"]: r for r in json.loads(out.stdout)}
    assert set(rows) == set(expected)
    assert {k: r["total"] for k, r in rows.items()} == pytest.approx(expected)
    assert rows["resumable"]["runs"] == 2 and rows["forest"]["runs"] == 1
    table = subprocess.run([sys.executable, "-m", "airflow_mlops.cli", "cost", dr.run_id, "--tracking-uri", uri],
                           capture_output=True, text=True, cwd=REPO, timeout=300).stdout
    assert f"cost of DAG run '{dr.run_id}' by stage" in table
    total_line = next(line for line in table.splitlines() if line.startswith("TOTAL"))
    assert float(total_line.split()[-1]) == pytest.approx(sum(expected.values()), abs=1e-4)
    missing = subprocess.run([sys.executable, "-m", "airflow_mlops.cli", "cost", "no_such_run", "--tracking-uri", uri],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
    assert missing.returncode == 1 and "no task of DAG run 'no_such_run' recorded a cost" in missing.stdout


# --- the job with GPUs (FAKE NVML in the worker process) ------------------------------------------


def _job(tmp_path, **kwargs):
    from airflow_mlops.stages.train.job import GpuTrainJob

    base = dict(entrypoint="tests.gpu_entrypoints:train_forest", hyperparams={"n_estimators": 5, "random_state": 0},
                checkpoint_dir=str(tmp_path / "ckpt"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                experiment="gpu", registered_model="gpu_model", artifact_location=str(tmp_path / "artifacts"),
                run_name="p.train", env={"PYTHONPATH": str(REPO)},
                tags={"airflow_mlops.task_key": "p/run-1/train", "airflow.try_number": "1", "airflow.task_id": "train",
                      "airflow.run_id": "run-1", "airflow.dag_id": "p"})
    base.update(kwargs)
    return GpuTrainJob(**base)


def test_job_on_fake_gpus_picks_the_freest_samples_them_and_bills_them(monkeypatch, tmp_path):
    import mlflow

    from airflow_mlops.stages.train.job import TrainingRun

    install(monkeypatch, FakeNvml([
        FakeGpu(memory_used=[60 * GiB], utilization=[5]),
        FakeGpu(memory_used=[2 * GiB], utilization=[70, 95]),
        FakeGpu(memory_used=[4 * GiB], utilization=[40, 60], energy_mj=[0, 100_000, 250_000]),
    ]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    job = _job(tmp_path, gpus=2, sample_interval_s=0.2, flush_interval_s=0.5, resources={"cpu": "4", "memory": "8Gi"})
    result = TrainingRun(job).run()
    assert result["gpu"]["available"] is True and result["gpu"]["ids"] == [1, 2]
    seen = _tries(tmp_path / "ckpt")[0]
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


def test_job_refusal_fails_without_retry_and_crash_reports_its_log_tail(tmp_path):
    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops.stages.train.job import TrainingFailed, TrainingRun

    with pytest.raises(StageFailed, match="the data is unusable for these params"):
        TrainingRun(_job(tmp_path, entrypoint="tests.gpu_entrypoints:refuses", gpus=0)).run()
    job = _job(tmp_path, entrypoint="tests.gpu_entrypoints:resumable", gpus=0, hyperparams={"epochs": 3, "crash_after": 1},
               tags={"airflow_mlops.task_key": "p/run-2/train"})
    with pytest.raises(TrainingFailed, match=r"(?s)exited with code 1.*epoch 1 checkpointed.*simulated crash after epoch 1"):
        TrainingRun(job).run()


# --- the kubernetes backend: the pod, and the very command it runs ------------------------------


def test_kubernetes_backend_builds_a_gpu_pod_whose_command_runs_the_job(tmp_path):
    from airflow_mlops._core.result import RESULT_MARKER
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.stages.train.job import GpuTrainJob

    op = GpuTrainOperator(task_id="train", entrypoint="tests.gpu_entrypoints:train_forest", gpus=2,
                          resources={"cpu": 8, "memory": "32Gi"}, backend="kubernetes",
                          kubernetes={"image": "registry.example/mlops:1", "namespace": "ml"})
    job = _job(tmp_path, gpus=2)
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
    (line,) = [l for l in out.stdout.splitlines() if l.startswith(RESULT_MARKER)]
    result = json.loads(line[len(RESULT_MARKER):])
    assert result["model_version"] == "1" and result["gpu"]["available"] is False
    # billed what the pod asked for, found or not: 2 GPUs, 8 CPUs, 32 GB
    hours = result["cost"]["wall_seconds"] / 3600
    assert result["cost"]["gpu_hours"] == pytest.approx(2 * hours) and result["cost"]["memory_gib_hours"] == pytest.approx(32 * hours)


# --- the YAML train stage with telemetry (the integration point for StageOperator) --------------


def test_train_stage_with_telemetry_records_gpu_metrics_and_cost(monkeypatch, tmp_path):
    import mlflow

    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import DataInput, PreprocessStage, Resources, TrainStage
    from airflow_mlops.stages import run_stage
    from airflow_mlops.stages.train.telemetry import run_train_stage

    install(monkeypatch, FakeNvml([FakeGpu(utilization=[20, 80])]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    target = MlflowTarget(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="exp", registered_model="iris",
                          artifact_location=str(tmp_path / "artifacts"))

    def ctx(stage, upstream=()):
        return StageContext(pipeline_id="p", stage_name=stage, run_key="run-1", data_dir=str(tmp_path / "data"),
                            mlflow=target, upstream=list(upstream),
                            tags={"airflow_mlops.task_key": "p/run-1/train.run", "airflow.try_number": "1"})

    prep = run_stage(PreprocessStage(input=DataInput(sklearn_dataset="iris")), ctx("preprocess"))
    spec = TrainStage(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 500}, target="target")
    result = run_train_stage(spec, ctx("train", [("preprocess", prep)]), resources=Resources(cpu="2", memory="2Gi", gpu=1),
                             prices={"gpu_hour": 4.0}, sample_interval_s=0.05, flush_interval_s=0.1)
    client = mlflow.MlflowClient(tracking_uri=target.tracking_uri)
    run = client.get_run(result["run_id"])
    assert result["model_version"] == "1" and result["gpu"]["available"] is True
    assert run.data.tags["airflow_mlops.gpu.available"] == "true"
    assert [h.value for h in client.get_metric_history(run.info.run_id, "gpu/0/utilization")][:2] == [20, 80]
    hours = run.data.metrics["cost/wall_seconds"] / 3600
    assert run.data.metrics["cost/total"] == pytest.approx(hours * (4.0 + 2 * 0.1 + 2 * 0.05))
    assert result["cost"]["total"] == pytest.approx(run.data.metrics["cost/total"])
    assert result["mlflow_run_url"].endswith(f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    assert client.get_model_version("iris", "1").tags["airflow_mlops.gpu.available"] == "true"

    again = run_train_stage(spec, ctx("train", [("preprocess", prep)]))  # a retry of the same task instance
    assert again["run_id"] == result["run_id"] and again["model_version"] == "1" and "cost" not in again
    assert client.get_run(result["run_id"]).data.metrics["cost/total"] == run.data.metrics["cost/total"]


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
    assert none["gpu"] == {"available": False, "ids": [], "reason": "the stage's resources ask for no GPU"}

    with pytest.raises(StageFailed, match=r"resources.gpu: asked for 3 GPU\(s\) but only 2 can be used here"):
        run_stage(spec, ctx("train", [("preprocess", prep)], gpu=3))


# --- the sensor and its trigger (FAKE NVML) ---------------------------------------------------


def sensor_gpus() -> FakeNvml:
    return FakeNvml([FakeGpu(memory_used=[75 * GiB]), FakeGpu(memory_used=[20 * GiB]), FakeGpu(memory_used=[10 * GiB])])


def test_sensor_poke_enough_and_not_enough_free_memory(monkeypatch):
    from airflow_mlops.sensors.gpu import GpuAvailableSensor

    install(monkeypatch, sensor_gpus())
    ok = GpuAvailableSensor(task_id="ok", count=2, min_free_memory="50Gi").poke({})
    assert ok.is_done and ok.xcom_value == [1, 2]
    too_much = GpuAvailableSensor(task_id="no", count=3, min_free_memory="50Gi")
    assert not too_much.poke({}).is_done
    assert too_much._last == ("2 of 3 GPU(s) had ≥ 50.0 GiB free, wanted 3 (GPU0 5.0 GiB of 80.0 GiB free, "
                              "GPU1 60.0 GiB of 80.0 GiB free, GPU2 70.0 GiB of 80.0 GiB free)")
    among = GpuAvailableSensor(task_id="among", count=1, min_free_memory=65 * GiB, gpu_ids=[0, 1]).poke({})
    assert not among.is_done
    with pytest.raises(ValueError, match="count must be a whole number"):
        GpuAvailableSensor(task_id="bad", count=0)
    with pytest.raises(ValueError, match="memory quantity"):
        GpuAvailableSensor(task_id="bad", min_free_memory="lots")


def test_sensor_without_nvml_says_so():
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.sensors.gpu import GpuAvailableSensor

    with pytest.raises(AirflowFailException, match=r"NVML unavailable on .*: no NVIDIA driver/GPU found .*"
                                                   r"NVMLError_LibraryNotFound.*wanted 1 GPU\(s\) with ≥ 1.0 GiB free"):
        GpuAvailableSensor(task_id="s", min_free_memory="1Gi").poke({})
    keep_waiting = GpuAvailableSensor(task_id="s", min_free_memory="1Gi", fail_without_nvml=False)
    assert keep_waiting.poke({}) is False
    assert "no NVIDIA driver/GPU found" in keep_waiting._last  # what the timeout message will quote


def test_trigger_fires_times_out_and_errors_with_the_fake_nvml(monkeypatch):
    import time

    from airflow_mlops.sensors.triggers import GpuAvailableTrigger

    async def first_event(trigger):
        async for event in trigger.run():
            return event.payload

    fake = install(monkeypatch, sensor_gpus())
    trigger = GpuAvailableTrigger(count=2, min_free_bytes=50 * GiB, poll_interval=0.05)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_mlops.sensors.triggers.GpuAvailableTrigger"
    assert asyncio.run(first_event(GpuAvailableTrigger(**kwargs)))["gpu_ids"] == [1, 2]

    # memory frees up while the trigger waits: GPU0 goes from 5 to 70 GiB free on its third poll
    fake.gpus[0].memory_used = [75 * GiB, 75 * GiB, 10 * GiB]
    event = asyncio.run(first_event(GpuAvailableTrigger(count=3, min_free_bytes=50 * GiB, poll_interval=0.05)))
    assert event["status"] == "success" and event["gpu_ids"] == [0, 1, 2]

    fake.gpus[0].memory_used = [75 * GiB]
    fake.gpus[0].calls.clear()
    late = asyncio.run(first_event(GpuAvailableTrigger(count=3, min_free_bytes=50 * GiB, poll_interval=0.05,
                                                       deadline=time.time() + 0.2)))
    assert late["status"] == "timeout" and late["message"].startswith("2 of 3 GPU(s) had ≥ 50.0 GiB free")

    install(monkeypatch, FakeNvml([], init_error=NVMLError_DriverNotLoaded))
    broken = asyncio.run(first_event(GpuAvailableTrigger(count=1, min_free_bytes=0)))
    assert broken["status"] == "error" and "Driver Not Loaded" in broken["message"]


SENSOR_DAG = """
    # Airflow DAG: GPU sensors against the fake NVML
    from airflow.sdk import DAG
    from airflow_mlops.sensors.gpu import GpuAvailableSensor

    with DAG("gpu_sensors", schedule=None) as dag:
        GpuAvailableSensor(task_id="enough", count=2, min_free_memory="50Gi", poke_interval=0.1, timeout=30)
        GpuAvailableSensor(task_id="deferred", count=1, min_free_memory="65Gi", poke_interval=0.1, timeout=30,
                           deferrable=True)
        GpuAvailableSensor(task_id="too_many", count=3, min_free_memory="50Gi", poke_interval=0.2, timeout=1)
    """


def test_sensors_through_airflow_poke_defer_and_time_out(airflow_db, mlops_home, dags_folder, monkeypatch, capfd):
    from airflow.dag_processing.dagbag import DagBag

    install(monkeypatch, sensor_gpus())  # dag.test runs tasks and triggers in this process
    write(dags_folder, "gpu_sensors.py", SENSOR_DAG)
    dag = DagBag(dag_folder=str(dags_folder)).dags["gpu_sensors"]
    dr = dag.test()
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert {k: ti.state for k, ti in tis.items()} == {"enough": "success", "deferred": "success", "too_many": "failed"}
    assert tis["enough"].xcom_pull(task_ids="enough") == [1, 2]
    assert tis["deferred"].xcom_pull(task_ids="deferred") == [2]
    assert ("timed out after 1 s waiting for 3 GPU(s) with ≥ 50.0 GiB free; at the last poke: 2 of 3 GPU(s) had "
            "≥ 50.0 GiB free, wanted 3 (GPU0 5.0 GiB of 80.0 GiB free") in "".join(capfd.readouterr())  # the task log


# --- as the train stage of a YAML pipeline, and the link through Airflow's REST API ---------------

YAML_PIPELINE = """
    id: gpu_yaml
    mlflow: {{registered_model: gpu_yaml_model}}
    stages:
      preprocess:
        input: {{sklearn_dataset: breast_cancer}}
        split: {{test_fraction: 0.25, stratify: target, seed: 7}}
      train:
        kind: custom
        operator: airflow_mlops.operators.gpu_train:GpuTrainOperator
        args:
          entrypoint: tests.gpu_entrypoints:train_on_frames
          upstream_task: preprocess.run
          target: target
          hyperparams: {{max_iter: 5000}}
          mlflow: {{registered_model: gpu_yaml_model}}
          env: {{PYTHONPATH: {repo}}}
      validate:
        thresholds: {{accuracy: {{min: 0.8}}}}
    """


def test_gpu_train_operator_as_the_train_stage_of_a_yaml_pipeline(airflow_db, mlops_home, dags_folder):
    import mlflow
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, "gpu_yaml.yaml", YAML_PIPELINE.format(repo=json.dumps(str(REPO))))
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dag = bag.dags["gpu_yaml"]
    assert type(dag.get_task("train.run")).__name__ == "GpuTrainOperator"
    dr = dag.test()
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states == {"preprocess.run": "success", "train.run": "success", "validate.run": "success"}, states
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("gpu_yaml_model", "champion")
    assert str(champion.version) == "1" and champion.tags["airflow_mlops.gpu.available"] == "false"
    run = client.get_run(champion.run_id)
    assert run.data.metrics["train_rows"] == 426  # 75 % of 569 rows, from the preprocess stage's split
    assert run.data.metrics["cost/total"] > 0

    url = f"http://localhost:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert extra_links("gpu_yaml", dr.run_id, "train.run") == {"MLflow run": url}


def test_training_code_beside_the_dag_file_imports_in_the_training_process(airflow_db, mlops_home, dags_folder):
    """Issue 19, item 4: an entrypoint module beside the DAG file (in a subfolder of the dags
    folder, not on the worker's path) is found by the training process; one that cannot be found
    fails when the DAG is parsed, not after an MLflow run and a retry."""
    import mlflow
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, "team/churn_training.py", """
        def fit(params):
            from sklearn.datasets import load_iris
            from sklearn.tree import DecisionTreeClassifier

            x, y = load_iris(return_X_y=True, as_frame=True)
            model = DecisionTreeClassifier(max_depth=params["depth"]).fit(x, y)
            return {"model": model, "metrics": {"accuracy": float(model.score(x, y))}, "input_example": x.head(3)}
        """)
    write(dags_folder, "team/churn_dag.py", """
        # Airflow DAG whose training code sits beside it
        from airflow.sdk import DAG
        from airflow_mlops import GpuTrainOperator

        with DAG("churn_beside", schedule=None):
            GpuTrainOperator(task_id="train", entrypoint="churn_training:fit", gpus=0, hyperparams={"depth": 3},
                             mlflow={"registered_model": "churn_beside"})
        """)
    write(dags_folder, "team/typo_dag.py", """
        # Airflow DAG naming training code that is not there
        from airflow.sdk import DAG
        from airflow_mlops import GpuTrainOperator

        with DAG("churn_typo", schedule=None):
            GpuTrainOperator(task_id="train", entrypoint="churn_trainig:fit", gpus=0)
            GpuTrainOperator(task_id="script", script="train.py", gpus=0)
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    errors = {Path(k).name: v for k, v in bag.import_errors.items()}
    assert "cannot find module 'churn_trainig' of entrypoint= 'churn_trainig:fit': searched " \
           f"{dags_folder / 'team'}, {dags_folder}" in errors["typo_dag.py"]
    assert "churn_typo" not in bag.dag_ids
    dr = bag.dags["churn_beside"].test()
    assert {ti.task_id: ti.state for ti in dr.get_task_instances()} == {"train": "success"}
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    assert str(client.get_latest_versions("churn_beside")[0].version) == "1"


def test_the_log_says_which_gpus_training_really_uses(monkeypatch, caplog):
    """Issue 19, item 6: the operator logged '1 GPU(s)' and then trained on none. The assignment
    now says what training gets: the GPUs it runs on, or none seen by NVML (FAKE NVML below)."""
    import logging

    from airflow_mlops.stages.train.job import assign_gpus

    log = logging.getLogger("test.assign")
    install(monkeypatch, FakeNvml([FakeGpu()], init_error=NVMLError_DriverNotLoaded))
    with caplog.at_level(logging.INFO):
        none = assign_gpus(1, None, log)
    assert not none.available and "asked for 1 GPU(s), training with none seen by NVML" in caplog.text
    install(monkeypatch, two_gpus())
    caplog.clear()
    with caplog.at_level(logging.INFO):
        chosen = assign_gpus(1, None, log)
    assert chosen.visible == [0] and "Training on 1 GPU(s): GPU0" in caplog.text


def test_memory_is_billed_per_gib_and_the_old_price_name_still_reads():
    """Issue 19, item 6: GiB were billed under a 'memory_gb' label. The names say GiB now
    (memory_gib_hour, memory_gib_hours); the old price key still works, with a warning."""
    from airflow_mlops._core.units import memory_gib
    from airflow_mlops.spec.prices import PriceTable
    from airflow_mlops.telemetry.cost import TaskResources, task_cost

    assert memory_gib("16Gi") == 16 and memory_gib("1G") == pytest.approx(10**9 / 2**30)
    with pytest.warns(DeprecationWarning, match="memory_gb_hour is now memory_gib_hour"):
        prices = PriceTable.model_validate({"memory_gb_hour": 0.2})
    assert prices.memory_gib_hour == 0.2
    c = task_cost(TaskResources(gpu=0, cpu=1, memory_gib=16), 3600, prices)
    assert (c.memory_gib_hours, c.memory) == (16, pytest.approx(3.2))


def test_sample_interval_has_one_name_and_the_old_one_still_works():
    """Issue 19, item 7: the YAML's gpu_metrics.sample_interval and the operator's argument are one
    word now; sample_interval_s still works, with Airflow's provider deprecation warning."""
    from airflow.exceptions import AirflowProviderDeprecationWarning

    from airflow_mlops.operators.gpu_train import GpuTrainOperator

    assert GpuTrainOperator(task_id="t", entrypoint="tests.gpu_entrypoints:train_forest",
                            sample_interval=0.5).sample_interval == 0.5
    with pytest.warns(AirflowProviderDeprecationWarning, match="sample_interval_s is deprecated, use sample_interval"):
        op = GpuTrainOperator(task_id="t", entrypoint="tests.gpu_entrypoints:train_forest", sample_interval_s=2)
    assert op.sample_interval == 2.0
