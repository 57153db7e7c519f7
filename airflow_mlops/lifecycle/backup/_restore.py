"""Reading a snapshot back (the read side): verify it, or restore it file by file.

Restore verifies the checksum of every file as it streams it, writes a file only when it matches,
and raises ``RestoreError`` listing every corrupted or missing file (none of which is written).
Paths in a manifest are checked before anything is written: none may leave the destination,
and no folder on the way may be a symlink. A snapshot that cannot be read at all (its manifest
damaged or missing, the target gone or unreachable) raises ``DependencyFailed`` naming the newest
snapshot that is still good (``_faults``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow_mlops._core.errors import DependencyFailed
from airflow_mlops._core.units import human_bytes
from airflow_mlops.lifecycle.backup import _faults as faults
from airflow_mlops.lifecycle.backup import _mlflow_store as mlflow_store
from airflow_mlops.lifecycle.backup._manifest import (
    BackupError,
    FileEntry,
    Manifest,
    ManifestDamaged,
    RestoreError,
    safe_rel,
)
from airflow_mlops.lifecycle.backup._targets import CHUNK, LocalTarget, Target, TargetIOError, on_target, open_target
from airflow_mlops.lifecycle.paths import expand_path, within
from airflow_mlops.lifecycle.specs import RestoreSpec

log = logging.getLogger(__name__)


def _verify_stream(target: Target, digest: str, sink) -> bool:
    """Stream an object into ``sink`` (or nowhere) while hashing; True if it matches ``digest``."""
    h = hashlib.sha256()
    try:
        src = target.open_object(digest)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - the target failed, in its filesystem's words
        raise TargetIOError(exc, target.obj_path(digest)) from exc
    with src:
        while True:
            with on_target(target.obj_path(digest)):
                chunk = src.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            if sink is not None:
                sink.write(chunk)
    return h.hexdigest() == digest


def verify_snapshot(target: str, *, name: str = "default", snapshot: str | None = None, workers: int = 4, **kw: Any) -> dict[str, Any]:
    """Re-hash every stored file of a snapshot (the newest of set ``name`` unless ``snapshot`` is
    given) at ``target`` (a URI; ``kw`` as ``open_target``). Returns ``{snapshot, set, files,
    verified}``; raises RestoreError listing corrupted/missing files, DependencyFailed for no such
    snapshot, a damaged manifest or a target that cannot be read."""
    t = open_target(target, **kw)
    snap, manifest = _open_snapshot(t, name, snapshot, "verify", log)
    entries = list(manifest.files.items())

    def check(item: tuple[str, FileEntry]) -> tuple[str, str]:
        key, entry = item
        try:
            return key, "ok" if _verify_stream(t, entry.digest, None) else "corrupted"
        except FileNotFoundError:
            return key, "missing"

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check, entries))
    except TargetIOError as exc:
        raise faults.report(faults.read_failed(exc, t, name, f"verify of snapshot {name}/{snap}"), log) from exc
    corrupted = sorted(k for k, s in results if s == "corrupted")
    missing = sorted(k for k, s in results if s == "missing")
    if corrupted or missing:
        raise RestoreError(_problems(name, snap, corrupted, missing), corrupted, missing)
    return {"snapshot": snap, "set": name, "files": len(entries), "verified": len(entries)}


def _open_snapshot(t: Target, name: str, snapshot: str | None, doing: str,
                   logger: logging.Logger) -> tuple[str, Manifest]:
    """(snapshot id, its manifest): the newest of set ``name`` unless ``snapshot`` is given.
    Raises DependencyFailed (logged first) when the target is missing or unreachable, the set has
    no snapshot, the snapshot's manifest is missing or damaged."""
    during = f"{doing} of {'snapshot ' + name + '/' + snapshot if snapshot else 'the newest snapshot of set ' + repr(name)}"
    snap = snapshot or "?"
    try:
        snaps = t.snapshots(name)
        if not snaps or (snapshot is not None and snapshot not in snaps):
            raise faults.report(faults.no_snapshot(t, name, snapshot, during, _exists(t)), logger)
        snap = snaps[-1] if snapshot is None else snapshot
        return snap, t.read_manifest(name, snap)
    except ManifestDamaged as exc:
        raise faults.report(faults.damaged_manifest(exc, t, name, snap, f"{doing} of snapshot {name}/{snap}"),
                            logger) from exc
    except FileNotFoundError as exc:  # listed, then gone before it was read
        raise faults.report(faults.no_snapshot(t, name, snap, during, _exists(t)), logger) from exc
    except (BackupError, DependencyFailed):
        raise
    except Exception as exc:  # noqa: BLE001 - an unreachable target, in any filesystem's words
        raise faults.report(faults.read_failed(exc, t, name, during), logger) from exc


def _exists(t: Target) -> bool:
    """Whether the target's root is there at all (unknown for remote stores: assumed so)."""
    if isinstance(t, LocalTarget):
        return os.path.isdir(t.root)
    try:
        return bool(t.fs.exists(t.root))
    except Exception:  # noqa: BLE001
        return True


def _problems(name: str, snap: str, corrupted: list[str], missing: list[str]) -> str:
    lines = [f"snapshot {name}/{snap} failed verification: {len(corrupted)} corrupted, {len(missing)} missing file(s); "
             "these were NOT restored:"]
    lines += [f"  corrupted (checksum mismatch): {k}" for k in corrupted[:50]]
    lines += [f"  missing (stored object gone): {k}" for k in missing[:50]]
    if len(corrupted) + len(missing) > 100:
        lines.append("  …")
    return "\n".join(lines)


def run_restore(spec: RestoreSpec | dict, *, logger: logging.Logger | None = None) -> dict[str, Any]:  # noqa: C901
    """Restore a snapshot into ``dest/<source>/…``, verifying every file's checksum as it is
    written. Matching files are restored (with their mode and mtime), then links and folders; if
    any file is corrupted or missing, nothing is written for it and RestoreError lists them all.

    Returns ``{snapshot, set, dest, restored, bytes, corrupted: [], missing: [], not_restored:
    [keys], relocated: {source: values changed}}`` (``relocated`` with relocate_mlflow_artifacts).
    Raises RestoreError for existing files without ``overwrite``, BackupError for an unknown
    source or an unsafe path in the manifest, DependencyFailed (logged first) for a snapshot that
    cannot be read: its manifest missing or damaged, the target missing or unreachable."""
    spec = spec if isinstance(spec, RestoreSpec) else RestoreSpec.model_validate(spec)
    logger = logger or log
    t = open_target(spec.target, conn_id=spec.conn_id, storage_options=spec.storage_options)
    snap, manifest = _open_snapshot(t, spec.name, spec.snapshot, "restore", logger)
    wanted = set(spec.sources) if spec.sources else None
    if wanted is not None:
        unknown = wanted - set(manifest.sources)
        if unknown:
            raise BackupError(f"snapshot {spec.name}/{snap} has no source(s) {sorted(unknown)}; "
                              f"it has {sorted(manifest.sources)}")

    def chosen(mapping):
        out = {}
        for key, v in mapping.items():
            key = safe_rel(key, f"manifest of {spec.name}/{snap}")
            if wanted is None or key.split("/", 1)[0] in wanted:
                out[key] = v
        return out

    files: dict[str, FileEntry] = chosen(manifest.files)
    links: dict[str, str] = chosen(manifest.links)
    dirs = list(chosen(dict.fromkeys(manifest.dirs)))
    dest = expand_path(spec.dest)
    os.makedirs(dest, exist_ok=True)
    dest = os.path.realpath(dest)

    if not spec.overwrite:
        conflicts = sorted(k for k in [*files, *links] if os.path.lexists(os.path.join(dest, k)))
        if conflicts:
            raise RestoreError(f"{len(conflicts)} file(s) already exist in {dest} (set overwrite to replace them): "
                               + ", ".join(conflicts[:20]), conflicts=conflicts)
    made: set[str] = set()
    for d in sorted(dirs):
        _make_dir(dest, d, made)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda kv: (kv[0], _restore_file(t, dest, kv[0], kv[1], made)),
                                    sorted(files.items())))
    except TargetIOError as exc:
        raise faults.report(faults.read_failed(exc, t, spec.name, f"restore of snapshot {spec.name}/{snap}"),
                            logger) from exc
    status: dict[str, list[str]] = {}
    for key, s in results:
        status.setdefault(s, []).append(key)
    for key, link_target in sorted(links.items()):
        status.setdefault(_restore_link(dest, key, link_target), []).append(key)
    corrupted, missing = status.get("corrupted", []), status.get("missing", [])
    summary = {
        "snapshot": snap, "set": spec.name, "dest": dest, "restored": len(status.get("ok", [])),
        "bytes": sum(files[k].size for k in status.get("ok", []) if k in files),
        "corrupted": corrupted, "missing": missing,
        "not_restored": sorted(status.get("unsafe", []) + status.get("conflict", [])),
    }
    logger.info("Restored %d files (%s) of snapshot %s/%s into %s", summary["restored"], human_bytes(summary["bytes"]),
                spec.name, snap, dest)
    if corrupted or missing:
        raise RestoreError(_problems(spec.name, snap, corrupted, missing), corrupted, missing)
    if spec.relocate_mlflow_artifacts:
        summary["relocated"] = mlflow_store.relocate(manifest.sources, wanted, dest, logger)
    servers = {n: d for n, d in manifest.sources.items() if d.get("backend") == "postgresql"
               and (wanted is None or n in wanted)}
    if servers:
        summary["mlflow_servers"] = _restore_server_stores(spec, servers, dest, logger)
    return summary


def _restore_server_stores(spec: RestoreSpec, servers: dict[str, Any], dest: str, logger: logging.Logger) -> dict:
    """A Postgres-backed MLflow source: its dump into ``mlflow_backend_store_uri`` and its bucket's
    objects into ``mlflow_artifacts``, when the spec names them (else the files stay in ``dest``)."""
    from airflow_mlops.lifecycle.backup import _mlflow_server_store as server_store

    done: dict[str, Any] = {}
    for name, described in servers.items():
        entry: dict[str, Any] = {"dump": os.path.join(dest, name, server_store.DUMP)}
        if spec.mlflow_backend_store_uri:
            server_store.restore(entry["dump"], spec.mlflow_backend_store_uri)
            entry["database"] = server_store.shown(spec.mlflow_backend_store_uri)
            logger.info("MLflow store '%s': database restored into %s", name, entry["database"])
        bucket = os.path.join(dest, name, server_store.BUCKET_PREFIX)
        if spec.mlflow_artifacts and os.path.isdir(bucket):
            entry["artifacts"] = server_store.upload(bucket, spec.mlflow_artifacts, spec.mlflow_artifacts_conn_id)
            logger.info("MLflow store '%s': %d artifact object(s) uploaded to %s", name, entry["artifacts"],
                        spec.mlflow_artifacts)
            old = described.get("artifacts_uri")
            if old and spec.mlflow_backend_store_uri:
                entry["relocated"] = server_store.relocate(spec.mlflow_backend_store_uri, old, spec.mlflow_artifacts)
        done[name] = entry
    return done


def _restore_file(t: Target, dest: str, key: str, entry: FileEntry, made: set[str]) -> str:
    """Write one file at ``dest/key`` through a temp file beside it, only if its content matches
    its checksum. Returns its status: ok, missing, corrupted, unsafe or conflict (a folder there)."""
    final = os.path.join(dest, key)
    parent = os.path.dirname(final)
    _make_dir(dest, os.path.dirname(key), made)
    if not within(dest, parent):
        return "unsafe"
    tmp = os.path.join(parent, f".{os.path.basename(final)}.restore-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as out:
            ok = _verify_stream(t, entry.digest, out)
    except FileNotFoundError:
        _unlink(tmp)
        return "missing"
    except BaseException:
        _unlink(tmp)
        raise
    if not ok:
        _unlink(tmp)
        return "corrupted"
    os.chmod(tmp, entry.mode & 0o777)
    if entry.mtime_ns >= 0:
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
    if os.path.isdir(final) and not os.path.islink(final):
        _unlink(tmp)
        return "conflict"
    os.replace(tmp, final)
    return "ok"


def _restore_link(dest: str, key: str, link_target: str) -> str:
    """Make the symlink ``dest/key`` → ``link_target``; returns ok, unsafe or conflict."""
    path = os.path.join(dest, key)
    _make_dir(dest, os.path.dirname(key))
    if not within(dest, os.path.dirname(path)):
        return "unsafe"
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            return "conflict"
        os.unlink(path)
    os.symlink(link_target, path)
    return "ok"


def _make_dir(dest: str, rel: str, made: set[str] | None = None) -> None:
    """mkdir -p under dest, refusing to go through a symlink (a restored link must not redirect files)."""
    if not rel or (made is not None and rel in made):
        return
    path = dest
    for part in rel.split("/"):
        path = os.path.join(path, part)
        try:
            os.mkdir(path)
        except FileExistsError:
            if os.path.islink(path) or not os.path.isdir(path):
                raise BackupError(f"cannot restore into {path}: it exists and is not a folder")
    if made is not None:
        made.add(rel)  # set.add is atomic under the GIL


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
