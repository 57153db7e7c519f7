"""Every connection id a pipeline or an operator names is looked up before it is used: a missing
one fails the task at once, without retries, naming the id, the setting and where Airflow looked.
Before, a typo'd ``spark.conn_id`` made Airflow's Spark hook log "defaulting to yarn" and fail
with a YARN error, retried; a typo'd bucket connection went on with the worker's credentials."""

from __future__ import annotations

import pytest

from airflow_mlops._core.compat import AirflowFailException


def context(tmp_path, **kwargs):
    from airflow_mlops._core.context import MlflowTarget, StageContext

    return StageContext(pipeline_id="p", stage_name="s", run_key="r", data_dir=str(tmp_path / "data"),
                        mlflow=MlflowTarget(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="p",
                                            registered_model="p"), **kwargs)


def test_a_missing_spark_connection_fails_naming_it_before_anything_is_submitted(tmp_path):
    from airflow_mlops.backends.spark.operator import SparkStageOperator
    from airflow_mlops.spec.models import PreprocessStage

    op = SparkStageOperator(task_id="features", stage_name="features",
                            stage=PreprocessStage(input={"sklearn_dataset": "iris"}), spark={"conn_id": "spark_clustr"})
    op.stage_context = lambda _context: context(tmp_path)
    with pytest.raises(AirflowFailException) as err:
        op.execute({"run_id": "r"})
    assert str(err.value).startswith(
        "the Airflow connection 'spark_clustr' (spark.conn_id) does not exist: Airflow looked in its secrets backends, "
        "the environment (AIRFLOW_CONN_SPARK_CLUSTR) and the metadata database")
    assert "or leave spark.conn_id out to use the embedded session (spark.master)" in str(err.value)


def test_a_missing_mlflow_connection_fails_the_stage_without_retry(tmp_path):
    from airflow_mlops.backends.stage import StageOperator
    from airflow_mlops.spec.models import MlflowSettings, ValidateStage

    op = StageOperator(task_id="validate", stage_name="validate", stage=ValidateStage(),
                       mlflow=MlflowSettings(conn_id="mlflow_prdo"))

    class TI:
        dag_id, task_id, try_number = "p", "validate.run", 1

        def xcom_pull(self, task_ids):
            return {}
    with pytest.raises(AirflowFailException, match=r"^the Airflow connection 'mlflow_prdo' \(mlflow.conn_id\) does not "
                                                    r"exist"):
        op.execute({"run_id": "r", "ti": TI()})


def test_kubernetes_and_kafka_connections_are_looked_up_first():
    from airflow_mlops._core.connections import ConnectionNotFound
    from airflow_mlops.backends.kubernetes._podspec import kubernetes_hook
    from airflow_mlops.hooks.kafka import kafka_config_from_connection
    from airflow_mlops.spec.models import KubernetesSettings

    with pytest.raises(ConnectionNotFound, match=r"'k8s_prod' \(kubernetes.conn_id\) does not exist"):
        kubernetes_hook(KubernetesSettings(conn_id="k8s_prod", image="x"))
    with pytest.raises(ConnectionNotFound, match=r"'kafka_lables' \(the Kafka connection \(kafka_conn_id\)\) does not"):
        kafka_config_from_connection("kafka_lables")


def test_an_existing_connection_passes(monkeypatch):
    from airflow_mlops._core.connections import check

    monkeypatch.setenv("AIRFLOW_CONN_SPARK_CLUSTER", "spark://127.0.0.1:7077")
    assert check("spark_cluster", "spark.conn_id") == "spark_cluster"
    assert check(None, "spark.conn_id") is None
