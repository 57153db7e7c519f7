"""The real GPU path, end to end, on a machine with an NVIDIA GPU: NVML readings, GPU selection,
a CUDA training step (PyTorch), and both kinds of training through the one wrapper
(``airflow_mlops.stages.train.measure.TrainingRun``) — a GpuTrainOperator job (a training
subprocess with ``CUDA_VISIBLE_DEVICES``) and the YAML train stage (``stages.run_stage``, in this
process) — each logging its GPU telemetry, cost and model to a real SQLite MLflow store. Nothing
is faked: without a GPU it stops at the first check and says so.

    python scripts/gpu_check.py [--seconds 20] [--out results.json]

Needs torch, mlflow, pandas, pyarrow, scikit-learn and nvidia-ml-py (airflow is not needed). It
prints one line per check and exits non-zero at the first one that fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def train_torch(params, checkpoint_dir, n_features=64):
    """A CUDA training loop (an MLP on synthetic data) for ``params['seconds']`` seconds; returns a
    pyfunc model holding the weights as numpy, so it loads and predicts on a CPU too."""
    import mlflow
    import numpy as np
    import pandas as pd
    import torch

    device = torch.device(params.get("device", "cuda"))
    assert device.type != "cuda" or torch.cuda.is_available(), "CUDA is not available to the training process"
    seconds, width = float(params.get("seconds", 20)), int(params.get("width", 4096))
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(65536, n_features, device=device, generator=gen)
    y = (x[:, :8].sum(dim=1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(n_features, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                torch.nn.ReLU(), torch.nn.Linear(width, 2)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        for i in range(0, len(x), 8192):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x[i:i + 8192]), y[i:i + 8192])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    with torch.no_grad():
        accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    weights = [p.detach().float().cpu().numpy() for p in model.parameters()]

    class Mlp(mlflow.pyfunc.PythonModel):
        def __init__(self, weights):
            self.weights = weights

        def predict(self, model_input, params=None):
            h = np.asarray(model_input, dtype=np.float32)
            w = self.weights
            for j in range(0, len(w) - 2, 2):
                h = np.maximum(h @ w[j].T + w[j + 1], 0)
            return (h @ w[-2].T + w[-1]).argmax(axis=1)

    columns = [f"f{i}" for i in range(n_features)]
    example = pd.DataFrame(x[:5].cpu().numpy(), columns=columns)
    print(f"[train_torch] {steps} steps in {time.monotonic() - started:.1f} s on "
          f"{torch.cuda.get_device_name(0) if device.type == 'cuda' else device} "
          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}), accuracy {accuracy:.3f}", flush=True)
    return {"model": Mlp(weights), "metrics": {"accuracy": accuracy, "steps": float(steps)}, "input_example": example}


def train_stage_callable(train, test, target, features, params):
    """The YAML train stage's callable contract around the same CUDA loop: (model, metrics)."""
    out = train_torch(params, tempfile.mkdtemp(), n_features=len(features))
    return out["model"], out["metrics"]


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        sys.exit(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="training time of each of the two runs")
    parser.add_argument("--out", help="write every figure as JSON here")
    parser.add_argument("--device", default="cuda", help="torch device (cpu only to rehearse the script's plumbing)")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report: dict = {}

    from airflow_mlops.telemetry.devices import choose_devices, list_devices
    from airflow_mlops.telemetry.sampler import NvmlSampler

    devices = list_devices()
    check("nvml", bool(devices), f"{len(devices)} GPU(s): " + "; ".join(
        f"{d.index} {d.name} {d.memory_total_bytes / 2**30:.0f} GiB total, {d.memory_free_bytes / 2**30:.0f} GiB free"
        for d in devices))
    report["devices"] = [vars(d) for d in devices]
    chosen = choose_devices(1, devices)
    check("choose_devices", len(chosen) == 1, f"the freest GPU is {chosen}")

    # 1. The sampler alone around a CUDA step in this process.
    import torch

    with NvmlSampler(interval_s=0.2) as sampler:
        a = torch.randn(8192, 8192, device=args.device, dtype=torch.bfloat16)
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 3:
            a = (a @ a).clamp_(-1, 1)
            n += 1
        if args.device == "cuda":
            torch.cuda.synchronize()
    s = sampler.summary()
    d = s["per_device"][0]
    report["sampler"] = s
    check("sampler", s["available"] and s["samples"] >= 10 and d["utilization_max"] > 0 and d["memory_peak_bytes"] > 2**28,
          f"{s['samples']} samples, utilization max {d['utilization_max']} %, memory peak "
          f"{d['memory_peak_bytes'] / 2**30:.2f} GiB, power max {d['power_max_w']} W, energy {s['energy_j']} J, "
          f"{n} bf16 8192^3 matmuls")
    del a
    if args.device == "cuda":
        torch.cuda.empty_cache()

    # 2. The Prometheus export of real NVML figures: scraped over HTTP, parsed by prometheus_client.
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from airflow_mlops.telemetry.prometheus import exported

    labels = {"dag_id": "gpu_check", "task_id": "prometheus", "run_id": "manual__check"}
    with NvmlSampler(interval_s=0.2) as sampler, exported(sampler, labels, lambda: {"total": 0.0}, port=0,
                                                          host="127.0.0.1") as export:
        b = torch.randn(8192, 8192, device=args.device, dtype=torch.bfloat16)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2:
            b = (b @ b).clamp_(-1, 1)
        if args.device == "cuda":
            torch.cuda.synchronize()
        with urllib.request.urlopen(f"http://127.0.0.1:{export.port}/metrics", timeout=10) as response:
            scraped = response.read().decode()
    del b
    series = {s.name: s.value for f in text_string_to_metric_families(scraped) for s in f.samples
              if s.labels.get("gpu") in (None, str(chosen[0]))}
    report["prometheus"] = series
    names = sorted(n for n in series if n.startswith("airflow_mlops_"))
    check("prometheus", series.get("airflow_mlops_gpu_available") == 1.0 and len(names) >= 5,
          f"scraped {len(names)} series from /metrics: " + ", ".join(f"{n}={series[n]:g}" for n in names[:8]))

    import mlflow

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)

    # 2. GpuTrainOperator's job: a training subprocess on the chosen GPU.
    from airflow_mlops.stages.train.job import GpuTrainJob
    from airflow_mlops.stages.train.measure import TrainingRun

    job = GpuTrainJob(entrypoint="gpu_check:train_torch", hyperparams={"seconds": args.seconds, "device": args.device,
                                                                         "width": 4096 if args.device == "cuda" else 256}, gpus=1,
                      checkpoint_dir=str(work / "ckpt"), tracking_uri=uri, experiment="gpu-check",
                      registered_model="gpu_check_mlp", artifact_location=str(work / "mlartifacts"),
                      run_name="gpu-job", resources={"gpu": 1, "cpu": "4", "memory": "16Gi"},
                      sample_interval_s=0.5, env={"PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent),
                                                                                  os.environ.get("PYTHONPATH", "")])})
    result = TrainingRun(job).run()
    report["job"] = result
    run = client.get_run(result["run_id"])
    history = client.get_metric_history(run.info.run_id, f"gpu/{chosen[0]}/utilization")
    gpu = result.get("gpu") or {}
    check("GpuTrainOperator job", result.get("model_version") is not None and run.data.tags.get(
        "airflow_mlops.gpu.available") == "true" and len(history) > 5,
          f"run {run.info.run_id}, model version {result.get('model_version')}, {len(history)} utilization points "
          f"(max {max((m.value for m in history), default=None)} %), GPU summary {json.dumps(gpu)[:400]}, "
          f"cost {json.dumps(result.get('cost'))}")
    check("job metrics", any(k.startswith("gpu/") for k in run.data.metrics) and "cost/total" in run.data.metrics,
          "metrics: " + ", ".join(sorted(k for k in run.data.metrics)[:40]))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/gpu_check_mlp/{result['model_version']}")
    import numpy as np
    import pandas as pd

    pred = model.predict(pd.DataFrame(np.zeros((3, 64), dtype=np.float32), columns=[f"f{i}" for i in range(64)]))
    check("model loads", len(pred) == 3, f"the registered model predicts on CPU: {list(pred)}")

    # 3. The YAML train stage with resources {gpu: 1}, in this process (the batch backend).
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import TrainStage
    from airflow_mlops.stages import run_stage

    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(200, 4)), columns=list("abcd"))
    frame["label"] = (frame.a > 0).astype(int)
    frame.to_parquet(work / "train.parquet")
    frame.to_parquet(work / "test.parquet")
    spec = TrainStage(callable="gpu_check:train_stage_callable", target="label",
                      params={"seconds": args.seconds / 2, "width": 2048 if args.device == "cuda" else 256,
                              "device": args.device}, metrics=["accuracy"])
    ctx = StageContext(
        pipeline_id="gpu_check_stage", stage_name="train", run_key="check", data_dir=str(work / "data"),
        mlflow=MlflowTarget(tracking_uri=uri, experiment="gpu-check-stage", registered_model="gpu_check_stage",
                            artifact_location=str(work / "mlartifacts")),
        upstream=[("preprocess", {"train_path": str(work / "train.parquet"), "test_path": str(work / "test.parquet")})],
        tags={"airflow.dag_id": "gpu_check_stage", "airflow.run_id": "check", "airflow.task_id": "train.run",
              "airflow.try_number": "1", "airflow_mlops.task_key": "gpu_check_stage/check/train.run"},
        resources={"gpu": 1, "cpu": "4", "memory": "16Gi"}, gpu_metrics={"sample_interval": 0.5},
    )
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    out = run_stage(spec, ctx)
    report["stage"] = out
    stage_gpu = out.get("gpu") or {}
    check("YAML train stage", stage_gpu.get("available") is True and stage_gpu.get("ids") == chosen
          and os.environ.get("CUDA_VISIBLE_DEVICES") == before,
          f"gpu {json.dumps(stage_gpu)}, cost {json.dumps(out.get('cost'))}, model version {out.get('model_version')}, "
          f"CUDA_VISIBLE_DEVICES restored to {before!r}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print("ALL GPU CHECKS PASSED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
