"""``python -m airflow_mlops.stages.train.runner``: the processes a GPU training job starts.

``call --spec FILE``
    The training process for a callable entrypoint. It is a fresh process, so the
    ``CUDA_VISIBLE_DEVICES`` its parent set takes effect before torch/CUDA initialise. It calls
    ``pkg.module:function`` with the keyword arguments the function declares among ``params``
    (the hyperparameters), ``checkpoint_dir``, and, when datasets are configured, ``train``,
    ``test`` (DataFrames), ``target`` and ``features``. The function returns ``(model, metrics)``
    or ``{"model", "metrics", "input_example"}``; metrics and model go to the job's MLflow run and
    the model version is registered (``airflow_mlops.stages.train.builtin.log_model``).

``job --payload B64 [--result-file PATH]``
    A whole job (``airflow_mlops.stages.train.job``, run by ``measure.TrainingRun``) inside a pod: the result is printed on the runtime's
    marker line for the launcher to read back; a refusal prints ``STAGE FAILED:`` and exits 3.
    In a torchrun group (``job.distributed``) only global rank 0 does so; the other ranks run
    the same training code and record nothing (``follow``).
"""

from __future__ import annotations

import argparse
import base64
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("airflow_mlops.stages.train.runner")


def _kwargs_for(fn: Any, available: dict[str, Any]) -> dict[str, Any]:
    """The arguments ``fn`` declares (all of them if it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return available
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return available
    return {k: v for k, v in available.items() if k in parameters}


def _unpack(produced: Any, name: str) -> tuple[Any, dict[str, float], Any]:
    from airflow_mlops._core.errors import StageFailed

    if isinstance(produced, dict) and "model" in produced:
        return produced["model"], dict(produced.get("metrics") or {}), produced.get("input_example")
    if isinstance(produced, tuple) and len(produced) == 2:
        return produced[0], dict(produced[1] or {}), None
    raise StageFailed(f"entrypoint '{name}' must return (model, metrics) or "
                      "{'model': ..., 'metrics': ..., 'input_example': ...}")


def call(spec: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops._core.paths import import_string
    from airflow_mlops.stages.train.builtin import log_model

    mlflow.set_tracking_uri(spec["tracking_uri"])
    mlflow.set_registry_uri(spec["tracking_uri"])
    try:
        fn = import_string(spec["entrypoint"])
    except (ImportError, AttributeError) as exc:  # retrying cannot make the code appear
        raise StageFailed(f"cannot import the entrypoint '{spec['entrypoint']}': {type(exc).__name__}: {exc} "
                          f"(PYTHONPATH={os.environ.get('PYTHONPATH', '')!r})") from exc
    available: dict[str, Any] = {"params": dict(spec.get("hyperparams") or {}), "checkpoint_dir": spec["checkpoint_dir"]}
    available.update(datasets(spec.get("data")))
    test_x = None
    if "train" in available:
        test_x = (available["test"] if available["test"] is not None else available["train"])[available["features"]]
    with mlflow.start_run(run_id=spec["run_id"]):
        produced = fn(**_kwargs_for(fn, available))
        model, metrics, example = _unpack(produced, spec["entrypoint"])
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        log.info("Metrics: %s", metrics)
        if example is None:
            example = test_x
        if example is None:
            raise StageFailed(f"entrypoint '{spec['entrypoint']}' returned no input_example and has no datasets: "
                              "return {'model': ..., 'metrics': ..., 'input_example': <a few input rows>} so the "
                              "model can be logged with its signature")
        example = _frame(example)
        info = log_model(model, example, spec["registered_model"])
    return {"metrics": {k: float(v) for k, v in metrics.items()},
            "model_version": str(info.registered_model_version) if info.registered_model_version else None}


def datasets(data: dict[str, Any] | None) -> dict[str, Any]:
    """``train``, ``test`` (DataFrames; test None without a test split), ``target`` and ``features``
    from a job's ``data``; {} without one. StageFailed when the target column is missing."""
    if not data:
        return {}
    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops.stages.data import read_dataset

    train = read_dataset(data["train_path"], conn_id=data.get("conn_id"))
    test = read_dataset(data["test_path"], conn_id=data.get("conn_id")) if data.get("test_path") else None
    if data["target"] not in train.columns:
        raise StageFailed(f"target column '{data['target']}' is not in the training data; columns: {list(train.columns)}")
    features = data.get("features") or [c for c in train.columns if c != data["target"]]
    return {"train": train, "test": test, "target": data["target"], "features": features}


def follow(job: Any) -> int:
    """A rank other than 0 of a torchrun group (``job.distributed``): the same training code as
    rank 0 — the callable or entrypoint with the same arguments, or the script/module — recording
    nothing: rank 0 records the run, the metrics and the model. Returns the exit code."""
    import subprocess

    from airflow_mlops._core.paths import import_string
    from airflow_mlops.stages.train.job import CHECKPOINT_ENV, PARAMS_ENV

    log.info("Rank %s of %s: training; rank 0 records the MLflow run and the model", os.environ.get("RANK"),
             os.environ.get("WORLD_SIZE"))
    if job.script or job.module:
        env = {**os.environ, **job.env, PARAMS_ENV: json.dumps(job.hyperparams, default=str),
               CHECKPOINT_ENV: str(job.checkpoint_dir)}
        if job.python_path:
            env["PYTHONPATH"] = os.pathsep.join([*job.python_path, *filter(None, [env.get("PYTHONPATH")])])
        argv = [job.script, *job.args] if job.script else ["-m", str(job.module), *job.args]
        return subprocess.call([sys.executable, "-u", *argv], env=env)
    sys.path[:0] = [p for p in job.python_path if p not in sys.path]
    name = job.entrypoint or (job.builtin.callable if job.builtin else None)
    fn = import_string(str(name))
    available = {"params": dict(job.hyperparams), "checkpoint_dir": job.checkpoint_dir,
                 **datasets(job.data.model_dump() if job.data else None)}
    fn(**_kwargs_for(fn, available))
    return 0


def _frame(example: Any) -> Any:
    import pandas as pd

    if isinstance(example, pd.DataFrame):
        return example
    frame = pd.DataFrame(example)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_mlops.stages.train.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("call", help="run a callable entrypoint into an existing MLflow run")
    p.add_argument("--spec", required=True, help="JSON file written by the job")
    p = sub.add_parser("job", help="run a whole GPU training job (inside a pod)")
    p.add_argument("--payload", required=True, help="base64-encoded JSON GpuTrainJob")
    p.add_argument("--result-file", help="also write the result JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from airflow_mlops._core.orphan import end_with_parent

    end_with_parent(what="training")  # its task's process died: it does not go on training alone

    from airflow_mlops._core.errors import MlopsError
    from airflow_mlops._core.outcome import report_exit
    from airflow_mlops._core.result import result_line

    if args.command == "call":
        spec = json.loads(Path(args.spec).read_text())
        result_file = Path(spec["result_file"])
        try:
            result = call(spec)
        except MlopsError as exc:  # the exit code says refused, skipped or transient (_core.outcome)
            return report_exit(exc, result_file)
        result_file.write_text(json.dumps(result))
        return 0

    from airflow_mlops.stages.train.job import GpuTrainJob
    from airflow_mlops.stages.train.measure import TrainingRun

    job = GpuTrainJob.model_validate_json(base64.b64decode(args.payload))
    try:
        if job.distributed and os.environ.get("RANK", "0") != "0":  # torchrun's rank of this process
            return follow(job)
        result = TrainingRun(job).run()
    except MlopsError as exc:  # a refusal, or the tracking server failed (_core.outcome: exit 3 or 1)
        return report_exit(exc)
    line = result_line(json.loads(json.dumps(result, default=str)))
    if args.result_file:
        Path(args.result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result_file).write_text(json.dumps(result, default=str))
    print(line, flush=True)
    return 0


def encode_job(job: Any) -> str:
    """The ``--payload`` of ``job``: a GpuTrainJob as base64-encoded JSON."""
    return base64.b64encode(job.model_dump_json().encode()).decode()


if __name__ == "__main__":
    sys.exit(main())
