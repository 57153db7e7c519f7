"""A snapshot's manifest: what it holds and how it is written on disk.

On disk a manifest is one JSON object (format ``airflow-mlops-backup/1``)::

    {"format": "airflow-mlops-backup/1", "set": "default", "id": "20260101T000000.000000Z",
     "algorithm": "sha256", "created": "<ISO 8601>", "sources": {<name>: {"kind": …}},
     "files": {"<source>/<rel>": [size, mtime_ns, mode, sha256] or [size, mtime_ns, mode, sha256, 1]},
     "links": {"<source>/<rel>": "<link target>"}, "dirs": ["<source>/<rel>", …],
     "skipped": [{"file": …, "reason": …}], "manifest_sha256": "<hex>"}

A file row is a JSON array (compact for trees of millions of files); in Python it is a
``FileEntry`` with named fields. The trailing ``1`` marks a "racy" file, one modified while it was
read: the next backup reads it again whatever its size and mtime say. ``Manifest.decode`` reads
every manifest the format has ever written; ``Manifest.encode`` writes the same rows back.

``manifest_sha256``, the last key, seals the manifest: it is the SHA-256 of the manifest's bytes
without it (the JSON closed right before ``,"manifest_sha256"``). A manifest whose seal does not
match, or that is no longer JSON, is ``ManifestDamaged``; manifests written before the seal
existed carry none and are read as they are (readers of those ignore the extra key).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, NamedTuple

from airflow_mlops._core.errors import MlopsError

FORMAT = "airflow-mlops-backup/1"
SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}\.\d{6}Z(-\d+)?$")
_ID_TIME = "%Y%m%dT%H%M%S.%fZ"
_SEAL_KEY = "manifest_sha256"
_SEAL = re.compile(rb',"manifest_sha256":"([0-9a-f]{64})"\}\s*$')


class BackupError(Exception):
    """A backup or restore that cannot go on: an unreadable source, an unknown snapshot, a
    manifest of another format, an unsafe path in a manifest."""


class ManifestDamaged(BackupError):
    """A snapshot's manifest that cannot be trusted: not JSON (a flipped byte), its seal does not
    match its content, or its structure is broken. ``snapshot``: ``<set>/<id>``; ``reason``: what
    is wrong, in a few words."""

    def __init__(self, snapshot: str, reason: str):
        super().__init__(f"the manifest of snapshot {snapshot} is damaged: {reason}")
        self.snapshot = snapshot
        self.reason = reason


class RestoreError(BackupError, MlopsError):
    """Some files of a snapshot could not be restored: their content does not match the manifest's
    checksum (``corrupted``) or their stored object is gone (``missing``). None of them was written.
    ``conflicts``: files that already exist where the restore would write (``overwrite`` not set).
    A retry would find the same files: not retryable (``_core.outcome``)."""

    retryable = False

    def __init__(self, message: str, corrupted: Iterable[str] = (), missing: Iterable[str] = (),
                 conflicts: Iterable[str] = ()):
        super().__init__(message)
        self.corrupted = list(corrupted)
        self.missing = list(missing)
        self.conflicts = list(conflicts)


class FileEntry(NamedTuple):
    """One regular file of a snapshot.

    ``size`` in bytes; ``mtime_ns`` the modification time in nanoseconds since the epoch (-1 for a
    staged file such as the SQLite copy: always read again); ``mode`` the permission bits
    (``st_mode & 0o7777``); ``digest`` the SHA-256 of the content in hex, which is also the name of
    its stored object; ``racy`` whether the next backup must read it again (it changed while it
    was read, or was modified just before)."""

    size: int
    mtime_ns: int
    mode: int
    digest: str
    racy: bool = False

    def unchanged(self, size: int, mtime_ns: int, mode: int) -> bool:
        """Whether a file found with this size, mtime and mode may reuse this entry unread."""
        return self.mtime_ns == mtime_ns and self.size == size and self.mode == mode and not self.racy and mtime_ns >= 0

    def to_json(self) -> list:
        """The on-disk row: ``[size, mtime_ns, mode, digest]``, plus ``1`` when racy."""
        row: list = [self.size, self.mtime_ns, self.mode, self.digest]
        if self.racy:
            row.append(1)
        return row

    @classmethod
    def from_json(cls, row: list) -> FileEntry:
        """A row as any version of the format wrote it. Raises BackupError for a malformed row."""
        try:
            size, mtime_ns, mode, digest = row[0], row[1], row[2], row[3]
        except (IndexError, KeyError, TypeError):
            raise BackupError(f"malformed file row in a manifest: {row!r}") from None
        return cls(size, mtime_ns, mode, digest, len(row) > 4 and bool(row[4]))


@dataclass
class Manifest:
    """A snapshot's content. ``files`` maps ``<source>/<rel>`` to its FileEntry, ``links`` to the
    link's target, ``dirs`` lists folders (so empty ones are restored), ``sources`` describes each
    source (``{"kind": "directory" | "mlflow" | "callable", …}``), ``skipped`` the files not copied."""

    set: str
    id: str
    files: dict[str, FileEntry] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    created: str = ""
    algorithm: str = "sha256"

    @classmethod
    def decode(cls, raw: bytes | str, where: str = "manifest") -> Manifest:
        """Parse a manifest's bytes, checking its seal when it has one. Raises ManifestDamaged
        (naming ``where``, ``<set>/<id>``) for bytes that are not JSON, a seal that does not match
        or a broken structure, BackupError for another format."""
        raw_bytes = raw.encode() if isinstance(raw, str) else bytes(raw)
        sealed = _SEAL.search(raw_bytes)
        if sealed is not None:
            body = raw_bytes[:sealed.start()] + b"}"
            if hashlib.sha256(body).hexdigest() != sealed.group(1).decode():
                raise ManifestDamaged(where, "its content does not match its manifest_sha256 seal")
        try:
            data = json.loads(raw_bytes)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestDamaged(where, f"not valid JSON ({type(exc).__name__} at byte "
                                         f"{getattr(exc, 'pos', getattr(exc, 'start', '?'))})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise BackupError(f"snapshot {where} has an unknown format {found!r}")
        if sealed is None and _SEAL_KEY in data:
            raise ManifestDamaged(where, "its manifest_sha256 seal is damaged")
        from_json = FileEntry.from_json
        try:
            return cls(
                set=data.get("set", ""), id=data.get("id", ""),
                files={k: from_json(v) for k, v in data.get("files", {}).items()},
                links=dict(data.get("links", {})), dirs=list(data.get("dirs", [])),  # absent in early snapshots
                sources=dict(data.get("sources", {})), skipped=list(data.get("skipped", [])),
                created=data.get("created", ""), algorithm=data.get("algorithm", "sha256"),
            )
        except BackupError as exc:
            raise ManifestDamaged(where, str(exc)) from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise ManifestDamaged(where, f"broken structure ({exc})") from None

    def encode(self) -> bytes:
        """Compact JSON, keys in the order the format has always used, sealed by its SHA-256."""
        body = json.dumps({
            "format": FORMAT, "set": self.set, "id": self.id, "algorithm": self.algorithm,
            "created": self.created, "sources": self.sources,
            "files": {k: e.to_json() for k, e in self.files.items()},
            "links": self.links, "dirs": self.dirs, "skipped": self.skipped,
        }, separators=(",", ":")).encode()
        return body[:-1] + f',"{_SEAL_KEY}":"{hashlib.sha256(body).hexdigest()}"}}'.encode()

    def digests(self) -> set[str]:
        """The stored objects this snapshot needs."""
        return {e.digest for e in self.files.values()}


def new_snapshot_id(existing: Iterable[str]) -> str:
    """``YYYYmmddTHHMMSS.ffffffZ`` (UTC now), with ``-N`` appended if that id is taken."""
    base = datetime.now(timezone.utc).strftime(_ID_TIME)
    taken = set(existing)
    snap, n = base, 0
    while snap in taken:
        n += 1
        snap = f"{base}-{n}"
    return snap


def snapshot_time(snap: str) -> float:
    """When the snapshot ``snap`` was taken, in seconds since the epoch (from its id)."""
    return datetime.strptime(snap.split("-")[0], _ID_TIME).replace(tzinfo=timezone.utc).timestamp()


def safe_rel(rel: str, what: str) -> str:
    """``rel`` if it is a plain relative path (no ``..``, ``.``, empty part, leading ``/`` or NUL);
    else BackupError naming ``what`` it came from."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in rel:
        raise BackupError(f"refusing unsafe path in {what}: {rel!r}")
    return rel
