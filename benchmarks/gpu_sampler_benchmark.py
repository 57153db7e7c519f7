"""Overhead of the NVML sampler at 1 Hz on a CPU-bound training loop.

    python benchmarks/gpu_sampler_benchmark.py [--seconds 60] [--pairs 2] [--gpus 8] [--nvml auto|fake|real]

Method
------
1. The training loop: full-batch logistic regression by gradient descent in numpy on synthetic
   data (40 000 × 64), pinned to one thread (OPENBLAS/OMP/MKL_NUM_THREADS=1, set before numpy is
   imported), so it is one busy core. It is calibrated once to last about ``--seconds``; every
   timed run then does exactly that many iterations.
2. Runs alternate: without the sampler, with it (``NvmlSampler(interval_s=1.0)`` over
   ``--gpus`` GPUs, logging every point to a real SQLite MLflow run with ``log_batch`` every
   30 s, the default flush interval GpuTrainOperator and the train stage use), ``--pairs``
   times. Runs last long enough for periodic flushes, not just the final one.
3. Reported: the wall time of each run; the ratio with/without (median over pairs); and the
   sampler's own CPU time (``time.thread_time`` inside its thread, plus its first and last
   samples and flushes in the caller) as a % of one core over the run's wall time. Goal: < 1 %.

NVML: ``--nvml auto`` uses the real ``pynvml`` where a driver answers, else the FAKE NVML module
of ``tests/fake_nvml.py`` (no GPU on our CI machines). With the fake, each NVML query is a small
Python function; a real driver call (an ioctl) costs more, so the figure with the fake is a
floor for the per-sample cost, not the real thing. The output says which one ran.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GOAL_PERCENT = 1.0


def make_data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40_000, 64))
    w_true = rng.standard_normal(64)
    y = (x @ w_true + 0.5 * rng.standard_normal(40_000) > 0).astype(float)
    return x, y


def train(x, y, iterations: int) -> float:
    import numpy as np

    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        w -= 0.1 * (x.T @ (p - y)) / len(y)
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    return float(((p > 0.5) == y).mean())


def calibrate(x, y, seconds: float) -> int:
    n, elapsed = 20, 0.0
    while elapsed < 1.0:
        n *= 2
        start = time.perf_counter()
        train(x, y, n)
        elapsed = time.perf_counter() - start
    return max(1, int(n * seconds / elapsed))


def choose_nvml(mode: str, gpus: int):
    """(module to use, description)."""
    if mode in ("auto", "real"):
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            pynvml.nvmlShutdown()
            return pynvml, f"REAL NVML ({count} GPU(s))"
        except Exception as exc:  # noqa: BLE001
            if mode == "real":
                sys.exit(f"--nvml real: NVML is not usable here: {exc}")
            reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "asked for"
    from tests.fake_nvml import FakeGpu, FakeNvml

    fake = FakeNvml([FakeGpu(utilization=list(range(0, 100, 7)), memory_used=[(i + 1) * 2**30 for i in range(12)],
                             energy_mj=[i * 250_000 for i in range(10_000)]) for _ in range(gpus)])
    sys.modules["pynvml"] = fake
    return fake, f"FAKE NVML module (tests/fake_nvml.py), {gpus} fake GPU(s) — no GPU/driver on this machine ({reason})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of one training run (default 60: two periodic flushes)")
    parser.add_argument("--pairs", type=int, default=2, help="without/with pairs (default 2)")
    parser.add_argument("--gpus", type=int, default=8, help="fake GPUs to sample (default 8; real NVML: all)")
    parser.add_argument("--nvml", choices=("auto", "fake", "real"), default="auto")
    args = parser.parse_args()

    import mlflow

    from airflow_mlops.telemetry.mlflow_sink import MlflowSink
    from airflow_mlops.telemetry.sampler import NvmlSampler

    _nvml, what = choose_nvml(args.nvml, args.gpus)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-sampler-bench-"))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.create_experiment("bench", artifact_location=str(tmp / "artifacts"))

    # Warm MLflow's store up (SQLAlchemy compiles its statements on first use), as GpuTrainOperator
    # does by creating the run and logging params before training starts.
    from mlflow.entities import Metric

    warm = client.create_run(experiment)
    client.log_batch(warm.info.run_id, metrics=[Metric("warm", 1.0, 0, i) for i in range(10)])

    x, y = make_data()
    iterations = calibrate(x, y, args.seconds)
    print(f"GPU sampler overhead at 1 Hz — NVML: {what}")
    print(f"training loop: numpy logistic regression 40000x64, {iterations} iterations, one thread; "
          f"{os.cpu_count()} CPU core(s) on this machine (shared)")
    print(f"{'run':<22}{'wall s':>9}{'process CPU s':>15}{'sampler CPU s':>15}{'samples':>9}")

    ratios, overheads, logging_share = [], [], []
    for pair in range(1, args.pairs + 1):
        cpu0, t0 = time.process_time(), time.perf_counter()
        train(x, y, iterations)
        wall_without, cpu_without = time.perf_counter() - t0, time.process_time() - cpu0
        print(f"{f'without #{pair}':<22}{wall_without:>9.2f}{cpu_without:>15.2f}{'-':>15}{'-':>9}")

        run = client.create_run(experiment)
        # imports ``pynvml``: the real module, or the fake put in sys.modules by choose_nvml
        sampler = NvmlSampler(interval_s=1.0, sinks=[MlflowSink(client, run.info.run_id)])
        cpu0, t0 = time.process_time(), time.perf_counter()
        with sampler:
            train(x, y, iterations)
        wall_with, cpu_with = time.perf_counter() - t0, time.process_time() - cpu0
        print(f"{f'with sampler #{pair}':<22}{wall_with:>9.2f}{cpu_with:>15.2f}{sampler.thread_cpu_s:>15.4f}"
              f"{sampler.samples:>9}")
        if not sampler.available:
            sys.exit(f"the sampler found no GPU ({sampler.reason}): nothing was measured")
        ratios.append(wall_with / wall_without)
        overheads.append(100.0 * sampler.thread_cpu_s / wall_with)
        logging_share.append(100.0 * sampler.sink_cpu_s / wall_with)
        client.set_terminated(run.info.run_id)

    points = len(client.get_metric_history(run.info.run_id, "gpu/0/utilization"))
    ratio, overhead = statistics.median(ratios), statistics.median(overheads)
    print(f"MLflow: {points} points of gpu/0/utilization in the last run (one per sample), 5 metrics per GPU")
    print(f"wall ratio with/without sampler: {ratio:.3f}x (median of {len(ratios)}; per pair: "
          f"{', '.join(f'{r:.3f}' for r in ratios)}) — on 2 shared cores this moves by a few % either way")
    print(f"sampler CPU: {overhead:.3f} % of one core (median; per pair: {', '.join(f'{o:.3f}' for o in overheads)}), "
          f"of which MLflow log_batch {statistics.median(logging_share):.3f} %")
    print(f"goal < {GOAL_PERCENT:g} % of one core: {'MET' if overhead < GOAL_PERCENT else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
