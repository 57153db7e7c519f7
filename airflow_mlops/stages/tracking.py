"""MLflow set-up shared by the stages (imported only when a stage runs)."""

from __future__ import annotations

from typing import Any

from airflow_mlops.stages.context import MlflowTarget


def use_store(target: MlflowTarget) -> None:
    """Point MLflow's tracking and registry at the target store.

    Both, always: MLflow keeps them as process-wide globals, and a registry URI left over from an
    earlier task in the same process would register the model in the wrong store.
    """
    import mlflow

    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_registry_uri(target.tracking_uri)


def use_experiment(target: MlflowTarget) -> str:
    """Point MLflow at the target store and return the experiment id, creating it if needed."""
    use_store(target)
    return experiment_id(client(target), target)


def experiment_id(mlflow_client: Any, target: MlflowTarget) -> str:
    """The target experiment's id, through this client (MLflow's process-wide URIs untouched).

    The artifact location is set explicitly on creation: MLflow's default (``./mlruns``) is relative
    to the worker's current directory, which differs between workers.
    """
    import mlflow

    experiment = mlflow_client.get_experiment_by_name(target.experiment)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(target.experiment, artifact_location=target.artifact_location)
    except mlflow.exceptions.MlflowException:
        # Another task created it between our lookup and create: use theirs.
        experiment = mlflow_client.get_experiment_by_name(target.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


def client(target: MlflowTarget) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
