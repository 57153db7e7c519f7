"""Typed policies for the lifecycle operators: retention (what may be deleted) and backup (what is
copied where, and how long snapshots are kept).

The same models validate a maintenance pipeline's YAML ``args:`` (plain dicts) and Python code
(model instances); the operators validate them in ``__init__``, so a bad policy fails when the DAG
is parsed, not when it runs. Unknown keys are errors (``extra="forbid"``).

Paths may use ``~`` and environment variables (``${AIRFLOW_MLOPS_HOME}/data``); they are expanded
in the worker when the task runs, and must then be absolute.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ByteSize, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_mlops._core.units import parse_duration
from airflow_mlops.spec.base import IMPORT_PATH, Strict
from airflow_mlops.spec.models import MlflowSettings
from airflow_mlops.spec.templating import TEMPLATABLE_VALUE, is_template

NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


_duration = parse_duration  # seconds, '90s', '5m', '2h', '30d', '2w' or ISO 8601 ('P30D')


Age = Annotated[timedelta, Field(json_schema_extra={"examples": ["30d", "12h", "P30D"]})]


def _local_path(v: Any) -> Any:
    """A local path that is absolute once ``~`` and ``$VARS`` are expanded (a Jinja template is
    checked once rendered: the operators validate their arguments again when the task runs)."""
    if isinstance(v, str) and not is_template(v):
        s = v.strip()
        if s.startswith("file://"):
            s = s[len("file://"):]
        if not s or not (s.startswith(("/", "~", "$"))):
            raise PydanticCustomError(
                "absolute_path",
                "expected an absolute path (it may start with ~ or an environment variable such as "
                "${AIRFLOW_MLOPS_HOME}/data), got {v}",
                {"v": repr(v)},
            )
        if s.rstrip("/") == "":
            raise PydanticCustomError("root_path", "refusing the filesystem root '/' as a lifecycle path", {})
        return s
    return v


def _root_location(v: Any) -> Any:
    """A retention root: an object-storage URI (``_core.storage`` rules: a bucket, a known
    scheme), else an absolute local path (``_local_path``)."""
    from airflow_mlops._core.storage import is_remote, location_problem

    if isinstance(v, str) and is_remote(v.strip()):
        problem = location_problem(v.strip())
        if problem:
            raise PydanticCustomError("root", "{problem}", {"problem": problem})
        return v.strip()
    return _local_path(v)


LocalPath = Annotated[str, Field(description="Absolute path; '~' and ${ENV_VARS} are expanded in the worker.")]


class _Rules(Strict):
    """Deletion rules shared by every retention policy. An item is deleted when any rule selects it,
    unless it is among the ``min_keep`` newest of its group or otherwise protected."""

    max_age: Annotated[Age | None, *TEMPLATABLE_VALUE] = Field(
        None, description="Delete items older than this ('30d', '12h', 'P30D').")
    keep_last: Annotated[Annotated[int, Field(ge=0)] | None, *TEMPLATABLE_VALUE] = Field(
        None, description="Delete all but the N newest items (per group).")
    min_keep: int = Field(0, ge=0, description="The N newest items (per group) are never deleted by any rule.")

    _age = field_validator("max_age", mode="before")(classmethod(lambda cls, v: _duration(v)))

    def _has_rule(self) -> bool:
        return self.max_age is not None or self.keep_last is not None


class FilesPolicy(_Rules):
    """Files (or whole sub-folders) under one root: model files, data, checkpoints.

    Only items under ``root`` that ``include`` matches and ``exclude`` does not are ever considered.
    A pattern without '/' matches the name at any depth (``*.ckpt``); one with '/' matches the path
    relative to the root (``runs/*/tmp/*``; ``*`` may cross folders). An excluded folder is not
    entered at all. Symbolic links are never followed; a link that a pattern matches is an item
    itself (deleting it removes the link, never its target).
    """

    kind: Literal["files"] = "files"
    name: str | None = Field(None, description="Shown in the summary; defaults to the root.")
    root: str = Field(..., description="An absolute path (~ and ${VARS} expanded in the worker) or an "
                      "object-storage URI (s3://bucket/prefix): the objects under that prefix.")
    conn_id: str | None = Field(None, description="The Airflow connection for a URI root (default: the scheme's own).")
    missing_ok: bool = Field(False, description="A root that does not exist is a note in the summary (a folder that "
                             "appears later), not an error.")
    include: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    exclude: list[str] = Field(default_factory=list)
    unit: Literal["file", "directory"] = Field(
        "file", description="'file': every matching file is an item; 'directory': every folder at `depth` "
        "below the root is one item (its age is the newest file in it, its size the sum), deleted whole.",
    )
    depth: int = Field(1, ge=1, description="For unit 'directory': how deep below the root the item folders are.")
    group_by: Literal["none", "parent"] = Field(
        "none", description="'parent': keep_last/min_keep count per containing folder (e.g. per model), not over the root.",
    )
    max_total_size: ByteSize | None = Field(
        None, description="Size budget ('50GiB', '500MB', bytes): the oldest items go until the rest fits.",
    )

    _root = field_validator("root", mode="before")(classmethod(lambda cls, v: _root_location(v)))

    @model_validator(mode="after")
    def _some_rule(self) -> "FilesPolicy":
        if not self._has_rule() and self.max_total_size is None:
            raise PydanticCustomError("no_rule", "a files policy needs at least one of max_age, keep_last, max_total_size", {})
        return self


# The aliases pipelines serve and roll back with. A version behind one of them, or behind an alias
# a validate stage recorded on its registered model (SERVING_ALIASES_TAG), is never deleted unless
# a policy names that alias in allow_deleting_aliases; protected_aliases only adds to them.
SERVING_ALIASES = ("champion", "previous-champion")
PROTECTED_ALIASES_DOC = (
    "Aliases to protect besides the serving ones, which are always protected: 'champion', 'previous-champion' "
    "and every alias a validate or serve stage recorded on the registered model."
)
ALLOW_DELETING_DOC = (
    "Serving aliases whose versions this policy may delete anyway, each named (e.g. an abandoned 'challenger'). "
    "The only way to lift the protection of a serving alias."
)


class _AliasRules(_Rules):
    """Rules of the MLflow policies, with the alias protection both share."""

    protected_aliases: list[str] = Field(default_factory=list, description=PROTECTED_ALIASES_DOC)
    allow_deleting_aliases: list[str] = Field(default_factory=list, description=ALLOW_DELETING_DOC)

    @model_validator(mode="after")
    def _alias_lists(self) -> "_AliasRules":
        both = sorted(set(self.protected_aliases) & set(self.allow_deleting_aliases))
        if both:
            raise PydanticCustomError("alias_conflict", "alias(es) {both} are both protected and allowed to be deleted",
                                      {"both": both})
        return self


class MlflowRunsPolicy(_AliasRules):
    """MLflow runs of the named experiments: deleted, then garbage-collected (metadata and artifacts
    removed for good) — only the runs this policy deleted, never other soft-deleted runs.

    Never deleted: runs not in ``statuses`` (so not RUNNING by default), runs whose model version
    carries a protected alias, and (``keep_registered``) runs that back any model version that is
    not itself being deleted. ``keep_last`` / ``min_keep`` count per experiment. Age is measured
    from the run's end (its start while unfinished).
    """

    kind: Literal["mlflow_runs"] = "mlflow_runs"
    name: str | None = None
    experiments: list[str] = Field(..., min_length=1, description="Experiment names (shell patterns allowed, e.g. 'churn-*').")
    filter: str | None = Field(None, description="An MLflow search filter the runs must also match, e.g. \"tags.env = 'dev'\".")
    statuses: list[Literal["FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"]] = Field(
        default_factory=lambda: ["FINISHED", "FAILED", "KILLED"], min_length=1,
    )
    keep_registered: bool = Field(True, description="Keep runs that back a model version that stays.")
    delete_logged_models: bool = Field(
        True, description="Also delete the MLflow 3 logged models these runs produced (unless a remaining model version uses them).",
    )
    garbage_collect: bool = Field(True, description="Permanently delete the deleted runs and their artifacts.")
    backend_store_uri: str | None = Field(
        None, description="Database URI for garbage collection when the tracking URI is a server; default: the tracking URI.",
    )

    @model_validator(mode="after")
    def _some_rule(self) -> "MlflowRunsPolicy":
        if not self._has_rule():
            raise PydanticCustomError("no_rule", "an mlflow_runs policy needs at least one of max_age, keep_last", {})
        return self


class MlflowModelVersionsPolicy(_AliasRules):
    """Versions of the named registered models. A version behind a serving alias (``champion``,
    ``previous-champion``, any alias a validate stage recorded) or a ``protected_aliases`` one is
    never deleted, unless ``allow_deleting_aliases`` names that alias. A dry run names every
    aliased version it would delete. ``keep_last`` / ``min_keep`` count per model. Age is measured
    from the version's creation."""

    kind: Literal["mlflow_model_versions"] = "mlflow_model_versions"
    name: str | None = None
    models: list[str] = Field(..., min_length=1, description="Registered model names (shell patterns allowed).")

    @model_validator(mode="after")
    def _some_rule(self) -> "MlflowModelVersionsPolicy":
        if not self._has_rule():
            raise PydanticCustomError("no_rule", "an mlflow_model_versions policy needs at least one of max_age, keep_last", {})
        return self


RetentionPolicy = Annotated[Union[FilesPolicy, MlflowRunsPolicy, MlflowModelVersionsPolicy], Field(discriminator="kind")]


def _default_kind(v: Any, guess) -> Any:
    if isinstance(v, list):
        return [({**item, "kind": guess(item)} if isinstance(item, dict) and "kind" not in item else item) for item in v]
    return v


class RetentionSpec(Strict):
    """What a RetentionCleanupOperator does: its policies, applied in order."""

    policies: list[RetentionPolicy] = Field(..., min_length=1)
    dry_run: Annotated[bool, *TEMPLATABLE_VALUE] = Field(False, description="Only list what a real run would delete.")
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings, description="Which MLflow store (same precedence as the stages).")

    @field_validator("policies", mode="before")
    @classmethod
    def _files_by_default(cls, v: Any) -> Any:
        return _default_kind(v, lambda item: "files")


# --- backup ------------------------------------------------------------------------------------------


class DirectorySource(Strict):
    """A folder (models, artifacts, data, rendered manifests), copied without following symlinks
    (a link is recorded as a link)."""

    kind: Literal["directory"] = "directory"
    name: str = Field(..., pattern=NAME, description="Folder name of this source inside a snapshot.")
    path: LocalPath
    include: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    exclude: list[str] = Field(default_factory=list)
    missing_ok: bool = Field(False, description="A missing folder is a warning in the summary, not an error.")

    _path = field_validator("path", mode="before")(classmethod(lambda cls, v: _local_path(v)))


class MlflowStoreSource(Strict):
    """The MLflow store: its SQLite database, copied consistently with SQLite's online backup API
    (safe while the tracking server writes), and every artifact folder the store references (each
    experiment's, run's, logged model's and model version's location, plus ``mlartifacts/`` beside
    the database). A referenced location the backup cannot copy (a remote URI such as ``s3://``, a
    relative path) fails the backup, naming it, unless ``on_uncopyable_artifacts`` is ``skip``."""

    kind: Literal["mlflow"] = "mlflow"
    name: str = Field("mlflow", pattern=NAME)
    tracking_uri: str | None = Field(None, description="sqlite:////abs/mlflow.db; default: resolved like the stages do.")
    backend_store_uri: str | None = Field(
        None, description="A tracking server's database on Postgres (postgresql://user:password@host:port/db, its "
        "--backend-store-uri): dumped consistently with pg_dump instead of reading tracking_uri.")
    artifacts: str | None = Field(
        None, description="The tracking server's artifact folder or bucket (its --artifacts-destination, where "
        "mlflow-artifacts:/ URIs point: /srv/mlartifacts or s3://bucket/prefix); default: mlartifacts/ beside the "
        "database.",
    )
    artifacts_conn_id: str | None = Field(None, description="The Airflow connection for an artifacts URI.")
    include_artifacts: bool = True
    on_uncopyable_artifacts: Literal["fail", "skip"] = Field(
        "fail", description="A referenced artifact location that cannot be copied from here (remote URI, relative "
        "path): 'fail' the backup naming each, or 'skip' it and name each in the summary.",
    )
    missing_ok: bool = Field(False, description="A missing database is a warning in the summary, not an error.")

    # The rule of every tracking URI (a relative local store is refused), here too.
    _tracking_uri = field_validator("tracking_uri")(classmethod(lambda cls, v: MlflowSettings._absolute_sqlite(v)))


class CallableSource(Strict):
    """Files produced by a function (e.g. the Kubernetes manifests a pipeline renders): it returns
    ``{relative file name: text or bytes}`` or the path of a folder it wrote."""

    kind: Literal["callable"] = "callable"
    name: str = Field(..., pattern=NAME)
    callable: str = Field(..., pattern=IMPORT_PATH, description="'package.module:function'.")
    kwargs: dict[str, Any] = Field(default_factory=dict)


BackupSource = Annotated[Union[DirectorySource, MlflowStoreSource, CallableSource], Field(discriminator="kind")]


class _Target(Strict):
    target: str = Field(..., description="fsspec URI or path of the backup repository: /backups, file:///backups, s3://bucket/prefix.")
    conn_id: str | None = Field(None, description="Airflow connection for the target (through ObjectStoragePath).")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the target filesystem.")
    name: str = Field("default", pattern=NAME, description="Backup set name; snapshots of different sets share stored files.")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if "://" not in v and not is_template(v):
            _local_path(v)
        return v


class BackupSpec(_Target):
    """What a BackupOperator copies, where, and how many snapshots it keeps."""

    sources: list[BackupSource] = Field(..., min_length=1)
    keep_last: Annotated[Annotated[int, Field(ge=1)] | None, *TEMPLATABLE_VALUE] = Field(
        None, description="Keep this many snapshots of this set (the newest).")
    max_age: Annotated[Age | None, *TEMPLATABLE_VALUE] = Field(
        None, description="Delete snapshots older than this (the newest is always kept).")
    workers: int = Field(4, ge=1, le=64, description="Files copied in parallel.")
    fsync: bool = Field(False, description="fsync every stored file before publishing (local targets); slower, power-loss safe.")

    _age = field_validator("max_age", mode="before")(classmethod(lambda cls, v: _duration(v)))

    @field_validator("sources", mode="before")
    @classmethod
    def _directory_by_default(cls, v: Any) -> Any:
        return _default_kind(v, lambda item: "callable" if "callable" in item else "directory")

    @field_validator("sources", mode="after")
    @classmethod
    def _unique_names(cls, sources: list) -> list:
        names = [s.name for s in sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PydanticCustomError("duplicate_source", "source names must be unique; repeated: {dup}", {"dup": ", ".join(dup)})
        return sources


class RestoreSpec(_Target):
    """Which snapshot to restore, and where. Every file's checksum is verified; a corrupted or
    missing file is reported (RestoreError) and never written."""

    dest: LocalPath = Field(..., description="Folder to restore into; each source goes to dest/<source name>/.")
    snapshot: str | None = Field(None, description="Snapshot id; default: the newest.")
    sources: list[str] | None = Field(None, description="Restore only these sources.")
    overwrite: bool = Field(False, description="Replace files that already exist in dest.")
    relocate_mlflow_artifacts: bool = Field(
        True, description="Point a restored MLflow store at the restored artifact folders (dest/<source>/…), so its "
        "models load from there; false keeps the original paths in the database.",
    )
    mlflow_backend_store_uri: str | None = Field(
        None, description="For an MLflow source backed up from Postgres: the empty Postgres database to restore its "
        "dump into (postgresql://…).")
    mlflow_artifacts: str | None = Field(
        None, description="For an MLflow source whose artifacts were in a bucket: the bucket URI to upload them into "
        "(the restored tracking server's --artifacts-destination).")
    mlflow_artifacts_conn_id: str | None = Field(None, description="The Airflow connection for mlflow_artifacts.")

    _dest = field_validator("dest", mode="before")(classmethod(lambda cls, v: _local_path(v)))


def validated(model: type[BaseModel], data: dict[str, Any], owner: str, context: dict[str, Any] | None = None) -> Any:
    """``model`` built from ``data``, or an ArgumentsError (a ValueError) naming every bad field (for
    DAG-parse errors; ``airflow-mlops validate`` points at each in a pipeline's YAML)."""
    from airflow_mlops._core.validation import validated as checked

    return checked(model, data, owner, context, union_tags=_KIND_TAGS, fallback_models=_ALL_MODELS)


# pydantic puts the discriminator value in an error's location (policies.0.files.max_age); drop it.
_KIND_TAGS = {"files", "mlflow_runs", "mlflow_model_versions", "directory", "mlflow", "callable"}
_ALL_MODELS = (FilesPolicy, MlflowRunsPolicy, MlflowModelVersionsPolicy, RetentionSpec, DirectorySource,
               MlflowStoreSource, CallableSource, BackupSpec, RestoreSpec)
