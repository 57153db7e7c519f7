"""Where a pipeline's MLflow store is, resolved in the worker when a task runs.

Every tracking URI, whatever its source, obeys one rule (``_core.tracking_uri.store_problem``): a
local store is named by an absolute path. A URI that breaks it fails the task without retries,
naming its source, before anything is written.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from airflow_mlops._core.context import MlflowTarget
from airflow_mlops._core.tracking_uri import (
    TrackingUriError,
    checked_tracking_uri,
    default_tracking_uri,
    local_artifact_location,
    redacted,
    resolve_tracking_uri,
)
from airflow_mlops.spec.models import MlflowSettings

# Where they were first defined: callers keep importing them from here.
__all__ = ["TrackingUriError", "checked_tracking_uri", "connection_target", "redacted", "resolve_target",
           "resolve_tracking_uri"]

CONN_TYPE = "mlflow"
_WEB = ("http", "https")


def connection_tracking_uri(conn: Any) -> tuple[str, str | None, str | None]:
    """(tracking URI, username, password) of an Airflow connection, however its form was filled:

    - host = a whole URI: ``http://mlflow:5000``, ``https://mlflow.example.com/tracking``,
      ``sqlite:////srv/mlflow/mlflow.db``, ``postgresql://…``, ``databricks`` (the port field is
      added to an http(s) URI that has none);
    - host = a host name, maybe with a path (``mlflow.example.com/tracking``), completed by the
      port field and the scheme: the schema field when it says ``http``/``https``, else the
      connection type when it is ``http``/``https``, else ``http``;
    - a URI-style connection (``AIRFLOW_CONN_X='https://mlflow.example.com:443/tracking'``):
      Airflow puts the path into the schema field, so a schema other than ``http``/``https`` is
      the path;
    - connection type ``sqlite``: the host (or, URI-style, the schema) is the database path.

    Login and password (or credentials written into an http(s) host URI) are returned apart,
    never left in the URI: they become ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``.
    """
    host = (conn.host or "").strip()
    schema = (conn.schema or "").strip()
    conn_type = (conn.conn_type or "").lower()
    login, password = conn.login or None, conn.password or None
    if conn_type == "sqlite" and "://" not in host:
        path = host or schema
        if not path:
            raise ValueError(f"SQLite connection '{conn.conn_id}' names no database file (host)")
        return f"sqlite:///{path}", None, None
    scheme, colon, rest = host.partition(":")
    if "://" in host or host in ("databricks", "databricks-uc") or (
            colon and re.fullmatch(r"[A-Za-z][\w+.-]*", scheme) and not rest.split("/")[0].isdigit()):
        return _from_host_uri(host, schema, conn.port, login, password)
    if not host:
        raise ValueError(f"MLflow connection '{conn.conn_id}' has no host: set it to the tracking server's URL, "
                         "e.g. 'http://mlflow:5000', or to 'sqlite:////srv/mlflow/mlflow.db'")
    scheme = schema.lower() if schema.lower() in _WEB else conn_type if conn_type in _WEB else "http"
    netloc, _, path = host.partition("/")
    netloc = netloc.rpartition("@")[2]
    if conn.port and ":" not in netloc:
        netloc = f"{netloc}:{conn.port}"
    path = path.strip("/")
    if not path and schema and schema.lower() not in _WEB:
        path = schema.strip("/")
    return f"{scheme}://{netloc}" + (f"/{path}" if path else ""), login, password


def _from_host_uri(host: str, schema: str, port: int | None, login: str | None,
                   password: str | None) -> tuple[str, str | None, str | None]:
    """``connection_tracking_uri`` of a connection whose host is a whole URI."""
    parts = urlsplit(host)
    if parts.scheme.lower() not in _WEB:
        return host, login, password  # sqlite:////abs, postgresql://…, databricks://…: as written
    if parts.username and not login:
        login, password = unquote(parts.username), unquote(parts.password or "") or password
    netloc = parts.netloc.rpartition("@")[2]
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    if not path and schema and schema.lower() not in _WEB:
        path = "/" + schema.strip("/")
    return urlunsplit((parts.scheme.lower(), netloc, path, parts.query, "")), login, password


def credential_env(login: str | None, password: str | None) -> dict[str, str]:
    """``{"MLFLOW_TRACKING_USERNAME": login, "MLFLOW_TRACKING_PASSWORD": password}``, each only
    when set: the environment variables MLflow reads for basic auth."""
    return {name: value for name, value in (("MLFLOW_TRACKING_USERNAME", login),
                                            ("MLFLOW_TRACKING_PASSWORD", password)) if value}


def connection_credentials(conn_id: str) -> dict[str, str]:
    """The credentials of an Airflow MLflow connection, as ``credential_env`` gives them (``{}``
    for a connection without login). Raises what ``BaseHook.get_connection`` raises for an
    unknown connection, and ``ValueError`` for a connection with no host."""
    return connection_target(conn_id)[1]


def connection_target(conn_id: str) -> tuple[str, dict[str, str]]:
    """(tracking URI, credentials) of an Airflow MLflow connection (see
    ``connection_tracking_uri``): the credentials as ``credential_env`` gives them, returned and
    never written anywhere. The process that uses the store decides where they go: a task's own
    environment (``_core.mlflow.use_credentials``), a pod's Secret (backends/kubernetes), one
    client's requests (``_core.mlflow.read_only_client``, the api-server)."""
    from airflow_mlops._core.connections import connection

    uri, login, password = connection_tracking_uri(connection(conn_id, "mlflow.conn_id",
                                                              instead="$MLFLOW_TRACKING_URI or the local store"))
    return uri, credential_env(login, password)


def tracking_uri_from_connection(conn_id: str) -> str:
    """The tracking URI of an Airflow connection, without its credentials (``connection_target``
    gives both)."""
    return connection_target(conn_id)[0]


def resolve_target(settings: MlflowSettings, pipeline_id: str) -> MlflowTarget:
    """Precedence: ``tracking_uri`` > ``conn_id`` > ``$MLFLOW_TRACKING_URI`` > SQLite under
    ``$AIRFLOW_MLOPS_HOME``. Local stores get an absolute artifact location beside them. A
    connection's login and password come back in ``MlflowTarget.credentials``; nothing is written
    to this process's environment (see ``connection_target``). Raises ``TrackingUriError`` for a
    URI that breaks the rule, and what ``_core.connections.connection`` raises for a missing
    connection."""
    credentials: dict[str, str] = {}
    if settings.tracking_uri:  # ~ and $VAR expanded here in the worker (the stages expand them already)
        uri = resolve_tracking_uri(settings.tracking_uri, "the tracking_uri setting")
    elif settings.conn_id:
        uri, credentials = connection_target(settings.conn_id)
        uri = checked_tracking_uri(uri, f"Airflow connection '{settings.conn_id}'")
    else:
        uri = default_tracking_uri()
    return MlflowTarget(
        tracking_uri=uri,
        experiment=settings.experiment or pipeline_id,
        registered_model=settings.registered_model or pipeline_id,
        artifact_location=settings.artifact_location or local_artifact_location(uri),
        ui_url=settings.ui_url,
        credentials=credentials,
    )

