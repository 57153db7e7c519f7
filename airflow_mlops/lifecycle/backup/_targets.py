"""Backup repositories on any filesystem: where objects, manifests and temp files live, and
writing them atomically.

``LocalTarget`` uses plain os calls (the fast path); ``FsTarget`` any fsspec filesystem (S3, GCS,
memory…); ``open_target`` picks one for a URI. Paths inside a repository::

    objects/ab/abcdef…          every distinct file content once, named by its SHA-256
    snapshots/<set>/<id>.json   one manifest per snapshot (see ``manifest``)
    tmp/                        staging; anything left here is an interrupted write
"""

from __future__ import annotations

import contextlib
import itertools
import os
import posixpath
import threading
import uuid
from datetime import datetime
from typing import Any, Iterator

from airflow_mlops.lifecycle.backup._manifest import SNAPSHOT_ID, Manifest
from airflow_mlops.lifecycle.paths import expand_path

CHUNK = 1 << 20  # bytes read and hashed at a time


class TargetIOError(Exception):
    """Writing to or reading from the backup target failed (as opposed to reading a source file).
    ``error``: the filesystem's own exception (an OSError such as ENOSPC or EROFS, or a remote
    store's error); ``path``: what was being written."""

    def __init__(self, error: BaseException, path: str):
        super().__init__(f"{path}: {type(error).__name__}: {error}")
        self.error = error
        self.path = path


@contextlib.contextmanager
def on_target(path: str) -> Iterator[None]:
    """Errors raised inside become TargetIOError (the target failed, not the source)."""
    try:
        yield
    except TargetIOError:
        raise
    except Exception as exc:  # noqa: BLE001 - remote stores raise their own types
        raise TargetIOError(exc, path) from exc


class Target:
    """A backup repository on some filesystem. ``LocalTarget`` uses plain os calls; ``FsTarget``
    any fsspec filesystem (S3, GCS, memory…)."""

    root: str
    uri: str
    # Objects this Target object put in place that were not there before: a failed backup
    # removes them (``_snapshot.run_backup``). Guarded by ``_created_lock``.
    created: set[str]

    def _note_created(self, digest: str) -> None:
        with self._created_lock:
            self.created.add(digest)

    def obj_path(self, digest: str) -> str:
        return f"{self.root}/objects/{digest[:2]}/{digest}"

    def manifest_path(self, set_name: str, snap: str) -> str:
        return f"{self.root}/snapshots/{set_name}/{snap}.json"

    def snapshots(self, set_name: str) -> list[str]:
        names = self._list(f"{self.root}/snapshots/{set_name}")
        return sorted(n[:-5] for n in names if n.endswith(".json") and SNAPSHOT_ID.match(n[:-5]))

    def sets(self) -> list[str]:
        return sorted(self._list(f"{self.root}/snapshots", dirs=True))

    def read_manifest(self, set_name: str, snap: str) -> Manifest:
        """The snapshot's manifest. Raises FileNotFoundError if it does not exist, BackupError if it
        is of another format."""
        return Manifest.decode(self._read(self.manifest_path(set_name, snap)), f"{set_name}/{snap}")

    def write_manifest(self, manifest: Manifest) -> None:
        """Publish ``manifest`` atomically: from this moment the snapshot exists."""
        self.publish(self.manifest_path(manifest.set, manifest.id), manifest.encode())

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
        self.created = set()
        self._created_lock = threading.Lock()

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
        new = not os.path.exists(dst)
        os.replace(tmp, dst)
        if new:
            self._note_created(digest)

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
        new = not os.path.exists(dst)
        os.replace(tmp, dst)
        if new:
            self._note_created(os.path.basename(dst))

    def publish(self, path: str, data: bytes) -> None:
        """Write then rename, so readers see the whole manifest or none."""
        self._mkdir(os.path.dirname(path))
        tmp = self.tmp_file()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.delete(tmp)  # a full or failing disk leaves no half-written manifest behind
            raise
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
        self.created = set()
        self._created_lock = threading.Lock()

    def _list(self, path: str, dirs: bool = False) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:  # anything else (unreachable) is the target failing: raised
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
        self._note_created(digest)
        return True

    def publish(self, path: str, data: bytes) -> None:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if self.atomic_put:
            self.fs.pipe_file(path, data)
        else:
            tmp = self.tmp_file()
            self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
            try:
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.delete(tmp)
                raise

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


TIMEOUT_ENV = "AIRFLOW_MLOPS_BACKUP_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0


def request_bound_s() -> float:
    """``$AIRFLOW_MLOPS_BACKUP_TIMEOUT`` in seconds (default 60): the longest one request to a
    remote target may take. Raises ValueError naming the variable for a value below 1 s."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        value = 0.0
    if value < 1:
        raise ValueError(f"${TIMEOUT_ENV} must be a number of seconds >= 1, got {text!r}")
    return value


def bounded_options(target: str, storage_options: dict | None) -> dict:
    """``storage_options`` with a request bound added where the filesystem would otherwise wait
    minutes on a dead server (what the user set wins): http(s) gets an aiohttp total timeout;
    s3 botocore connect/read timeouts and 3 attempts."""
    options = dict(storage_options or {})
    scheme = target.split("://", 1)[0].lower()
    bound = request_bound_s()
    if scheme in ("http", "https"):
        import aiohttp

        client = dict(options.get("client_kwargs") or {})
        client.setdefault("timeout", aiohttp.ClientTimeout(total=bound))
        options["client_kwargs"] = client
    elif scheme in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", bound / 3)
        config.setdefault("read_timeout", bound / 3)
        config.setdefault("retries", {"max_attempts": 3, "mode": "standard"})
        options["config_kwargs"] = config
    return options


def open_target(target: str, *, conn_id: str | None = None, storage_options: dict | None = None, fsync: bool = False) -> Target:
    """A local path, ``file://``, or any fsspec URI; with ``conn_id``, through Airflow's ObjectStoragePath.
    Requests to a remote http(s) or s3 target end within ``$AIRFLOW_MLOPS_BACKUP_TIMEOUT``
    (``bounded_options``)."""
    if conn_id:
        from airflow.sdk import ObjectStoragePath

        p = ObjectStoragePath(target, conn_id=conn_id, **(storage_options or {}))
        fs, root = p.fs, p.path
    elif "://" not in target or target.startswith("file://"):
        return LocalTarget(expand_path(target), fsync=fsync)
    else:
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(target, **bounded_options(target, storage_options))
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return LocalTarget(root, fsync=fsync)
    return FsTarget(fs, root, target)
