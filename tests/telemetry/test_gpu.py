"""GPU telemetry: the NVML sampler, cost, GpuAvailableSensor and its trigger (Prometheus:
tests/telemetry/test_telemetry_prometheus.py). Training itself (the train stage, GpuTrainJob/TrainingRun, the
runner, GpuTrainOperator) is tested in tests/stages/train/ and tests/operators/.

No machine here has an NVIDIA GPU or driver. Two things follow:
- the real ``pynvml`` really fails here (``NVMLError_LibraryNotFound``): the no-driver path is
  tested with it;
- the sampling logic is tested at the NVML boundary with a FAKE NVML module (tests/fake_nvml.py,
  declared as such), the only fake in these tests. MLflow (SQLite), Airflow (SQLite, dag.test)
  and HTTP are real.
``test_real_nvml_on_a_gpu_machine`` runs the real path only where a GPU exists, and skips here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from airflow_mlops.telemetry.nvml import NO_GPU_MESSAGE
from airflow_mlops.telemetry.sampler import NvmlSampler
from tests.fake_nvml import FakeGpu, FakeNvml, GiB, NVMLError_DriverNotLoaded, install, two_gpus
from tests.helpers import write

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


def test_memory_is_billed_per_gib_and_the_old_price_name_still_reads():
    """Issue 19, item 6: GiB were billed under a 'memory_gb' label. The names say GiB now
    (memory_gib_hour, memory_gib_hours); the old price key still works, with a warning."""
    from airflow_mlops._core.units import memory_gib
    from airflow_mlops.spec.prices import PriceTable
    from airflow_mlops.spec.renamed import MlopsDeprecationWarning
    from airflow_mlops.telemetry.cost import TaskResources, task_cost

    assert memory_gib("16Gi") == 16 and memory_gib("1G") == pytest.approx(10**9 / 2**30)
    with pytest.warns(MlopsDeprecationWarning, match="memory_gb_hour is deprecated, use memory_gib_hour"):
        prices = PriceTable.model_validate({"memory_gb_hour": 0.2})
    assert prices.memory_gib_hour == 0.2
    c = task_cost(TaskResources(gpu=0, cpu=1, memory_gib=16), 3600, prices)
    assert (c.memory_gib_hours, c.memory) == (16, pytest.approx(3.2))

