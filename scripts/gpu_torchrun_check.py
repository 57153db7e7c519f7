"""Multi-node torchrun, for real, on a machine with an NVIDIA GPU: the exact pods that a train
stage's ``distributed:`` block renders (``DistributedTraining.render()``: the torchrun command,
arguments and environment of each pod) run as local processes, pod 0's DNS name standing for
127.0.0.1 (one machine plays every node). Every rank runs the package's training runner with the
same job; the DDP training step below runs on CUDA; global rank 0 records the MLflow run, the
model version and the cost billed for every pod, and prints the stage's result line.

Two steps, since rendering needs Airflow and the Kubernetes client and the GPU machine has torch:

    .venv/bin/python scripts/gpu_torchrun_check.py render --nodes 2 --plan .gl/torchrun.json   # here
    python3 scripts/gpu_torchrun_check.py run --plan .gl/torchrun.json [--out result.json]   # GPU machine

``run`` needs torch (with ``torchrun`` on PATH), mlflow, pandas, scikit-learn and pydantic; it
prints one line per check and exits non-zero when one fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = "/tmp/airflow-mlops-torchrun-check"  # the MLflow store and checkpoints, on the GPU machine


def ddp_entrypoint(params, checkpoint_dir):
    """GpuTrainOperator's entrypoint (``params``, ``checkpoint_dir``), run by every rank: a
    logistic regression trained with DistributedDataParallel (gloo: the ranks may share one GPU),
    each rank on its shard of synthetic rows, on CUDA; rank 0 returns the model as scikit-learn."""
    import numpy as np
    import pandas as pd
    import torch
    import torch.distributed as dist
    from sklearn.linear_model import LogisticRegression

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}")
    gen = np.random.default_rng(0)
    x = gen.normal(size=(20000, 16)).astype("float32")
    y = (x[:, :4].sum(axis=1) > 0).astype("float32")
    xs, ys = torch.tensor(x[rank::world], device=device), torch.tensor(y[rank::world], device=device)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 1).to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(params.get("lr", 0.5)))
    for _ in range(int(params.get("epochs", 200))):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xs).squeeze(1), ys)
        loss.backward()  # gradients are averaged over every rank
        optimizer.step()
    torch.cuda.synchronize()
    weight = model.module.weight.detach().cpu().numpy()[0]
    bias = float(model.module.bias.detach().cpu()[0])
    print(f"rank {rank} of {world}: loss {loss.item():.4f} on {device} ({torch.cuda.get_device_name(device)})",
          flush=True)
    dist.destroy_process_group()
    if rank != 0:
        return None
    names = [f"f{i}" for i in range(16)]
    fitted = LogisticRegression()
    fitted.classes_, fitted.coef_, fitted.intercept_ = np.array([0.0, 1.0]), weight[None, :], np.array([bias])
    fitted.n_features_in_, fitted.feature_names_in_ = 16, np.array(names, dtype=object)
    frame = pd.DataFrame(x, columns=names)
    accuracy = float((fitted.predict(frame) == y).mean())
    return {"model": fitted, "metrics": {"accuracy": accuracy, "loss": float(loss.item()), "world_size": world},
            "input_example": frame.head(5)}


def render(nodes: int, plan: Path) -> None:
    """The group's pods as the launcher renders them, to ``plan`` (JSON)."""
    import logging

    from airflow_mlops.backends.kubernetes.distributed import DistributedTraining
    from airflow_mlops.spec.models import KubernetesSettings, Resources
    from airflow_mlops.spec.training import Distributed
    from airflow_mlops.stages.train.job import TASK_KEY_TAG, GpuTrainJob

    job = GpuTrainJob(entrypoint="scripts.gpu_torchrun_check:ddp_entrypoint", checkpoint_dir=f"{WORK}/ckpt",
                      tracking_uri=f"sqlite:///{WORK}/mlflow.db", experiment="torchrun-check",
                      registered_model="torchrun_check", artifact_location=f"{WORK}/artifacts",
                      run_name="torchrun_check.train", hyperparams={"epochs": 200},
                      tags={TASK_KEY_TAG: "torchrun_check/manual/train"})
    group = DistributedTraining(job, distributed=Distributed(nodes=nodes, nproc_per_node=1),
                                kubernetes=KubernetesSettings(image="any", namespace="ml"),
                                resources=Resources(cpu="4", memory="16Gi", gpu=1), pipeline_id="torchrun_check",
                                stage_name="train", log=logging.getLogger("render"))
    _, pods = group.render()
    master = f"{group.name}-0.{group.name}.ml.svc"
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps({"master": master, "pods": [
        {"name": p["metadata"]["name"], "command": p["spec"]["containers"][0]["command"],
         "args": p["spec"]["containers"][0]["args"],
         "env": {e["name"]: e["value"] for e in p["spec"]["containers"][0].get("env") or [] if "value" in e},
         "gpus": p["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")} for p in pods]}, indent=1))
    print(f"rendered {len(pods)} pods to {plan}: {' '.join(pods[0]['spec']['containers'][0]['command'])} "
          f"{' '.join(pods[0]['spec']['containers'][0]['args'][:7])} ...")


def run(plan_file: Path, out: Path | None, timeout: float) -> int:
    from airflow_mlops._core.result import find_result

    plan = json.loads(plan_file.read_text())
    Path(WORK).mkdir(parents=True, exist_ok=True)
    lines: dict[int, list[str]] = {}
    procs = []
    for rank, pod in enumerate(plan["pods"]):
        env = {**os.environ, **{k: v.replace(plan["master"], "127.0.0.1") for k, v in pod["env"].items()}}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        args = [a.replace(plan["master"], "127.0.0.1") for a in pod["args"]]
        procs.append(subprocess.Popen([*pod["command"], *args], env=env, cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        lines[rank] = []

    def pump(rank: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            lines[rank].append(line.rstrip("\n"))
            print(f"[rank {rank}] {line}", end="", flush=True)

    threads = [threading.Thread(target=pump, args=(r, p), daemon=True) for r, p in enumerate(procs)]
    for t in threads:
        t.start()
    started = time.monotonic()
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started))))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(None)
    for t in threads:
        t.join(5)
    result = next((r for r in (find_result(lines[k]) for k in sorted(lines)) if r), None)
    checks = [
        ("every pod exited 0", codes == [0] * len(procs), f"exit codes {codes}"),
        ("rank 0 printed the stage's result", result is not None, json.dumps(result)[:400] if result else "none"),
        ("a model version was registered", bool(result and result.get("model_version")),
         f"version {result and result.get('model_version')}"),
        ("the world size is every pod's process", bool(result and result.get("metrics", {}).get("world_size")
                                                       == len(procs)),
         f"world_size {result and result.get('metrics', {}).get('world_size')}"),
        ("every rank trained on CUDA", all(any(" on cuda:" in ln for ln in lines[r]) for r in lines),
         "; ".join(next((ln for ln in lines[r] if " on cuda:" in ln), "?") for r in sorted(lines))),
    ]
    failed = 0
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        failed += not ok
    if out:
        out.write_text(json.dumps({"checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in checks],
                                   "result": result, "log": lines}, indent=1, default=str))
    print("ALL TORCHRUN CHECKS PASSED" if not failed else f"{failed} CHECK(S) FAILED", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    r = sub.add_parser("render")
    r.add_argument("--nodes", type=int, default=2)
    r.add_argument("--plan", type=Path, required=True)
    x = sub.add_parser("run")
    x.add_argument("--plan", type=Path, required=True)
    x.add_argument("--out", type=Path)
    x.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    if args.step == "render":
        render(args.nodes, args.plan)
        return 0
    return run(args.plan, args.out, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
