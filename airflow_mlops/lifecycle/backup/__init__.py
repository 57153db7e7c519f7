"""Incremental, content-addressed backups with verified restore, to any fsspec target.

Layout of a backup repository (the target URI)::

    objects/ab/abcdef…          every distinct file content once, named by its SHA-256
    snapshots/<set>/<id>.json   one manifest per snapshot: per file its size, mtime, mode, SHA-256
    tmp/                        staging; anything left here is an interrupted write

A snapshot exists once its manifest exists, and the manifest is written last, atomically (a
rename on local disks, a single PUT on object stores). Incremental: a file whose size, mtime and
mode match the previous snapshot of the same set is not read again (its recorded entry is reused);
a changed file is read once, hashed while it is copied, and stored only if no snapshot holds that
content yet. Restore verifies every file's checksum as it streams it. The MLflow SQLite store is
copied with SQLite's online backup API, so the copy is consistent even while the server writes.

Modules, each one side of it:

- ``manifest``: the on-disk manifest (``Manifest``, one ``FileEntry`` per file), errors, snapshot ids
- ``targets``: the repository on a filesystem (``LocalTarget``, ``FsTarget``, ``open_target``)
- ``sources``: scanning the sources into files to copy and files unchanged
- ``mlflow_store``: which artifact folders an MLflow store references; relocating a restored store
- ``store``: copying one file into an object while hashing it
- ``snapshot``: ``run_backup``, ``prune``, ``gc_objects`` (the write side)
- ``restore``: ``run_restore``, ``verify_snapshot`` (the read side)
- ``faults``: a failing target (full, read-only, unreachable, a damaged or missing manifest) told
  as one ``DependencyFailed`` naming the newest good snapshot, with its retry decision
"""

from airflow_mlops.lifecycle.backup._manifest import (
    FORMAT,
    BackupError,
    FileEntry,
    Manifest,
    ManifestDamaged,
    RestoreError,
)
from airflow_mlops.lifecycle.backup._restore import run_restore, verify_snapshot
from airflow_mlops.lifecycle.backup._snapshot import GC_GRACE_S, gc_objects, list_snapshots, prune, run_backup
from airflow_mlops.lifecycle.backup._sources import FileToCopy
from airflow_mlops.lifecycle.backup._targets import FsTarget, LocalTarget, Target, open_target

__all__ = [
    "FORMAT", "GC_GRACE_S", "BackupError", "FileEntry", "FileToCopy", "FsTarget", "LocalTarget", "Manifest",
    "ManifestDamaged",
    "RestoreError", "Target", "gc_objects", "list_snapshots", "open_target", "prune", "run_backup", "run_restore",
    "verify_snapshot",
]
