"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point.

Connection forms are declared here (``ui-field-behaviour``, what Airflow 3's connection editor
reads without importing flask-appbuilder or wtforms), from each hook's ``get_ui_field_behaviour()``:
the hook stays the one place a form is written, and Airflow 3 no longer calls it itself.

The description ends with which extras are installed here and which are not, so
``airflow providers list`` / ``airflow providers get airflow-mlops`` show it; ``extras`` holds the
same as data (Airflow prints it with ``providers get --full``). Checking costs one
``importlib.util.find_spec`` per module: nothing is imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from airflow_mlops import __version__
from airflow_mlops._core import extras

CONNECTION_TYPES = {
    "mlflow": "airflow_mlops.hooks.mlflow_conn.MlflowConnectionHook",
    # Not "kafka": apache-airflow-providers-apache-kafka owns that type. Our operators read
    # connections of either type (see airflow_mlops.hooks.kafka).
    "mlops_kafka": "airflow_mlops.hooks.kafka.KafkaConnectionHook",
}


def connection_type(conn_type: str, hook_class: str) -> dict[str, Any]:
    """One ``connection-types`` entry: the hook, its name and its form (``conn-fields``: extra
    fields; ``hidden-fields``, ``relabeling``, ``placeholders``: the kebab-case keys provider info
    uses)."""
    module, _, name = hook_class.rpartition(".")
    hook = getattr(import_module(module), name)
    entry: dict[str, Any] = {"connection-type": conn_type, "hook-class-name": hook_class,
                             "hook-name": getattr(hook, "hook_name", conn_type)}
    if getattr(hook, "conn_fields", None):
        entry["conn-fields"] = dict(hook.conn_fields)  # extra fields of the form (Airflow 3's editor)
    behaviour = hook.get_ui_field_behaviour() if hasattr(hook, "get_ui_field_behaviour") else None
    if behaviour:
        entry["ui-field-behaviour"] = {"hidden-fields": list(behaviour.get("hidden_fields", [])),
                                       "relabeling": dict(behaviour.get("relabeling", {})),
                                       "placeholders": dict(behaviour.get("placeholders", {}))}
    return entry


def get_provider_info() -> dict:
    # Airflow first: importing it discovers providers (this function included), so a hook module
    # imported before Airflow would be found half-initialised by that nested call.
    import airflow  # noqa: F401

    return {
        "package-name": "airflow-mlops",
        "name": "MLOps",
        "description": "YAML-driven MLOps pipelines (preprocess → train → validate → serve) on batch, "
        f"Spark or Kubernetes backends, tracked in MLflow. {extras.describe()}.",
        "versions": [__version__],
        "extras": {name: {"installed": ok, "for": extras.EXTRAS[name].for_, "install": extras.install_command(name)}
                   for name, ok in extras.state().items()},
        "extra-links": ["airflow_mlops.backends.links.MlflowRunLink"],
        "connection-types": [connection_type(t, hook) for t, hook in CONNECTION_TYPES.items()],
    }
