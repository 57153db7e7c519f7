#!/usr/bin/env bash
# The demo: install, then run the example pipelines end to end through Airflow on embedded
# defaults (SQLite Airflow, SQLite MLflow, local Spark, the embedded Kafka-protocol broker), with
# everything kept under .demo/ in this folder.
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
run_dag() {  # run_dag DAG_ID DESCRIPTION
  echo "==> running DAG $1: $2 (log: .demo/$1.log)"
  if ! .venv/bin/airflow dags test "$1" > ".demo/$1.log" 2>&1; then
    grep -E "ERROR|Error|error" ".demo/$1.log" | tail -20
    echo "The DAG run failed; the full log is .demo/$1.log" >&2
    exit 1
  fi
  grep -E "\] (Read|Wrote|Metrics|Registered|Model '|Scoring|Scored|Data-quality|Running on|Train stage cost|Streaming|Stream)" ".demo/$1.log" \
    | sed -E 's/^[^ ]+ \[[a-z ]+\] /    /; s/ +\[airflow[^]]*\] loc=.*$//' || true
}

run_dag breast_cancer "preprocess → train → validate → serve in the worker"
.venv/bin/python scripts/demo_summary.py breast_cancer breast_cancer_classifier
run_dag iris_spark "Spark SQL features + quality gates → train → validate → Spark scoring (embedded local Spark)"
.venv/bin/python scripts/demo_summary.py iris_spark iris_spark

echo "==> starting the embedded Kafka-protocol broker (tansu, in memory; log: .demo/broker.log)"
.venv/bin/python -m airflow_mlops.kafka.broker --topic tumours:2 --topic tumours.scored:2 --topic tumours.dlq \
  > .demo/broker.log 2>&1 &
broker_pid=$!
trap 'kill $broker_pid 2>/dev/null || true' EXIT
for _ in $(seq 60); do grep -q "^bootstrap servers:" .demo/broker.log && break; sleep 0.5; done
bootstrap=$(sed -n 's/^bootstrap servers: \([^ ]*\).*/\1/p' .demo/broker.log)
[ -n "$bootstrap" ] || { cat .demo/broker.log; echo "The broker did not start" >&2; exit 1; }
# A connection as Airflow's own Kafka provider makes it: librdkafka settings in the extra.
export AIRFLOW_CONN_KAFKA_DEFAULT="{\"conn_type\": \"kafka\", \"extra\": {\"bootstrap.servers\": \"$bootstrap\"}}"
.venv/bin/python scripts/demo_stream.py produce "$bootstrap"
run_dag breast_cancer_stream "score the 'tumours' topic with the champion, into 'tumours.scored' (embedded broker)"
.venv/bin/python scripts/demo_stream.py report "$bootstrap"
.venv/bin/python scripts/demo_summary.py --uis
