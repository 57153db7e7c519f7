#!/usr/bin/env bash
# The demo: install, then run the breast_cancer pipeline end to end through Airflow on embedded
# defaults (SQLite Airflow, SQLite MLflow) with everything kept under .demo/ in this folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh

export AIRFLOW_HOME="$PWD/.demo/airflow"
export AIRFLOW_MLOPS_HOME="$PWD/.demo/mlops"
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
unset MLFLOW_TRACKING_URI
mkdir -p "$AIRFLOW_HOME"

echo "==> checking the example pipelines"
.venv/bin/airflow-mlops validate example_configs
echo "==> preparing the Airflow metadata database (SQLite, $AIRFLOW_HOME)"
.venv/bin/airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -30 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
echo "==> running DAG breast_cancer: preprocess → train → validate → serve (log: .demo/dags-test.log)"
if ! .venv/bin/airflow dags test breast_cancer > .demo/dags-test.log 2>&1; then
  grep -E "ERROR|Error|error" .demo/dags-test.log | tail -20
  echo "The DAG run failed; the full log is .demo/dags-test.log" >&2
  exit 1
fi
grep -E "\] (Read|Wrote|Metrics|Registered|Model '|Scoring)" .demo/dags-test.log | sed -E 's/^[^ ]+ \[[a-z ]+\] /    /; s/ +\[airflow_mlops.*$//' || true
.venv/bin/python scripts/demo_summary.py breast_cancer breast_cancer_classifier
