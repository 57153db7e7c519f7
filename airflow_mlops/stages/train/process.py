"""GpuTrainOperator's training: your entrypoint in a subprocess, so that ``CUDA_VISIBLE_DEVICES``
takes effect before CUDA initialises, with the checkpoint folder in ``$AIRFLOW_MLOPS_CHECKPOINT_DIR``
and ``MLFLOW_RUN_ID`` pointing at the run ``TrainingRun`` created.

- ``entrypoint='pkg.module:function'`` runs through ``python -m airflow_mlops.stages.train.runner
  call``, which logs its metrics and model into the run and registers the version;
- ``script=``/``module=`` run as ``python [-m] ... args``; a model they log is registered after.

    trainer = EntrypointProcess(job, log)
    trainer.prepare()                               # the checkpoint folder
    outcome = trainer.train(client, run_id, gpus)   # {"metrics"?, "model_version"}; kill() stops it
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
from pathlib import Path
from typing import Any

from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.result import outcome_files
from airflow_mlops.stages.train.gpus import GpuAssignment
from airflow_mlops.stages.train.job import CHECKPOINT_ENV, PARAMS_ENV, GpuTrainJob

LOG_TAIL_LINES = 30


class TrainingFailed(RuntimeError):
    """The training process crashed (a retry may help: it resumes from the checkpoint)."""


class EntrypointProcess:
    """What to train for a job with ``entrypoint``, ``script`` or ``module`` (see
    ``stages.train.measure.TrainingRun``)."""

    def __init__(self, job: GpuTrainJob, log: logging.Logger) -> None:
        self.job, self.log = job, log
        self._process: subprocess.Popen | None = None
        self._killed = False

    def prepare(self) -> dict[str, Any]:
        """Create the checkpoint folder (kept across tries: a retry resumes from it)."""
        folder = Path(str(self.job.checkpoint_dir))
        folder.mkdir(parents=True, exist_ok=True)
        existing = sorted(p.name for p in folder.iterdir())
        if existing:
            self.log.info("Checkpoint folder %s holds %d file(s) from an earlier try: the entrypoint can resume from "
                          "them", folder, len(existing))
        return {}

    def train(self, client: Any, run_id: str, gpus: GpuAssignment) -> dict[str, Any]:
        """Run the training process, its output streamed into the log. Returns what a callable
        entrypoint reported (``metrics``, ``model_version``), or the version registered from the
        model a script logged. Raises StageFailed when the entrypoint refused its input, and
        TrainingFailed (retryable) when the process crashed or was killed."""
        work = Path(tempfile.mkdtemp(prefix="airflow-mlops-train-"))
        result_file = work / "result.json"
        argv = self._argv(run_id, work, result_file)
        env = self._env(run_id, gpus)
        self.log.info("Training: %s (CUDA_VISIBLE_DEVICES=%r, checkpoints in %s)", " ".join(argv[1:]),
                      env.get("CUDA_VISIBLE_DEVICES"), self.job.checkpoint_dir)
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        try:
            code = self._spawn(argv, env, tail)
        finally:
            outcome_text = result_file.read_text() if result_file.exists() else None
            failed = outcome_files(result_file)[0]
            failed_text = failed.read_text() if failed.exists() else None
            shutil.rmtree(work, ignore_errors=True)
        if code != 0:
            raise self._failure(code, failed_text, tail)
        outcome = json.loads(outcome_text) if outcome_text else {}
        if outcome.get("model_version") is None:
            outcome["model_version"] = self._register_script_model(client, run_id)
        return outcome

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
        env.update(gpus.cuda_env())
        env.update({
            CHECKPOINT_ENV: str(job.checkpoint_dir),
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
        if failed is not None:  # the entrypoint judged its input and refused it: retrying won't help
            return StageFailed(failed)
        lines = "\n".join(tail)
        what = "was killed" if self._killed else f"exited with code {code}"
        return TrainingFailed(f"the training process {what}; last {len(tail)} log line(s):\n{lines}")

    def kill(self) -> None:
        """Stop the training process group: SIGTERM, then SIGKILL after 30 s."""
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
