"""Which files are pipelines, and which ``_defaults.yaml`` files each one is merged over.

The same rules hold wherever a folder is read from — the DAG processor (``load_pipelines``) or
``airflow-mlops validate`` — so both reach the same verdict:

- a pipeline is a ``.yaml``/``.yml`` file whose name starts with neither ``_`` nor ``.``;
- Airflow's own discovery rules apply: ``.airflowignore`` files (``[core] dag_ignore_file_syntax``,
  glob by default), read with Airflow's own function; and nothing in a hidden folder (``.git/``,
  ``.ipynb_checkpoints/``, an editor's backup folder) is a pipeline, so a stale copy never
  becomes the live DAG;
- every ``_defaults.yaml`` from the filesystem root down to the pipeline's folder applies, the
  nearest winning (a deep merge of mappings; lists and scalars are replaced whole). The chain does
  not depend on which folder was asked for, so a file validated alone gets the same defaults as
  when the dags folder is loaded.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from pydantic import ValidationError

from airflow_mlops.spec._source import Source, load_source
from airflow_mlops.spec.dag import lift_default_args
from airflow_mlops.spec.errors import PipelineSpecError, SpecIssue
from airflow_mlops.spec.models import PipelineDefaults
from airflow_mlops.spec.profiles import lift_profiles

DEFAULTS_FILE = "_defaults.yaml"
PIPELINE_SUFFIXES = (".yaml", ".yml")
IGNORE_FILE = ".airflowignore"


def discover(target: str | os.PathLike) -> list[Path]:
    """Every pipeline file under ``target`` (a folder), sorted; a file names itself."""
    root = Path(target)
    if root.is_file():
        return [root]
    found = []
    for name in _airflow_walk(root):
        path = Path(name)
        relative = path.relative_to(root)
        if path.suffix not in PIPELINE_SUFFIXES or path.name.startswith(("_", ".")):
            continue
        if any(part.startswith(".") for part in relative.parts[:-1]) or not path.is_file():
            continue
        found.append(path)
    return sorted(found)


def _airflow_walk(root: Path) -> list[str]:
    """Files under ``root`` that Airflow's ``.airflowignore`` rules keep, by Airflow's own function."""
    from airflow_mlops._core.compat import find_path_from_directory

    try:
        from airflow.configuration import conf
    except ImportError:  # an Airflow without core (a task-SDK-only worker): the SDK's copy
        from airflow.sdk.configuration import conf

    syntax = conf.get("core", "dag_ignore_file_syntax", fallback="glob")
    return list(find_path_from_directory()(root, IGNORE_FILE, syntax))


# Defaults files are shared by many pipelines and re-read on every parse: cache by mtime.
_defaults_cache: dict[Path, tuple[float, Source]] = {}


def read_defaults(path: Path) -> Source:
    from airflow_mlops.spec._translate import translate

    mtime = path.stat().st_mtime
    hit = _defaults_cache.get(path)
    if hit and hit[0] == mtime:
        return hit[1]
    src = lift_profiles(lift_default_args(load_source(str(path), path.read_text())))
    if src.data is not None and not isinstance(src.data, dict):
        raise PipelineSpecError([SpecIssue(src.mark_of(()), "", "a defaults file must be a mapping")])
    for key in ("id", "stages"):
        if isinstance(src.data, dict) and key in src.data:
            raise PipelineSpecError(
                [SpecIssue(src.mark_of((key,), key=True), key, f"'{key}' belongs in a pipeline file, not in {DEFAULTS_FILE}")]
            )
    try:
        PipelineDefaults.model_validate(src.data or {})
    except ValidationError as exc:
        raise PipelineSpecError(translate(exc, src, root=PipelineDefaults)) from None
    _defaults_cache[path] = (mtime, src)
    return src


# Within one load of pipeline files (``one_scan()``: the loader and ``airflow-mlops validate``),
# what cannot differ between its files is looked up once: each folder's chain of defaults files,
# the mlops home. Outside one, every call looks again.
_SCAN: ContextVar[dict | None] = ContextVar("airflow_mlops_scan", default=None)
T = TypeVar("T")


@contextmanager
def one_scan() -> Iterator[None]:
    token = _SCAN.set({})
    try:
        yield
    finally:
        _SCAN.reset(token)


def scanned(key: Any, compute: Callable[[], T]) -> T:
    """``compute()``, once per ``key`` within a scan."""
    memo = _SCAN.get()
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def defaults_chain(file: Path) -> list[Path]:
    """``_defaults.yaml`` files from the filesystem root down to the file's folder."""
    return folder_defaults_chain(file.resolve().parent)


def folder_defaults_chain(folder: Path) -> list[Path]:
    """``_defaults.yaml`` files from the filesystem root down to ``folder`` (a resolved path)."""
    return list(scanned(("defaults_chain", folder), lambda: _chain(folder)))


def _chain(folder: Path) -> list[Path]:
    chain = []
    while True:
        candidate = folder / DEFAULTS_FILE
        if candidate.is_file():
            chain.append(candidate)
        if folder.parent == folder:
            break
        folder = folder.parent
    return chain[::-1]
