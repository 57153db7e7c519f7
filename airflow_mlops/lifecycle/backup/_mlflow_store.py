"""Which artifact folders an MLflow store references, and how a restored store is pointed at the
restored copies.

An MLflow store does not keep its artifacts in one place: every experiment has an
``artifact_location`` (``mlflow.set_experiment("x")`` against a SQLite store puts it under
``./mlruns/`` of whatever folder the client ran in), every run an ``artifact_uri``, every logged
model and model version a storage location. A backup that copies only ``mlartifacts/`` beside the
database loses the others silently. This module lists every location the store references
(``referenced_locations``), reduces them to the folders that cover them all (``plan_roots``), and
after a restore rewrites the store so it reads the restored folders (``relocate``).

Standard library only: it reads the SQLite database with ``sqlite3`` and a file store's
``meta.yaml`` files as text, so no MLflow import (and no schema migration) is needed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

# (table, column) pairs of MLflow's SQLAlchemy schema that hold artifact locations. Tables or
# columns an older or newer MLflow lacks are skipped.
SQL_LOCATIONS: tuple[tuple[str, str], ...] = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
    ("workspaces", "default_artifact_root"),
)
# Keys of a file store's meta.yaml files that hold artifact locations.
META_KEYS = ("artifact_location", "artifact_uri", "source", "storage_location")
# The artifact folder beside the database keeps this snapshot prefix (older snapshots used it).
DEFAULT_PREFIX = "mlartifacts"
PROXY_SCHEME = "mlflow-artifacts:"


@dataclass
class ArtifactPlan:
    """What a backup copies of a store's artifacts.

    ``roots`` maps a snapshot prefix (``mlartifacts`` or ``artifacts/<name>-<hash>``) to the
    absolute folder copied under it; ``uncopyable`` lists ``(location, reason)`` for each
    referenced location the backup cannot reach (remote URIs, relative paths)."""

    roots: dict[str, str] = field(default_factory=dict)
    uncopyable: list[tuple[str, str]] = field(default_factory=list)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}


def sqlite_locations(db: str) -> list[str]:
    """Every distinct artifact location recorded in the MLflow SQLite database ``db`` (a path)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found: set[str] = set()
        for table, column in SQL_LOCATIONS:
            if column in _columns(conn, table):
                found.update(v for (v,) in conn.execute(f'SELECT DISTINCT "{column}" FROM "{table}"') if v)
        if "key" in _columns(conn, "trace_tags"):
            found.update(v for (v,) in conn.execute(
                "SELECT DISTINCT value FROM trace_tags WHERE key = 'mlflow.artifactLocation'") if v)
        return sorted(found)
    finally:
        conn.close()


def file_store_locations(store: str) -> list[str]:
    """Every distinct artifact location in the ``meta.yaml`` files of the file store at ``store``."""
    found: set[str] = set()
    for dirpath, _dirs, names in os.walk(store):
        if "meta.yaml" in names:
            with open(os.path.join(dirpath, "meta.yaml"), encoding="utf-8", errors="replace") as f:
                for line in f:
                    key, sep, value = line.partition(":")
                    if sep and key.strip() in META_KEYS and value.strip():
                        found.add(value.strip().strip("'\""))
    return sorted(found)


def local_path(location: str, proxy_root: str | None) -> tuple[str | None, str | None]:
    """``(absolute path, None)`` for a location on this machine, else ``(None, why not)``.
    ``mlflow-artifacts:/x`` is the tracking server's ``--artifacts-destination``/x, which is
    ``proxy_root`` when it is known. Registry sources such as ``models:/…`` or ``runs:/…`` are
    references to other rows, not locations: ``(None, None)``."""
    if location.startswith(("models:/", "runs:/")):
        return None, None
    if location.startswith(PROXY_SCHEME):
        if not proxy_root:
            return None, "served by a tracking server (mlflow-artifacts:); give the server's artifact folder as 'artifacts'"
        rest = location[len(PROXY_SCHEME):].lstrip("/")
        return os.path.normpath(os.path.join(proxy_root, rest)), None
    path = location[len("file://"):] if location.startswith("file://") else location
    if "://" in path or (":" in path.split("/", 1)[0] and not path.startswith("/")):
        return None, "a remote artifact store: copy it with that store's own tools"
    if not os.path.isabs(path):
        return None, "a relative path: it depends on the folder the client ran in, so it cannot be located"
    return os.path.normpath(path), None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def plan_roots(locations: list[str], *, default_root: str | None, proxy_root: str | None,
               covered: str | None = None) -> ArtifactPlan:
    """The folders that hold every referenced location, each under its own snapshot prefix.

    ``default_root`` (the ``mlartifacts/`` beside the database) is always included when it
    exists; ``covered`` is a folder the backup already copies whole (a file store), whose
    locations need no root of their own."""
    plan = ArtifactPlan()
    paths: set[str] = set()
    for loc in locations:
        path, why = local_path(loc, proxy_root)
        if why:
            plan.uncopyable.append((loc, why))
        elif path and not (covered and _inside(path, covered)):
            paths.add(path)
    if default_root and os.path.isdir(default_root):
        plan.roots[DEFAULT_PREFIX] = default_root
    kept: list[str] = []
    for path in sorted(paths):  # sorted: a folder comes before everything inside it
        if default_root and _inside(path, default_root):
            continue
        if kept and _inside(path, kept[-1]):
            continue
        kept.append(path)
    for path in kept:
        if os.path.isdir(path):
            digest = hashlib.sha256(path.encode()).hexdigest()[:10]
            plan.roots[f"artifacts/{os.path.basename(path) or 'root'}-{digest}"] = path
    return plan


def _rewrite(value: str, moves: list[tuple[str, str]]) -> str | None:
    """``value`` with its folder moved (longest original first), or None when none applies."""
    scheme = "file://" if value.startswith("file://") else ""
    path = value[len(scheme):]
    for old, new in moves:
        if _inside(path, old):
            return scheme + new + path[len(old):]
    return None


def relocate_sqlite(db: str, moves: dict[str, str]) -> int:
    """Point the artifact locations in the SQLite store ``db`` at their restored folders.
    ``moves`` maps an original folder to its restored one. Returns the number of values changed."""
    ordered = sorted(moves.items(), key=lambda kv: len(kv[0]), reverse=True)
    changed = 0
    conn = sqlite3.connect(db)
    try:
        with conn:
            for table, column in SQL_LOCATIONS:
                if column not in _columns(conn, table):
                    continue
                for rowid, value in conn.execute(f'SELECT rowid, "{column}" FROM "{table}"').fetchall():
                    new = _rewrite(value, ordered) if value else None
                    if new is not None:
                        conn.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE rowid = ?', (new, rowid))
                        changed += 1
            if "key" in _columns(conn, "trace_tags"):
                rows = conn.execute("SELECT rowid, value FROM trace_tags WHERE key = 'mlflow.artifactLocation'").fetchall()
                for rowid, value in rows:
                    new = _rewrite(value, ordered) if value else None
                    if new is not None:
                        conn.execute("UPDATE trace_tags SET value = ? WHERE rowid = ?", (new, rowid))
                        changed += 1
    finally:
        conn.close()
    return changed


def relocate_file_store(store: str, moves: dict[str, str]) -> int:
    """The same for a restored file store: rewrite the location keys of its ``meta.yaml`` files."""
    ordered = sorted(moves.items(), key=lambda kv: len(kv[0]), reverse=True)
    changed = 0
    for dirpath, _dirs, names in os.walk(store):
        if "meta.yaml" not in names:
            continue
        meta = os.path.join(dirpath, "meta.yaml")
        with open(meta, encoding="utf-8") as f:
            lines = f.readlines()
        out, dirty = [], False
        for line in lines:
            key, sep, value = line.partition(":")
            stripped = value.strip().strip("'\"")
            new = _rewrite(stripped, ordered) if sep and key.strip() in META_KEYS and stripped else None
            if new is not None:
                line = f"{key}: {new}\n"
                dirty = True
                changed += 1
            out.append(line)
        if dirty:
            with open(meta, "w", encoding="utf-8") as f:
                f.writelines(out)
    return changed


def relocate(sources: dict[str, Any], wanted: set[str] | None, dest: str, logger: logging.Logger) -> dict[str, int]:
    """Point each restored MLflow store at its restored artifact folders; {source: values changed}."""
    changed: dict[str, int] = {}
    for name, described in sources.items():
        if described.get("kind") != "mlflow" or (wanted is not None and name not in wanted):
            continue
        roots = dict(described.get("artifact_roots") or {})
        if not roots and described.get("artifacts"):  # snapshots taken before artifact_roots existed
            roots = {DEFAULT_PREFIX: described["artifacts"]}
        moves = {orig: os.path.join(dest, name, prefix) for prefix, orig in roots.items()}
        db = os.path.join(dest, name, "mlflow.db")
        if described.get("store"):
            moves[described["store"]] = os.path.join(dest, name, "mlruns")
            changed[name] = relocate_file_store(os.path.join(dest, name, "mlruns"), moves)
        elif os.path.isfile(db):
            changed[name] = relocate_sqlite(db, moves)
        else:
            continue
        logger.info("MLflow store '%s' now reads its artifacts from %s (%d location(s) rewritten)",
                    name, os.path.join(dest, name), changed[name])
    return changed
