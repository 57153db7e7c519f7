"""A production MLflow's store: its database on Postgres and its artifacts in a bucket.

Backup: the database is dumped with Postgres's own ``pg_dump`` (custom format), which reads one
consistent snapshot of the whole database inside a single transaction while the tracking server
keeps writing; the artifact destination (``mlflow server --artifacts-destination s3://…``, where
every ``mlflow-artifacts:/`` URI points) is copied object by object into the snapshot.

Restore: ``pg_restore`` into an empty database, and the artifacts uploaded into a bucket. A
tracking server started on those (``--backend-store-uri <restored db> --artifacts-destination
<restored bucket>``) serves the same experiments, runs, model versions and aliases. Locations the
database records as direct URIs of the old bucket (a server without artifact proxying) are
rewritten to the new one.

The Postgres client tools come from the machine (Debian's ``postgresql-client``); a password in
the URI is passed to them through ``PGPASSWORD``, never on a command line.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow_mlops.lifecycle.backup._manifest import BackupError
from airflow_mlops.lifecycle.backup._mlflow_store import SQL_LOCATIONS

DUMP = "mlflow.pgdump"
BUCKET_PREFIX = "bucket"  # the artifacts' prefix inside the snapshot


def is_postgres(uri: str | None) -> bool:
    return bool(uri) and urlsplit(uri).scheme.split("+")[0] in ("postgresql", "postgres")


def _client(tool: str) -> str:
    """``pg_dump`` / ``pg_restore``: on PATH, else the newest in Debian's versioned folders."""
    found = shutil.which(tool) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), reverse=True)), None)
    if not found:
        raise BackupError(f"{tool} is not installed here: install Postgres's client tools (Debian: postgresql-client) "
                          "to back up or restore an MLflow store on Postgres")
    return found


def _libpq(uri: str) -> tuple[str, dict[str, str]]:
    """``uri`` as libpq takes it (no SQLAlchemy driver, no password) and the environment with
    ``PGPASSWORD``."""
    parts = urlsplit(uri)
    env = dict(os.environ)
    netloc = parts.netloc
    if parts.password is not None:
        env["PGPASSWORD"] = parts.password
        user = parts.username or ""
        netloc = f"{user}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(("postgresql", netloc, parts.path, parts.query, "")), env


def shown(uri: str) -> str:
    """``uri`` without its password, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def dump(uri: str, folder: str) -> str:
    """``pg_dump`` the database at ``uri`` into ``folder/mlflow.pgdump``; its path."""
    dsn, env = _libpq(uri)
    path = os.path.join(folder, DUMP)
    done = subprocess.run([_client("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={path}",
                           f"--dbname={dsn}"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"pg_dump of the MLflow database {shown(uri)} failed: {done.stderr.strip()[-1000:]}")
    return path


def restore(path: str, uri: str) -> None:
    """``pg_restore`` the dump at ``path`` into the (empty) database at ``uri``."""
    dsn, env = _libpq(uri)
    done = subprocess.run([_client("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                           f"--dbname={dsn}", path], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"pg_restore into {shown(uri)} failed (it must be an empty database): "
                          f"{done.stderr.strip()[-1000:]}")


def download(uri: str, conn_id: str | None, folder: str) -> int:
    """Every object under ``uri`` into ``folder`` (same relative names); how many."""
    from airflow_mlops._core.storage import open_location

    root = open_location(uri, conn_id)
    count = 0
    if not root.exists():
        return 0
    for item in root.rglob("*"):
        if item.is_dir():
            continue
        rel = str(item.path)[len(str(root.path)):].lstrip("/")
        dest = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with item.open("rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        count += 1
    return count


def upload(folder: str, uri: str, conn_id: str | None) -> int:
    """Every file under ``folder`` to ``uri`` (same relative names); how many."""
    from airflow_mlops._core.storage import open_location

    root = open_location(uri, conn_id)
    count = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, folder)
            with open(src, "rb") as f, (root / rel).open("wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
            count += 1
    return count


def relocate(uri: str, old: str, new: str) -> int:
    """In the restored database at ``uri``, every artifact location under ``old`` (the backed-up
    bucket URI) moved under ``new``; the number of values changed."""
    if old.rstrip("/") == new.rstrip("/"):
        return 0
    import psycopg2

    dsn, env = _libpq(uri)
    conn = psycopg2.connect(dsn, password=env.get("PGPASSWORD"))
    changed = 0
    try:
        with conn, conn.cursor() as cur:
            for table, column in SQL_LOCATIONS:
                cur.execute("SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
                            (table, column))
                if cur.fetchone() is None:
                    continue
                cur.execute(f'UPDATE "{table}" SET "{column}" = %s || substr("{column}", %s) '  # noqa: S608
                            f'WHERE "{column}" LIKE %s', (new.rstrip("/"), len(old.rstrip("/")) + 1,
                                                          old.rstrip("/") + "%"))
                changed += cur.rowcount
    finally:
        conn.close()
    return changed


def describe(source: Any) -> dict[str, Any]:
    """What the manifest records of such a source (no credentials)."""
    return {"kind": "mlflow", "backend": "postgresql", "backend_store_uri": shown(source.backend_store_uri),
            "dump": DUMP, "artifacts_uri": source.artifacts if source.artifacts and "://" in source.artifacts else None}
