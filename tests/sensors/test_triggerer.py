"""A deferrable KafkaLagSensor run by a real deployment: api-server, scheduler (LocalExecutor),
dag-processor and ``airflow triggerer`` as separate processes, the Kafka connection stored only in
the metadata DB (``airflow connections add``), the broker the embedded Kafka-protocol one."""

from __future__ import annotations

from tests.airflow_stack import LOADER
from tests.kafka_helpers import produce, shared_broker, unique


def test_deferred_kafka_sensor_finds_a_db_connection_in_the_real_triggerer(airflow_stack):
    broker = shared_broker()
    topic, group = unique("stack-events"), unique("stack-group")
    broker.create_topic(topic, 2)
    produce(broker, topic, [(f"k{i}".encode(), b"x") for i in range(4)])
    # In the metadata DB only: no AIRFLOW_CONN_* variable reaches any of the processes.
    airflow_stack.cli("connections", "add", "kafka_in_db", "--conn-type", "kafka",
                      "--conn-host", broker.bootstrap_servers)
    assert not any(k.startswith("AIRFLOW_CONN_") for k in airflow_stack.env)
    dag_id = "deferred_kafka_stack"
    (airflow_stack.dags / f"{dag_id}.py").write_text(f"""
# An Airflow DAG whose Kafka sensor defers to the triggerer.
from airflow.sdk import DAG
from airflow_mlops.sensors.kafka import KafkaLagSensor

with DAG({dag_id!r}, schedule=None):
    KafkaLagSensor(task_id="records", topics={topic!r}, group_id={group!r}, condition="new_records", threshold=4,
                   kafka_conn_id="kafka_in_db", deferrable=True, poke_interval=2, timeout=300)
""")
    airflow_stack.wait_for_dag(dag_id)
    states = airflow_stack.run_dag(dag_id)
    log = airflow_stack.task_log(dag_id, "records")
    assert states == {"records": "success"}, log[-3000:] + airflow_stack.output_tail()
    # The task handed its wait to the triggerer, which ran the trigger (its log lines come back
    # into the task's log) and resumed the task with the trigger's event.
    assert "(ID " in log and "starting" in log and "Trigger fired event" in log, log[-3000:]
    assert "'status': 'success'" in log and "trigger completed" in log, log[-3000:]
    # ... in the triggerer process: its own output shows the Kafka client it ran measuring this topic.
    triggerer = airflow_stack.output("triggerer")
    assert topic in triggerer, triggerer[-3000:]
    assert f"Kafka lag of group '{group}' on ['{topic}']" in log and "met at least 4 new record(s)" in log, log[-3000:]


def test_a_message_on_the_topic_queues_a_run_of_a_pipeline_with_a_kafka_trigger(airflow_stack):
    import json
    import time

    broker = shared_broker()
    topic = unique("labels")
    broker.create_topic(topic, 1)
    # A connection made for Airflow's own Kafka provider: librdkafka settings in the extra.
    airflow_stack.cli("connections", "add", "kafka_labels", "--conn-type", "kafka", "--conn-extra", json.dumps(
        {"bootstrap.servers": broker.bootstrap_servers, "group.id": unique("watcher"),
         "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}))
    dag_id = "retrain_on_labels"
    (airflow_stack.dags / "pipelines.py").write_text(LOADER)
    (airflow_stack.dags / "labels.yaml").write_text(f"""
id: {dag_id}
dag:
  trigger:
    kafka:
      topics: [{topic}]
      connection: kafka_labels
stages:
  preprocess: {{input: {{path: a.csv}}}}
""")
    airflow_stack.wait_for_dag(dag_id)
    airflow_stack.cli("dags", "unpause", dag_id)
    assert airflow_stack.cli_json("dags", "list-runs", dag_id) == []
    produce(broker, topic, [(b"batch-7", b'{"rows": 120}')])
    deadline = time.monotonic() + 180
    runs: list = []
    while time.monotonic() < deadline and not runs:
        time.sleep(3)
        runs = airflow_stack.cli_json("dags", "list-runs", dag_id)
    assert runs, "no run was queued\n" + airflow_stack.output_tail()
    assert runs[0]["run_id"].startswith("asset_triggered__"), runs
    triggerer = airflow_stack.output("triggerer")
    # The watcher in the triggerer fired on this very message (the default filter's event).
    assert "Trigger fired event" in triggerer, triggerer[-3000:]
    assert f"'topic': '{topic}', 'partition': 0, 'offset': 0, 'key': 'batch-7'" in triggerer, triggerer[-3000:]


def test_the_scheduler_fails_a_pipeline_run_before_its_start_date_with_a_note(airflow_stack):
    """A run triggered for a logical date before the pipeline's start_date (Airflow creates no task
    instance for it): the scheduler, through the package's listener, fails it as it starts, with a
    note that says why, instead of a green run with no work done."""
    import time

    dag_id = "dated_stack"
    (airflow_stack.dags / f"{dag_id}.yaml").write_text(f"""
id: {dag_id}
dag: {{schedule: "0 6 * * *", start_date: 2025-03-01}}
stages:
  preprocess: {{input: {{sklearn_dataset: iris}}}}
""")
    (airflow_stack.dags / "pipelines.py").write_text(LOADER)
    airflow_stack.wait_for_dag(dag_id)
    airflow_stack.cli("dags", "unpause", dag_id)
    run_id = "past_day"
    airflow_stack.cli("dags", "trigger", dag_id, "--run-id", run_id, "--logical-date", "2024-01-01T06:00:00+00:00")
    deadline, run = time.monotonic() + 180, {}
    while time.monotonic() < deadline:
        run = next((r for r in airflow_stack.cli_json("dags", "list-runs", dag_id) if r["run_id"] == run_id), {})
        if run.get("state") in ("success", "failed"):
            break
        time.sleep(3)
    assert run.get("state") == "failed", f"{run}\n{airflow_stack.output_tail()}"
    assert "No stage ran: the logical date 2024-01-01T06:00:00+00:00 is before the pipeline's start_date" \
        in airflow_stack.output("scheduler"), airflow_stack.output_tail()
