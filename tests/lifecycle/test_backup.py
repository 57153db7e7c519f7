"""Backups on real files, a real SQLite MLflow store and real fsspec filesystems: round trip of an
adversarial tree, incremental copies, an interrupted (SIGKILLed) backup, corruption detected on
restore, snapshot retention, and the operators through Airflow."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from airflow_mlops.lifecycle.backup import (
    BackupError,
    RestoreError,
    open_target,
    run_backup,
    run_restore,
    verify_snapshot,
)
from airflow_mlops.lifecycle.backup import _store as store_mod
from tests.conftest import REPO
from tests.helpers import write

DAY = 86400
PAST = time.time() - 3 * DAY


def put(path: Path, content: bytes | str, *, mode: int | None = None, mtime: float = PAST) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    if mode is not None:
        os.chmod(path, mode)
    os.utime(path, (mtime, mtime))
    return path


def adversarial_tree(root: Path, outside: Path) -> None:
    put(outside / "secret.txt", "outside the source")
    put(root / "models" / "model.pkl", os.urandom(300_000))
    put(root / "models" / "run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    put(root / "models" / "empty.bin", b"")
    put(root / "données" / "été 2024 🚀.parquet", "unicode")
    put(root / "données" / "new\nline", "newline in name")
    raw = os.fsencode(str(root / "données")) + b"/latin1-\xe9.csv"  # not valid UTF-8
    with open(raw, "wb") as f:
        f.write(b"raw bytes name")
    os.utime(raw, (PAST, PAST))
    put(root / "deep" / "a" / "b" / "c" / "d" / "leaf.txt", "deep")
    (root / "empty_dir").mkdir()
    os.symlink(str(outside), root / "escape_dir")  # followed by nothing: recorded as a link
    os.symlink(str(outside / "secret.txt"), root / "escape_file")
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    os.symlink("..", root / "deep" / "up")
    os.mkfifo(root / "a_fifo")  # not a regular file: ignored


def snapshot_of(root: Path) -> dict[str, tuple]:
    """Everything a restore should reproduce: file content/mode/mtime, links as links, folders."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(Path(p).read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def objects(target: Path) -> set[str]:
    return {p.name for p in (target / "objects").rglob("*") if p.is_file()}


def spec(target, *sources, **kw) -> dict:
    return {"target": str(target), "sources": [{"name": n, "path": str(p)} for n, p in sources], **kw}


# --- round trip, incremental --------------------------------------------------------------------------


def test_round_trip_of_an_adversarial_tree(tmp_path):
    src, target, dest = tmp_path / "src", tmp_path / "backups", tmp_path / "restored"
    adversarial_tree(src, tmp_path / "outside")
    summary = run_backup(spec(target, ("data", src)))
    expected = {k: v for k, v in snapshot_of(src).items() if k != "a_fifo"}
    files = [k for k, v in expected.items() if v[0] == "file"]
    assert summary["files"] == len(files) == 7 and summary["links"] == 5 and summary["skipped_count"] == 0
    assert summary["copied_files"] == 7 and summary["unchanged_files"] == 0
    # Nothing outside the source was read: the escape link's target is not in the backup.
    manifest = json.loads(next((target / "snapshots" / "default").iterdir()).read_text())
    assert not any("secret" in k for k in manifest["files"])
    assert manifest["links"]["data/escape_file"] == str(tmp_path / "outside" / "secret.txt")

    result = run_restore({"target": str(target), "dest": str(dest)})
    assert result["restored"] == 7 + 5 and result["corrupted"] == [] and result["missing"] == []
    assert snapshot_of(dest / "data") == expected
    verify_snapshot(str(target))


def test_incremental_copies_only_what_changed(tmp_path):
    src, target = tmp_path / "src", tmp_path / "backups"
    for i in range(50):
        put(src / f"f{i:02}.bin", f"content {i}" * 100)
    first = run_backup(spec(target, ("data", src)))
    assert first["copied_files"] == 50
    stored = objects(target)
    assert len(stored) == 50

    put(src / "f01.bin", "changed content")  # new content and mtime
    os.utime(src / "f02.bin", (PAST + 10, PAST + 10))  # touched only: re-read, same content, no new object
    put(src / "new.bin", "brand new")
    (src / "f03.bin").unlink()
    put(src / "dup.bin", "content 7" * 100)  # same content as f07: stored once
    second = run_backup(spec(target, ("data", src)))
    assert (second["copied_files"], second["unchanged_files"], second["files"]) == (4, 47, 51)
    assert second["copied_bytes"] == len("changed content") + 900 + len("brand new") + 900
    assert objects(target) - stored == {
        hashlib.sha256(b"changed content").hexdigest(), hashlib.sha256(b"brand new").hexdigest()}

    third = run_backup(spec(target, ("data", src)))
    assert third["copied_files"] == 0 and third["copied_bytes"] == 0

    dest = tmp_path / "restored"
    run_restore({"target": str(target), "dest": str(dest)})
    assert snapshot_of(dest / "data") == snapshot_of(src)
    # The first snapshot still restores the old state.
    old = tmp_path / "old"
    run_restore({"target": str(target), "dest": str(old), "snapshot": first["snapshot"]})
    assert (old / "data" / "f03.bin").exists() and not (old / "data" / "new.bin").exists()
    assert (old / "data" / "f01.bin").read_text() == "content 1" * 100


def test_file_rewritten_within_the_same_mtime_tick_is_caught_next_time(tmp_path):
    """A file written just now could change again without its mtime moving (coarse clocks): it is
    flagged and re-read by the next backup even though size and mtime look unchanged."""
    src, target = tmp_path / "src", tmp_path / "backups"
    f = put(src / "hot.csv", "a,b\n1,2\n", mtime=time.time())
    run_backup(spec(target, ("data", src)))
    st = os.stat(f)
    f.write_text("a,b\n3,4\n")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    second = run_backup(spec(target, ("data", src)))
    assert second["copied_files"] == 1
    dest = tmp_path / "r"
    run_restore({"target": str(target), "dest": str(dest)})
    assert (dest / "data" / "hot.csv").read_text() == "a,b\n3,4\n"


def test_many_files_and_several_sources(tmp_path):
    target = tmp_path / "backups"
    for s in ("models", "data"):
        for i in range(2000):
            put(tmp_path / s / f"d{i % 20}" / f"{i}.bin", f"{s}-{i}")
    put(tmp_path / "data" / "skip.tmp", "x")
    summary = run_backup({"target": str(target), "workers": 3, "sources": [
        {"name": "models", "path": str(tmp_path / "models")},
        {"name": "data", "path": str(tmp_path / "data"), "exclude": ["*.tmp"]},
    ]})
    assert summary["files"] == 4000 and summary["copied_files"] == 4000
    again = run_backup({"target": str(target), "sources": [
        {"name": "models", "path": str(tmp_path / "models")},
        {"name": "data", "path": str(tmp_path / "data"), "exclude": ["*.tmp"]},
    ]})
    assert again["copied_files"] == 0 and again["unchanged_files"] == 4000
    dest = tmp_path / "restored"
    run_restore({"target": str(target), "dest": str(dest), "sources": ["data"]})
    assert sorted(os.listdir(dest)) == ["data"]
    assert sum(1 for _ in (dest / "data").rglob("*.bin")) == 2000 and not (dest / "data" / "skip.tmp").exists()


# --- adversarial: vanishing, unreadable ----------------------------------------------------------------


def test_files_vanishing_during_the_backup_are_skipped(tmp_path):
    src, target = tmp_path / "src", tmp_path / "backups"
    for i in range(10):
        put(src / f"f{i}.bin", str(i))

    def vanish(f):  # runs just before a file is copied: really delete two of them
        if f.key in ("data/f3.bin", "data/f7.bin"):
            os.unlink(f.path)

    summary = run_backup(spec(target, ("data", src)), _store_hook=vanish)
    assert summary["files"] == 8 and summary["skipped_count"] == 2
    assert sorted(s["reason"] for s in summary["skipped"]) == ["vanished during the backup"] * 2
    dest = tmp_path / "r"
    run_restore({"target": str(target), "dest": str(dest)})
    assert sorted(os.listdir(dest / "data")) == [f"f{i}.bin" for i in range(10) if i not in (3, 7)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes; see the mocked variant below")
def test_unreadable_file_is_skipped_real_permissions(tmp_path):
    src, target = tmp_path / "src", tmp_path / "backups"
    put(src / "ok.bin", "ok")
    put(src / "locked.bin", "no", mode=0)
    summary = run_backup(spec(target, ("data", src)))
    assert summary["files"] == 1
    assert summary["skipped"] == [{"file": str(src / "locked.bin"), "reason": "permission denied"}]


def test_unreadable_file_is_skipped_mocked(tmp_path):
    """Tests run as root, which ignores file modes, so the PermissionError is simulated with
    unittest.mock at the one call where the backup opens a source file (``os.open`` in
    ``backup.store``), for that one file; everything else is real."""
    from unittest import mock

    src, target = tmp_path / "src", tmp_path / "backups"
    put(src / "ok.bin", "ok")
    put(src / "locked.bin", "no")
    put(src / "big_locked.bin", b"b" * (3 << 20))  # the streaming path for big files
    real_open = os.open

    def fake_open(path, *args, **kwargs):
        if str(path).endswith("locked.bin"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    with mock.patch.object(store_mod.os, "open", fake_open):
        summary = run_backup(spec(target, ("data", src)))
    assert summary["files"] == 1
    assert sorted(summary["skipped"], key=lambda s: s["file"]) == [
        {"file": str(src / "big_locked.bin"), "reason": "permission denied"},
        {"file": str(src / "locked.bin"), "reason": "permission denied"},
    ]
    # No half-written temp file is left behind.
    assert [p.name for p in target.rglob("*") if p.is_file() and "tmp" in p.name] == []


# --- interrupted backup ----------------------------------------------------------------------------------


def test_interrupted_backup_leaves_the_previous_snapshot_intact(tmp_path):
    """The second backup is killed with SIGKILL after 20 of its 60 changed files: no snapshot
    appears, the first still verifies and restores, and the next backup completes and cleans up."""
    src, target = tmp_path / "src", tmp_path / "backups"
    for i in range(60):
        put(src / f"f{i:02}.bin", os.urandom(5000))
    first = run_backup(spec(target, ("data", src)))
    original = snapshot_of(src)
    for i in range(60):
        put(src / f"f{i:02}.bin", os.urandom(5000), mtime=PAST + 100)

    script = textwrap.dedent(f"""
        import os, signal
        from airflow_mlops.lifecycle.backup import run_backup
        count = 0
        def die(f):
            global count
            count += 1
            if count == 21:
                os.kill(os.getpid(), signal.SIGKILL)
        run_backup({spec(target, ("data", src), workers=1)!r}, _store_hook=die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert open_target(str(target)).snapshots("default") == [first["snapshot"]]
    assert len(objects(target)) == 60 + 20  # 20 new objects stored, but no manifest names them
    verify_snapshot(str(target))
    dest = tmp_path / "r1"
    run_restore({"target": str(target), "dest": str(dest)})
    assert snapshot_of(dest / "data") == original

    third = run_backup(spec(target, ("data", src), keep_last=1), gc_grace_s=0)
    assert third["copied_files"] == 60 and third["pruned_snapshots"] == [first["snapshot"]]
    # Pruning removed the first snapshot's objects and nothing the new one needs.
    assert len(objects(target)) == 60 and not list((target / "tmp").iterdir())
    dest = tmp_path / "r2"
    run_restore({"target": str(target), "dest": str(dest)})
    assert snapshot_of(dest / "data") == snapshot_of(src)


# --- corruption ------------------------------------------------------------------------------------------------


def test_corrupted_and_missing_objects_are_reported_never_restored(tmp_path):
    src, target, dest = tmp_path / "src", tmp_path / "backups", tmp_path / "restored"
    put(src / "good.txt", "good")
    put(src / "flipped.bin", b"\x00" * 1000)
    put(src / "lost.bin", "will be lost")
    run_backup(spec(target, ("data", src)))
    flipped = target / "objects" / hashlib.sha256(b"\x00" * 1000).hexdigest()[:2] / hashlib.sha256(b"\x00" * 1000).hexdigest()
    data = bytearray(flipped.read_bytes())
    data[500] ^= 0x01  # a single flipped bit
    flipped.write_bytes(bytes(data))
    lost = hashlib.sha256(b"will be lost").hexdigest()
    (target / "objects" / lost[:2] / lost).unlink()

    with pytest.raises(RestoreError) as err:
        verify_snapshot(str(target))
    assert err.value.corrupted == ["data/flipped.bin"] and err.value.missing == ["data/lost.bin"]

    with pytest.raises(RestoreError) as err:
        run_restore({"target": str(target), "dest": str(dest)})
    message = str(err.value)
    assert "corrupted (checksum mismatch): data/flipped.bin" in message
    assert "missing (stored object gone): data/lost.bin" in message
    assert err.value.corrupted == ["data/flipped.bin"] and err.value.missing == ["data/lost.bin"]
    # The good file is restored; nothing at all is written for the bad ones (no temp leftovers).
    assert sorted(os.listdir(dest / "data")) == ["good.txt"]
    assert (dest / "data" / "good.txt").read_text() == "good"


def test_restore_refuses_conflicts_and_unsafe_manifest_paths(tmp_path):
    src, target, dest = tmp_path / "src", tmp_path / "backups", tmp_path / "restored"
    put(src / "a.txt", "a")
    first = run_backup(spec(target, ("data", src)))
    put(dest / "data" / "a.txt", "local edit")
    with pytest.raises(RestoreError, match="already exist"):
        run_restore({"target": str(target), "dest": str(dest)})
    assert (dest / "data" / "a.txt").read_text() == "local edit"
    run_restore({"target": str(target), "dest": str(dest), "overwrite": True})
    assert (dest / "data" / "a.txt").read_text() == "a"

    # A tampered manifest naming a path outside dest is refused before anything is written.
    t = open_target(str(target))
    manifest = t.read_manifest("default", first["snapshot"])
    manifest.files["data/../../evil.txt"] = manifest.files["data/a.txt"]
    manifest.id = "29990101T000000.000000Z"
    t.write_manifest(manifest)
    with pytest.raises(BackupError, match="refusing unsafe path"):
        run_restore({"target": str(target), "dest": str(tmp_path / "other")})
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "other" / "data").exists()


# --- retention of snapshots ---------------------------------------------------------------------------------


def test_snapshot_retention_keep_last_and_max_age(tmp_path):
    src, target = tmp_path / "src", tmp_path / "backups"
    snaps = []
    for i in range(3):
        put(src / f"gen{i}.txt", f"generation {i}")
        snaps.append(run_backup(spec(target, ("data", src), keep_last=2), gc_grace_s=0)["snapshot"])
    t = open_target(str(target))
    assert t.snapshots("default") == snaps[1:]
    put(src / "gen3.txt", "generation 3")
    # Make the oldest remaining snapshot ten days old.
    old_id = "20000101T000000.000000Z"
    os.rename(t.manifest_path("default", snaps[1]), t.manifest_path("default", old_id))
    latest = run_backup(spec(target, ("data", src), max_age="5d"), gc_grace_s=0)
    assert latest["pruned_snapshots"] == [old_id]
    assert t.snapshots("default") == [snaps[2], latest["snapshot"]]
    verify_snapshot(str(target), snapshot=snaps[2])


# --- MLflow store, generated files, fsspec -----------------------------------------------------------------


def test_mlflow_sqlite_store_backup_is_consistent_while_being_written(tmp_path):
    import mlflow

    home = tmp_path / "mlops"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("exp", artifact_location=str(home / "mlartifacts"))
    run = client.create_run(exp)
    put(tmp_path / "model.bin", b"m" * 1000)
    client.log_artifact(run.info.run_id, str(tmp_path / "model.bin"))
    stop = threading.Event()

    def writer():  # a tracking server writing while the backup runs
        w = mlflow.MlflowClient(tracking_uri=uri)
        step = 0
        while not stop.is_set():
            w.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
            step += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.5)
        summary = run_backup({"target": str(tmp_path / "backups"),
                              "sources": [{"kind": "mlflow", "tracking_uri": uri}]})
    finally:
        stop.set()
        thread.join()
    assert summary["files"] == 2  # the database and the one artifact
    dest = tmp_path / "restored"
    run_restore({"target": str(tmp_path / "backups"), "dest": str(dest)})
    db = dest / "mlflow" / "mlflow.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    restored = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    assert restored.get_run(run.info.run_id).data.metrics["loss"] > 0
    artifact = dest / "mlflow" / "mlartifacts" / run.info.run_id / "artifacts" / "model.bin"
    assert artifact.read_bytes() == b"m" * 1000


def _champion_model(tracking_uri: str, experiment: str, name: str) -> None:
    """Train, log and register a tiny model through MLflow's fluent API, as a notebook would, and
    make it the champion."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(experiment)  # no artifact location: MLflow picks ./mlruns of the cwd
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name)
    mlflow.MlflowClient(tracking_uri, tracking_uri).set_registered_model_alias(
        name, "champion", info.registered_model_version)


def test_mlflow_backup_covers_every_artifact_location_and_the_restored_champion_loads(tmp_path, monkeypatch):
    """Issue 19, item 1: an experiment created with mlflow.set_experiment() against the store keeps
    its artifacts in ./mlruns of the client's folder, not in mlartifacts/ beside the database. The
    backup must copy it, and the store restored elsewhere (originals gone) must load the champion."""
    import shutil

    import mlflow
    import numpy as np

    home, notebook = tmp_path / "mlops", tmp_path / "notebook"
    home.mkdir()
    notebook.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.chdir(notebook)  # MLflow fixes a store's default artifact root (./mlruns) when it first opens it
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("pipeline", artifact_location=str(home / "mlartifacts"))  # where stages log
    _champion_model(uri, "notebook-experiment", "churn_model")
    assert (notebook / "mlruns").is_dir()
    monkeypatch.chdir(tmp_path)

    summary = run_backup({"target": str(tmp_path / "backups"), "sources": [{"kind": "mlflow", "tracking_uri": uri}]})
    assert summary["skipped_count"] == 0, summary["skipped"]
    manifest = json.loads(next((tmp_path / "backups" / "snapshots" / "default").glob("*.json")).read_text())
    roots = manifest["sources"]["mlflow"]["artifact_roots"]
    assert str(notebook / "mlruns" / "1") in roots.values() or any(
        v.startswith(str(notebook / "mlruns")) for v in roots.values()), roots
    assert any(k.endswith("MLmodel") for k in manifest["files"]), "the model's files are in the snapshot"

    shutil.rmtree(home)  # the disaster: store and every artifact folder gone
    shutil.rmtree(notebook)
    mlflow.set_tracking_uri(None)
    dest = tmp_path / "restored"
    restored = run_restore({"target": str(tmp_path / "backups"), "dest": str(dest)})
    assert restored["relocated"]["mlflow"] >= 3  # experiment, run, logged model/version locations
    db_uri = f"sqlite:///{dest / 'mlflow' / 'mlflow.db'}"
    mlflow.set_registry_uri(db_uri)
    mlflow.set_tracking_uri(db_uri)
    model = mlflow.pyfunc.load_model("models:/churn_model@champion")
    assert list(model.predict(np.array([[0.0], [3.0]]))) == [0, 1]


def test_mlflow_backup_names_artifact_locations_it_cannot_copy(tmp_path):
    """Issue 19, item 1: a remote (s3://) or relative artifact location is never left out silently:
    the backup fails naming it, or with on_uncopyable_artifacts: skip, names it in the summary."""
    import mlflow

    home = tmp_path / "mlops"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("remote", artifact_location="s3://models-bucket/churn")
    source = {"kind": "mlflow", "tracking_uri": uri}
    with pytest.raises(BackupError, match=r"cannot copy: s3://models-bucket/churn \(a remote artifact store"):
        run_backup({"target": str(tmp_path / "backups"), "sources": [source]})
    assert not list((tmp_path / "backups").glob("snapshots/*/*.json")), "no snapshot was published"
    summary = run_backup({"target": str(tmp_path / "backups"),
                          "sources": [{**source, "on_uncopyable_artifacts": "skip"}]})
    assert [s["file"] for s in summary["skipped"]] == ["s3://models-bucket/churn"]
    assert "artifact location not copied" in summary["skipped"][0]["reason"]


def render_manifests(namespace: str) -> dict[str, str]:
    """Stands in for the Kubernetes manifests a pipeline renders (a CallableSource)."""
    return {"namespace.yaml": f"kind: Namespace\nmetadata: {{name: {namespace}}}\n",
            "rbac/role.yaml": f"kind: Role\nmetadata: {{namespace: {namespace}}}\n"}


def render_escaping() -> dict[str, str]:
    return {"../escape.yaml": "nope"}


def test_generated_files_source(tmp_path):
    target, dest = tmp_path / "backups", tmp_path / "restored"
    run_backup({"target": str(target), "sources": [
        {"name": "k8s", "callable": "tests.lifecycle.test_backup:render_manifests", "kwargs": {"namespace": "ml"}}]})
    run_restore({"target": str(target), "dest": str(dest)})
    assert (dest / "k8s" / "rbac" / "role.yaml").read_text() == "kind: Role\nmetadata: {namespace: ml}\n"
    with pytest.raises(BackupError, match="refusing unsafe path"):
        run_backup({"target": str(target), "sources": [{"name": "k8s", "callable": "tests.lifecycle.test_backup:render_escaping"}]})


def test_fsspec_target_round_trip_and_corruption(tmp_path):
    """The generic fsspec path (what s3:// uses), on fsspec's in-memory filesystem."""
    import fsspec

    src = tmp_path / "src"
    put(src / "a.bin", os.urandom(3 * 1024 * 1024))  # several chunks
    put(src / "b.txt", "bee")
    uri = f"memory://bk-{uuid.uuid4().hex}"
    first = run_backup(spec(uri, ("data", src)))
    assert first["copied_files"] == 2 and first["target"] == uri
    assert run_backup(spec(uri, ("data", src)))["copied_files"] == 0
    dest = tmp_path / "restored"
    run_restore({"target": uri, "dest": str(dest)})
    assert snapshot_of(dest / "data") == snapshot_of(src)

    fs = fsspec.filesystem("memory")
    digest = hashlib.sha256(b"bee").hexdigest()
    fs.pipe_file(f"{uri[len('memory://'):]}/objects/{digest[:2]}/{digest}", b"bez")
    with pytest.raises(RestoreError) as err:
        run_restore({"target": uri, "dest": str(tmp_path / "again")})
    assert err.value.corrupted == ["data/b.txt"]
    assert not (tmp_path / "again" / "data" / "b.txt").exists()


# --- operators -------------------------------------------------------------------------------------------------


def test_bad_arguments_fail_when_the_dag_is_parsed():
    from airflow_mlops.operators.backup import BackupOperator, RestoreOperator

    with pytest.raises(ValueError) as err:
        BackupOperator(task_id="b", target="relative/backups", sources=[{"name": "a b", "path": "/x"}], keep_last=0)
    text = str(err.value)
    assert "target: expected an absolute path" in text
    assert "sources.0.name: String should match pattern" in text
    assert "keep_last: Input should be greater than or equal to 1" in text
    with pytest.raises(ValueError, match="sources: source names must be unique; repeated: d"):
        BackupOperator(task_id="b", target="/b", sources=[{"name": "d", "path": "/x"}, {"name": "d", "path": "/y"}])
    with pytest.raises(ValueError, match="dest: Input should be a valid string"):
        RestoreOperator(task_id="r", target="/b", dest=None)


def test_backup_and_restore_operators_through_airflow(airflow_db, mlops_home, dags_folder):
    """A maintenance pipeline in YAML (custom stages), paths under $AIRFLOW_MLOPS_HOME: the backup
    and restore summaries come back through XCom; after an object is corrupted the restore task
    fails and leaves the earlier good copy alone."""
    import mlflow
    from airflow.utils.state import DagRunState

    from airflow_mlops import load_pipelines

    data = mlops_home / "data"
    put(data / "churn" / "train.parquet", os.urandom(2000))
    put(data / "churn" / "test.parquet", b"test rows")
    uri = f"sqlite:///{mlops_home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("exp", artifact_location=str(mlops_home / "mlartifacts"))
    write(dags_folder, "backup.yaml", """
        id: nightly_backup
        stages:
          backup:
            kind: custom
            operator: airflow_mlops.operators.backup:BackupOperator
            args:
              target: ${AIRFLOW_MLOPS_HOME}/backups
              sources:
                - kind: mlflow
                - {name: data, path: "${AIRFLOW_MLOPS_HOME}/data"}
              keep_last: 3
          restore:
            kind: custom
            operator: airflow_mlops.operators.backup:RestoreOperator
            args:
              target: ${AIRFLOW_MLOPS_HOME}/backups
              dest: ${AIRFLOW_MLOPS_HOME}/restored
              sources: [data]
              overwrite: true
        """)
    dag = load_pipelines(folder=dags_folder)["nightly_backup"]

    dr = dag.test()
    assert dr.state == DagRunState.SUCCESS
    tis = {t.task_id: t for t in dr.get_task_instances()}
    made = tis["backup.run"].xcom_pull(task_ids="backup.run")
    assert made["files"] == 3 and made["copied_files"] == 3 and made["target"] == str(mlops_home / "backups")
    restored = tis["restore.run"].xcom_pull(task_ids="restore.run")
    assert restored["snapshot"] == made["snapshot"] and restored["restored"] == 2
    assert (mlops_home / "restored" / "data" / "churn" / "test.parquet").read_bytes() == b"test rows"

    digest = hashlib.sha256(b"test rows").hexdigest()
    (mlops_home / "backups" / "objects" / digest[:2] / digest).write_bytes(b"tampered!")
    dr = dag.test()
    states = {t.task_id: t.state for t in dr.get_task_instances()}
    assert dr.state == DagRunState.FAILED
    assert states == {"backup.run": "success", "restore.run": "failed"}
    assert (mlops_home / "restored" / "data" / "churn" / "test.parquet").read_bytes() == b"test rows"
