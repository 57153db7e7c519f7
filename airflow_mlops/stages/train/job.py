"""A GPU training job, plain Python: the same code runs in the Airflow worker (``GpuTrainOperator``
with the local backend) and inside a pod (``python -m airflow_mlops.stages.train.runner job``).

What one try does:

1. finds whether an earlier try of the same task instance already registered a model version
   (the ``airflow_mlops.task_key`` run tag, as the train stage does); if so, reuses it;
2. picks the GPUs (NVML: the N with the most free memory, or the ids given) — or, with no
   driver, says so in one log line and goes on without GPU metrics;
3. creates the MLflow run (tags: Airflow ids, task key, GPUs, checkpoint folder) and logs params;
4. runs the entrypoint in a subprocess with ``CUDA_VISIBLE_DEVICES`` set, so it takes effect
   before CUDA initialises, and the checkpoint folder in ``AIRFLOW_MLOPS_CHECKPOINT_DIR``;
   a callable entrypoint runs through ``python -m airflow_mlops.stages.train.runner call``, which logs its
   metrics and model into the same run and registers the version;
5. samples NVML around it (``gpu/<i>/...`` metrics, batched with ``log_batch``), optionally
   serving / pushing the figures for Prometheus;
6. records GPU summary and cost (``cost/...`` metrics and tags), even when training failed.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from airflow_mlops._core.result import outcome_files
from airflow_mlops.spec.prices import PriceTable
from airflow_mlops.telemetry.cost import TaskResources, mlflow_tags, resources_from, task_cost
from airflow_mlops.telemetry.devices import choose_devices, list_devices
from airflow_mlops.telemetry.nvml import NO_GPU_MESSAGE, NotEnoughGpus, NvmlUnavailable
from airflow_mlops.telemetry.sampler import FLUSH_INTERVAL_S

CHECKPOINT_ENV = "AIRFLOW_MLOPS_CHECKPOINT_DIR"
PARAMS_ENV = "AIRFLOW_MLOPS_PARAMS"
UI_URL_ENV = "AIRFLOW_MLOPS_MLFLOW_UI_URL"
TASK_KEY_TAG = "airflow_mlops.task_key"  # the train stage's tag (airflow_mlops.stages.train)
GPU_AVAILABLE_TAG = "airflow_mlops.gpu.available"
LOG_TAIL_LINES = 30


class TrainingFailed(RuntimeError):
    """The training process crashed (a retry may help: it resumes from the checkpoint)."""


class TrainData(BaseModel):
    """Datasets handed to a callable entrypoint as DataFrames (the train stage's contract)."""

    model_config = ConfigDict(extra="forbid")

    train_path: str
    test_path: str | None = None
    target: str
    features: list[str] | None = None


class GpuTrainJob(BaseModel):
    """Everything one try needs; JSON-able, so it travels to a pod as the runner's payload."""

    model_config = ConfigDict(extra="forbid")

    entrypoint: str | None = None  # 'pkg.module:function'
    script: str | None = None
    module: str | None = None
    args: list[str] = Field(default_factory=list)
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    gpus: int | None = None  # how many; None with gpu_ids
    gpu_ids: list[int] | None = None
    checkpoint_dir: str
    tracking_uri: str
    experiment: str
    registered_model: str
    artifact_location: str | None = None
    run_name: str
    tags: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, Any] | None = None  # {cpu, memory, gpu} held, for the cost
    prices: PriceTable = Field(default_factory=PriceTable)
    sample_interval_s: float = 1.0
    flush_interval_s: float = FLUSH_INTERVAL_S
    data: TrainData | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # Folders put first on the training process's PYTHONPATH: the DAG's folder and dags folder /
    # bundle (_core.paths.code_paths), so an entrypoint beside the DAG file imports.
    python_path: list[str] = Field(default_factory=list)
    prometheus_port: int | None = None
    pushgateway_url: str | None = None
    ui_url: str | None = None

    def target(self) -> Any:
        from airflow_mlops._core.context import MlflowTarget

        return MlflowTarget(tracking_uri=self.tracking_uri, experiment=self.experiment,
                            registered_model=self.registered_model, artifact_location=self.artifact_location)


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str:
    """Where people open MLflow: ``ui_url``, else ``$AIRFLOW_MLOPS_MLFLOW_UI_URL``, else the
    tracking URI when it is a server (http/https), else ``mlflow ui``'s default address."""
    base = ui_url or os.environ.get(UI_URL_ENV)
    if not base:
        base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://localhost:5000"
    return base.rstrip("/")


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def prometheus_labels(tags: dict[str, str]) -> dict[str, str]:
    """The Airflow task a series belongs to, from the MLflow tags every try carries."""
    names = (("dag_id", "airflow.dag_id"), ("task_id", "airflow.task_id"), ("run_id", "airflow.run_id"))
    return {label: tags[tag] for label, tag in names if tag in tags}


class GpuAssignment(BaseModel):
    visible: list[int]  # what CUDA_VISIBLE_DEVICES names
    sampled: list[int]  # what NVML samples ([] without a driver)
    available: bool
    reason: str | None = None
    names: list[str] = Field(default_factory=list)


def _visible_in_worker() -> list[int] | None:
    """The worker's own CUDA_VISIBLE_DEVICES, when it pins the worker to some GPUs by index."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None or not value.strip():
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:  # UUIDs or MIG ids: not restricted by index here
        return None


def assign_gpus(gpus: int | None, gpu_ids: list[int] | None, log: logging.Logger) -> GpuAssignment:
    if gpu_ids is None and not gpus:
        log.info("No GPUs requested (gpus=0): training on CPU, CUDA_VISIBLE_DEVICES=''")
        return GpuAssignment(visible=[], sampled=[], available=False, reason="no GPUs requested (gpus=0)")
    try:
        devices = list_devices()
    except NvmlUnavailable as exc:
        log.warning("%s (%s); asked for %s, training with none seen by NVML", NO_GPU_MESSAGE, exc,
                    f"{gpus} GPU(s)" if gpu_ids is None else f"GPU(s) {gpu_ids}")
        return GpuAssignment(visible=list(gpu_ids or []), sampled=[], available=False, reason=str(exc))
    by_index = {d.index: d for d in devices}
    if gpu_ids is not None:
        missing = [i for i in gpu_ids if i not in by_index]
        if missing:
            raise NotEnoughGpus(f"GPU id(s) {missing} do not exist here: NVML sees {len(devices)} GPU(s) "
                                f"({', '.join(f'GPU{d.index} {d.name}' for d in devices) or 'none'})")
        chosen = list(gpu_ids)
    else:
        chosen = choose_devices(int(gpus or 0), devices, among=_visible_in_worker())
    log.info("Training on %d GPU(s): %s", len(chosen), ", ".join(f"GPU{i}" for i in chosen) or "none")
    for i in chosen:
        d = by_index[i]
        log.info("GPU%d: %s, %.1f of %.1f GiB free", i, d.name, d.memory_free_bytes / 2**30, d.memory_total_bytes / 2**30)
    return GpuAssignment(visible=chosen, sampled=chosen, available=True, names=[by_index[i].name for i in chosen])


class TrainingRun:
    """One try of a GPU training job. ``run()`` returns the XCom result; ``kill()`` stops it."""

    def __init__(self, job: GpuTrainJob, log: logging.Logger | None = None,
                 on_run: Callable[[str, str], None] | None = None) -> None:
        self.job = job
        self.log = log or logging.getLogger("airflow_mlops.stages.train.job")
        self.on_run = on_run  # (run_id, url) once the MLflow run exists: the operator pushes the link
        self._process: subprocess.Popen | None = None
        self._killed = False

    # -- the try ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:

        from airflow_mlops._core import mlflow as tracking
        from airflow_mlops._core.context import StageContext
        from airflow_mlops.stages.train import _registered_by_earlier_try

        job = self.job
        target = job.target()
        # A client, never MLflow's process-wide URIs (mlflow.set_tracking_uri also exports them
        # to the environment, where the next task in this process would take them for the user's).
        client = tracking.client(target)
        experiment_id = tracking.experiment_id(client, target)
        base = ui_base(job.tracking_uri, job.ui_url)

        probe = StageContext(pipeline_id="", stage_name="", run_key="", data_dir="", mlflow=target, tags=job.tags)
        earlier = _registered_by_earlier_try(probe, experiment_id)
        if earlier:
            run_id, version, _metrics = earlier
            self.log.info("An earlier try of this task already registered '%s' version %s (run %s): reusing it, "
                          "not registering a duplicate", job.registered_model, version, run_id)
            url = run_url(base, experiment_id, run_id)
            if self.on_run:
                self.on_run(run_id, url)
            return self._reused_result(client, run_id, version, experiment_id, url)

        gpus = assign_gpus(job.gpus, job.gpu_ids, self.log)
        Path(job.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        existing = sorted(p.name for p in Path(job.checkpoint_dir).iterdir())
        if existing:
            self.log.info("Checkpoint folder %s holds %d file(s) from an earlier try: the entrypoint can resume from "
                          "them", job.checkpoint_dir, len(existing))
        tags = {
            **job.tags,
            "mlflow.runName": job.run_name,
            GPU_AVAILABLE_TAG: str(gpus.available).lower(),
            "airflow_mlops.gpu.ids": ",".join(map(str, gpus.visible)),
            "airflow_mlops.gpu.names": ", ".join(gpus.names),
            "airflow_mlops.checkpoint_dir": job.checkpoint_dir,
            "airflow_mlops.entrypoint": job.entrypoint or job.script or f"-m {job.module}",
        }
        if gpus.reason:
            tags["airflow_mlops.gpu.reason"] = gpus.reason[:5000]
        run = client.create_run(experiment_id, run_name=job.run_name, tags=tags)
        run_id = run.info.run_id
        url = run_url(base, experiment_id, run_id)
        self.log.info("MLflow run %s: %s", run_id, url)
        if self.on_run:
            self.on_run(run_id, url)
        params = {k: _param(v) for k, v in job.hyperparams.items()}
        params["gpus"] = str(len(gpus.visible))
        _log_params(client, run_id, params)

        held = resources_from(job.resources, gpus_held=len(gpus.visible) if gpus.available else 0)
        status = "FAILED"
        summary: dict[str, Any] = {}
        cost = None
        try:
            outcome, summary, wall = self._train(client, run_id, gpus, held)
            cost = task_cost(held, wall, job.prices)
            status = "FINISHED"
        except BaseException as exc:
            wall = getattr(exc, "wall_seconds", None)
            if wall is not None:
                cost = task_cost(held, wall, job.prices)
            summary = getattr(exc, "gpu_summary", summary)
            raise
        finally:
            self._record(client, run_id, summary, cost, held, status)
        return self._result(client, run_id, experiment_id, url, outcome, gpus, summary, cost)

    def _train(self, client: Any, run_id: str, gpus: GpuAssignment, held: TaskResources) -> tuple[dict, dict, float]:
        """Run the entrypoint with the sampler around it; (outcome, GPU summary, wall seconds)."""
        from airflow_mlops.telemetry.mlflow_sink import MlflowSink
        from airflow_mlops.telemetry.prometheus import exported
        from airflow_mlops.telemetry.sampler import NvmlSampler

        job = self.job
        work = Path(tempfile.mkdtemp(prefix="airflow-mlops-train-"))
        result_file = work / "result.json"
        argv = self._argv(run_id, work, result_file)
        env = self._env(run_id, gpus)
        sampler = NvmlSampler(job.sample_interval_s, gpus.sampled, sinks=[MlflowSink(client, run_id)],
                              flush_interval_s=job.flush_interval_s)
        started = time.monotonic()
        export = exported(sampler, prometheus_labels(job.tags),
                          lambda: task_cost(held, time.monotonic() - started, job.prices).as_dict(),
                          port=job.prometheus_port, pushgateway_url=job.pushgateway_url, logger=self.log)
        self.log.info("Training: %s (CUDA_VISIBLE_DEVICES=%r, checkpoints in %s)", " ".join(argv[1:]),
                      env["CUDA_VISIBLE_DEVICES"], job.checkpoint_dir)
        wall = 0.0
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        try:
            with export, sampler:
                started = time.monotonic()
                code = self._spawn(argv, env, tail)
                wall = time.monotonic() - started
        except BaseException as exc:
            exc.wall_seconds = wall or time.monotonic() - started  # type: ignore[attr-defined]
            exc.gpu_summary = sampler.summary()  # type: ignore[attr-defined]
            raise
        finally:
            outcome_text = result_file.read_text() if result_file.exists() else None
            failed_text = outcome_files(result_file)[0].read_text() if outcome_files(result_file)[0].exists() else None
            shutil.rmtree(work, ignore_errors=True)
        summary = sampler.summary()
        if code != 0:
            exc = self._failure(code, failed_text, tail)
            exc.wall_seconds = wall  # type: ignore[attr-defined]
            exc.gpu_summary = summary  # type: ignore[attr-defined]
            raise exc
        outcome = json.loads(outcome_text) if outcome_text else {}
        return outcome, summary, wall

    def _argv(self, run_id: str, work: Path, result_file: Path) -> list[str]:
        job = self.job
        if job.entrypoint:
            spec = {
                "entrypoint": job.entrypoint, "hyperparams": job.hyperparams, "checkpoint_dir": job.checkpoint_dir,
                "tracking_uri": job.tracking_uri, "run_id": run_id, "registered_model": job.registered_model,
                "data": job.data.model_dump() if job.data else None, "result_file": str(result_file),
            }
            spec_file = work / "call.json"
            spec_file.write_text(json.dumps(spec))
            return [sys.executable, "-m", "airflow_mlops.stages.train.runner", "call", "--spec", str(spec_file)]
        if job.script:
            return [sys.executable, "-u", job.script, *job.args]
        return [sys.executable, "-u", "-m", str(job.module), *job.args]

    def _env(self, run_id: str, gpus: GpuAssignment) -> dict[str, str]:
        job = self.job
        env = dict(os.environ)
        env.update(job.env)
        if job.python_path:
            env["PYTHONPATH"] = os.pathsep.join([*job.python_path, *filter(None, [env.get("PYTHONPATH")])])
        env.update({
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus.visible)),
            # NVML numbers GPUs by PCI bus; CUDA by default fastest first. Make CUDA agree.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            CHECKPOINT_ENV: job.checkpoint_dir,
            PARAMS_ENV: json.dumps(job.hyperparams, default=str),
            "MLFLOW_TRACKING_URI": job.tracking_uri,
            "MLFLOW_REGISTRY_URI": job.tracking_uri,
            "MLFLOW_RUN_ID": run_id,  # mlflow.start_run() in a script attaches to this run
            "MLFLOW_EXPERIMENT_NAME": job.experiment,
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        return env

    def _spawn(self, argv: list[str], env: dict[str, str], tail: collections.deque) -> int:
        """Run the training process, its output streamed into this task's log."""
        process = self._process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,  # its own process group: kill() reaches data-loader workers too
        )
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            self.log.info("[train] %s", line)
        return process.wait()

    def _failure(self, code: int, failed: str | None, tail: collections.deque) -> Exception:
        from airflow_mlops._core.errors import StageFailed

        if failed is not None:  # the entrypoint judged its input and refused it: retrying won't help
            return StageFailed(failed)
        lines = "\n".join(tail)
        what = "was killed" if self._killed else f"exited with code {code}"
        return TrainingFailed(f"the training process {what}; last {len(tail)} log line(s):\n{lines}")

    def kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._killed = True
        self.log.info("Stopping the training process group %d", process.pid)
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- what gets recorded -------------------------------------------------------------------

    def _record(self, client: Any, run_id: str, summary: dict, cost: Any, held: TaskResources, status: str) -> None:
        from mlflow.entities import Metric, RunTag

        from airflow_mlops.telemetry.mlflow_sink import summary_metrics

        now = int(time.time() * 1000)
        metrics = summary_metrics(summary) if summary.get("available") else {}
        tags = {}
        if cost is not None:
            metrics.update(cost.metrics())
            tags.update(mlflow_tags(cost, self.job.prices, held))
            self.log.info("Cost: %.4f (%.4f GPU-h × %s, %.4f CPU-h × %s, %.4f GiB-h × %s) over %.1f s", cost.total,
                          cost.gpu_hours, self.job.prices.gpu_hour, cost.cpu_hours, self.job.prices.cpu_hour,
                          cost.memory_gib_hours, self.job.prices.memory_gib_hour, cost.wall_seconds or 0.0)
        if summary.get("available"):
            self.log.info("GPU summary: %d GPU(s), utilization mean %s%% max %s%%, peak memory %s, energy %s J, %.4f GPU-h",
                          summary["count"], _fmt(summary["utilization_mean"]), _fmt(summary["utilization_max"]),
                          _gib(summary["memory_peak_bytes"]), _fmt(summary["energy_j"]), summary["gpu_hours"])
        try:
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 - never hide the training's own outcome behind this
            if status == "FINISHED":
                raise
            self.log.warning("Could not record the cost of the failed try in MLflow", exc_info=True)

    def _result(self, client: Any, run_id: str, experiment_id: str, url: str, outcome: dict, gpus: GpuAssignment,
                summary: dict, cost: Any) -> dict[str, Any]:
        job = self.job
        version = outcome.get("model_version")
        if version is None:
            version = self._register_script_model(client, run_id)
        if version is not None:
            version_tags = {**job.tags, GPU_AVAILABLE_TAG: str(gpus.available).lower()}
            for key, value in version_tags.items():
                client.set_model_version_tag(job.registered_model, version, key, value)
            self.log.info("Registered model '%s' version %s (run %s)", job.registered_model, version, run_id)
        metrics = outcome.get("metrics")
        if metrics is None:
            metrics = {k: v for k, v in client.get_run(run_id).data.metrics.items()
                       if not k.startswith(("gpu/", "cost/"))}
        return {
            "run_id": run_id,
            "experiment_id": experiment_id,
            "mlflow_run_url": url,
            "model_name": job.registered_model,
            "model_version": version,
            "model_uri": f"models:/{job.registered_model}/{version}" if version is not None else None,
            "metrics": metrics,
            "checkpoint_dir": job.checkpoint_dir,
            "gpu": _gpu_result(gpus, summary),
            "cost": cost.as_dict() if cost is not None else None,
            "prices": job.prices.model_dump(),
            "reused": False,
        }

    def _register_script_model(self, client: Any, run_id: str) -> str | None:
        """A script/module entrypoint logs its model itself (MLFLOW_RUN_ID points it at the run):
        register that model, unless the script registered it already."""
        import mlflow

        job = self.job
        for version in client.search_model_versions(f"run_id = '{run_id}'"):
            if version.name == job.registered_model:
                return str(version.version)
        models = list(client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id],
                                                  filter_string=f"source_run_id = '{run_id}'"))
        if not models:
            self.log.warning("The training script logged no MLflow model in run %s: no model version registered",
                             run_id)
            return None
        models.sort(key=lambda m: m.creation_timestamp)
        if len(models) > 1:
            self.log.info("The script logged %d models; registering the last one (%s)", len(models), models[-1].name)
        try:
            client.create_registered_model(job.registered_model)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        model = models[-1]
        # The storage location, not "models:/<id>": MLflow's SQL registry would resolve that
        # through its process-wide tracking URI, which this code leaves alone.
        version = client.create_model_version(job.registered_model, source=model.artifact_location, run_id=run_id,
                                              model_id=model.model_id)
        return str(version.version)

    def _reused_result(self, client: Any, run_id: str, version: str, experiment_id: str, url: str) -> dict[str, Any]:
        job = self.job
        run = client.get_run(run_id)
        m, t = run.data.metrics, run.data.tags
        cost = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("cost/")} or None
        return {
            "run_id": run_id,
            "experiment_id": experiment_id,
            "mlflow_run_url": url,
            "model_name": job.registered_model,
            "model_version": version,
            "model_uri": f"models:/{job.registered_model}/{version}",
            "metrics": {k: v for k, v in m.items() if not k.startswith(("gpu/", "cost/"))},
            "checkpoint_dir": t.get("airflow_mlops.checkpoint_dir", job.checkpoint_dir),
            "gpu": {"available": t.get(GPU_AVAILABLE_TAG) == "true",
                    "ids": [int(i) for i in t.get("airflow_mlops.gpu.ids", "").split(",") if i],
                    "reason": t.get("airflow_mlops.gpu.reason")},
            "cost": cost,
            "prices": job.prices.model_dump(),
            "reused": True,
        }


def _gpu_result(gpus: GpuAssignment, summary: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"available": gpus.available, "ids": gpus.visible, "names": gpus.names, "reason": gpus.reason}
    for key in ("samples", "utilization_mean", "utilization_max", "memory_peak_bytes", "energy_j", "gpu_hours",
                "power_mean_w", "power_max_w", "temperature_max_c"):
        if summary.get("available") and summary.get(key) is not None:
            out[key] = summary[key]
    return out


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = list(params.items())
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _gib(value: Any) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"
