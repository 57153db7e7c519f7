"""Every Airflow connection a pipeline or an operator names is looked up before it is used.

The providers' hooks are lenient with a connection id that does not exist: the Spark hook logs
"defaulting to yarn" at info level and submits there, the AWS hook carries on with the worker's
own credentials or anonymously. A typo then changes what runs, and the error that follows (a YARN
configuration error, an access denied) never names the missing connection, and retries repeat
it. Here a named connection that does not exist fails the task at once, without retries, naming
the id, the setting it came from and where Airflow looked.
"""

from __future__ import annotations

from typing import Any

from airflow_mlops._core.errors import StageFailed


class ConnectionNotFound(StageFailed):
    """A connection id the YAML or an operator names does not exist (no retry can create it)."""


_FOUND: set[str] = set()


def connection(conn_id: str, setting: str, *, instead: str | None = None) -> Any:
    """Airflow's connection ``conn_id`` (``airflow.sdk.Connection``), named by ``setting``
    (``spark.conn_id``, ``data_conn_id``...). Raises ConnectionNotFound when Airflow has none by
    that id; ``instead`` says what leaving the setting out would use."""
    from airflow.sdk import Connection

    try:
        found = Connection.get(conn_id)
    except Exception as exc:
        if type(exc).__name__ != "AirflowNotFoundException":  # the SDK's or (Airflow 3.1) core's
            raise
        hint = f"; or leave {setting} out to use {instead}" if instead else ""
        raise ConnectionNotFound(
            f"the Airflow connection '{conn_id}' ({setting}) does not exist: Airflow looked in its secrets backends, "
            f"the environment (AIRFLOW_CONN_{conn_id.upper()}) and the metadata database; create it (Admin → "
            f"Connections, or airflow connections add {conn_id} ...) or correct the id{hint}") from None
    _FOUND.add(conn_id)
    return found


def check(conn_id: str | None, setting: str, *, instead: str | None = None) -> str | None:
    """``conn_id`` once it is known to exist (None passes: the setting was left out)."""
    if conn_id and conn_id not in _FOUND:
        connection(conn_id, setting, instead=instead)
    return conn_id
