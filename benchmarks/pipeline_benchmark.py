"""A four-stage pipeline from trigger to success on a real deployment, against the same four
stages written as plain PythonOperators.

    python benchmarks/pipeline_benchmark.py [--repeats R]

Method: a real Airflow (api-server, scheduler with LocalExecutor, dag-processor, triggerer as
separate processes: tests/airflow_stack.py) with two DAGs: (a) a pipeline YAML — preprocess
(scikit-learn's breast-cancer data, a 3:1 split to Parquet) → train (``LogisticRegression``,
MLflow run, model logged and registered) → validate (a threshold, the ``champion`` alias) →
serve (batch scoring to Parquet); (b) a hand-written DAG of four ``PythonOperator`` tasks doing
the same work with the same libraries and the same MLflow calls, in the same SQLite store. Each is
triggered in turn, R times after one warm-up run each; the time of a run is from its trigger
(``run_after``) to its end (``end_date``), as Airflow records them. Prints the medians and the
ratio; goal: ≤ 1.2×.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL = 1.2
PIPELINE = """
id: bench_yaml
stages:
  preprocess:
    input: {sklearn_dataset: breast_cancer}
    split: {test_fraction: 0.25, seed: 7}
  train:
    estimator: sklearn.linear_model.LogisticRegression
    params: {max_iter: 5000}
    target: target
    metrics: [accuracy, roc_auc]
  validate:
    thresholds: {accuracy: {min: 0.5}}
  serve: {mode: batch}
"""
PLAIN_DAG = '''
# An Airflow DAG: the same four stages as plain PythonOperators (benchmarks/pipeline_benchmark.py).
import os
from pathlib import Path

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

STORE = f"sqlite:///{os.environ['AIRFLOW_MLOPS_HOME']}/mlflow.db"


def preprocess(run_id):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    folder = Path(os.environ["AIRFLOW_MLOPS_HOME"]) / "plain" / run_id.replace(":", "_").replace("+", "_")
    folder.mkdir(parents=True, exist_ok=True)
    frame = load_breast_cancer(as_frame=True).frame
    train, test = train_test_split(frame, test_size=0.25, random_state=7)
    paths = {"train_path": str(folder / "train.parquet"), "test_path": str(folder / "test.parquet")}
    train.to_parquet(paths["train_path"]); test.to_parquet(paths["test_path"])
    return paths


def train(ti):
    import mlflow, mlflow.sklearn, pandas as pd, skops.io as skops_io
    from importlib.metadata import version
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    paths = ti.xcom_pull(task_ids="preprocess")
    tr, te = pd.read_parquet(paths["train_path"]), pd.read_parquet(paths["test_path"])
    features = [c for c in tr.columns if c != "target"]
    model = LogisticRegression(max_iter=5000).fit(tr[features], tr["target"])
    metrics = {"accuracy": accuracy_score(te["target"], model.predict(te[features])),
               "roc_auc": roc_auc_score(te["target"], model.predict_proba(te[features])[:, 1])}
    mlflow.set_tracking_uri(STORE)
    mlflow.set_experiment("bench_plain")
    pins = [f"{n}=={version(n)}" for n in ("scikit-learn", "skops", "numpy", "scipy", "pandas", "cloudpickle")]
    with mlflow.start_run():
        mlflow.log_params({"max_iter": 5000, "features": len(features), "train_rows": len(tr)})
        mlflow.log_metrics(metrics)
        sample = te[features].head(1000)
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(sample, model.predict(sample)),
            input_example=sample.head(2), registered_model_name="bench_plain", pip_requirements=pins,
            skops_trusted_types=skops_io.get_untrusted_types(data=skops_io.dumps(model)))
    return {"model_version": str(info.registered_model_version), "metrics": metrics, **paths}


def validate(ti):
    import mlflow

    result = ti.xcom_pull(task_ids="train")
    client = mlflow.MlflowClient(tracking_uri=STORE)
    metrics = client.get_run(client.get_model_version("bench_plain", result["model_version"]).run_id).data.metrics
    assert metrics["accuracy"] >= 0.5
    client.set_registered_model_alias("bench_plain", "champion", result["model_version"])
    client.set_model_version_tag("bench_plain", result["model_version"], "airflow_mlops.decision", "promoted")
    return {"model_uri": f"models:/bench_plain/{result['model_version']}", **result}


def serve(ti):
    import mlflow, pandas as pd

    result = ti.xcom_pull(task_ids="validate")
    mlflow.set_tracking_uri(STORE)
    model = mlflow.pyfunc.load_model(result["model_uri"])
    df = pd.read_parquet(result["test_path"])
    out = df.copy()
    out["prediction"] = model.predict(df.drop(columns="target"))
    path = Path(result["test_path"]).with_name("predictions.parquet")
    out.to_parquet(path)
    return {"predictions_path": str(path), "rows": len(out)}


with DAG("bench_plain", schedule=None):
    steps = [PythonOperator(task_id="preprocess", python_callable=preprocess, op_kwargs={"run_id": "{{ run_id }}"}),
             PythonOperator(task_id="train", python_callable=train),
             PythonOperator(task_id="validate", python_callable=validate),
             PythonOperator(task_id="serve", python_callable=serve)]
    for a, b in zip(steps, steps[1:]):
        a >> b
'''
LOADER = ("# Airflow DAGs from the pipeline YAMLs in this folder\n"
          "from airflow_mlops import load_pipelines\n\nload_pipelines(globals())\n")


def run_once(stack, dag_id: str, run_id: str, timeout: float = 600) -> float:
    stack.cli("dags", "trigger", dag_id, "--run-id", run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = {r["run_id"]: r for r in stack.cli_json("dags", "list-runs", dag_id)}
        run = runs.get(run_id, {})
        if run.get("state") == "success" and run.get("end_date"):
            return (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["run_after"])).total_seconds()
        if run.get("state") == "failed":
            raise RuntimeError(f"{dag_id} {run_id} failed\n{stack.output_tail()}")
        time.sleep(1)
    raise TimeoutError(f"{dag_id} {run_id} did not finish in {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from tests.airflow_stack import AirflowStack

    stack = AirflowStack(Path(tempfile.mkdtemp(prefix="pipeline-bench-")))
    stack.start()
    try:
        (stack.dags / "bench_yaml.yaml").write_text(PIPELINE)
        (stack.dags / "pipelines.py").write_text(LOADER)
        (stack.dags / "bench_plain.py").write_text(PLAIN_DAG)
        for dag_id in ("bench_yaml", "bench_plain"):
            stack.wait_for_dag(dag_id)
            stack.cli("dags", "unpause", dag_id)
        times: dict[str, list[float]] = {"bench_yaml": [], "bench_plain": []}
        for round_ in range(args.repeats + 1):
            for dag_id in ("bench_plain", "bench_yaml"):
                took = run_once(stack, dag_id, f"bench_{round_}")
                print(f"  round {round_} {dag_id}: {took:.1f} s{' (warm-up, not counted)' if not round_ else ''}")
                if round_:
                    times[dag_id].append(took)
        p, s = statistics.median(times["bench_plain"]), statistics.median(times["bench_yaml"])
        print(f"trigger to success, medians of {args.repeats}: four PythonOperators {p:.1f} s; "
              f"the YAML pipeline {s:.1f} s")
        print(f"ratio: {s / p:.2f}x (goal <= {GOAL}x): {'met' if s / p <= GOAL else 'NOT MET'}")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
