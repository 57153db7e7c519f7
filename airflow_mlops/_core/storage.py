"""Where stage data lives: an absolute local path or an object-storage URI, one set of rules.

A deployment whose workers share no disk (Celery workers on several machines, Kubernetes executor
pods, managed Airflow) passes stage data through object storage: ``data_dir: s3://bucket/prefix``.
Every location a pipeline names (``data_dir``, an input's ``path``, a stage's ``output``) is one of

- an absolute local path (``/srv/data``; ``file:///srv/data`` is the same place): fine on one
  machine and on a volume every worker mounts;
- a URI whose scheme is in ``SCHEMES``, read and written through Airflow's ``ObjectStoragePath``
  with an Airflow connection for the credentials (``data_conn_id``; else the scheme's default
  connection, ``DEFAULT_CONN_IDS``). Each scheme needs the extra that registers its filesystem
  with Airflow (``EXTRA_OF``), and the missing-extra message names it.

Anything else is refused where it is written (``location_problem``): a relative path (it would
resolve against whichever folder the worker runs in, or inside a dags folder that git-sync
replaces), ``s3:/bucket`` (one slash: once a local folder named ``s3:``), or an unknown scheme.

Writes publish whole or not at all: a local file is written beside its name and renamed; an
object is uploaded in one request (or one multipart upload), which the store makes visible only
once complete. A retried task never reads half a dataset.
"""

from __future__ import annotations

import re
from typing import Any

# URI scheme -> the extra of this package that brings its filesystem (None: Airflow's own).
EXTRA_OF: dict[str, str | None] = {
    "file": None,
    "s3": "amazon",
    "gs": "google",
    "gcs": "google",
    "abfs": "microsoft-azure",
    "abfss": "microsoft-azure",
    "az": "microsoft-azure",
}
SCHEMES = tuple(EXTRA_OF)
# Each scheme's default Airflow connection, as its provider names it (used when none is given).
DEFAULT_CONN_IDS: dict[str, str] = {
    "s3": "aws_default",
    "gs": "google_cloud_default",
    "gcs": "google_cloud_default",
    "abfs": "wasb_default",
    "abfss": "wasb_default",
    "az": "wasb_default",
}
# What Spark calls the same store (its Hadoop filesystems): s3:// is S3A there.
SPARK_SCHEMES: dict[str, str] = {"s3": "s3a", "gcs": "gs", "az": "abfs"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_DEFERRED = ("~", "$", "{{", "{%")  # expanded or rendered in the worker, checked again there


def scheme_of(location: str) -> str | None:
    """The lower-case scheme of a ``scheme://…`` location, else None (a local path)."""
    match = _SCHEME.match(location)
    if match and location[match.end():].startswith("//"):
        return match.group(1).lower()
    return None


def is_remote(location: str) -> bool:
    """Whether ``location`` is an object-storage URI (any scheme but ``file``)."""
    scheme = scheme_of(location)
    return scheme is not None and scheme != "file"


def local_path(location: str) -> str:
    """The local path of ``location`` (``file:///a`` -> ``/a``); a remote URI as it is."""
    return location[len("file://"):] if scheme_of(location) == "file" else location


def location_problem(location: str, *, relative_ok: bool = False) -> str | None:
    """Why ``location`` cannot hold stage data, or None. Values still to be expanded or rendered
    (``~``, ``$VAR``, templates) pass here and are checked again once the worker has them."""
    if location.startswith(_DEFERRED):
        return None
    match = _SCHEME.match(location)
    if match:
        scheme = match.group(1).lower()
        if not location[match.end():].startswith("//"):
            return (f"{location!r} is neither an absolute path nor a URI: a URI needs '//' after '{scheme}:' "
                    f"(e.g. '{scheme}://bucket/prefix')")
        if scheme not in EXTRA_OF:
            return (f"unsupported URI scheme '{scheme}://' in {location!r}; expected an absolute path or a URI "
                    f"of {', '.join(s + '://' for s in SCHEMES)}")
        rest = location[match.end() + 2:]
        if scheme == "file":
            return None if rest.startswith("/") else f"{location!r}: a file URI names an absolute path (file:///…)"
        if not rest.split("/")[0]:
            return f"{location!r} names no bucket or container (e.g. '{scheme}://bucket/prefix')"
        return None
    if location.startswith("/") or relative_ok:
        return None
    return (f"{location!r} is a relative path: it would resolve against whichever folder a worker runs in; "
            "write an absolute path, $AIRFLOW_MLOPS_HOME/..., or an object-storage URI (s3://bucket/prefix)")


def extra_needed(location: str) -> str | None:
    """The extra whose filesystem ``location`` is read and written through, None for local paths."""
    scheme = scheme_of(location)
    return EXTRA_OF.get(scheme) if scheme else None


def join(location: str, *parts: str) -> str:
    """``location`` with ``parts`` appended, ``/``-separated (local paths and URIs alike)."""
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])


def spark_uri(location: str) -> str:
    """The same place as Spark's Hadoop filesystems name it: ``s3://b/k`` -> ``s3a://b/k``; local
    paths and other URIs unchanged."""
    scheme = scheme_of(location)
    if scheme in SPARK_SCHEMES:
        return SPARK_SCHEMES[scheme] + location[len(scheme):]
    return location


def open_location(location: str, conn_id: str | None = None, setting: str = "data_conn_id") -> Any:
    """A path object for ``location``: ``pathlib.Path`` for a local path (or ``file://``), else
    Airflow's ``ObjectStoragePath`` with ``conn_id`` (default: the scheme's ``DEFAULT_CONN_IDS``;
    the provider falls back to the environment's credentials when that connection does not exist).
    Raises ``MissingExtra`` when the scheme's extra is not installed."""
    from pathlib import Path

    scheme = scheme_of(location)
    if scheme is None or scheme == "file":
        return Path(local_path(location))
    from airflow_mlops._core.extras import require

    extra = EXTRA_OF.get(scheme)
    if extra:
        require(extra, f"stage data at {scheme}://")
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(location, conn_id=_existing(conn_id, scheme, setting) or DEFAULT_CONN_IDS.get(scheme))


def location_of(path: Any) -> str:
    """The location a path object stands for, as users write it (``s3://bucket/key``, a local
    path): never ``str(ObjectStoragePath)``, which carries the connection id as ``conn@bucket``."""
    protocol = getattr(path, "protocol", None)
    if protocol and protocol not in ("file", "local"):
        return f"{protocol}://{path.path}"
    return str(path)


def _existing(conn_id: str | None, scheme: str, setting: str = "data_conn_id") -> str | None:
    """``conn_id`` once Airflow has it (``_core.connections``): a connection named but missing is
    an error naming it, since the providers would otherwise carry on anonymously or with whatever
    credentials the worker has."""
    from airflow_mlops._core.connections import check

    return check(conn_id, f"{setting}, for {scheme}:// data", instead=f"'{DEFAULT_CONN_IDS.get(scheme, 'the default')}'")
