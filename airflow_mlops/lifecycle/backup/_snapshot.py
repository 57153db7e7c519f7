"""Taking a snapshot (the write side): scan the sources, store what changed, publish the manifest
last, then apply snapshot retention and delete the objects no snapshot references.

A snapshot exists once its manifest exists, and the manifest is written last, atomically. An
interrupted backup therefore leaves no snapshot, only unreferenced objects that a later prune
removes; the previous snapshots are untouched.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable

from airflow_mlops._core.units import human_bytes
from airflow_mlops.lifecycle.backup._manifest import FileEntry, Manifest, new_snapshot_id, snapshot_time
from airflow_mlops.lifecycle.backup._sources import Collected, FileToCopy, collect_source
from airflow_mlops.lifecycle.backup._store import store_fs, store_local
from airflow_mlops.lifecycle.backup._targets import CHUNK, LocalTarget, Target, open_target
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
    Raises BackupError for a source that cannot be read; unreadable or vanished files are skipped."""
    spec = spec if isinstance(spec, BackupSpec) else BackupSpec.model_validate(spec)
    logger = logger or log
    started = time.time()
    start_ns = time.time_ns()
    target = open_target(spec.target, conn_id=spec.conn_id, storage_options=spec.storage_options, fsync=spec.fsync)
    existing = target.snapshots(spec.name)
    previous = target.read_manifest(spec.name, existing[-1]).files if existing else {}
    staging = tempfile.mkdtemp(prefix="airflow-mlops-backup-")
    try:
        collected = Collected(previous=previous)
        for source in spec.sources:
            collect_source(source, staging, collected)
        skipped = list(collected.skipped)
        copied_files, copied_bytes = _copy(target, collected, skipped, spec.workers, start_ns, _store_hook)
        files = collected.files
        manifest = Manifest(
            set=spec.name, id=new_snapshot_id(existing), created=datetime.now(timezone.utc).isoformat(),
            sources=collected.described, files=files, links=dict(sorted(collected.links.items())),
            dirs=sorted(collected.dirs), skipped=skipped,
        )
        # Everything the manifest names is stored: publishing it makes the snapshot exist.
        target.write_manifest(manifest)
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


def _copy(target: Target, collected: Collected, skipped: list[dict[str, str]], workers: int, start_ns: int,
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
            for f in serial:
                record(*work(f))
            for fut in futures:
                record(*fut.result())
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
            referenced |= target.read_manifest(s, snap).digests()
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


def list_snapshots(target: str, name: str = "default", **kw: Any) -> list[str]:
    """The snapshot ids of set ``name`` at ``target`` (a URI; ``kw`` as ``open_target``), oldest first."""
    return open_target(target, **kw).snapshots(name)
