"""Incremental, content-addressed backups with verified restore, to any fsspec target.

Layout of a backup repository (the target URI)::

    objects/ab/abcdef…      every distinct file content once, named by its SHA-256
    snapshots/<set>/<id>.json   one manifest per snapshot: per file its size, mtime, mode, SHA-256
    tmp/                    staging; anything left here is an interrupted write

A snapshot exists once its manifest exists, and the manifest is written last, atomically (a
rename on local disks, a single PUT on object stores). An interrupted backup therefore leaves no
snapshot, only unreferenced objects that a later prune removes; the previous snapshots are
untouched. Incremental: a file whose size and mtime match the previous snapshot of the same set is
not read again (its recorded checksum is reused); a changed file is read once, hashed while it is
copied, and stored only if no snapshot holds that content yet.

Restore verifies the checksum of every file as it streams it, writes a file only when it matches,
and raises ``RestoreError`` listing every corrupted or missing file (none of which is written).

The MLflow SQLite store is copied with SQLite's online backup API, so the copy is consistent even
while the tracking server writes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

from airflow_mlops.lifecycle import backup_mlflow
from airflow_mlops.lifecycle.paths import Matcher, ScanReport, expand_path, walk_dirs, within
from airflow_mlops.lifecycle.specs import BackupSpec, CallableSource, DirectorySource, MlflowStoreSource, RestoreSpec

log = logging.getLogger(__name__)

FORMAT = "airflow-mlops-backup/1"
CHUNK = 1 << 20
RACY_NS = 100_000_000  # a file modified this close to being read is re-read by the next backup
GC_GRACE_S = 3600.0  # unreferenced objects younger than this are left alone (another backup may be writing)
_SNAPSHOT = re.compile(r"^\d{8}T\d{6}\.\d{6}Z(-\d+)?$")


class BackupError(Exception):
    pass


class RestoreError(BackupError):
    """Some files of a snapshot could not be restored: their content does not match the manifest's
    checksum (``corrupted``) or their stored object is gone (``missing``). None of them was written."""

    def __init__(self, message: str, corrupted: list[str] = (), missing: list[str] = (), conflicts: list[str] = ()):
        super().__init__(message)
        self.corrupted = list(corrupted)
        self.missing = list(missing)
        self.conflicts = list(conflicts)


# --- targets -------------------------------------------------------------------------------------------


class Target:
    """A backup repository on some filesystem. ``LocalTarget`` uses plain os calls; ``FsTarget``
    any fsspec filesystem (S3, GCS, memory…)."""

    root: str
    uri: str

    def obj_path(self, digest: str) -> str:
        return f"{self.root}/objects/{digest[:2]}/{digest}"

    def manifest_path(self, set_name: str, snap: str) -> str:
        return f"{self.root}/snapshots/{set_name}/{snap}.json"

    def snapshots(self, set_name: str) -> list[str]:
        names = self._list(f"{self.root}/snapshots/{set_name}")
        return sorted(n[:-5] for n in names if n.endswith(".json") and _SNAPSHOT.match(n[:-5]))

    def sets(self) -> list[str]:
        return sorted(self._list(f"{self.root}/snapshots", dirs=True))

    def read_manifest(self, set_name: str, snap: str) -> dict[str, Any]:
        data = json.loads(self._read(self.manifest_path(set_name, snap)))
        if data.get("format") != FORMAT:
            raise BackupError(f"snapshot {set_name}/{snap} has an unknown format {data.get('format')!r}")
        return data

    # subclasses: _list, _read, has, store_stream, publish, open_object, delete, list_objects, clean_tmp


class LocalTarget(Target):
    def __init__(self, root: str, *, fsync: bool = False) -> None:
        self.root = root.rstrip("/") or "/"
        self.uri = self.root
        self.fsync = fsync
        self._made: set[str] = set()
        self._lock = threading.Lock()
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count()

    def _mkdir(self, path: str) -> None:
        if path not in self._made:
            os.makedirs(path, exist_ok=True)
            with self._lock:
                self._made.add(path)

    def _list(self, path: str, dirs: bool = False) -> list[str]:
        try:
            with os.scandir(path) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False) == dirs]
        except FileNotFoundError:
            return []

    def _read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def has(self, digest: str) -> bool:
        return os.path.exists(self.obj_path(digest))

    def tmp_file(self) -> str:
        self._mkdir(f"{self.root}/tmp")
        return f"{self.root}/tmp/{self._prefix}-{next(self._counter)}"

    def commit_object(self, tmp: str, digest: str) -> None:
        """Move a fully written temp file into place. Same name, same content: replacing an
        existing object is harmless (and heals a damaged one)."""
        dst = self.obj_path(digest)
        self._mkdir(os.path.dirname(dst))
        os.replace(tmp, dst)

    def write_object(self, dst: str, data: memoryview) -> None:
        """A small object in one write: a temp file beside it, then a rename."""
        folder = os.path.dirname(dst)
        self._mkdir(folder)
        tmp = f"{folder}/.tmp-{self._prefix}-{next(self._counter)}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            while data:
                data = data[os.write(out, data):]
            if self.fsync:
                os.fsync(out)
        except BaseException:
            os.close(out)
            os.unlink(tmp)
            raise
        os.close(out)
        os.replace(tmp, dst)

    def publish(self, path: str, data: bytes) -> None:
        """Write then rename, so readers see the whole manifest or none."""
        self._mkdir(os.path.dirname(path))
        tmp = self.tmp_file()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def open_object(self, digest: str):
        return open(self.obj_path(digest), "rb", buffering=0)

    def delete(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def list_objects(self) -> Iterator[tuple[str, str, float]]:
        """(name, path, mtime) of every stored object, and of temp files beside them (".tmp-…")."""
        base = f"{self.root}/objects"
        for sub in self._list(base, dirs=True):
            with os.scandir(f"{base}/{sub}") as it:
                for e in it:
                    try:
                        yield e.name, e.path, e.stat(follow_symlinks=False).st_mtime
                    except FileNotFoundError:
                        continue

    def list_tmp(self) -> Iterator[tuple[str, float]]:
        base = f"{self.root}/tmp"
        for name in self._list(base):
            try:
                yield f"{base}/{name}", os.lstat(f"{base}/{name}").st_mtime
            except FileNotFoundError:
                continue


class FsTarget(Target):
    """Any fsspec filesystem. Objects are streamed to ``tmp/`` and moved into place (a server-side
    copy on object stores); manifests are written in one PUT where that is atomic (object stores)
    and through a temp name and a move elsewhere."""

    _ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "oss", "r2"}

    def __init__(self, fs: Any, root: str, uri: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self.atomic_put = bool(set(protocols) & self._ATOMIC_PUT)

    def _list(self, path: str, dirs: bool = False) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True)
        except (FileNotFoundError, OSError):
            return []
        want = "directory" if dirs else "file"
        return [posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == want]

    def _read(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def has(self, digest: str) -> bool:
        return self.fs.exists(self.obj_path(digest))

    def tmp_file(self) -> str:
        return f"{self.root}/tmp/{uuid.uuid4().hex}"

    def commit_object(self, tmp: str, digest: str) -> bool:
        dst = self.obj_path(digest)
        if self.fs.exists(dst):
            self.fs.rm_file(tmp)
            return False
        self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
        self.fs.mv(tmp, dst)
        return True

    def publish(self, path: str, data: bytes) -> None:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if self.atomic_put:
            self.fs.pipe_file(path, data)
        else:
            tmp = self.tmp_file()
            self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)

    def open_object(self, digest: str):
        return self.fs.open(self.obj_path(digest), "rb")

    def delete(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _mtime(self, info: dict) -> float:
        for key in ("mtime", "LastModified", "last_modified", "created", "updated"):
            v = info.get(key)
            if isinstance(v, datetime):
                return v.timestamp()
            if isinstance(v, (int, float)):
                return float(v)
            if isinstance(v, str):
                try:
                    return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
                except ValueError:
                    continue
        return 0.0  # unknown age: treated as old

    def list_objects(self) -> Iterator[tuple[str, str, float]]:
        try:
            found = self.fs.find(f"{self.root}/objects", detail=True)
        except FileNotFoundError:
            return
        for name, info in found.items():
            yield posixpath.basename(name), name, self._mtime(info)

    def list_tmp(self) -> Iterator[tuple[str, float]]:
        try:
            found = self.fs.find(f"{self.root}/tmp", detail=True)
        except FileNotFoundError:
            return
        for name, info in found.items():
            yield name, self._mtime(info)


def open_target(target: str, *, conn_id: str | None = None, storage_options: dict | None = None, fsync: bool = False) -> Target:
    """A local path, ``file://``, or any fsspec URI; with ``conn_id``, through Airflow's ObjectStoragePath."""
    if conn_id:
        from airflow.sdk import ObjectStoragePath

        p = ObjectStoragePath(target, conn_id=conn_id, **(storage_options or {}))
        fs, root = p.fs, p.path
    elif "://" not in target or target.startswith("file://"):
        return LocalTarget(expand_path(target), fsync=fsync)
    else:
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(target, **(storage_options or {}))
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return LocalTarget(root, fsync=fsync)
    return FsTarget(fs, root, target)


# --- sources ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class FileToCopy:
    key: str  # "<source>/<rel>"
    path: str  # absolute local path
    size: int
    mtime_ns: int  # -1: always copy (staged files such as the SQLite copy)
    mode: int


@dataclass
class Collected:
    """The scan's result. Files whose size and mtime match the previous snapshot go straight to
    ``files`` with their recorded checksum (not read again); the others to ``to_copy``."""

    previous: dict[str, list] = field(default_factory=dict)
    files: dict[str, list] = field(default_factory=dict)  # key → [size, mtime_ns, mode, sha256(, racy)]
    to_copy: list[FileToCopy] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # key → link target
    dirs: list[str] = field(default_factory=list)  # keys of folders (so empty ones are restored)
    skipped: list[dict[str, str]] = field(default_factory=list)
    described: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add_file(self, key: str, path: str, size: int, mtime_ns: int, mode: int) -> None:
        prev = self.previous.get(key)
        # Unchanged: same size, mtime and mode, and not flagged for a re-read ("racy").
        if prev is not None and prev[1] == mtime_ns and prev[0] == size and prev[2] == mode and len(prev) == 4 and mtime_ns >= 0:
            self.files[key] = prev
        else:
            self.to_copy.append(FileToCopy(key, path, size, mtime_ns, mode))


def _collect_tree(name: str, prefix: str, root: str, matcher: Matcher, out: Collected) -> None:
    """Walk ``root`` (never following symlinks) and add its files, links and folders under
    ``name/prefix``."""
    report = ScanReport()
    base = f"{name}/{prefix}" if prefix else name
    real_root = os.path.realpath(root)
    everything = matcher.everything
    previous, files, to_copy, links = out.previous, out.files, out.to_copy, out.links
    get = previous.get
    S_IFMT, S_IFREG, S_IFLNK = 0o170000, stat.S_IFREG, stat.S_IFLNK
    # The hot loop of an incremental backup: kept flat (no calls but the lstat) on purpose.
    for rel, dir_path, entries in walk_dirs(root, matcher, report):
        prefix_key = f"{base}/{rel}" if rel else base
        if rel:
            out.dirs.append(prefix_key)
        for de in entries:
            name_ = de.name
            if not everything and not matcher.included(f"{rel}/{name_}" if rel else name_, name_):
                continue
            try:
                st = de.stat(follow_symlinks=False)
            except OSError as exc:
                report.skip(f"{rel}/{name_}" if rel else name_, exc)
                continue
            mode = st.st_mode
            kind = mode & S_IFMT
            key = f"{prefix_key}/{name_}"
            if kind == S_IFREG:
                size, mtime, perm = st.st_size, st.st_mtime_ns, mode & 0o7777
                prev = get(key)
                # Unchanged: same size, mtime and mode, and not flagged for a re-read ("racy").
                if prev is not None and prev[1] == mtime and prev[0] == size and prev[2] == perm and len(prev) == 4:
                    files[key] = prev
                else:
                    to_copy.append(FileToCopy(key, f"{dir_path}/{name_}", size, mtime, perm))
            elif kind == S_IFLNK:
                try:
                    links[key] = os.readlink(f"{dir_path}/{name_}")
                except OSError as exc:
                    report.skip(f"{rel}/{name_}" if rel else name_, exc)
    for s in report.skipped:
        out.skipped.append({"file": os.path.join(real_root, s.rel), "reason": s.reason})


def _sqlite_online_copy(db: str, staging: str) -> str:
    """A consistent copy of a live SQLite database (``sqlite3.Connection.backup``)."""
    import sqlite3

    dst_path = os.path.join(staging, "mlflow.db")
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(dst_path)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    return dst_path


def _collect_source(source: Any, staging: str, out: Collected) -> None:
    if isinstance(source, DirectorySource):
        path = os.path.realpath(expand_path(source.path))
        if not os.path.isdir(path):
            if source.missing_ok and not os.path.lexists(path):
                out.skipped.append({"file": path, "reason": f"source '{source.name}' does not exist"})
                return
            raise BackupError(f"source '{source.name}': {path} is not a folder")
        out.described[source.name] = {"kind": "directory", "path": path}
        _collect_tree(source.name, "", path, Matcher(source.include, source.exclude), out)
    elif isinstance(source, MlflowStoreSource):
        _collect_mlflow(source, staging, out)
    elif isinstance(source, CallableSource):
        from airflow_mlops._core.paths import import_string

        produced = import_string(source.callable)(**source.kwargs)
        if isinstance(produced, (str, os.PathLike)):
            folder = os.path.realpath(os.fspath(produced))
        elif isinstance(produced, dict):
            folder = os.path.join(staging, "callable-" + source.name)
            for rel, content in produced.items():
                rel = _safe_rel(str(rel), f"file name {rel!r} returned by {source.callable}")
                dest = os.path.join(folder, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(content.encode() if isinstance(content, str) else bytes(content))
        else:
            raise BackupError(f"source '{source.name}': {source.callable} returned {type(produced).__name__}; "
                              "expected a dict of file name → text/bytes or a folder path")
        out.described[source.name] = {"kind": "callable", "callable": source.callable}
        _collect_tree(source.name, "", folder, Matcher(["*"]), out)


def _collect_mlflow(source: MlflowStoreSource, staging: str, out: Collected) -> None:
    """The store itself (a consistent SQLite copy, or a file store's tree) and every artifact folder
    it references (see ``backup_mlflow``). A referenced location that cannot be copied (a remote
    URI, a relative path) is named in the summary, and fails the backup unless the source says
    ``on_uncopyable_artifacts: skip``."""
    uri = source.tracking_uri
    artifacts = source.artifacts
    if uri is None:
        from airflow_mlops.hooks.mlflow import resolve_target
        from airflow_mlops.spec.models import MlflowSettings

        resolved = resolve_target(MlflowSettings(), "backup")
        uri = resolved.tracking_uri
        artifacts = artifacts or resolved.artifact_location
    described: dict[str, Any] = {"kind": "mlflow", "tracking_uri": uri}
    store = None
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///"):]
        if not os.path.isabs(db):
            raise BackupError(f"source '{source.name}': a relative SQLite URI ({uri}) cannot be located; use an absolute one")
        if not os.path.exists(db):
            if source.missing_ok:
                out.skipped.append({"file": db, "reason": f"source '{source.name}': no MLflow database yet"})
                return
            raise BackupError(f"source '{source.name}': the MLflow database {db} does not exist")
        stage_dir = os.path.join(staging, "mlflow-" + source.name)
        os.makedirs(stage_dir)
        copy = _sqlite_online_copy(db, stage_dir)
        st = os.stat(copy)
        out.to_copy.append(FileToCopy(f"{source.name}/mlflow.db", copy, st.st_size, -1, 0o644))  # always re-read
        artifacts = artifacts or os.path.join(os.path.dirname(db), "mlartifacts")
        locations = backup_mlflow.sqlite_locations(copy)
    elif uri.startswith("file://") or uri.startswith("/"):
        store = os.path.realpath(expand_path(uri))
        _collect_tree(source.name, "mlruns", store, Matcher(["*"]), out)
        described["store"] = store
        locations = backup_mlflow.file_store_locations(store) if os.path.isdir(store) else []
    else:
        raise BackupError(
            f"source '{source.name}': cannot back up the MLflow store at {uri}: only SQLite and file stores can be "
            "copied consistently from here; back up the tracking server's database with its own tools"
        )
    if source.include_artifacts:
        default_root = os.path.realpath(expand_path(artifacts)) if artifacts and "://" not in artifacts.replace(
            "file://", "") else None
        plan = backup_mlflow.plan_roots(locations, default_root=default_root, proxy_root=default_root, covered=store)
        if plan.uncopyable:
            listed = "; ".join(f"{loc} ({why})" for loc, why in plan.uncopyable[:20])
            if source.on_uncopyable_artifacts == "fail":
                raise BackupError(
                    f"source '{source.name}': the MLflow store references {len(plan.uncopyable)} artifact location(s) "
                    f"this backup cannot copy: {listed}. Back them up with their own tools and set "
                    "on_uncopyable_artifacts: skip, or move them to a local folder"
                )
            for loc, why in plan.uncopyable:
                out.skipped.append({"file": loc, "reason": f"source '{source.name}': artifact location not copied: {why}"})
        for prefix, root in plan.roots.items():
            _collect_tree(source.name, prefix, root, Matcher(["*"]), out)
        described["artifact_roots"] = plan.roots
        if default_root:
            described["artifacts"] = default_root
    out.described[source.name] = described


# --- backup ---------------------------------------------------------------------------------------------------


_local = threading.local()


def _buffer() -> bytearray:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(CHUNK)
    return buf


def _store_local(target: "LocalTarget", f: FileToCopy) -> tuple[str, int, int, bool]:
    """Copy one file into a temp object while hashing it, then rename it into place.
    Returns (sha256, bytes, mtime_ns after the read, whether it changed since the scan)."""
    buf = _buffer()
    view = memoryview(buf)
    h = hashlib.sha256()
    fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = 0
        if 0 <= f.size <= CHUNK:  # small file: one read, hash, then write next to its final place
            n = os.readv(fd, [buf])
            if n == CHUNK:  # grew since the scan: stream the rest the general way
                return _store_stream(target, f, fd, h, view, n)
            chunk = view[:n]
            h.update(chunk)
            digest = h.hexdigest()
            dst = target.obj_path(digest)
            target.write_object(dst, chunk)
            size = n
        else:
            return _store_stream(target, f, fd, h, view, 0)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    return digest, size, after.st_mtime_ns, (after.st_mtime_ns, after.st_size) != (f.mtime_ns, size)


def _store_stream(target: "LocalTarget", f: FileToCopy, fd: int, h: Any, view: memoryview, have: int) -> tuple[str, int, int, bool]:
    """A file bigger than one chunk: stream into tmp/ while hashing, then rename to its object."""
    tmp = target.tmp_file()
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    size = 0
    try:
        n = have
        while True:
            if n:
                chunk = view[:n]
                h.update(chunk)
                while chunk:
                    chunk = chunk[os.write(out, chunk):]
                size += n
            n = os.readv(fd, [view])
            if not n:
                break
        if target.fsync:
            os.fsync(out)
    except BaseException:
        os.close(out)
        os.unlink(tmp)
        raise
    os.close(out)
    after = os.fstat(fd)
    digest = h.hexdigest()
    target.commit_object(tmp, digest)
    return digest, size, after.st_mtime_ns, (after.st_mtime_ns, after.st_size) != (f.mtime_ns, size)


def _store_fs(target: FsTarget, f: FileToCopy) -> tuple[str, int, int, bool]:
    buf = _buffer()
    view = memoryview(buf)
    h = hashlib.sha256()
    tmp = target.tmp_file()
    with open(f.path, "rb", buffering=0) as src:
        before = os.fstat(src.fileno())
        size = 0
        with target.fs.open(tmp, "wb") as dst:
            while True:
                n = src.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
                dst.write(bytes(view[:n]))
                size += n
        after = os.fstat(src.fileno())
    digest = h.hexdigest()
    target.commit_object(tmp, digest)
    unstable = (after.st_mtime_ns, after.st_size) != (before.st_mtime_ns, before.st_size) or after.st_size != size
    return digest, size, after.st_mtime_ns, unstable


def _snapshot_id(existing: Iterable[str]) -> str:
    base = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    taken = set(existing)
    snap, n = base, 0
    while snap in taken:
        n += 1
        snap = f"{base}-{n}"
    return snap


def _as_spec(spec: Any, model: type) -> Any:
    return spec if isinstance(spec, model) else model.model_validate(spec)


def run_backup(spec: BackupSpec | dict, *, logger: logging.Logger | None = None, gc_grace_s: float = GC_GRACE_S,
               _store_hook: Callable[[FileToCopy], None] | None = None) -> dict[str, Any]:
    """Take one snapshot of the sources, publish it, then apply snapshot retention. Returns a summary."""
    spec = _as_spec(spec, BackupSpec)
    logger = logger or log
    started = time.time()
    start_ns = time.time_ns()
    target = open_target(spec.target, conn_id=spec.conn_id, storage_options=spec.storage_options, fsync=spec.fsync)
    existing = target.snapshots(spec.name)
    previous: dict[str, list] = {}
    if existing:
        previous = target.read_manifest(spec.name, existing[-1])["files"]
    staging = tempfile.mkdtemp(prefix="airflow-mlops-backup-")
    try:
        collected = Collected(previous=previous)
        for source in spec.sources:
            _collect_source(source, staging, collected)
        files, to_copy = collected.files, collected.to_copy
        local = isinstance(target, LocalTarget)
        store = _store_local if local else _store_fs
        copied_files = copied_bytes = 0
        skipped = list(collected.skipped)

        def work(f: FileToCopy):
            if _store_hook is not None:
                _store_hook(f)
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
            racy = unstable or f.mtime_ns < 0 or mtime_ns >= start_ns - RACY_NS
            entry = [size, mtime_ns if unstable else f.mtime_ns, f.mode, digest]
            if racy:
                entry.append(1)  # re-read next time, whatever its size and mtime say
            files[f.key] = entry

        # Small local files are copied in this thread: per file, a thread hand-off costs more than
        # the copy (the GIL ping-pong is worst on a busy machine). Big files, and every file of a
        # remote target (network latency), go to the worker threads, where hashing and I/O run
        # without the GIL.
        to_copy.sort(key=lambda f: f.size, reverse=True)
        parallel = [f for f in to_copy if not local or f.size >= CHUNK] if spec.workers > 1 else []
        serial = [f for f in to_copy if local and f.size < CHUNK] if parallel else to_copy
        if parallel:
            with ThreadPoolExecutor(max_workers=spec.workers) as pool:
                futures = [pool.submit(work, f) for f in parallel]
                for f in serial:
                    record(*work(f))
                for fut in futures:
                    record(*fut.result())
        else:
            for f in serial:
                record(*work(f))
        snap = _snapshot_id(existing)
        manifest = {
            "format": FORMAT, "set": spec.name, "id": snap, "algorithm": "sha256",
            "created": datetime.now(timezone.utc).isoformat(),
            "sources": collected.described,
            "files": files,
            "links": dict(sorted(collected.links.items())),
            "dirs": sorted(collected.dirs),
            "skipped": skipped,
        }
        # Everything the manifest names is stored: publishing it makes the snapshot exist.
        target.publish(target.manifest_path(spec.name, snap), json.dumps(manifest, separators=(",", ":")).encode())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    pruned = prune(target, spec.name, keep_last=spec.keep_last, max_age=spec.max_age, gc_grace_s=gc_grace_s)
    total = sum(v[0] for v in files.values())
    summary = {
        "snapshot": snap, "set": spec.name, "target": target.uri,
        "files": len(files), "bytes": total, "links": len(collected.links),
        "copied_files": copied_files, "copied_bytes": copied_bytes, "unchanged_files": len(files) - copied_files,
        "skipped": skipped[:200], "skipped_count": len(skipped),
        "pruned_snapshots": pruned["snapshots"], "deleted_objects": pruned["objects"],
        "seconds": round(time.time() - started, 3),
    }
    logger.info("Snapshot %s/%s published at %s: %d files (%s), %d copied (%s), %d unchanged, %d links, %d skipped",
                spec.name, snap, target.uri, summary["files"], _human(total), summary["copied_files"],
                _human(copied_bytes), summary["unchanged_files"], summary["links"], len(skipped))
    for s in skipped[:100]:
        logger.warning("  skipped %s: %s", s["file"], s["reason"])
    if pruned["snapshots"]:
        logger.info("Pruned snapshots %s; deleted %d unreferenced objects", ", ".join(pruned["snapshots"]), pruned["objects"])
    return summary


def prune(target: Target, set_name: str, *, keep_last: int | None, max_age: Any = None, gc_grace_s: float = GC_GRACE_S) -> dict[str, Any]:
    """Delete the set's snapshots beyond ``keep_last`` / older than ``max_age`` (never the newest),
    then every stored object no remaining snapshot of any set references."""
    snaps = target.snapshots(set_name)
    doomed: list[str] = []
    if snaps:
        older = snaps[:-1]  # the newest always stays
        if keep_last is not None:
            doomed += snaps[: max(0, len(snaps) - keep_last)]
        if max_age is not None:
            cutoff = datetime.now(timezone.utc).timestamp() - max_age.total_seconds()
            doomed += [s for s in older if _snapshot_time(s) < cutoff]
    doomed = sorted(set(doomed))
    for s in doomed:
        target.delete(target.manifest_path(set_name, s))
    deleted_objects = 0
    if doomed:
        deleted_objects = gc_objects(target, gc_grace_s=gc_grace_s)
    return {"snapshots": doomed, "objects": deleted_objects}


def gc_objects(target: Target, *, gc_grace_s: float = GC_GRACE_S) -> int:
    """Delete objects no snapshot references, and leftover temp files, older than the grace time."""
    referenced: set[str] = set()
    for s in target.sets():
        for snap in target.snapshots(s):
            referenced.update(v[3] for v in target.read_manifest(s, snap)["files"].values())
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


def _snapshot_time(snap: str) -> float:
    return datetime.strptime(snap.split("-")[0], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def list_snapshots(target: str, name: str = "default", **kw: Any) -> list[str]:
    return open_target(target, **kw).snapshots(name)


# --- restore ------------------------------------------------------------------------------------------------


def _safe_rel(rel: str, what: str) -> str:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in rel:
        raise BackupError(f"refusing unsafe path in {what}: {rel!r}")
    return rel


def _verify_stream(target: Target, digest: str, sink) -> bool:
    """Stream an object into ``sink`` (or nowhere) while hashing; True if it matches ``digest``."""
    h = hashlib.sha256()
    with target.open_object(digest) as src:
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            if sink is not None:
                sink.write(chunk)
    return h.hexdigest() == digest


def verify_snapshot(target: str, *, name: str = "default", snapshot: str | None = None, workers: int = 4, **kw: Any) -> dict[str, Any]:
    """Re-hash every stored file of a snapshot; raise RestoreError listing corrupted/missing ones."""
    t = open_target(target, **kw)
    snap = _pick_snapshot(t, name, snapshot)
    manifest = t.read_manifest(name, snap)
    entries = list(manifest["files"].items())

    def check(item):
        key, v = item
        try:
            return key, "ok" if _verify_stream(t, v[3], None) else "corrupted"
        except FileNotFoundError:
            return key, "missing"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, entries))
    corrupted = sorted(k for k, s in results if s == "corrupted")
    missing = sorted(k for k, s in results if s == "missing")
    if corrupted or missing:
        raise RestoreError(_problems(name, snap, corrupted, missing), corrupted, missing)
    return {"snapshot": snap, "set": name, "files": len(entries), "verified": len(entries)}


def _pick_snapshot(t: Target, name: str, snapshot: str | None) -> str:
    snaps = t.snapshots(name)
    if not snaps:
        raise BackupError(f"no snapshot of set '{name}' at {t.uri}")
    if snapshot is None:
        return snaps[-1]
    if snapshot not in snaps:
        raise BackupError(f"no snapshot '{snapshot}' of set '{name}' at {t.uri}; there are: {', '.join(snaps[-10:])}")
    return snapshot


def _problems(name: str, snap: str, corrupted: list[str], missing: list[str]) -> str:
    lines = [f"snapshot {name}/{snap} failed verification: {len(corrupted)} corrupted, {len(missing)} missing file(s); "
             "these were NOT restored:"]
    lines += [f"  corrupted (checksum mismatch): {k}" for k in corrupted[:50]]
    lines += [f"  missing (stored object gone): {k}" for k in missing[:50]]
    if len(corrupted) + len(missing) > 100:
        lines.append("  …")
    return "\n".join(lines)


def run_restore(spec: RestoreSpec | dict, *, logger: logging.Logger | None = None) -> dict[str, Any]:
    """Restore a snapshot into ``dest/<source>/…``, verifying every file's checksum as it is
    written. Matching files are restored (with their mode and mtime), then links and folders; if
    any file is corrupted or missing, nothing is written for it and RestoreError lists them all."""
    spec = _as_spec(spec, RestoreSpec)
    logger = logger or log
    t = open_target(spec.target, conn_id=spec.conn_id, storage_options=spec.storage_options)
    snap = _pick_snapshot(t, spec.name, spec.snapshot)
    manifest = t.read_manifest(spec.name, snap)
    wanted = set(spec.sources) if spec.sources else None
    if wanted is not None:
        unknown = wanted - set(manifest["sources"])
        if unknown:
            raise BackupError(f"snapshot {spec.name}/{snap} has no source(s) {sorted(unknown)}; it has {sorted(manifest['sources'])}")

    def chosen(mapping):
        out = {}
        for key, v in mapping.items():
            key = _safe_rel(key, f"manifest of {spec.name}/{snap}")
            if wanted is None or key.split("/", 1)[0] in wanted:
                out[key] = v
        return out

    files, links = chosen(manifest["files"]), chosen(manifest.get("links", {}))
    dirs = [d for d in chosen({d: None for d in manifest.get("dirs", [])})]
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

    def restore_one(item):
        key, v = item
        final = os.path.join(dest, key)
        parent = os.path.dirname(final)
        _make_dir(dest, os.path.dirname(key), made)
        if not within(dest, parent):
            return key, "unsafe"
        tmp = os.path.join(parent, f".{os.path.basename(final)}.restore-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "xb") as out:
                ok = _verify_stream(t, v[3], out)
        except FileNotFoundError:
            _unlink(tmp)
            return key, "missing"
        except BaseException:
            _unlink(tmp)
            raise
        if not ok:
            _unlink(tmp)
            return key, "corrupted"
        os.chmod(tmp, v[2] & 0o777)
        if v[1] >= 0:
            os.utime(tmp, ns=(v[1], v[1]))
        if os.path.isdir(final) and not os.path.islink(final):
            _unlink(tmp)
            return key, "conflict"
        os.replace(tmp, final)
        return key, "ok"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(restore_one, sorted(files.items())))
    status: dict[str, list[str]] = {}
    for key, s in results:
        status.setdefault(s, []).append(key)
    for key, link_target in sorted(links.items()):
        path = os.path.join(dest, key)
        _make_dir(dest, os.path.dirname(key))
        if not within(dest, os.path.dirname(path)):
            status.setdefault("unsafe", []).append(key)
            continue
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                status.setdefault("conflict", []).append(key)
                continue
            os.unlink(path)
        os.symlink(link_target, path)
        status.setdefault("ok", []).append(key)
    corrupted, missing = status.get("corrupted", []), status.get("missing", [])
    summary = {
        "snapshot": snap, "set": spec.name, "dest": dest, "restored": len(status.get("ok", [])),
        "bytes": sum(files[k][0] for k in status.get("ok", []) if k in files),
        "corrupted": corrupted, "missing": missing,
        "not_restored": sorted(status.get("unsafe", []) + status.get("conflict", [])),
    }
    logger.info("Restored %d files (%s) of snapshot %s/%s into %s", summary["restored"], _human(summary["bytes"]),
                spec.name, snap, dest)
    if corrupted or missing:
        raise RestoreError(_problems(spec.name, snap, corrupted, missing), corrupted, missing)
    if spec.relocate_mlflow_artifacts:
        summary["relocated"] = backup_mlflow.relocate(manifest["sources"], wanted, dest, logger)
    return summary


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


def _human(n: float) -> str:
    from airflow_mlops.lifecycle.retention import human_bytes

    return human_bytes(n)
