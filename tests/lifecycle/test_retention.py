"""Retention on real files: rules, adversarial trees (symlink loops and escapes, vanishing files,
permission errors, unicode names, many files), dry run equal to the real run, and the operator
through Airflow. MLflow policies: tests/lifecycle/test_retention_mlflow.py."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from unittest import mock

import pytest

from airflow_mlops.lifecycle import paths as paths_mod
from airflow_mlops.lifecycle.retention import apply, plan, run_retention
from airflow_mlops.lifecycle.specs import FilesPolicy, RetentionSpec
from tests.helpers import write

DAY = 86400
NOW = time.time()


def touch(path: Path, days_old: float, content: bytes = b"x", *, size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if size is None else b"\0" * size)
    t = NOW - days_old * DAY
    os.utime(path, (t, t))
    return path


def link(path: Path, target: str, days_old: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    t = NOW - days_old * DAY
    os.utime(path, (t, t), follow_symlinks=False)
    return path


def tree(root: Path) -> set[str]:
    """Every entry under root (links as links), relative."""
    out = set()
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def files_spec(root: Path, **policy) -> RetentionSpec:
    return RetentionSpec(policies=[FilesPolicy(root=str(root), **policy)])


# --- rules ---------------------------------------------------------------------------------------


def test_max_age_keep_last_min_keep_and_size_budget(tmp_path):
    root = tmp_path / "ckpt"
    for i in range(1, 8):  # step1 is 1 day old … step7 is 7 days old; 100 bytes each
        touch(root / f"step{i}.pt", i, size=100)
    touch(root / "notes.txt", 30)

    by_age = plan(files_spec(root, include=["*.pt"], max_age="4.5d"))
    assert sorted(Path(i.id).name for i in by_age.items) == ["step5.pt", "step6.pt", "step7.pt"]
    assert {i.reason for i in by_age.items} == {"max_age"}

    last = plan(files_spec(root, include=["*.pt"], keep_last=2))
    assert sorted(Path(i.id).name for i in last.items) == [f"step{i}.pt" for i in range(3, 8)]

    # min_keep is a floor no rule goes under: 'older than 1 hour' would take all seven.
    floor = plan(files_spec(root, include=["*.pt"], max_age="1h", min_keep=3))
    assert sorted(Path(i.id).name for i in floor.items) == ["step4.pt", "step5.pt", "step6.pt", "step7.pt"]

    # 700 bytes under a 250-byte budget: the oldest go until the two newest remain.
    budget = plan(files_spec(root, include=["*.pt"], max_total_size=250))
    assert sorted(Path(i.id).name for i in budget.items) == [f"step{i}.pt" for i in range(3, 8)]
    assert {i.reason for i in budget.items} == {"max_total_size"}
    assert budget.summary()["bytes"] == 500

    # Nothing was deleted by planning, and notes.txt (not covered by the pattern) is never listed.
    assert len(list(root.iterdir())) == 8
    assert all("notes.txt" not in i.id for p in (by_age, last, floor, budget) for i in p.items)


def test_policy_needs_a_rule_and_an_absolute_root():
    with pytest.raises(ValueError, match="needs at least one of max_age, keep_last, max_total_size"):
        FilesPolicy(root="/data")
    with pytest.raises(ValueError, match="expected an absolute path"):
        FilesPolicy(root="data", max_age="1d")
    with pytest.raises(ValueError, match="refusing the filesystem root"):
        FilesPolicy(root="/", max_age="1d")


def test_exclude_and_directory_units_grouped_per_parent(tmp_path):
    """Stage outputs laid out as data/<pipeline>/<stage>/<run>: keep the 2 newest runs per stage."""
    data = tmp_path / "data"
    for stage in ("preprocess", "serve"):
        for age in (1, 2, 3, 4):
            touch(data / "churn" / stage / f"run{age}" / "part.parquet", age, size=10)
    touch(data / "churn" / "serve" / "pinned" / "x.parquet", 50, size=10)
    spec = files_spec(data, unit="directory", depth=3, group_by="parent", keep_last=2, exclude=["pinned"])
    summary = run_retention(spec)
    assert summary["items"] == 4 and summary["bytes"] == 40
    assert sorted(os.listdir(data / "churn" / "preprocess")) == ["run1", "run2"]
    assert sorted(os.listdir(data / "churn" / "serve")) == ["pinned", "run1", "run2"]
    # A folder's age is its newest file: refreshing a file inside an old run keeps that run.
    touch(data / "churn" / "serve" / "run2" / "part.parquet", 0.1, size=10)
    touch(data / "churn" / "serve" / "run9" / "part.parquet", 0.2, size=10)
    assert [Path(i.id).name for i in plan(spec).items] == ["run1"]


# --- adversarial trees --------------------------------------------------------------------------------


def test_symlinks_are_never_followed_out_of_the_root(tmp_path):
    outside = tmp_path / "outside"
    touch(outside / "precious.bin", 100)
    touch(outside / "deep" / "precious2.bin", 100)
    touch(tmp_path / "secret.txt", 100)
    root = tmp_path / "root"
    touch(root / "old.bin", 10)
    touch(root / "new.bin", 0)
    link(root / "escape_dir", str(outside), 10)  # folder link leading out
    link(root / "sub" / "escape_file", str(tmp_path / "secret.txt"), 10)  # file link leading out
    link(root / "loop_a", "loop_b", 10)  # a ↔ b loop
    link(root / "loop_b", "loop_a", 10)
    link(root / "sub" / "up", "..", 10)  # a folder loop back into the root
    link(root / "dangling", "/nonexistent/nothing", 10)

    # Only *.bin is covered: no link matches, so none is touched, and nothing outside is seen.
    covered = plan(files_spec(root, include=["*.bin"], max_age="1d"))
    assert [Path(i.id).name for i in covered.items] == ["old.bin"]

    # '*' covers the links themselves: each old link goes *as a link*; its target stays.
    summary = run_retention(files_spec(root, max_age="1d"))
    assert summary["skipped"] == 0
    assert sorted(Path(p).name for p in summary["deleted"]) == sorted(
        ["old.bin", "escape_dir", "escape_file", "loop_a", "loop_b", "up", "dangling"])
    assert tree(root) == {"new.bin", "sub"}
    assert (outside / "precious.bin").exists() and (outside / "deep" / "precious2.bin").exists()
    assert (tmp_path / "secret.txt").exists()


def test_root_given_through_a_symlink_is_resolved_and_stays_inside(tmp_path):
    real = tmp_path / "real"
    touch(real / "a.bin", 10)
    touch(tmp_path / "sibling" / "b.bin", 10)
    os.symlink(real, tmp_path / "alias")
    summary = run_retention(files_spec(tmp_path / "alias", max_age="1d"))
    assert summary["deleted"] == [str(real / "a.bin")]
    assert (tmp_path / "sibling" / "b.bin").exists()


def test_folder_swapped_for_a_symlink_after_planning_is_refused(tmp_path):
    """A planned file's folder replaced by a link to the outside between plan and apply: the
    deletion goes through O_NOFOLLOW directory descriptors, so it is refused, not followed."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(root / "runs" / "model.bin", 10)
    touch(outside / "model.bin", 10)
    p = plan(files_spec(root, max_age="1d"))
    assert [i.id for i in p.items] == [str(root / "runs" / "model.bin")]
    shutil.rmtree(root / "runs")
    os.symlink(outside, root / "runs")
    apply(p)
    assert p.deleted == []
    assert (outside / "model.bin").exists()
    [skipped] = p.policies[0].skipped
    assert skipped["item"] == str(root / "runs" / "model.bin") and "path changed" in skipped["reason"]


def test_file_replaced_or_vanished_after_planning_is_skipped(tmp_path):
    root = tmp_path / "root"
    touch(root / "a.bin", 10)
    touch(root / "b.bin", 10)
    touch(root / "c.bin", 10)
    p = plan(files_spec(root, max_age="1d"))
    assert len(p.items) == 3
    (root / "a.bin").unlink()  # vanished
    (root / "b.bin").unlink()
    touch(root / "b.bin", 0, b"new content")  # replaced by a fresh file of the same name
    apply(p)
    assert [Path(i.id).name for i in p.deleted] == ["c.bin"]
    reasons = {Path(s["item"]).name: s["reason"] for s in p.policies[0].skipped}
    assert reasons == {"a.bin": "vanished before deletion", "b.bin": "changed since planned"}
    assert (root / "b.bin").read_bytes() == b"new content"


def test_files_and_folders_vanishing_during_the_scan(tmp_path):
    """Entries really deleted while the scan runs: a file right after its folder was listed (before
    it is stat'ed), and a whole sub-folder after its parent was listed. The wrapper around
    os.scandir only adds the deletions; the listing and the stats are real."""
    root = tmp_path / "root"
    for i in range(5):
        touch(root / f"f{i}.bin", 10)
    touch(root / "sub" / "g.bin", 10)
    real_scandir = os.scandir
    calls = []

    class Vanishing:
        def __init__(self, fd):
            self._it = real_scandir(fd)

        def __enter__(self):
            self._entries = list(self._it.__enter__())
            calls.append(1)
            if len(calls) == 1:  # the root is listed first
                os.unlink(root / "f2.bin")
                shutil.rmtree(root / "sub")
            return iter(self._entries)

        def __exit__(self, *exc):
            return self._it.__exit__(*exc)

    with mock.patch.object(paths_mod.os, "scandir", Vanishing):
        summary = run_retention(files_spec(root, max_age="1d"))
    assert sorted(Path(p).name for p in summary["deleted"]) == ["f0.bin", "f1.bin", "f3.bin", "f4.bin"]
    skipped = {Path(s["item"]).name: s["reason"] for s in summary["policies"][0]["skipped"]}
    assert skipped == {"f2.bin": "vanished during the scan", "sub": "vanished during the scan"}
    assert tree(root) == set()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes; see the mocked variant below")
def test_unreadable_folder_is_skipped_real_permissions(tmp_path):
    root = tmp_path / "root"
    touch(root / "a.bin", 10)
    touch(root / "locked" / "b.bin", 10)
    os.chmod(root / "locked", 0)
    try:
        summary = run_retention(files_spec(root, max_age="1d"))
    finally:
        os.chmod(root / "locked", 0o755)
    assert summary["deleted"] == [str(root / "a.bin")]
    assert summary["policies"][0]["skipped"] == [{"item": str(root / "locked"), "reason": "permission denied"}]
    assert (root / "locked" / "b.bin").exists()


def test_permission_errors_are_reported_not_fatal_mocked(tmp_path):
    """Tests run as root, which ignores file modes, so the PermissionError is simulated with
    unittest.mock at the one os call at each boundary: os.open of one folder during the scan (where
    an unreadable folder fails), and os.unlink of one file during deletion. Everything else runs
    for real."""
    root = tmp_path / "root"
    touch(root / "a.bin", 10)
    touch(root / "b.bin", 10)
    touch(root / "locked" / "c.bin", 10)
    real_open, real_unlink = os.open, os.unlink

    def open_(path, *args, **kwargs):
        if str(path).endswith("/locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def unlink(path, *args, **kwargs):
        if path == "b.bin":
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    with mock.patch.object(paths_mod.os, "open", open_), mock.patch.object(paths_mod.os, "unlink", unlink):
        summary = run_retention(files_spec(root, max_age="1d"))
    assert summary["deleted"] == [str(root / "a.bin")]
    assert summary["policies"][0]["skipped"] == [
        {"item": str(root / "locked"), "reason": "permission denied"},
        {"item": str(root / "b.bin"), "reason": "permission denied"},
    ]
    assert (root / "b.bin").exists() and (root / "locked" / "c.bin").exists()


def test_unicode_and_odd_names(tmp_path):
    root = tmp_path / "root"
    names = ["modèle_été.pkl", "データ.parquet", "emoji 🚀 file.bin", "new\nline.bin", " lead space", "-dash", "*star?"]
    for n in names:
        touch(root / "ünï" / n, 10)
    raw = os.fsencode(str(root / "ünï")) + b"/latin1-\xe9\xff.bin"  # not valid UTF-8
    with open(raw, "wb") as f:
        f.write(b"x")
    os.utime(raw, (NOW - 10 * DAY,) * 2)
    touch(root / "ünï" / "keep-ü.bin", 0)
    p = plan(files_spec(root, max_age="1d"))
    assert len(p.items) == len(names) + 1
    apply(p)
    assert len(p.deleted) == len(names) + 1 and p.policies[0].skipped == []
    assert os.listdir(root / "ünï") == ["keep-ü.bin"]


def test_many_files_dry_run_equals_real_run(tmp_path):
    """10 000 files in 100 folders, half of them old, plus links and an excluded folder."""
    root = tmp_path / "root"
    for d in range(100):
        for f in range(100):
            touch(root / f"d{d:03}" / f"f{f:03}.bin", 10 if f % 2 else 0.01)
    link(root / "d000" / "loop", "..", 10)
    touch(root / "keep" / "old.bin", 100)
    spec = files_spec(root, max_age="1d", exclude=["keep"])
    dry = run_retention(spec.model_copy(update={"dry_run": True}))
    assert dry["dry_run"] is True and dry["items"] == 5001 and len(tree(root)) == 10000 + 100 + 1 + 2
    # The real run, planned the same way, deletes exactly the planned items.
    p = plan(spec)
    assert [i.id for i in p.items][: len(dry["deleted"])] == dry["deleted"]
    apply(p)
    assert [i.id for i in p.deleted] == [i.id for i in p.items]
    assert len(p.deleted) == 5001
    remaining = tree(root)
    assert len(remaining) == 5000 + 100 + 2 and "keep/old.bin" in remaining


def test_dry_run_lists_exactly_what_the_real_run_deletes(tmp_path):
    root = tmp_path / "root"
    touch(root / "a" / "x.pt", 5, size=10)
    touch(root / "a" / "y.pt", 3, size=20)
    touch(root / "b" / "z.pt", 1, size=30)
    link(root / "b" / "l.pt", "/etc/hostname", 9)
    touch(root / "b" / "z.txt", 9)
    spec = files_spec(root, include=["*.pt"], keep_last=2, max_total_size=40)
    before = tree(root)
    # keep_last 2 takes x.pt and the link; the 40-byte budget then takes y.pt (the older of the two left).
    assert {Path(i.id).name: i.reason for i in plan(spec).items} == {
        "x.pt": "keep_last", "y.pt": "max_total_size", "l.pt": "keep_last"}
    dry = run_retention(spec.model_copy(update={"dry_run": True}))
    assert tree(root) == before
    real = run_retention(spec)
    gone = {str(root / rel) for rel in before - tree(root)}
    assert dry["deleted"] == real["deleted"] and set(real["deleted"]) == gone
    assert (dry["items"], dry["bytes"]) == (real["items"], real["bytes"]) == (3, 10 + 20 + len("/etc/hostname"))
    assert (root / "b" / "z.pt").exists() and (root / "b" / "z.txt").exists()


def test_a_missing_root_fails_naming_it_unless_the_policy_allows_it(tmp_path):
    """Before: a typo'd root left the task green with an info line, having deleted nothing."""
    from airflow_mlops._core.errors import StageFailed

    with pytest.raises(StageFailed, match=r"the root .*/nope does not exist, so nothing was planned and nothing was "
                                          r"deleted by any policy; correct the root, or set missing_ok: true"):
        run_retention(files_spec(tmp_path / "nope", max_age="1d"))
    summary = run_retention(files_spec(tmp_path / "nope", max_age="1d", missing_ok=True))
    assert summary["items"] == 0
    assert "does not exist" in summary["policies"][0]["notes"][0]


def test_unset_environment_variable_in_root_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_FOR_RETENTION", raising=False)
    with pytest.raises(ValueError, match=r"\$NO_SUCH_VAR_FOR_RETENTION .* is not set"):
        run_retention(files_spec(Path("${NO_SUCH_VAR_FOR_RETENTION}/x"), max_age="1d"))


# --- operator -------------------------------------------------------------------------------------------


def test_bad_arguments_fail_when_the_dag_is_parsed():
    from airflow_mlops.operators.retention import RetentionCleanupOperator

    with pytest.raises(ValueError) as err:
        RetentionCleanupOperator(task_id="clean", policies=[{"root": "/data", "max_agee": "3d"},
                                                            {"kind": "mlflow_model_versions", "models": ["m"]},
                                                            {"root": "/data", "max_age": "3d", "dry_run": True}])
    assert "policies.0.max_agee: unknown key 'max_agee' (did you mean 'max_age'?)" in str(err.value)
    assert "policies.1: an mlflow_model_versions policy needs at least one of max_age, keep_last" in str(err.value)
    # Issue 19, item 6: an operator argument written inside a policy says where it belongs.
    assert ("policies.2.dry_run: 'dry_run' is not a setting of policies.2: it is an argument of "
            "RetentionCleanupOperator itself (dry_run=...)") in str(err.value)


def test_broken_policy_in_yaml_becomes_a_visible_invalid_dag(dags_folder):
    from airflow_mlops import load_pipelines

    write(dags_folder, "clean.yaml", """
        id: clean
        stages:
          retention:
            kind: custom
            operator: airflow_mlops.operators.retention:RetentionCleanupOperator
            args:
              policies:
                - {root: relative/path, keep_last: 3}
        """)
    dag = load_pipelines(folder=dags_folder)["clean"]
    assert "invalid-pipeline" in dag.tags
    assert "policies.0.root: expected an absolute path" in dag.doc_md


def test_operator_through_airflow_dry_run_then_real(airflow_db, mlops_home, dags_folder):
    """The YAML usage: a custom stage in a pipeline, roots relative to $AIRFLOW_MLOPS_HOME. A run
    triggered with {"dry_run": true} lists; the next run deletes exactly that; XCom has the summary."""
    from airflow.utils.state import DagRunState

    from airflow_mlops import load_pipelines

    data = mlops_home / "data"
    touch(data / "old1.parquet", 40, size=100)
    touch(data / "sub" / "old2.parquet", 35, size=50)
    touch(data / "new.parquet", 1, size=10)
    write(dags_folder, "maint.yaml", """
        id: maint
        stages:
          retention:
            kind: custom
            operator: airflow_mlops.operators.retention:RetentionCleanupOperator
            args:
              policies:
                - root: ${AIRFLOW_MLOPS_HOME}/data
                  max_age: 30d
        """)
    dag = load_pipelines(folder=dags_folder)["maint"]

    def run(conf):
        dr = dag.test(run_conf=conf)
        assert dr.state == DagRunState.SUCCESS
        ti = next(t for t in dr.get_task_instances() if t.task_id == "retention.run")
        return ti.xcom_pull(task_ids="retention.run")

    dry = run({"dry_run": True})
    assert dry["dry_run"] is True and (dry["items"], dry["bytes"]) == (2, 150)
    assert (data / "old1.parquet").exists()
    real = run(None)
    assert real["dry_run"] is False and real["deleted"] == dry["deleted"] == [
        str(data.resolve() / "old1.parquet"), str(data.resolve() / "sub" / "old2.parquet")]
    assert (real["items"], real["bytes"]) == (2, 150)
    assert sorted(p.name for p in data.rglob("*")) == ["new.parquet", "sub"]


def test_example_maintenance_pipeline_runs_on_a_fresh_install(airflow_db, mlops_home, example_dags_folder):
    """example_configs/maintenance.yaml as shipped: backup, then retention, under $AIRFLOW_MLOPS_HOME
    with no MLflow store yet (the backup warns about it instead of failing)."""
    from airflow.utils.state import DagRunState

    from airflow_mlops import load_pipelines

    runs = mlops_home / "data" / "breast_cancer" / "preprocess"
    for age in range(1, 13):
        touch(runs / f"manual__run{age:02}" / "train.parquet", age, size=100)
    dag = load_pipelines(folder=example_dags_folder)["mlops_maintenance"]
    dr = dag.test()
    assert dr.state == DagRunState.SUCCESS
    tis = {t.task_id: t for t in dr.get_task_instances()}
    backup = tis["backup.run"].xcom_pull(task_ids="backup.run")
    assert backup["files"] == 12 and backup["skipped_count"] == 1  # the MLflow store does not exist yet
    retention = tis["retention.run"].xcom_pull(task_ids="retention.run")
    # keep_last 10 per stage folder: the two oldest runs go, and the backup taken just before still has them.
    assert [Path(p).name for p in retention["deleted"]] == ["manual__run11", "manual__run12"]
    assert sorted(os.listdir(runs)) == [f"manual__run{age:02}" for age in range(1, 11)]
    assert (retention["items"], retention["bytes"]) == (2, 200)
