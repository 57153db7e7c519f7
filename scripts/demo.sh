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
run_dag() {  # run_dag DAG_ID MODEL_NAME DESCRIPTION
  echo "==> running DAG $1: $3 (log: .demo/$1.log)"
  if ! .venv/bin/airflow dags test "$1" > ".demo/$1.log" 2>&1; then
    grep -E "ERROR|Error|error" ".demo/$1.log" | tail -20
    echo "The DAG run failed; the full log is .demo/$1.log" >&2
    exit 1
  fi
  grep -E "\] (Read|Wrote|Metrics|Registered|Model '|Scoring|Scored|Data-quality|Running on)" ".demo/$1.log" \
    | sed -E 's/^[^ ]+ \[[a-z ]+\] /    /; s/ +\[airflow[^]]*\] loc=.*$//' || true
  .venv/bin/python scripts/demo_summary.py "$1" "$2"
}

run_dag breast_cancer breast_cancer_classifier "preprocess → train → validate → serve in the worker"
run_dag iris_spark iris_spark "Spark SQL features + quality gates → train → validate → Spark scoring (embedded local Spark)"
.venv/bin/python scripts/demo_summary.py --uis
