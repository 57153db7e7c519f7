"""The GPU figures for Prometheus (``airflow_mlops.telemetry.prometheus``), as Prometheus and a
Pushgateway see them.

What is real here: ``prometheus_client``'s HTTP server, scraped with urllib and read back with
``prometheus_client.parser.text_string_to_metric_families`` (the library's own reader of the text
format); the HTTP PUTs of ``push_to_gateway``; Airflow and MLflow in the pipeline test.

Two stand-ins, because the real thing cannot exist here:
- NVML is the FAKE module of tests/fake_nvml.py: no machine running these tests has an NVIDIA GPU
  or driver;
- no Pushgateway is installed here, so a tiny real HTTP server in this file takes its place and
  records each request's method, path, content type and body (a Pushgateway keeps the body of a
  PUT at ``/metrics/job/<job>/<label>/<value>...`` as that group's metrics).
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_mlops.telemetry.sampler import NvmlSampler
from tests.fake_nvml import FakeGpu, FakeNvml, GiB, install, two_gpus
from tests.helpers import free_port, write

RUN_ID = 'manual__2026-01-01T00:00:00+00:00 "quoted" \\ back\nslash'  # every character the format escapes


def families(text: str) -> dict:
    """name → family, as prometheus_client's parser reads the text (a counter family is named
    without ``_total``; its sample keeps it)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def by_gpu(family) -> dict[str, float]:
    return {s.labels["gpu"]: s.value for s in family.samples}


def only_value(family) -> float:
    (sample,) = family.samples
    return sample.value


def scrape(port: int) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def cost_of_half_an_hour() -> dict:
    from airflow_mlops.telemetry.cost import TaskResources, task_cost

    return task_cost(TaskResources(gpu=2, cpu=8, memory_gib=32), 1800).as_dict()


# --- scraping ---------------------------------------------------------------------------------


def test_a_scrape_reads_the_sampler_and_the_cost_through_the_real_http_server(monkeypatch):
    from airflow_mlops.telemetry.prometheus import exported

    install(monkeypatch, two_gpus())
    sampler = NvmlSampler(interval_s=3600)  # no thread tick: samples are explicit
    labels = {"dag_id": "d", "task_id": "t", "run_id": RUN_ID}
    with exported(sampler, labels, cost_of_half_an_hour, port=0, host="127.0.0.1") as export, sampler:
        assert export.port and export.port > 0  # port 0: the system chose one, and it is reported
        sampler.sample()
        sampler.sample()
        content_type, body = scrape(export.port)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    f = families(body)
    util = f["airflow_mlops_gpu_utilization_percent"]
    assert util.type == "gauge"
    assert by_gpu(util) == {"0": 90.0, "1": 100.0}  # the last of 3 samples
    assert all(s.labels == {"dag_id": "d", "task_id": "t", "run_id": RUN_ID, "gpu": s.labels["gpu"]}
               for s in util.samples)  # the run id came back unescaped, byte for byte
    assert by_gpu(f["airflow_mlops_gpu_memory_used_bytes"]) == {"0": 5 * GiB, "1": 39 * GiB}
    assert by_gpu(f["airflow_mlops_gpu_memory_total_bytes"]) == {"0": 80 * GiB, "1": 40 * GiB}
    assert by_gpu(f["airflow_mlops_gpu_power_watts"]) == {"0": 300.0, "1": 400.0}
    assert by_gpu(f["airflow_mlops_gpu_temperature_celsius"]) == {"0": 61.0, "1": 80.0}
    energy = f["airflow_mlops_gpu_energy_joules"]
    assert energy.type == "counter" and {s.name for s in energy.samples} == {"airflow_mlops_gpu_energy_joules_total"}
    assert by_gpu(energy) == {"0": 9.0, "1": 6.0}
    assert only_value(f["airflow_mlops_gpu_available"]) == 1
    assert only_value(f["airflow_mlops_gpu_count"]) == 2
    assert only_value(f["airflow_mlops_gpu_memory_peak_bytes"]) == 39 * GiB
    assert only_value(f["airflow_mlops_gpu_utilization_max_percent"]) == 100
    assert only_value(f["airflow_mlops_gpu_utilization_mean_percent"]) == pytest.approx((10 + 50 + 90 + 0 + 100 + 100) / 6)
    assert only_value(f["airflow_mlops_gpu_energy_task_joules"]) == 15.0
    assert f["airflow_mlops_gpu_hours"].type == "counter"
    assert only_value(f["airflow_mlops_task_cost_total"]) == pytest.approx(2 * 0.5 * 2.5 + 8 * 0.5 * 0.1 + 32 * 0.5 * 0.05)
    assert f["airflow_mlops_task_cost_total"].type == "gauge"
    assert only_value(f["airflow_mlops_task_gpu_hours_billed"]) == 1.0
    assert only_value(f["airflow_mlops_task_cpu_hours_billed"]) == 4.0
    assert only_value(f["airflow_mlops_task_memory_gib_hours_billed"]) == 16.0
    # The exporter's own registry: none of the library's default process, platform or GC collectors,
    # and no _created series for the counters.
    assert all(name.startswith("airflow_mlops_") for name in f)
    assert "_created" not in body
    # The run is over: the server was shut down and the port closed.
    with pytest.raises(urllib.error.URLError):
        scrape(export.port)


def test_without_gpus_only_gpu_available_0_and_the_cost_are_served(monkeypatch):
    from airflow_mlops.telemetry.prometheus import exported

    install(monkeypatch, two_gpus())
    sampler = NvmlSampler(devices=[])  # a task given no GPU: nothing is sampled
    with exported(sampler, {"task_id": "t"}, cost_of_half_an_hour, port=0, host="127.0.0.1") as export, sampler:
        f = families(scrape(export.port)[1])
    assert [s.labels for s in f["airflow_mlops_gpu_available"].samples] == [{"task_id": "t"}]
    assert only_value(f["airflow_mlops_gpu_available"]) == 0
    assert sorted(f) == ["airflow_mlops_gpu_available", "airflow_mlops_task_cost_total",
                         "airflow_mlops_task_cpu_hours_billed", "airflow_mlops_task_gpu_hours_billed",
                         "airflow_mlops_task_memory_gib_hours_billed"]


def test_a_taken_port_is_a_warning_and_training_goes_on(monkeypatch, caplog):
    from airflow_mlops.telemetry.prometheus import exported

    install(monkeypatch, two_gpus())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sampler = NvmlSampler(interval_s=3600)
        ran = False
        with exported(sampler, {"task_id": "t"}, dict, port=port, host="127.0.0.1") as export, sampler:
            ran = True
    assert ran and export.port is None
    assert f"Cannot serve GPU metrics on port {port}" in caplog.text


def test_a_failing_scrape_answers_500_and_the_task_goes_on(monkeypatch, caplog):
    from airflow_mlops.telemetry.prometheus import exported

    install(monkeypatch, two_gpus())

    def broken_cost():
        raise RuntimeError("price table unreadable")

    sampler = NvmlSampler(interval_s=3600)
    with exported(sampler, {"task_id": "t"}, broken_cost, port=0, host="127.0.0.1") as export, sampler:
        with pytest.raises(urllib.error.HTTPError) as failed:
            scrape(export.port)
        sampler.sample()  # the sampler and the task are untouched
    assert failed.value.code == 500
    assert "Could not read the GPU metrics for Prometheus" in caplog.text
    assert sampler.samples == 3


def test_a_label_name_prometheus_refuses_is_an_error_before_anything_starts(monkeypatch):
    from airflow_mlops.telemetry.prometheus import exported

    install(monkeypatch, two_gpus())
    sampler = NvmlSampler(interval_s=3600)
    port = free_port()
    with pytest.raises(ValueError, match="invalid Prometheus label name 'task-id'"):
        with exported(sampler, {"task-id": "t"}, dict, port=port, host="127.0.0.1"):
            pass
    assert sampler.sinks == []
    with socket.socket() as s:  # nothing was left serving on the port
        assert s.connect_ex(("127.0.0.1", port)) != 0


# --- pushing ------------------------------------------------------------------------------------


@pytest.fixture
def pushgateway():
    """A real HTTP server standing in for a Pushgateway (none is installed here): it records each
    request as (method, path, content type, body) and answers 200, as a Pushgateway does."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(("PUT", self.path, self.headers["Content-Type"], body.decode()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_each_flush_and_the_end_put_the_figures_under_the_task_grouping_key(monkeypatch, pushgateway):
    from airflow_mlops.telemetry.prometheus import exported

    install(monkeypatch, two_gpus())
    url, seen = pushgateway
    sampler = NvmlSampler(interval_s=3600)
    labels = {"dag_id": "churn", "task_id": "train.run", "run_id": RUN_ID}
    with exported(sampler, labels, cost_of_half_an_hour, pushgateway_url=url + "/") as export, sampler:
        assert export.port is None  # pushing only
        sampler.sample()
        sampler.flush()  # what the sampler thread does every flush_interval_s
        assert len(seen) == 1
    # + the sampler's flush at stop, + the final push of the export
    assert len(seen) == 3
    for method, path, content_type, _ in seen:
        # The run id is not part of the grouping key, so each task keeps one group on the gateway.
        assert (method, path) == ("PUT", "/metrics/job/airflow_mlops/dag_id/churn/task_id/train.run")
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    first, last = families(seen[0][3]), families(seen[-1][3])
    assert by_gpu(first["airflow_mlops_gpu_utilization_percent"]) == {"0": 50.0, "1": 100.0}
    assert by_gpu(last["airflow_mlops_gpu_utilization_percent"]) == {"0": 90.0, "1": 100.0}
    # in the body, the run id is the one label (the gateway adds the grouping key's)
    assert {s.labels["run_id"] for fam in last.values() for s in fam.samples} == {RUN_ID}
    assert [s.labels for s in last["airflow_mlops_task_cost_total"].samples] == [{"run_id": RUN_ID}]
    assert set(last["airflow_mlops_gpu_power_watts"].samples[0].labels) == {"run_id", "gpu"}


def test_an_unreachable_gateway_is_a_warning_and_training_goes_on(monkeypatch, caplog):
    from airflow_mlops.telemetry.prometheus import exported

    install(monkeypatch, two_gpus())
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    caplog.set_level(logging.WARNING)
    sampler = NvmlSampler(interval_s=3600)
    with exported(sampler, {"task_id": "t"}, dict, pushgateway_url=url), sampler:
        sampler.sample()
    assert sampler.samples == 3
    assert f"Could not push the final GPU metrics to {url}" in caplog.text
    # the sampler's own flush to the gateway failed too, logged once by the sampler
    assert "Could not record" in caplog.text


def test_yaml_train_stage_pushes_gpu_metrics_and_bills_the_pipeline_prices(airflow_db, mlops_home, dags_folder,
                                                                          monkeypatch, pushgateway):
    """A pipeline's gpu_metrics and prices reach its built-in train stage, which Airflow runs in
    this process, where NVML is the FAKE one."""
    from airflow_mlops import load_pipelines

    install(monkeypatch, FakeNvml([FakeGpu(utilization=[55])]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    url, seen = pushgateway
    write(dags_folder, "pushed.yaml", f"""
        id: pushed
        prices: {{gpu_hour: 4.0}}
        gpu_metrics: {{pushgateway_url: '{url}', sample_interval: 0.2}}
        stages:
          preprocess:
            input: {{sklearn_dataset: iris}}
          train:
            estimator: sklearn.linear_model.LogisticRegression
            params: {{max_iter: 500}}
            target: target
            resources: {{cpu: 1, memory: 1Gi, gpu: 1}}
        """)
    dr = load_pipelines(folder=dags_folder)["pushed"].test()
    assert dr.state == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert {path for _, path, _, _ in seen} == {"/metrics/job/airflow_mlops/dag_id/pushed/task_id/train.run"}
    last = families(seen[-1][3])  # the final push, after training
    (sample,) = last["airflow_mlops_gpu_utilization_percent"].samples
    assert sample.value == 55 and sample.labels == {"gpu": "0", "run_id": dr.run_id}
    result = dr.get_task_instance("train.run").xcom_pull(task_ids="train.run")
    assert result["gpu"]["available"] is True and result["gpu"]["ids"] == [0]
    assert result["cost"]["gpu"] == pytest.approx(result["cost"]["gpu_hours"] * 4.0)
    assert only_value(last["airflow_mlops_task_cost_total"]) > 0
