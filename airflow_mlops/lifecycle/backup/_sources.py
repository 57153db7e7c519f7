"""What a backup copies: the scan of each source into the files to copy and the files unchanged
since the previous snapshot (whose entries are reused unread).

A directory source is walked without following symlinks (a link is recorded as a link); an MLflow
source is its store (a consistent SQLite copy, or a file store's tree) plus every artifact folder
the store references (``mlflow_store``); a callable source is the folder or the files it returns.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

from airflow_mlops.lifecycle.backup import _mlflow_server_store as mlflow_server_store
from airflow_mlops.lifecycle.backup import _mlflow_store as mlflow_store
from airflow_mlops.lifecycle.backup._manifest import BackupError, FileEntry, safe_rel
from airflow_mlops.lifecycle.paths import Matcher, ScanReport, expand_path, walk_dirs
from airflow_mlops.lifecycle.specs import CallableSource, DirectorySource, MlflowStoreSource


@dataclass(slots=True)
class FileToCopy:
    """A file the backup reads, hashes and stores (sizes in bytes, times in ns since the epoch)."""

    key: str  # "<source>/<rel>"
    path: str  # absolute local path
    size: int
    mtime_ns: int  # -1: always copy (staged files such as the SQLite copy)
    mode: int


@dataclass
class Collected:
    """The scan's result. Files whose size, mtime and mode match the previous snapshot go straight
    to ``files`` with their recorded entry (not read again); the others to ``to_copy``."""

    previous: dict[str, FileEntry] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    to_copy: list[FileToCopy] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # key → link target
    dirs: list[str] = field(default_factory=list)  # keys of folders (so empty ones are restored)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {file, reason}
    described: dict[str, dict[str, Any]] = field(default_factory=dict)  # source name → manifest "sources" entry


def collect_tree(name: str, prefix: str, root: str, matcher: Matcher, out: Collected) -> None:  # noqa: C901
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
                # FileEntry.unchanged, inlined: this runs once per file.
                if (prev is not None and prev.mtime_ns == mtime and prev.size == size and prev.mode == perm
                        and not prev.racy):
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


def sqlite_online_copy(db: str, staging: str) -> str:
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


def collect_source(source: Any, staging: str, out: Collected) -> None:
    """Scan one source (a DirectorySource, MlflowStoreSource or CallableSource) into ``out``;
    ``staging`` is a scratch folder for copies made on the way. Raises BackupError for a source
    that cannot be read (a missing folder without ``missing_ok``, a bad callable result)."""
    if isinstance(source, DirectorySource):
        path = os.path.realpath(expand_path(source.path))
        if not os.path.isdir(path):
            if source.missing_ok and not os.path.lexists(path):
                out.skipped.append({"file": path, "reason": f"source '{source.name}' does not exist"})
                return
            raise BackupError(f"source '{source.name}': {path} is not a folder")
        out.described[source.name] = {"kind": "directory", "path": path}
        collect_tree(source.name, "", path, Matcher(source.include, source.exclude), out)
    elif isinstance(source, MlflowStoreSource):
        collect_mlflow(source, staging, out)
    elif isinstance(source, CallableSource):
        from airflow_mlops._core.paths import import_string

        produced = import_string(source.callable)(**source.kwargs)
        if isinstance(produced, (str, os.PathLike)):
            folder = os.path.realpath(os.fspath(produced))
        elif isinstance(produced, dict):
            folder = os.path.join(staging, "callable-" + source.name)
            for rel, content in produced.items():
                rel = safe_rel(str(rel), f"file name {rel!r} returned by {source.callable}")
                dest = os.path.join(folder, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(content.encode() if isinstance(content, str) else bytes(content))
        else:
            raise BackupError(f"source '{source.name}': {source.callable} returned {type(produced).__name__}; "
                              "expected a dict of file name → text/bytes or a folder path")
        out.described[source.name] = {"kind": "callable", "callable": source.callable}
        collect_tree(source.name, "", folder, Matcher(["*"]), out)


def collect_mlflow(source: MlflowStoreSource, staging: str, out: Collected) -> None:  # noqa: C901
    """The store itself (a consistent SQLite copy, or a file store's tree) and every artifact folder
    it references (see ``mlflow_store``). A referenced location that cannot be copied (a remote
    URI, a relative path) is named in the summary, and fails the backup unless the source says
    ``on_uncopyable_artifacts: skip``."""
    if mlflow_server_store.is_postgres(source.backend_store_uri):
        _collect_server_store(source, staging, out)
        return
    uri = source.tracking_uri
    artifacts = source.artifacts
    if uri is None:
        from airflow_mlops._core.tracking_uri import default_tracking_uri, local_artifact_location

        uri = default_tracking_uri()
        artifacts = artifacts or local_artifact_location(uri)
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
        copy = sqlite_online_copy(db, stage_dir)
        st = os.stat(copy)
        out.to_copy.append(FileToCopy(f"{source.name}/mlflow.db", copy, st.st_size, -1, 0o644))  # always re-read
        artifacts = artifacts or os.path.join(os.path.dirname(db), "mlartifacts")
        locations = mlflow_store.sqlite_locations(copy)
    elif uri.startswith("file://") or uri.startswith("/"):
        store = os.path.realpath(expand_path(uri))
        collect_tree(source.name, "mlruns", store, Matcher(["*"]), out)
        described["store"] = store
        locations = mlflow_store.file_store_locations(store) if os.path.isdir(store) else []
    else:
        raise BackupError(
            f"source '{source.name}': cannot back up the MLflow store at {uri}: only SQLite and file stores can be "
            "copied consistently from here; back up the tracking server's database with its own tools"
        )
    if source.include_artifacts:
        default_root = os.path.realpath(expand_path(artifacts)) if artifacts and "://" not in artifacts.replace(
            "file://", "") else None
        plan = mlflow_store.plan_roots(locations, default_root=default_root, proxy_root=default_root, covered=store)
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
            collect_tree(source.name, prefix, root, Matcher(["*"]), out)
        described["artifact_roots"] = plan.roots
        if default_root:
            described["artifacts"] = default_root
    out.described[source.name] = described


def _collect_server_store(source: MlflowStoreSource, staging: str, out: Collected) -> None:
    """A tracking server's store: a pg_dump of its Postgres database (always copied) and, with
    ``include_artifacts``, every object of its artifact destination when that is a bucket (staged
    on local disk first), or the folder when it is local."""
    stage_dir = os.path.join(staging, "mlflow-" + source.name)
    os.makedirs(stage_dir)
    dump = mlflow_server_store.dump(source.backend_store_uri, stage_dir)
    out.to_copy.append(FileToCopy(f"{source.name}/{mlflow_server_store.DUMP}", dump, os.path.getsize(dump), -1, 0o644))
    out.described[source.name] = mlflow_server_store.describe(source)
    artifacts = source.artifacts
    if not (source.include_artifacts and artifacts):
        return
    if "://" in artifacts and not artifacts.startswith("file://"):
        folder = os.path.join(staging, "mlflow-" + source.name + "-bucket")
        os.makedirs(folder)
        mlflow_server_store.download(artifacts, source.artifacts_conn_id, folder)
        collect_tree(source.name, mlflow_server_store.BUCKET_PREFIX, folder, Matcher(["*"]), out)
    else:
        root = os.path.realpath(expand_path(artifacts))
        collect_tree(source.name, mlflow_store.DEFAULT_PREFIX, root, Matcher(["*"]), out)
        out.described[source.name]["artifact_roots"] = {mlflow_store.DEFAULT_PREFIX: root}
