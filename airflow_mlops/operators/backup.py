"""BackupOperator and RestoreOperator: incremental snapshots to any fsspec / ObjectStoragePath
target, with a checksum per file, and a restore that verifies every one of them."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from airflow_mlops._core.orphan import end_with_parent
from airflow_mlops.lifecycle.specs import BackupSpec, RestoreSpec
from airflow_mlops.operators.spec_args import SpecArgsOperator


class BackupOperator(SpecArgsOperator):
    """Take one snapshot of the sources and publish it atomically, then prune old snapshots.

    :param target: where the backup repository lives: a path (``${AIRFLOW_MLOPS_HOME}/backups``),
        ``file://…``, or any fsspec URI (``s3://bucket/prefix`` needs ``s3fs``).
    :param sources: a list of ``DirectorySource`` / ``MlflowStoreSource`` / ``CallableSource`` (or
        dicts: ``{name, path}`` for a folder, ``{kind: mlflow}`` for the MLflow store,
        ``{name, callable, kwargs}`` for generated files such as rendered Kubernetes manifests).
    :param name: the backup set (snapshots of different sets share stored content).
    :param keep_last: keep this many snapshots of the set; ``max_age``: drop older ones (never the newest).
    :param conn_id: an Airflow connection for the target (through ``ObjectStoragePath``).
    :param storage_options: fsspec options for the target.
    :param workers: files copied in parallel. ``fsync``: flush every stored file (local targets).

    Unchanged files (same size and mtime as in the previous snapshot) are not copied again.
    Returns (XCom) a summary: snapshot id, files and bytes, copied vs unchanged, skipped files,
    pruned snapshots. The arguments are validated here, so a bad one fails when the DAG is parsed.

    Every argument is a template field (``target="/backups/{{ ds }}"``, a source's ``path``,
    ``keep_last="{{ params.keep }}"``): it is validated again once rendered, when the task runs.
    """

    ui_color = "#e8f6ef"
    spec_model = BackupSpec

    def __init__(
        self,
        *,
        target: str,
        sources: Sequence[Any],
        name: str = "default",
        keep_last: int | None = None,
        max_age: Any = None,
        conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        workers: int = 4,
        fsync: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        data = {"target": target, "sources": list(sources) if isinstance(sources, (list, tuple)) else sources,
                "name": name, "keep_last": keep_last, "max_age": max_age, "conn_id": conn_id,
                "storage_options": storage_options or {}, "workers": workers, "fsync": fsync}
        self._set_spec(data)

    def execute(self, context: Any) -> dict[str, Any]:
        end_with_parent()  # a worker lost under this task must not leave its work running twice
        from airflow_mlops.lifecycle.backup import run_backup

        with retry_decision():
            return run_backup(self.rendered_spec(), logger=self.log)


class RestoreOperator(SpecArgsOperator):
    """Restore a snapshot into ``dest/<source name>/…``, verifying every file's checksum.

    :param target: as for ``BackupOperator``.
    :param name: as for ``BackupOperator``.
    :param conn_id: as for ``BackupOperator``.
    :param storage_options: as for ``BackupOperator``.
    :param dest: folder to restore into.
    :param snapshot: snapshot id (default: the newest).
    :param sources: restore only these sources.
    :param overwrite: replace existing files.
    :param relocate_mlflow_artifacts: point a restored SQLite/file MLflow store at the restored
        artifact folders (default True).
    :param mlflow_backend_store_uri: for an MLflow source backed up from Postgres: the empty
        database its dump is restored into.
    :param mlflow_artifacts: for an MLflow source whose artifacts were in a bucket: the bucket they
        are uploaded to.
    :param mlflow_artifacts_conn_id: the connection for that bucket.

    A corrupted or missing file is never written; the task then fails (without retrying) with
    the list of every such file. A damaged or missing manifest fails it too, naming the newest
    snapshot that is still good; an unreachable target fails it so that Airflow retries. Every
    argument is a template field, e.g. ``snapshot="{{ ti.xcom_pull('backup')['snapshot'] }}"``.
    """

    ui_color = "#e8f6ef"
    spec_model = RestoreSpec

    def __init__(
        self,
        *,
        target: str,
        dest: str,
        snapshot: str | None = None,
        sources: Sequence[str] | None = None,
        overwrite: bool = False,
        name: str = "default",
        conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        relocate_mlflow_artifacts: bool = True,
        mlflow_backend_store_uri: str | None = None,
        mlflow_artifacts: str | None = None,
        mlflow_artifacts_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        data = {"target": target, "dest": dest, "snapshot": snapshot, "sources": list(sources) if sources else None,
                "overwrite": overwrite, "name": name, "conn_id": conn_id, "storage_options": storage_options or {},
                "relocate_mlflow_artifacts": relocate_mlflow_artifacts,
                "mlflow_backend_store_uri": mlflow_backend_store_uri, "mlflow_artifacts": mlflow_artifacts,
                "mlflow_artifacts_conn_id": mlflow_artifacts_conn_id}
        self._set_spec(data)

    def execute(self, context: Any) -> dict[str, Any]:
        end_with_parent()  # a worker lost under this task must not leave its work running twice
        from airflow_mlops.lifecycle.backup import run_restore

        with retry_decision():  # a RestoreError (corrupted or missing files) fails without retries
            return run_restore(self.rendered_spec(), logger=self.log)


@contextmanager
def retry_decision() -> Iterator[None]:
    """The package's errors as ``_core.outcome`` says: a failing backup target
    (``DependencyFailed``, already logged) with a permanent fault (full, read-only, damaged
    manifest, missing snapshot) or a ``RestoreError`` ends the task without retries; a transient
    one (unreachable) is raised as it is, so Airflow's retries apply."""
    from airflow_mlops._core.outcome import airflow_outcome

    with airflow_outcome():
        yield
