"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point.

The description ends with which extras are installed here and which are not, so
``airflow providers list`` / ``airflow providers get airflow-mlops`` show it; ``extras`` holds the
same as data (Airflow prints it with ``providers get --full``). Checking costs one
``importlib.util.find_spec`` per module: nothing is imported.
"""

from __future__ import annotations

from airflow_mlops import __version__
from airflow_mlops._core import extras


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-mlops",
        "name": "MLOps",
        "description": "YAML-driven MLOps pipelines (preprocess → train → validate → serve) on batch, "
        f"Spark or Kubernetes backends, tracked in MLflow. {extras.describe()}.",
        "versions": [__version__],
        "extras": {name: {"installed": ok, "for": extras.EXTRAS[name].for_, "install": extras.install_command(name)}
                   for name, ok in extras.state().items()},
        "extra-links": ["airflow_mlops.backends.links.MlflowRunLink"],
        "connection-types": [
            {"connection-type": "mlflow", "hook-class-name": "airflow_mlops.hooks.mlflow_conn.MlflowConnectionHook"},
            {"connection-type": "kafka", "hook-class-name": "airflow_mlops.hooks.kafka.KafkaConnectionHook"},
        ],
    }
