"""MLflow credentials for pods, by reference only.

The operator resolves the MLflow connection once (``hooks.mlflow.resolve_target``); its login and
password are ``MlflowTarget.credentials`` (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``). A pod cannot read Airflow's connections, and a
plain env value would show in the pod spec (``kubectl get pod -o yaml``, events, the scheduler's
logs). So the worker writes them into a Secret in the pod's namespace, named
``<pipeline>-<connection>-credentials`` and labelled with the pipeline and the connection, and
the pods get ``valueFrom.secretKeyRef`` entries pointing at it. The Secret is created, or
replaced when it exists, each time a pod is started: a changed password reaches the next pod.
"""

from __future__ import annotations

from typing import Any

from airflow_mlops._core.names import label_value, object_name, pod_labels
from airflow_mlops.spec.models import KubernetesSettings, MlflowSettings, SecretEnv

CONNECTION_LABEL = "airflow-mlops/connection"


def credentials_secret_name(pipeline_id: str, conn_id: str) -> str:
    """``<pipeline>-<connection>-credentials`` as a DNS name (see ``object_name``)."""
    return object_name(pipeline_id, conn_id, "credentials")


def credentials_secret(pipeline_id: str, conn_id: str, namespace: str, values: dict[str, str]) -> dict[str, Any]:
    """The Secret manifest holding ``values`` (ENV_NAME → value), as a dict."""
    import base64

    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": credentials_secret_name(pipeline_id, conn_id), "namespace": namespace,
                     "labels": {**pod_labels(pipeline_id), CONNECTION_LABEL: label_value(conn_id)}},
        "data": {name: base64.b64encode(value.encode()).decode() for name, value in values.items()},
    }


def credentials_connection(mlflow: MlflowSettings) -> str | None:
    """The MLflow connection the tracking URI comes from, if it does (the precedence of
    ``hooks.mlflow.resolve_target``: an explicit ``tracking_uri`` wins over ``conn_id``)."""
    return None if mlflow.tracking_uri else mlflow.conn_id


def write_credentials_secret(api_client: Any, namespace: str, pipeline_id: str, conn_id: str,
                             values: dict[str, str]) -> dict[str, SecretEnv]:
    """Create the Secret holding ``values``, or replace it when it exists; returns ENV_NAME →
    {secret, key} for a pod's environment. Raises ``kubernetes.client.exceptions.ApiException``
    when the API server refuses (the worker's Role needs get/create/update on secrets:
    ``airflow-mlops manifests`` grants them)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    doc = credentials_secret(pipeline_id, conn_id, namespace, values)
    name = doc["metadata"]["name"]
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespaced_secret(namespace, doc)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, doc)
    return {env: SecretEnv(secret=name, key=env) for env in values}


def mlflow_secret_env(k: KubernetesSettings, pipeline_id: str, mlflow: MlflowSettings,
                      values: dict[str, str]) -> dict[str, SecretEnv]:
    """The MLflow connection's credentials ``values`` (``MlflowTarget.credentials``, as the
    operator resolved them: the connection is not read again), written to their Secret in
    ``k.namespace``, as references for a pod's environment; ``{}`` (and no cluster call) when the
    tracking URI does not come from a connection or the connection has no login. The API server
    failing raises ``DependencyFailed`` (``api.api_failure``; AirflowFailException when it is not
    retryable)."""
    conn_id = credentials_connection(mlflow)
    if not conn_id or not values:
        return {}
    return connection_secret_env(k, pipeline_id, conn_id, values, "MLflow credentials")


def kafka_secret_env(k: KubernetesSettings, pipeline_id: str, conn_id: str, config: dict[str, Any]) -> dict[str, SecretEnv]:
    """A serve stage's Kafka client config (``StageContext.kafka``, secrets included), as JSON in
    the Kafka connection's Secret under ``KAFKA_CONFIG_ENV``, referenced from the pod's
    environment: the pod's ``StageContext.from_dict`` reads it back. Failures as
    ``mlflow_secret_env``."""
    import json

    from airflow_mlops._core.context import KAFKA_CONFIG_ENV

    return connection_secret_env(k, pipeline_id, conn_id, {KAFKA_CONFIG_ENV: json.dumps(config)},
                                 "Kafka client config")


def connection_secret_env(k: KubernetesSettings, pipeline_id: str, conn_id: str, values: dict[str, str],
                          what: str) -> dict[str, SecretEnv]:
    """``values`` written to the connection's Secret (``write_credentials_secret``), as references;
    the API server failing raises ``DependencyFailed`` (AirflowFailException when not retryable),
    naming ``what`` and the Secret."""
    import logging

    from airflow_mlops._core.outcome import for_airflow
    from airflow_mlops.backends.kubernetes._podspec import api_client
    from airflow_mlops.backends.kubernetes.api import api_address, api_failure

    client = None
    try:
        client = api_client(k)
        return write_credentials_secret(client, k.namespace, pipeline_id, conn_id, values)
    except Exception as exc:
        failed = api_failure(
            exc, address=api_address(client), api_timeout=k.api_timeout.total_seconds(),
            during=f"writing the {what} Secret {k.namespace}/{credentials_secret_name(pipeline_id, conn_id)}",
            kept="no pod was started; the Secret is written again (created or replaced) by the next try")
        if failed is None:
            raise
        raise for_airflow(failed, logging.getLogger(__name__)) from exc
