"""Storing one file: read it once, hash it while copying it into a temp object, then move the
object into place under its SHA-256 (a rename locally, a server-side move on object stores).

Each ``store_*`` returns ``(sha256 hex, bytes read, mtime_ns after the read, unstable)``, where
``unstable`` says the file changed while it was read (the snapshot marks it racy). Raises what
opening or reading the source raises (FileNotFoundError, PermissionError…), and TargetIOError
when writing to the target fails (full, read-only, unreachable); no temp file is left.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from airflow_mlops.lifecycle.backup._sources import FileToCopy
from airflow_mlops.lifecycle.backup._targets import CHUNK, FsTarget, LocalTarget, on_target

Stored = tuple[str, int, int, bool]  # (sha256, bytes, mtime_ns after the read, changed while read)


_local = threading.local()


def _buffer() -> bytearray:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(CHUNK)
    return buf


def store_local(target: LocalTarget, f: FileToCopy) -> Stored:
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
            with on_target(dst):
                target.write_object(dst, chunk)
            size = n
        else:
            return _store_stream(target, f, fd, h, view, 0)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    return digest, size, after.st_mtime_ns, (after.st_mtime_ns, after.st_size) != (f.mtime_ns, size)


def _store_stream(target: LocalTarget, f: FileToCopy, fd: int, h: Any, view: memoryview, have: int) -> Stored:
    """A file bigger than one chunk: stream into tmp/ while hashing, then rename to its object."""
    with on_target(f"{target.root}/tmp"):
        tmp = target.tmp_file()
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    size = 0
    try:
        n = have
        while True:
            if n:
                chunk = view[:n]
                h.update(chunk)
                with on_target(tmp):
                    while chunk:
                        chunk = chunk[os.write(out, chunk):]
                size += n
            n = os.readv(fd, [view])
            if not n:
                break
        if target.fsync:
            with on_target(tmp):
                os.fsync(out)
    except BaseException:
        os.close(out)
        os.unlink(tmp)
        raise
    os.close(out)
    after = os.fstat(fd)
    digest = h.hexdigest()
    with on_target(target.obj_path(digest)):
        target.commit_object(tmp, digest)
    return digest, size, after.st_mtime_ns, (after.st_mtime_ns, after.st_size) != (f.mtime_ns, size)


def store_fs(target: FsTarget, f: FileToCopy) -> Stored:
    """The same for any fsspec target: stream into its tmp/, then move to the object's name."""
    buf = _buffer()
    view = memoryview(buf)
    h = hashlib.sha256()
    tmp = target.tmp_file()
    with open(f.path, "rb", buffering=0) as src:
        before = os.fstat(src.fileno())
        size = 0
        with on_target(tmp):
            dst = target.fs.open(tmp, "wb")
        try:
            while True:
                n = src.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
                with on_target(tmp):
                    dst.write(bytes(view[:n]))
                size += n
            with on_target(tmp):
                dst.close()
        except BaseException:
            _discard(target, dst, tmp)
            raise
        after = os.fstat(src.fileno())
    digest = h.hexdigest()
    with on_target(target.obj_path(digest)):
        target.commit_object(tmp, digest)
    unstable = (after.st_mtime_ns, after.st_size) != (before.st_mtime_ns, before.st_size) or after.st_size != size
    return digest, size, after.st_mtime_ns, unstable


def _discard(target: FsTarget, dst: Any, tmp: str) -> None:
    """Drop a half-written temp object (best effort: the target may be what failed)."""
    for step in (getattr(dst, "discard", None) or dst.close, lambda: target.delete(tmp)):
        try:
            step()
        except Exception:  # noqa: BLE001,S110 - the original error is the one to report
            pass
