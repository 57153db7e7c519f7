"""``dag.trigger.kafka`` in a pipeline YAML: validated at its lines, built into an Asset whose
AssetWatcher runs the official Kafka provider's KafkaMessageQueueTrigger. (That a message then
queues a run in a real deployment is tests/sensors/test_triggerer.py.)"""

from __future__ import annotations

from tests.helpers import write


def dagbag(folder):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))


def test_a_kafka_trigger_becomes_an_asset_watched_by_the_official_providers_trigger(dags_folder):
    from airflow.providers.apache.kafka.triggers.msg_queue import KafkaMessageQueueTrigger

    write(dags_folder, "labels.yaml", """
        id: retrain_on_labels
        dag:
          trigger:
            kafka:
              topics: [labels.new]
              connection: kafka_labels
        params:
          rows: {default: 10}
        stages:
          preprocess: {input: {path: a.csv}}
        """)
    bag = dagbag(dags_folder)
    assert bag.import_errors == {}
    dag = bag.dags["retrain_on_labels"]
    (asset,) = dag.timetable.asset_condition.objects  # schedule=[asset]: an AssetAll of one
    assert asset.name == "retrain_on_labels.kafka_trigger"
    (watcher,) = asset.watchers
    assert watcher.name == "retrain_on_labels.kafka_watcher"
    trigger = watcher.trigger
    assert isinstance(trigger, KafkaMessageQueueTrigger)
    kwargs = trigger.serialize()[1]
    assert kwargs["topics"] == ["labels.new"] and kwargs["kafka_config_id"] == "kafka_labels"
    assert kwargs["apply_function"] == "airflow_mlops.kafka.watch.any_message"


def test_kafka_trigger_errors_point_at_their_lines(dags_folder):
    write(dags_folder, "bad.yaml", """
        id: bad_trigger
        dag:
          trigger:
            kafka:
              topics: ["no spaces allowed"]
              conection: kafka_default
        stages:
          preprocess: {input: {path: a.csv}}
        """)
    write(dags_folder, "both.yaml", """
        id: both
        dag:
          schedule: "@daily"
          trigger: {kafka: {topics: [labels]}}
        stages:
          preprocess: {input: {path: a.csv}}
        """)
    write(dags_folder, "filter.yaml", """
        id: bad_filter
        dag:
          trigger:
            kafka:
              topics: [labels]
              filter: "no_such_module_xyz:accept"
        stages:
          preprocess: {input: {path: a.csv}}
        """)
    bag = dagbag(dags_folder)
    bad = bag.dags["bad_trigger"].doc_md
    path = dags_folder / "bad.yaml"
    assert f"{path}:5:16 dag.trigger.kafka.topics.0:" in bad, bad
    assert f"{path}:6:7 dag.trigger.kafka.conection:" in bad and "did you mean 'connection'" in bad, bad
    both = bag.dags["both"].doc_md
    assert "give one of 'schedule', 'schedule_on_assets' and 'trigger', not 'schedule' and 'trigger'" in both, both
    bad_filter = bag.dags["bad_filter"].description
    assert f"{dags_folder / 'filter.yaml'}:6:15 dag.trigger.kafka.filter: cannot resolve callback" in bad_filter, \
        bad_filter
