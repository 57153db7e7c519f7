"""Every setting the package reads from its environment, in one table: the docs site's
configuration page is generated from it (``scripts/gen_docs.py``), and a test
(``tests/test_docs.py``) fails when the code reads an ``AIRFLOW_MLOPS_*`` variable or an
``[mlops]`` option that is not here. Pure data: nothing is read at import.

Pipeline YAML fields and operator arguments are not settings: their reference is generated from
the pydantic models and the docstrings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    name: str  # the variable, or "[mlops] option" for Airflow's configuration
    default: str
    read_by: str  # which process reads it
    description: str


SETTINGS: tuple[Setting, ...] = (
    Setting("AIRFLOW_MLOPS_HOME", "$AIRFLOW_HOME/mlops, else ~/airflow/mlops", "workers, pods, the CLI, the api-server",
            "Where stages write when a pipeline names no data_dir, and the local MLflow store "
            "(mlflow.db) when no tracking URI is set."),
    Setting("AIRFLOW_MLOPS_PROFILE", "unset", "the DAG processor and workers (parsing DAG files), the CLI",
            "The pipeline profile pipelines are built with (profiles: in a pipeline or a _defaults.yaml); it wins "
            "over the Airflow Variable mlops_profile. Unset, and no Variable: each pipeline as written. Give every "
            "component that parses DAG files the same value."),
    Setting("[mlops] tracking_uri", "unset", "the api-server (UI plugin)",
            "The MLflow store the Models and Drift pages read (AIRFLOW__MLOPS__TRACKING_URI)."),
    Setting("[mlops] conn_id", "unset", "the api-server (UI plugin)",
            "An Airflow connection (type mlflow) for the store the pages read, instead of tracking_uri."),
    Setting("[mlops] mlflow_ui_url", "unset", "the api-server and workers",
            "Where \"MLflow run\" links point (AIRFLOW__MLOPS__MLFLOW_UI_URL), on the pages and on the "
            "train task's button; a pipeline's mlflow.ui_url wins for its tasks."),
    Setting("AIRFLOW_MLOPS_MLFLOW_UI_URL", "unset", "the api-server and workers",
            "The same address as [mlops] mlflow_ui_url, for processes without Airflow's configuration."),
    Setting("AIRFLOW_MLOPS_MLFLOW_TIMEOUT", "60", "workers, pods",
            "Seconds one MLflow request may take before the stage fails it as a tracking-server fault "
            "(retryable)."),
    Setting("AIRFLOW_MLOPS_BACKUP_TIMEOUT", "60", "BackupOperator, RestoreOperator",
            "Seconds one request to an http(s) or s3 backup target may take."),
    Setting("AIRFLOW_MLOPS_KAFKA_CONFIG", "{}", "python -m airflow_mlops.stream (a stream pod)",
            "Kafka client settings as JSON (kafka-python or librdkafka names) when --kafka-config is not "
            "given: how a stream serving pod gets its connection's settings."),
    Setting("AIRFLOW_MLOPS_CHECKPOINT_DIR", "set by the package", "your training code",
            "Set for a training callable: the folder to write checkpoints into, kept across retries of the "
            "same task instance."),
    Setting("AIRFLOW_MLOPS_PARAMS", "set by the package", "your training code",
            "Set for a training subprocess: the rendered hyperparameters as JSON."),
)

# Names in the code that look like settings and are not (a log line's marker).
NOT_SETTINGS = frozenset({"AIRFLOW_MLOPS_RESULT"})
