"""The validate stage (thresholds and a champion comparison) against the same MLflow calls in a
plain script.

    python benchmarks/validate_stage_benchmark.py [--repeats R]

Method: a SQLite MLflow store with a registered model whose champion is version 1. Each round
first registers a new version from a run with better metrics (outside the timing), then (a) the
plain script — read the candidate's and the champion's metrics, check a threshold, compare
``roc_auc``, tag the decision on both versions and move ``champion`` / ``previous-champion``;
or (b) the airflow-mlops validate stage through ``run_stage`` as the worker's operator calls it,
which makes the same decision (and also records what the gate judged on, the serving aliases, and
reads the champion again before moving it). The sides alternate; a warm-up round of each is not
counted. Prints the medians and the stage's fixed cost over the script; goal: ≤ 0.5 s.
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

GOAL_FIXED_S = 0.5


def new_version(client, name: str, experiment: str, score: float) -> str:
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "roc_auc", score)
    client.log_metric(run.info.run_id, "accuracy", 0.9)
    client.set_terminated(run.info.run_id)
    return str(client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id).version)


def plain(client, name: str, version: str) -> str:
    candidate = client.get_run(client.get_model_version(name, version).run_id).data.metrics
    if candidate["accuracy"] < 0.8:
        raise SystemExit("below the threshold")
    champion = client.get_model_version_by_alias(name, "champion").version
    old = client.get_run(client.get_model_version(name, champion).run_id).data.metrics
    gain = candidate["roc_auc"] - old["roc_auc"]
    detail = f"roc_auc {candidate['roc_auc']:.4g} vs {old['roc_auc']:.4g}, gain {gain:+.4g}"
    client.set_model_version_tag(name, version, "airflow_mlops.validation", "passed")
    client.set_registered_model_alias(name, "previous-champion", champion)
    client.set_model_version_tag(name, champion, "airflow_mlops.decision", "replaced")
    client.set_model_version_tag(name, champion, "airflow_mlops.decision_detail", detail)
    client.set_registered_model_alias(name, "champion", version)
    client.set_model_version_tag(name, version, "airflow_mlops.decision", "promoted")
    client.set_model_version_tag(name, version, "airflow_mlops.decision_detail", detail)
    return version


def stage(store: Path, name: str, version: str, n: int) -> str:
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import ValidateStage
    from airflow_mlops.stages import run_stage

    spec = ValidateStage(thresholds={"accuracy": {"min": 0.8}}, compare={"roc_auc": {"direction": "higher"}})
    target = MlflowTarget(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", experiment="bench-validate",
                          registered_model=name)
    ctx = StageContext(pipeline_id="bench", stage_name="validate", run_key=f"r{n}", data_dir=str(store / "data"),
                       mlflow=target, upstream=[("train", {"model_name": name, "model_version": version})],
                       engine="pandas")
    return run_stage(spec, ctx)["model_version"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import logging
    import os

    import mlflow

    logging.basicConfig(level=logging.WARNING)
    store = Path(tempfile.mkdtemp(prefix="validate-stage-bench-"))
    os.environ.setdefault("AIRFLOW_MLOPS_HOME", str(store / "home"))
    try:
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
        experiment = client.create_experiment("bench-validate")
        name = "bench"
        client.create_registered_model(name)
        client.set_registered_model_alias(name, "champion", new_version(client, name, experiment, 0.5))
        times: dict[str, list[float]] = {"plain": [], "stage": []}
        score = 0.5
        for round_ in range(args.repeats + 1):
            for side in ("plain", "stage"):
                score += 0.001
                version = new_version(client, name, experiment, score)
                started = time.perf_counter()
                promoted = plain(client, name, version) if side == "plain" else stage(store, name, version, round_)
                took = time.perf_counter() - started
                assert promoted == version and str(client.get_model_version_by_alias(name, "champion").version) \
                    == version, (side, promoted, version)
                if round_:  # round 0 warms both up
                    times[side].append(took)
        p, s = statistics.median(times["plain"]), statistics.median(times["stage"])
        print(f"{args.repeats} repeats, SQLite store")
        print(f"  plain script: {p:.3f} s (median); validate stage: {s:.3f} s (median)")
        print(f"  fixed cost {s - p:+.3f} s (goal <= {GOAL_FIXED_S} s), ratio {s / p:.2f}x: "
              f"{'met' if s - p <= GOAL_FIXED_S else 'NOT MET'}")
        return 0
    finally:
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
