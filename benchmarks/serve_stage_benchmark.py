"""The batch serve stage against the same scoring in a plain script: load the registered version,
predict, write the predictions.

    python benchmarks/serve_stage_benchmark.py [--rows N ...] [--repeats R]

Method: a scikit-learn ``LogisticRegression`` (20 numeric features) is trained once and registered
in a SQLite MLflow store, outside the timing. For each N (default 1 000 and 1 000 000), N rows to
score are written as Parquet. In one process, alternate R times: (a) the plain script —
``mlflow.pyfunc.load_model("models:/bench/1")``, read the Parquet file with pandas, ``predict``,
add the column, write Parquet; (b) the airflow-mlops serve stage (``mode: batch``) through
``run_stage`` as the worker's operator calls it, which also checks every row against the model's
signature (setting aside rows that do not fit) and records which version it served. A warm-up
round of each is not counted. Prints the medians and the ratio; goal: ≤ 1.2×.
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

GOAL = 1.2
FEATURES = [f"x{i}" for i in range(20)]


def frame(rows: int, seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    return pd.DataFrame(x, columns=FEATURES).assign(label=((x[:, 0] - x[:, 3]) > 0).astype("int64"))


def register(store: Path) -> str:
    import mlflow
    import mlflow.sklearn
    import skops.io as skops_io
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    train = frame(50_000, 1)
    model = LogisticRegression(max_iter=200).fit(train[FEATURES], train["label"])
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("bench-serve")
    sample = train[FEATURES].head(1000)
    with mlflow.start_run():
        mlflow.sklearn.log_model(model, name="model", signature=infer_signature(sample, model.predict(sample)),
                                 registered_model_name="bench",
                                 skops_trusted_types=skops_io.get_untrusted_types(data=skops_io.dumps(model)))
    return "models:/bench/1"


def plain(uri: str, source: str, out: Path) -> int:
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(uri)
    df = pd.read_parquet(source)
    scored = df.copy()
    scored["prediction"] = model.predict(df[FEATURES])
    scored.to_parquet(out)
    return len(scored)


def stage(uri: str, source: str, store: Path, n: int) -> int:
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import ServeStage
    from airflow_mlops.stages import run_stage

    target = MlflowTarget(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", experiment="bench-serve",
                          registered_model="bench")
    ctx = StageContext(pipeline_id="bench", stage_name="serve", run_key=f"r{n}", data_dir=str(store / "data"),
                       mlflow=target, upstream=[("validate", {"model_uri": uri}), ("prep", {"test_path": source})],
                       engine="pandas")
    return run_stage(ServeStage(mode="batch"), ctx)["rows"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import logging
    import os

    logging.basicConfig(level=logging.WARNING)
    store = Path(tempfile.mkdtemp(prefix="serve-stage-bench-"))
    os.environ.setdefault("AIRFLOW_MLOPS_HOME", str(store / "home"))
    try:
        uri = register(store)
        for rows in args.rows:
            source = str(store / f"score_{rows}.parquet")
            frame(rows, 2).drop(columns="label").to_parquet(source)
            times: dict[str, list[float]] = {"plain": [], "stage": []}
            for round_ in range(args.repeats + 1):
                for side in ("plain", "stage"):
                    started = time.perf_counter()
                    scored = (plain(uri, source, store / "plain.parquet") if side == "plain"
                              else stage(uri, source, store, round_))
                    took = time.perf_counter() - started
                    assert scored == rows, (side, scored)
                    if round_:  # round 0 warms both up
                        times[side].append(took)
            p, s = statistics.median(times["plain"]), statistics.median(times["stage"])
            print(f"rows: {rows:,}, {args.repeats} repeats")
            print(f"  plain script: {p:.2f} s (median); serve stage: {s:.2f} s (median)")
            print(f"  ratio: {s / p:.2f}x (goal <= {GOAL}x), fixed cost {s - p:+.2f} s: "
                  f"{'met' if s / p <= GOAL else 'NOT MET'}")
        return 0
    finally:
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
