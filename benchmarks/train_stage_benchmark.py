"""The batch train stage against the same work in a plain script: fit, evaluate, and the same
MLflow calls (params, metrics, the model logged with its requirements, a registered version).

    python benchmarks/train_stage_benchmark.py [--rows N ...] [--repeats R]

Method: for each N (default 1 000 and 1 000 000), generate N rows (20 numeric features, a binary
label) as train/test Parquet (3:1). In one process, alternate R times: (a) the plain script — read
both files with pandas, fit scikit-learn's ``LogisticRegression``, accuracy/f1/roc_auc, then in an
MLflow run log the params and metrics and ``mlflow.sklearn.log_model`` with the same pinned
requirements (resolved once, as a script would write them), the signature inferred from the same
1,000 test rows, and ``registered_model_name``; (b) the
airflow-mlops train stage on the batch backend with the same estimator and params, through
``run_stage`` as the worker's operator calls it (it trains in a subprocess of its own, samples
NVML when asked for GPUs, records the cost, and registers the version). Both write to one SQLite
MLflow store. A warm-up round of each is not counted. Prints the medians, the ratio and the fixed
cost (stage minus script); goals (issue "A stage costs what its work costs"): ratio ≤ 1.2× and a
fixed cost ≤ 1 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL_RATIO, GOAL_FIXED_S = 1.2, 1.0
FEATURES = [f"x{i}" for i in range(20)]
PARAMS = {"max_iter": 200, "C": 1.0}
METRICS = ["accuracy", "f1", "roc_auc"]


def generate(folder: Path, rows: int) -> dict[str, str]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, len(FEATURES)))
    label = ((x[:, 0] + 0.5 * x[:, 1] - x[:, 3] + rng.normal(size=rows)) > 0).astype("int64")
    frame = pd.DataFrame(x, columns=FEATURES).assign(label=label)
    paths = {"train_path": str(folder / "train.parquet"), "test_path": str(folder / "test.parquet")}
    frame.iloc[rows // 4:].to_parquet(paths["train_path"])
    frame.iloc[: rows // 4].to_parquet(paths["test_path"])
    return paths


def requirements() -> list[str]:
    """What a script would pin by hand: the installed versions of what the model needs."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy", "scipy", "pandas", "cloudpickle")]


def plain(paths: dict[str, str], store: Path, pins: list[str]) -> dict[str, float]:
    import mlflow
    import mlflow.sklearn
    import pandas as pd
    import skops.io as skops_io
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    train, test = pd.read_parquet(paths["train_path"]), pd.read_parquet(paths["test_path"])
    model = LogisticRegression(**PARAMS).fit(train[FEATURES], train["label"])
    predicted = model.predict(test[FEATURES])
    metrics = {"accuracy": accuracy_score(test["label"], predicted), "f1": f1_score(test["label"], predicted),
               "roc_auc": roc_auc_score(test["label"], model.predict_proba(test[FEATURES])[:, 1])}
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("bench-plain")
    with mlflow.start_run():
        mlflow.log_params({**PARAMS, "features": len(FEATURES), "train_rows": len(train)})
        mlflow.log_metrics(metrics)
        sample = test[FEATURES].head(1000)  # the stage infers the signature from 1,000 rows too
        mlflow.sklearn.log_model(model, name="model", signature=infer_signature(sample, model.predict(sample)),
                                 input_example=test[FEATURES].head(2), registered_model_name="bench_plain",
                                 skops_trusted_types=skops_io.get_untrusted_types(data=skops_io.dumps(model)),
                                 pip_requirements=pins)
    return metrics


def stage(paths: dict[str, str], store: Path, n: int) -> dict[str, float]:
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import TrainStage
    from airflow_mlops.stages import run_stage

    spec = TrainStage(estimator="sklearn.linear_model.LogisticRegression", params=PARAMS, target="label",
                      metrics=METRICS)
    target = MlflowTarget(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", experiment="bench-stage",
                          registered_model="bench_stage", artifact_location=str(store / "artifacts"))
    ctx = StageContext(pipeline_id="bench", stage_name="train", run_key=f"r{n}", data_dir=str(store / "data"),
                       mlflow=target, upstream=[("prep", paths)], engine="pandas")
    return run_stage(spec, ctx)["metrics"]


def measure(rows: int, repeats: int) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp(prefix="train-stage-bench-"))
    try:
        paths, pins = generate(folder, rows), requirements()
        times: dict[str, list[float]] = {"plain": [], "stage": []}
        for round_ in range(repeats + 1):
            for side in ("plain", "stage"):
                started = time.perf_counter()
                metrics = plain(paths, folder, pins) if side == "plain" else stage(paths, folder, round_)
                took = time.perf_counter() - started
                if round_:  # round 0 warms both up (imports, the store's tables)
                    times[side].append(took)
                if round_ == repeats:
                    print(f"  {side:>5} metrics: { {k: round(v, 4) for k, v in metrics.items()} }")
        return statistics.median(times["plain"]), statistics.median(times["stage"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import logging
    import os

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("AIRFLOW_MLOPS_HOME", tempfile.mkdtemp(prefix="train-stage-bench-home-"))
    met = True
    for rows in args.rows:
        print(f"rows: {rows:,} (train {rows - rows // 4:,}), {args.repeats} repeats")
        p, s = measure(rows, args.repeats)
        ratio, fixed = s / p, s - p
        ok = ratio <= GOAL_RATIO and fixed <= GOAL_FIXED_S
        met &= ok
        print(f"  plain script: {p:.2f} s (median); train stage: {s:.2f} s (median)")
        print(f"  ratio: {ratio:.2f}x (goal <= {GOAL_RATIO}x), fixed cost {fixed:+.2f} s (goal <= {GOAL_FIXED_S} s): "
              f"{'met' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
