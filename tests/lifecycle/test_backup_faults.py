"""A backup target that fails, for real: a flipped byte in a manifest, a full target (a 1 MiB
tmpfs), a read-only target (a read-only bind mount), a missing target, a snapshot whose manifest
is gone, an unreachable remote target (a closed port). Each ends in one DependencyFailed naming
the target and the newest good snapshot, with the right retry decision; nothing half-made is left,
and once the fault clears the same backup or restore succeeds.

Mounting needs root (CI runs as root; so does this sandbox): without it those tests skip, saying so.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from airflow_mlops._core.errors import DependencyFailed
from airflow_mlops.lifecycle.backup import gc_objects, open_target, run_backup, run_restore, verify_snapshot

PAST = time.time() - 86400


def put(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    os.utime(path, (PAST, PAST))
    return path


def spec(target: Path | str, src: Path, **kw) -> dict:
    return {"target": str(target), "sources": [{"name": "data", "path": str(src)}], **kw}


def stored_objects(target: Path) -> list[str]:
    return sorted(p.name for p in (target / "objects").rglob("*") if p.is_file())


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}): this test needs root")


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def first_problem(caplog) -> str:
    """The first warning or error logged, with no traceback attached to anything before it."""
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems and not any(r.exc_info for r in caplog.records[:caplog.records.index(problems[0]) + 1])
    return problems[0].getMessage()


def flip(path: Path, at: int, mask: int = 0x80) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_manifest_names_the_damaged_snapshot_and_the_newest_good_one(tmp_path, caplog):
    src, target = tmp_path / "src", tmp_path / "backups"
    put(src / "a.txt", "first")
    older = run_backup(spec(target, src))["snapshot"]
    put(src / "a.txt", "second")
    newest = run_backup(spec(target, src))["snapshot"]
    manifest = target / "snapshots" / "default" / f"{newest}.json"
    flip(manifest, len(manifest.read_bytes()) // 2)  # one byte in the middle: not UTF-8 any more

    with pytest.raises(DependencyFailed) as err:
        run_restore({"target": str(target), "dest": str(tmp_path / "out")})
    message = str(err.value)
    assert err.value.retryable is False
    assert message.splitlines()[0].startswith(
        f"backup target ({target}) holds a damaged manifest for snapshot default/{newest} (its content does not "
        "match its manifest_sha256 seal) during restore")
    assert f"the newest good one is {older} (manifest sealed and all 1 stored object(s) present" in message
    assert f"snapshot='{older}'" in message
    assert first_problem(caplog) == message  # first in the log
    assert not (tmp_path / "out" / "data").exists()
    with pytest.raises(DependencyFailed, match="damaged manifest"):
        verify_snapshot(str(target))

    # A flipped byte in the seal itself: the bytes are no longer JSON (UTF-8), said so, not raised.
    flip(manifest, len(manifest.read_bytes()) // 2)  # undo
    flip(manifest, len(manifest.read_bytes()) - 10)
    with pytest.raises(DependencyFailed, match=r"\(not valid JSON \(UnicodeDecodeError at byte \d+\)\)"):
        run_restore({"target": str(target), "dest": str(tmp_path / "out")})

    # A flip that keeps the JSON valid (a size digit) is caught by the seal.
    flip(manifest, len(manifest.read_bytes()) - 10)  # undo
    at = manifest.read_bytes().index(b'"data/a.txt":[') + len(b'"data/a.txt":[')
    flip(manifest, at, 0x01)  # "6" -> "7"
    with pytest.raises(DependencyFailed, match=r"does not match its manifest_sha256 seal"):
        run_restore({"target": str(target), "dest": str(tmp_path / "out")})

    # The older snapshot restores. While a damaged manifest is there, no object is collected (what
    # it references is unknown); a new backup reads everything again (no trusted base).
    run_restore({"target": str(target), "dest": str(tmp_path / "out"), "snapshot": older})
    assert (tmp_path / "out" / "data" / "a.txt").read_text() == "first"
    (target / "snapshots" / "default" / f"{older}.json").unlink()
    assert gc_objects(open_target(str(target)), gc_grace_s=0) == 0 and len(stored_objects(target)) == 2
    again = run_backup(spec(target, src))
    assert again["copied_files"] == 1 and again["unchanged_files"] == 0
    run_restore({"target": str(target), "dest": str(tmp_path / "out2")})
    assert (tmp_path / "out2" / "data" / "a.txt").read_text() == "second"


def test_a_full_target_names_the_space_needed_and_removes_what_this_run_stored(tmp_path, mounts, caplog):
    src, target = tmp_path / "src", tmp_path / "small"
    target.mkdir()
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target))
    mounts.append(target)
    put(src / "small.txt", "fits")
    first = run_backup(spec(target, src))["snapshot"]
    kept_objects = stored_objects(target)
    for i in range(3):
        put(src / f"big{i}.bin", os.urandom(700_000))

    started = time.monotonic()
    with pytest.raises(DependencyFailed) as err:
        run_backup(spec(target, src, workers=1))
    assert time.monotonic() - started < 30
    message = str(err.value)
    assert err.value.retryable is False
    assert message.startswith(f"backup target ({target}) ran out of space (ENOSPC): this snapshot needed up to "
                              "2.0 MiB for 3 new or changed file(s);")
    assert "was free when it began" in message and "during backup of set 'default' (snapshot" in message
    assert f"the newest good one is {first}" in message and "object(s) this run stored were removed" in message
    assert first_problem(caplog) == message
    # Nothing half-made: the earlier snapshot alone, its objects alone, no temp file left.
    assert [p.name for p in (target / "snapshots" / "default").iterdir()] == [f"{first}.json"]
    assert stored_objects(target) == kept_objects
    assert not list((target / "tmp").glob("*")) if (target / "tmp").exists() else True
    run_restore({"target": str(target), "dest": str(tmp_path / "out"), "snapshot": first})

    # The fault clears (a bigger target): the same backup succeeds.
    subprocess.run(["mount", "-o", "remount,size=8m", str(target)], check=True)
    done = run_backup(spec(target, src, workers=1))
    assert done["copied_files"] == 3
    verify_snapshot(str(target))


def test_a_read_only_target_fails_without_retry_and_still_restores(tmp_path, mounts):
    src, target = tmp_path / "src", tmp_path / "backups"
    put(src / "a.txt", "alpha")
    first = run_backup(spec(target, src))["snapshot"]
    mount("--bind", str(target), str(target))
    mounts.append(target)
    mount("-o", "remount,bind,ro", str(target))
    put(src / "b.txt", "beta")

    with pytest.raises(DependencyFailed) as err:
        run_backup(spec(target, src))
    assert err.value.retryable is False
    assert str(err.value).startswith(f"backup target ({target}) is read-only: ")
    assert f"the newest good one is {first}" in str(err.value)
    run_restore({"target": str(target), "dest": str(tmp_path / "out")})  # reading still works
    assert (tmp_path / "out" / "data" / "a.txt").read_text() == "alpha"

    subprocess.run(["mount", "-o", "remount,bind,rw", str(target)], check=True)
    assert run_backup(spec(target, src))["copied_files"] == 1


def test_a_missing_target_or_snapshot_metadata_fails_without_retry(tmp_path):
    with pytest.raises(DependencyFailed) as err:
        run_restore({"target": str(tmp_path / "nowhere"), "dest": str(tmp_path / "out")})
    assert err.value.retryable is False
    assert str(err.value).startswith(f"backup target ({tmp_path / 'nowhere'}) does not exist during restore")

    src, target = tmp_path / "src", tmp_path / "backups"
    put(src / "a.txt", "alpha")
    first = run_backup(spec(target, src))["snapshot"]
    put(src / "a.txt", "beta")
    lost = run_backup(spec(target, src))["snapshot"]
    (target / "snapshots" / "default" / f"{lost}.json").unlink()  # its metadata is gone
    with pytest.raises(DependencyFailed) as err:
        run_restore({"target": str(target), "dest": str(tmp_path / "out"), "snapshot": lost})
    message = str(err.value)
    assert err.value.retryable is False
    assert f"has no manifest for snapshot default/{lost}: its metadata is missing" in message
    assert f"snapshot='{first}' is the newest good one" in message


def test_an_unreachable_remote_target_is_retryable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once this block ends: nothing listens there
    uri = f"http://127.0.0.1:{port}/backups"
    started = time.monotonic()
    with pytest.raises(DependencyFailed) as err:
        run_restore({"target": uri, "dest": str(tmp_path / "out")})
    assert time.monotonic() - started < 30
    assert err.value.retryable is True
    assert str(err.value).startswith(f"backup target ({uri}) failed (")


def test_the_restore_operator_fails_a_damaged_manifest_without_retry(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.operators.backup import RestoreOperator

    src, target = tmp_path / "src", tmp_path / "backups"
    put(src / "a.txt", "alpha")
    snap = run_backup(spec(target, src))["snapshot"]
    flip(target / "snapshots" / "default" / f"{snap}.json", 10)
    op = RestoreOperator(task_id="restore", target=str(target), dest=str(tmp_path / "out"))
    with pytest.raises(AirflowFailException, match=f"damaged manifest for snapshot default/{snap}"):
        op.execute({})


def test_a_hung_remote_target_ends_within_the_bound_and_is_retryable(tmp_path, monkeypatch):
    with socket.socket() as hung:  # listens, takes connections into its backlog, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}/backups"
        monkeypatch.setenv("AIRFLOW_MLOPS_BACKUP_TIMEOUT", "3")
        started = time.monotonic()
        with pytest.raises(DependencyFailed) as err:
            run_restore({"target": uri, "dest": str(tmp_path / "out")})
        took = time.monotonic() - started
    assert took < 3 + 15, took
    assert err.value.retryable is True
    assert str(err.value).startswith(f"backup target ({uri}) timed out (within $AIRFLOW_MLOPS_BACKUP_TIMEOUT=3 s "
                                     "per request) during restore of the newest snapshot of set 'default'")
    assert not (tmp_path / "out" / "data").exists()
