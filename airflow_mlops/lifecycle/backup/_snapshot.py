"""Taking a snapshot (the write side): scan the sources, store what changed, publish the manifest
last, then apply snapshot retention and delete the objects no snapshot references.

A snapshot exists once its manifest exists, and the manifest is written last, atomically. An
interrupted backup therefore leaves no snapshot, only unreferenced objects that a later prune
removes; the previous snapshots are untouched. A backup whose target fails (full, read-only,
unreachable) removes the objects it stored itself and raises ``DependencyFailed``
(``_faults``): the target, how much the snapshot needed, the newest good snapshot.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable

from airflow_mlops._core.units import human_bytes
from airflow_mlops.lifecycle.backup import _faults as faults
from airflow_mlops.lifecycle.backup._manifest import (
    FileEntry,
    Manifest,
    ManifestDamaged,
    new_snapshot_id,
    snapshot_time,
)
from airflow_mlops.lifecycle.backup._sources import Collected, FileToCopy, collect_source
from airflow_mlops.lifecycle.backup._store import store_fs, store_local
from airflow_mlops.lifecycle.backup._targets import CHUNK, LocalTarget, Target, TargetIOError, on_target, open_target
from airflow_mlops.lifecycle.specs import BackupSpec

log = logging.getLogger(__name__)

RACY_NS = 100_000_000  # a file modified this close to being read is re-read by the next backup
GC_GRACE_S = 3600.0  # unreferenced objects younger than this are left alone (another backup may be writing)


def run_backup(spec: BackupSpec | dict, *, logger: logging.Logger | None = None, gc_grace_s: float = GC_GRACE_S,
               _store_hook: Callable[[FileToCopy], None] | None = None) -> dict[str, Any]:
    """Take one snapshot of the sources, publish it, then apply snapshot retention.

    ``spec``: a BackupSpec or its dict. ``gc_grace_s``: unreferenced objects younger than this many
    seconds are kept (another backup may be writing them). Returns a JSON-able summary: snapshot,
    set, target, files, bytes, links, copied_files, copied_bytes, unchanged_files, skipped (the
    first 200 ``{file, reason}``), skipped_count, pruned_snapshots, deleted_objects, seconds.
    Raises BackupError for a source that cannot be read; unreadable or vanished files are skipped.
    Raises DependencyFailed when the target fails (full, read-only, unreachable): nothing is
    published and the objects this run stored are removed (see ``_faults`` for the retry decision)."""
    spec = spec if isinstance(spec, BackupSpec) else BackupSpec.model_validate(spec)
    logger = logger or log
    started = time.time()
    start_ns = time.time_ns()
    target = open_target(spec.target, conn_id=spec.conn_id, storage_options=spec.storage_options, fsync=spec.fsync)
    existing, previous = _previous(target, spec.name, logger)
    snap = new_snapshot_id(existing)
    free = _free_bytes(target)
    staging = tempfile.mkdtemp(prefix="airflow-mlops-backup-")
    collected = Collected(previous=previous)
    try:
        for source in spec.sources:
            collect_source(source, staging, collected)
        skipped = list(collected.skipped)
        copied_files, copied_bytes = _copy(target, collected, skipped, spec.workers, start_ns, _store_hook)
        files = collected.files
        manifest = Manifest(
            set=spec.name, id=snap, created=datetime.now(timezone.utc).isoformat(),
            sources=collected.described, files=files, links=dict(sorted(collected.links.items())),
            dirs=sorted(collected.dirs), skipped=skipped,
        )
        # Everything the manifest names is stored: publishing it makes the snapshot exist.
        with on_target(target.manifest_path(spec.name, snap)):
            target.write_manifest(manifest)
    except TargetIOError as exc:
        removed = _remove_created(target)
        raise faults.report(faults.backup_failed(
            exc, target, spec.name, snapshot=snap, path=getattr(exc, "source", None) or exc.path,
            needed_bytes=sum(max(f.size, 0) for f in collected.to_copy), needed_files=len(collected.to_copy),
            free_bytes=free, removed=removed), logger) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    snap = manifest.id
    pruned = prune(target, spec.name, keep_last=spec.keep_last, max_age=spec.max_age, gc_grace_s=gc_grace_s)
    total = sum(e.size for e in files.values())
    summary = {
        "snapshot": snap, "set": spec.name, "target": target.uri,
        "files": len(files), "bytes": total, "links": len(collected.links),
        "copied_files": copied_files, "copied_bytes": copied_bytes, "unchanged_files": len(files) - copied_files,
        "skipped": skipped[:200], "skipped_count": len(skipped),
        "pruned_snapshots": pruned["snapshots"], "deleted_objects": pruned["objects"],
        "seconds": round(time.time() - started, 3),
    }
    logger.info("Snapshot %s/%s published at %s: %d files (%s), %d copied (%s), %d unchanged, %d links, %d skipped",
                spec.name, snap, target.uri, summary["files"], human_bytes(total), summary["copied_files"],
                human_bytes(copied_bytes), summary["unchanged_files"], summary["links"], len(skipped))
    for s in skipped[:100]:
        logger.warning("  skipped %s: %s", s["file"], s["reason"])
    if pruned["snapshots"]:
        logger.info("Pruned snapshots %s; deleted %d unreferenced objects", ", ".join(pruned["snapshots"]), pruned["objects"])
    return summary


def _copy(target: Target, collected: Collected, skipped: list[dict[str, str]], workers: int, start_ns: int,  # noqa: C901
          hook: Callable[[FileToCopy], None] | None) -> tuple[int, int]:
    """Store every file of ``collected.to_copy`` and add its entry to ``collected.files``; a file
    that vanished or cannot be read goes to ``skipped``. Returns (files copied, bytes copied)."""
    files = collected.files
    local = isinstance(target, LocalTarget)
    store = store_local if local else store_fs
    copied_files = copied_bytes = 0

    def work(f: FileToCopy):
        if hook is not None:
            hook(f)
        try:
            return f, store(target, f), None
        except TargetIOError as exc:
            exc.source = f.key  # the message names the file being stored, as the snapshot names it
            raise
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            return f, None, exc

    def record(f: FileToCopy, result: Any, exc: BaseException | None) -> None:
        nonlocal copied_files, copied_bytes
        if exc is not None:
            reason = "vanished during the backup" if isinstance(exc, FileNotFoundError) else (
                "permission denied" if isinstance(exc, PermissionError) else f"{type(exc).__name__}: {exc}")
            skipped.append({"file": f.path, "reason": reason})
            return
        digest, size, mtime_ns, unstable = result
        copied_files += 1
        copied_bytes += size
        # Racy: re-read next time, whatever its size and mtime say.
        racy = unstable or f.mtime_ns < 0 or mtime_ns >= start_ns - RACY_NS
        files[f.key] = FileEntry(size, mtime_ns if unstable else f.mtime_ns, f.mode, digest, racy)

    # Small local files are copied in this thread: per file, a thread hand-off costs more than
    # the copy (the GIL ping-pong is worst on a busy machine). Big files, and every file of a
    # remote target (network latency), go to the worker threads, where hashing and I/O run
    # without the GIL.
    to_copy = sorted(collected.to_copy, key=lambda f: f.size, reverse=True)
    parallel = [f for f in to_copy if not local or f.size >= CHUNK] if workers > 1 else []
    serial = [f for f in to_copy if local and f.size < CHUNK] if parallel else to_copy
    if parallel:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(work, f) for f in parallel]
            try:
                for f in serial:
                    record(*work(f))
                for fut in futures:
                    record(*fut.result())
            except BaseException:
                for fut in futures:  # a failing target: don't start the files not begun yet
                    fut.cancel()
                raise
    else:
        for f in serial:
            record(*work(f))
    return copied_files, copied_bytes


def prune(target: Target, set_name: str, *, keep_last: int | None, max_age: Any = None,
          gc_grace_s: float = GC_GRACE_S) -> dict[str, Any]:
    """Delete the set's snapshots beyond ``keep_last`` / older than ``max_age`` (a timedelta; never
    the newest), then every stored object no remaining snapshot of any set references.
    Returns ``{"snapshots": [deleted ids], "objects": number of objects deleted}``."""
    snaps = target.snapshots(set_name)
    doomed: list[str] = []
    if snaps:
        older = snaps[:-1]  # the newest always stays
        if keep_last is not None:
            doomed += snaps[: max(0, len(snaps) - keep_last)]
        if max_age is not None:
            cutoff = datetime.now(timezone.utc).timestamp() - max_age.total_seconds()
            doomed += [s for s in older if snapshot_time(s) < cutoff]
    doomed = sorted(set(doomed))
    for s in doomed:
        target.delete(target.manifest_path(set_name, s))
    deleted_objects = 0
    if doomed:
        deleted_objects = gc_objects(target, gc_grace_s=gc_grace_s)
    return {"snapshots": doomed, "objects": deleted_objects}


def gc_objects(target: Target, *, gc_grace_s: float = GC_GRACE_S) -> int:
    """Delete objects no snapshot references, and leftover temp files, older than ``gc_grace_s``
    seconds. Returns the number of objects deleted."""
    referenced: set[str] = set()
    for s in target.sets():
        for snap in target.snapshots(s):
            try:
                referenced |= target.read_manifest(s, snap).digests()
            except (ManifestDamaged, FileNotFoundError) as exc:
                # What a damaged manifest references is unknown: deleting anything could destroy
                # the only copy of a file it holds. Leave every object until it is dealt with.
                log.warning("Not deleting any unreferenced object at %s: %s", target.uri, exc)
                return 0
    cutoff = time.time() - gc_grace_s
    n = 0
    for name, path, mtime in list(target.list_objects()):
        if name not in referenced and mtime <= cutoff:
            target.delete(path)
            n += not name.startswith(".")
    for path, mtime in list(target.list_tmp()):
        if mtime <= cutoff:
            target.delete(path)
    return n


def _previous(target: Target, set_name: str, logger: logging.Logger) -> tuple[list[str], dict[str, FileEntry]]:
    """(the set's snapshot ids, the newest readable one's files: the base of this incremental
    backup). A damaged newest manifest means a full read (said in the log), never a failure."""
    try:
        existing = target.snapshots(set_name)
        if not existing:
            return existing, {}
        try:
            return existing, target.read_manifest(set_name, existing[-1]).files
        except (ManifestDamaged, FileNotFoundError) as exc:
            logger.warning("%s: every file is read again for this snapshot (no incremental base)", exc)
            return existing, {}
    except (ManifestDamaged, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - an unreachable target, in any filesystem's words
        during = f"backup of set '{set_name}' (listing its snapshots)"
        raise faults.report(faults.read_failed(exc, target, set_name, during), logger) from exc


def _free_bytes(target: Target) -> int | None:
    """Free bytes where a local target lives (its nearest existing folder); None elsewhere."""
    if not isinstance(target, LocalTarget):
        return None
    path = target.root
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or "/").free
    except OSError:
        return None


def _remove_created(target: Target) -> str:
    """Delete the objects this run stored that no published snapshot references; say what was done."""
    created = set(target.created)
    if not created:
        return "This run stored no object."
    referenced: set[str] = set()
    try:
        for s in target.sets():
            for snap in target.snapshots(s):
                try:
                    referenced |= target.read_manifest(s, snap).digests()
                except Exception:  # noqa: BLE001,S112 - a damaged manifest cannot reference new objects
                    continue
    except Exception:  # noqa: BLE001,S110 - unreachable: try the deletes anyway
        pass
    doomed = sorted(created - referenced)
    failed = 0
    for digest in doomed:
        try:
            target.delete(target.obj_path(digest))
        except Exception:  # noqa: BLE001
            failed += 1
    if failed:
        return (f"{failed} of the {len(doomed)} object(s) this run stored could not be removed; the next backup "
                f"that prunes (gc_objects) reclaims them after {GC_GRACE_S:.0f} s.")
    return f"The {len(doomed)} object(s) this run stored were removed."


def list_snapshots(target: str, name: str = "default", **kw: Any) -> list[str]:
    """The snapshot ids of set ``name`` at ``target`` (a URI; ``kw`` as ``open_target``), oldest first."""
    return open_target(target, **kw).snapshots(name)
