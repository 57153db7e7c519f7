"""The manifest (``lifecycle.backup.manifest``): its typed file record, and snapshots written before
the record existed, byte for byte as that code wrote them, still verify, restore and serve as the
base of an incremental backup."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from airflow_mlops.lifecycle.backup import (
    FORMAT,
    BackupError,
    FileEntry,
    Manifest,
    open_target,
    run_backup,
    run_restore,
    verify_snapshot,
)

# Written by the backup code as it was before FileEntry (commit f259010, lifecycle/backup.py), for
# the tree CONTENT below; only the source's absolute path is a placeholder. Rows are positional:
# [size, mtime_ns, mode, sha256] and a trailing 1 for a racy file (here: a future mtime).
OLD_SNAPSHOT = "20261129T215217.424887Z"
OLD_MANIFEST = (
    '{"format":"airflow-mlops-backup/1","set":"default","id":"20261129T215217.424887Z","algorithm":"sha256",'
    '"created":"2026-11-29T21:52:17.424922+00:00","sources":{"data":{"kind":"directory","path":"@SRC@"}},'
    '"files":{"data/sub/future.bin":[28,4000000000000000000,384,'
    '"437502712dd50e199ce668af1d10b92d773e896924fd7f45de6c772181548b80",1],'
    '"data/sub/run.sh":[18,1600000001000000000,493,"299001868fb8c02fd431c336c6d058f5558c5dff5b5af5e6fe04b870a6a9cbba"],'
    '"data/a.txt":[6,1600000000000000000,420,"b6a98d9ce9a2d9149288fa3df42d377c3e42737afdcdaf714e33c0a100b51060"]},'
    '"links":{"data/sub/link":"../a.txt"},"dirs":["data/empty","data/sub"],"skipped":[]}'
)
# rel path → (content, mode, mtime_ns): the tree OLD_MANIFEST was taken of.
CONTENT = {
    "a.txt": (b"alpha\n", 0o644, 1_600_000_000_000_000_000),
    "sub/run.sh": (b"#!/bin/sh\necho hi\n", 0o755, 1_600_000_001_000_000_000),
    "sub/future.bin": (b"written while the backup ran", 0o600, 4_000_000_000_000_000_000),
}


def make_tree(root: Path) -> None:
    for rel, (data, mode, mtime_ns) in CONTENT.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime_ns, mtime_ns))
    (root / "empty").mkdir()
    os.symlink("../a.txt", root / "sub" / "link")


def old_repository(target: Path, src: Path) -> bytes:
    """A backup repository holding OLD_MANIFEST and its objects, as the old code left it."""
    for data, _mode, _mtime in CONTENT.values():
        digest = hashlib.sha256(data).hexdigest()
        obj = target / "objects" / digest[:2] / digest
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
    raw = OLD_MANIFEST.replace("@SRC@", str(src)).encode()
    (target / "snapshots" / "default").mkdir(parents=True)
    (target / "snapshots" / "default" / f"{OLD_SNAPSHOT}.json").write_bytes(raw)
    return raw


def test_an_old_manifest_reads_into_named_fields_and_encodes_back_byte_for_byte(tmp_path):
    raw = old_repository(tmp_path / "backups", tmp_path / "src")
    m = open_target(str(tmp_path / "backups")).read_manifest("default", OLD_SNAPSHOT)
    assert (m.set, m.id, m.algorithm) == ("default", OLD_SNAPSHOT, "sha256")
    assert m.files["data/a.txt"] == FileEntry(size=6, mtime_ns=1_600_000_000_000_000_000, mode=0o644,
                                              digest=hashlib.sha256(b"alpha\n").hexdigest(), racy=False)
    assert m.files["data/sub/future.bin"].racy and not m.files["data/sub/run.sh"].racy
    assert m.links == {"data/sub/link": "../a.txt"} and m.dirs == ["data/empty", "data/sub"]
    # Same keys, same order, same rows, then the seal (a key old readers ignore): old readers read
    # new manifests, and the seal is the SHA-256 of exactly the old bytes.
    sealed = m.encode()
    assert sealed == raw[:-1] + f',"manifest_sha256":"{hashlib.sha256(raw).hexdigest()}"}}'.encode()
    assert m.digests() == {hashlib.sha256(data).hexdigest() for data, _m, _t in CONTENT.values()}


def test_an_old_snapshot_verifies_and_restores_with_modes_mtimes_links_and_folders(tmp_path):
    src, target, dest = tmp_path / "src", tmp_path / "backups", tmp_path / "restored"
    old_repository(target, src)
    assert verify_snapshot(str(target)) == {"snapshot": OLD_SNAPSHOT, "set": "default", "files": 3, "verified": 3}
    result = run_restore({"target": str(target), "dest": str(dest)})
    assert result["restored"] == 4 and result["bytes"] == 6 + 18 + 28
    for rel, (data, mode, mtime_ns) in CONTENT.items():
        st = os.lstat(dest / "data" / rel)
        assert (dest / "data" / rel).read_bytes() == data
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (mode, mtime_ns), rel
    assert os.readlink(dest / "data" / "sub" / "link") == "../a.txt"
    assert (dest / "data" / "empty").is_dir()


def test_an_old_snapshot_is_the_base_of_the_next_incremental_backup(tmp_path):
    """Unchanged files reuse the old rows unread; the racy one is read again and stays racy."""
    src, target = tmp_path / "src", tmp_path / "backups"
    make_tree(src)
    old = json.loads(old_repository(target, src))
    summary = run_backup({"target": str(target), "sources": [{"name": "data", "path": str(src)}]})
    assert (summary["copied_files"], summary["unchanged_files"], summary["files"]) == (1, 2, 3)
    new = json.loads((target / "snapshots" / "default" / f"{summary['snapshot']}.json").read_bytes())
    assert new["format"] == FORMAT
    assert new["files"] == old["files"]  # the same rows, the racy marker included
    dest = tmp_path / "restored"
    run_restore({"target": str(target), "dest": str(dest)})
    assert (dest / "data" / "sub" / "future.bin").read_bytes() == CONTENT["sub/future.bin"][0]


def test_file_entry_row_round_trip_and_when_an_entry_may_be_reused():
    plain = FileEntry.from_json([10, 5, 0o644, "ab"])
    assert plain == FileEntry(10, 5, 0o644, "ab", False) and plain.to_json() == [10, 5, 0o644, "ab"]
    racy = FileEntry.from_json([10, 5, 0o644, "ab", 1])
    assert racy.racy and racy.to_json() == [10, 5, 0o644, "ab", 1]
    assert plain.unchanged(10, 5, 0o644)
    assert not racy.unchanged(10, 5, 0o644)  # flagged for a re-read
    assert not plain.unchanged(11, 5, 0o644) and not plain.unchanged(10, 6, 0o644) and not plain.unchanged(10, 5, 0o600)
    assert not FileEntry(10, -1, 0o644, "ab").unchanged(10, -1, 0o644)  # staged copies are always read


def test_a_manifest_of_another_format_or_with_a_broken_row_is_refused():
    with pytest.raises(BackupError, match="unknown format 'airflow-mlops-backup/2'"):
        Manifest.decode(b'{"format": "airflow-mlops-backup/2", "files": {}}', "default/x")
    with pytest.raises(BackupError, match="malformed file row"):
        Manifest.decode(json.dumps({"format": FORMAT, "files": {"data/a": [1, 2]}}))
