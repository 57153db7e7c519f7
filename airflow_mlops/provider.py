"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from airflow_mlops import __version__


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-mlops",
        "name": "MLOps",
        "description": "YAML-driven MLOps pipelines (preprocess → train → validate → serve) on batch, "
        "Spark or Kubernetes backends, tracked in MLflow.",
        "versions": [__version__],
        "extra-links": ["airflow_mlops.backends.links.MlflowRunLink"],
        "connection-types": [
            {"connection-type": "mlflow", "hook-class-name": "airflow_mlops.hooks.mlflow_conn.MlflowConnectionHook"},
            # Not "kafka": apache-airflow-providers-apache-kafka owns that type. Our operators read
            # connections of either type (see airflow_mlops.hooks.kafka).
            {"connection-type": "mlops_kafka", "hook-class-name": "airflow_mlops.hooks.kafka.KafkaConnectionHook"},
        ],
    }
