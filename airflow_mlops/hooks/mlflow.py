"""Where a pipeline's MLflow store is, resolved in the worker when a task runs.

Every tracking URI, whatever its source, obeys one rule (``_core.tracking_uri.store_problem``): a
local store is named by an absolute path. A URI that breaks it fails the task without retries,
naming its source, before anything is written.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from airflow_mlops._core.context import MlflowTarget
from airflow_mlops._core.errors import MlopsError
from airflow_mlops._core.paths import expand_env, mlops_home, needs_expanding
from airflow_mlops._core.tracking_uri import store_problem
from airflow_mlops.spec.models import MlflowSettings

CONN_TYPE = "mlflow"
_WEB = ("http", "https")


class TrackingUriError(MlopsError, ValueError):
    """A tracking URI that would write somewhere nobody reads (a relative SQLite path…): fails a
    task without retries (``_core.outcome``), and is a ValueError for plain-Python callers."""

    retryable = False


def checked_tracking_uri(uri: str, source: str) -> str:
    """``uri``, or a ``TrackingUriError`` naming ``source`` ("$MLFLOW_TRACKING_URI", "Airflow
    connection 'x'"…) and what is wrong with it."""
    problem = store_problem(uri)
    if problem:
        raise TrackingUriError(f"MLflow tracking URI from {source}: {problem}. Nothing was written.")
    return uri


def redacted(uri: str) -> str:
    """``uri`` for a log: a password written into it (``postgresql://u:secret@db/mlflow``) masked."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


def connection_tracking_uri(conn: Any) -> tuple[str, str | None, str | None]:  # noqa: C901
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
        parts = urlsplit(host)
        if parts.scheme.lower() not in _WEB:
            return host, login, password  # sqlite:////abs, postgresql://…, databricks://…: as written
        if parts.username and not login:
            login, password = unquote(parts.username), unquote(parts.password or "") or password
        netloc = parts.netloc.rpartition("@")[2]
        if conn.port and parts.port is None:
            netloc = f"{netloc}:{conn.port}"
        path = parts.path.rstrip("/")
        if not path and schema and schema.lower() not in _WEB:
            path = "/" + schema.strip("/")
        return urlunsplit((parts.scheme.lower(), netloc, path, parts.query, "")), login, password
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


def credential_env(login: str | None, password: str | None) -> dict[str, str]:
    """``{"MLFLOW_TRACKING_USERNAME": login, "MLFLOW_TRACKING_PASSWORD": password}``, each only
    when set: the environment variables MLflow reads for basic auth."""
    return {name: value for name, value in (("MLFLOW_TRACKING_USERNAME", login),
                                            ("MLFLOW_TRACKING_PASSWORD", password)) if value}


def connection_credentials(conn_id: str) -> dict[str, str]:
    """The credentials of an Airflow MLflow connection, as ``credential_env`` gives them (``{}``
    for a connection without login). Raises what ``BaseHook.get_connection`` raises for an
    unknown connection, and ``ValueError`` for a connection with no host."""
    from airflow.sdk import BaseHook

    _uri, login, password = connection_tracking_uri(BaseHook.get_connection(conn_id))
    return credential_env(login, password)


def tracking_uri_from_connection(conn_id: str) -> str:
    """The tracking URI of an Airflow connection (see ``connection_tracking_uri``); its
    credentials go to ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` in this process,
    which MLflow sends as basic auth (pods get them from a Secret: see backends/kubernetes)."""
    from airflow_mlops._core.connections import connection

    uri, login, password = connection_tracking_uri(connection(conn_id, "mlflow.conn_id",
                                                              instead="$MLFLOW_TRACKING_URI or the local store"))
    os.environ.update(credential_env(login, password))
    return uri


def resolve_target(settings: MlflowSettings, pipeline_id: str) -> MlflowTarget:
    """Precedence: ``tracking_uri`` > ``conn_id`` > ``$MLFLOW_TRACKING_URI`` > SQLite under
    ``$AIRFLOW_MLOPS_HOME``. Local stores get an absolute artifact location beside them."""
    if settings.tracking_uri:
        uri = settings.tracking_uri
        if needs_expanding(uri):  # ~ and $VAR, here in the worker (the stages expand them already)
            try:
                uri = expand_env(uri)
            except ValueError as exc:
                raise TrackingUriError(f"MLflow tracking URI from the tracking_uri setting: {exc}") from None
        uri = checked_tracking_uri(uri, "the tracking_uri setting")
    elif settings.conn_id:
        uri = checked_tracking_uri(tracking_uri_from_connection(settings.conn_id),
                                   f"Airflow connection '{settings.conn_id}'")
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = checked_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")
    else:
        home = mlops_home()
        home.mkdir(parents=True, exist_ok=True)
        uri = checked_tracking_uri(f"sqlite:///{home / 'mlflow.db'}", "$AIRFLOW_MLOPS_HOME")
    artifacts = settings.artifact_location
    if artifacts is None and uri.startswith("sqlite:///"):
        artifacts = (os.path.dirname(uri[len("sqlite:///"):]) or ".") + "/mlartifacts"
    return MlflowTarget(
        tracking_uri=uri,
        experiment=settings.experiment or pipeline_id,
        registered_model=settings.registered_model or pipeline_id,
        artifact_location=artifacts,
        ui_url=settings.ui_url,
    )


def resolve_tracking_uri(tracking_uri: str | None = None, source: str = "tracking_uri") -> str:
    """A tracking URI given to a Python API (``run_stream``, ``run_retention``…), checked; None:
    the same precedence as the stages (``$MLFLOW_TRACKING_URI``, else the store under
    ``$AIRFLOW_MLOPS_HOME``) — never MLflow's own default, ``mlflow.db`` in the current directory."""
    if tracking_uri:
        return checked_tracking_uri(tracking_uri, source)
    return resolve_target(MlflowSettings(), "default").tracking_uri
