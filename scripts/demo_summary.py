"""Print where the demo's results are: MLflow run, model version and alias, predictions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import pandas as pd


def main(pipeline_id: str, model_name: str) -> None:
    home = Path(os.environ["AIRFLOW_MLOPS_HOME"])
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias(model_name, "champion")
    run = client.get_run(champion.run_id)
    latest = max((home / "data" / pipeline_id / "serve").glob("*/predictions.parquet"), key=lambda p: p.stat().st_mtime)
    predictions = pd.read_parquet(latest)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(run.data.metrics.items()) if "/" not in k)
    m, tags = run.data.metrics, run.data.tags
    gpu = "yes" if tags.get("airflow_mlops.gpu.available") == "true" else f"none ({tags.get('airflow_mlops.gpu.reason')})"
    print(f"""
==> {pipeline_id}: done, end to end
  MLflow run       {champion.run_id}  ({metrics})
  model version    {model_name} version {champion.version}, alias 'champion'
  training cost    {m['cost/total']:.4f} for {m['cost/wall_seconds']:.1f} s ({m['cost/cpu_hours']:.4f} CPU-h, \
{m['cost/memory_gib_hours']:.4f} GiB-h, {m['cost/gpu_hours']:.4f} GPU-h); GPUs: {gpu}
  predictions      {latest}
                   {len(predictions)} rows, {int((predictions['prediction'] == predictions['target']).sum())} match the label
""")


def where_to_look() -> None:
    home = Path(os.environ["AIRFLOW_MLOPS_HOME"])
    repo = Path.cwd()
    print(f"""==> where to look
  MLflow UI        .venv/bin/mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'} --port 5000
                   then open http://127.0.0.1:5000
  cost by stage    .venv/bin/airflow-mlops cost <DAG run id> --dag breast_cancer --tracking-uri sqlite:///{home / 'mlflow.db'}
                   (run ids: .venv/bin/airflow dags list-runs breast_cancer, with the Airflow variables below)
  Airflow UI       AIRFLOW_HOME={repo}/.demo/airflow AIRFLOW__CORE__DAGS_FOLDER={repo}/dags \\
                   AIRFLOW_MLOPS_HOME={home} AIRFLOW__CORE__LOAD_EXAMPLES=False \\
                   AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True .venv/bin/airflow standalone
                   then open http://127.0.0.1:8080/dags
""")


if __name__ == "__main__":
    if sys.argv[1:] == ["--uis"]:
        where_to_look()
    else:
        main(*sys.argv[1:3])
