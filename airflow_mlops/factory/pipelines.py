"""One verdict per pipeline file, for the dags-folder loader and ``airflow-mlops validate`` alike.

``load_dags`` reads each file (``spec.load.read_pipeline``: YAML, models, cross-field checks,
custom operators constructed with their arguments), then builds its DAG the way the loader hands
it to Airflow and runs the checks Airflow's DagBag runs before accepting a DAG (timetable,
setup/teardown, cycles). Whatever fails is reported at a position in the YAML. Both callers use
this one function, so ``validate`` passes exactly the files that load, and fails the others
with the errors their placeholder DAGs carry.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from airflow.sdk import DAG

from airflow_mlops import backends
from airflow_mlops._core.errors import ArgumentsError, did_you_mean, format_path
from airflow_mlops._core.extras import MissingExtra
from airflow_mlops.factory._build import StageBuildError, build_dag
from airflow_mlops.spec import load
from airflow_mlops.spec.errors import Mark, PipelineSpecError, SpecIssue
from airflow_mlops.spec.files import one_scan, scanned
from airflow_mlops.spec.load import LoadedPipeline, discover
from airflow_mlops.spec.operator_args import translate_arguments
from airflow_mlops.spec.profiles import ActiveProfile, ProfileChoice
from airflow_mlops.stages import registry

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    files: list[Path] = field(default_factory=list)  # every pipeline file found, in order
    good: list[tuple[LoadedPipeline, DAG]] = field(default_factory=list)
    bad: dict[Path, PipelineSpecError] = field(default_factory=dict)
    warnings: list[SpecIssue] = field(default_factory=list)


# What the stage registry and the backends know of a stage on its backend, and the extras it
# needs installed, checked with the spec.
STAGE_CHECKS = (registry.problems, backends.problems, registry.extra_problems)
INPUT_CHECKS = (registry.input_problems,)


# The active pipeline profile of a deployment (see ``spec.profiles``): the environment variable
# first (free), else the Airflow Variable, read once per scan and only if a pipeline has profiles.
PROFILE_ENV = "AIRFLOW_MLOPS_PROFILE"
PROFILE_VARIABLE = "mlops_profile"


def deployment_profile() -> ActiveProfile:
    """The profile this deployment builds pipelines with: ``$AIRFLOW_MLOPS_PROFILE``, else the
    Airflow Variable ``mlops_profile``, else none. The Variable costs a secrets-backend lookup
    (the metadata database, unless it is set as ``AIRFLOW_VAR_MLOPS_PROFILE`` or Airflow's
    ``[secrets] use_cache`` is on), so it is read once per scan of the dags folder, and only when
    a pipeline there has profiles. A Variable that cannot be read is a problem, not "no profile":
    a production deployment must not fall back to the pipeline as written."""
    return scanned(("deployment_profile",), _deployment_profile)


def _deployment_profile() -> ActiveProfile:
    name = os.environ.get(PROFILE_ENV, "").strip()
    if name:
        return ActiveProfile(name, f"from the environment variable {PROFILE_ENV}")
    try:
        value = _profile_variable()
    except Exception as exc:  # noqa: BLE001 - any failure of the secrets backends or the API
        return ActiveProfile(None, problem=f"the Airflow Variable {PROFILE_VARIABLE!r} could not be read "
                                           f"({type(exc).__name__}: {exc}); set {PROFILE_ENV} instead")
    value = str(value).strip() if value is not None else ""
    return ActiveProfile(value or None, f"from the Airflow Variable {PROFILE_VARIABLE}")


def _profile_variable() -> Any:
    """The Variable through the Task SDK: the API server in Airflow's own parse and task processes,
    else environment variables and external secrets backends only. A process outside them (this
    package's ``validate`` and ``render``, ``airflow dags reserialize``) reads the metadata
    database as well, as ``airflow variables get`` does: none there if it was never migrated; a
    database it cannot reach raises."""
    from airflow.sdk import Variable

    value = Variable.get(PROFILE_VARIABLE, default=None)
    # Airflow's own test for "inside a task, parse or triggerer process" (airflow.models.Variable.get)
    if value is None and getattr(sys.modules.get("airflow.sdk.execution_time.task_runner"),
                                 "SUPERVISOR_COMMS", None) is None:
        from airflow import settings
        from airflow.secrets.metastore import MetastoreBackend
        from sqlalchemy import inspect

        # A database never migrated (a laptop's validate) holds no Variables; one that cannot be
        # reached raises.
        if settings.engine is not None and inspect(settings.engine).has_table("variable"):
            value = MetastoreBackend().get_variable(PROFILE_VARIABLE)
    return value


def read_pipeline(file: str | os.PathLike, root: str | os.PathLike | None = None, *,
                  construct_operators: bool = True, profile: ProfileChoice = deployment_profile) -> LoadedPipeline:
    """One pipeline file, loaded and checked as ``airflow-mlops validate`` checks it (without
    building its DAG: ``load_dags`` does that too). Raises PipelineSpecError with every problem
    at its ``file:line:column``. ``construct_operators``: see ``spec.load.read_pipeline``.
    ``profile``: the pipeline profile to build it with (a name, or None for the pipeline as
    written); default the deployment's (``deployment_profile``), as Airflow builds it."""
    return load.read_pipeline(file, root, stage_checks=STAGE_CHECKS, input_checks=INPUT_CHECKS,
                              construct_operators=construct_operators, profile=profile)


def load_dags(targets: Iterable[str | os.PathLike], *, serialize: bool = False,
              profile: ProfileChoice = deployment_profile) -> Verdict:
    """Every pipeline file under ``targets`` (folders or files) → its DAG, or its errors. Never
    raises for a bad file: a file only loses itself. Pipeline ids must be unique across files, and
    no two pipelines may write one dataset Asset (``shared_assets``).

    ``serialize``: also serialize each DAG as the DAG processor does before storing it
    (``airflow-mlops validate`` does; the loader leaves it to the DAG processor, which serializes
    each DAG on its own and records a failure against that DAG only: doing it twice would cost
    about half again the parse time).

    ``profile``: the pipeline profile every pipeline is built with (see ``read_pipeline``)."""
    with one_scan(), _collector_paused():
        verdict = _load_dags(targets, profile)
    if serialize:
        _serialized(verdict)
    return verdict


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the DAGs are built. Building them allocates
    hundreds of thousands of objects that all stay alive (DAGs, tasks and task groups refer to
    each other), so every collection it would start re-scans them and frees nothing; whatever
    cyclic garbage a failed pipeline leaves is collected once it is back on."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _load_dags(targets: Iterable[str | os.PathLike], profile: ProfileChoice) -> Verdict:  # noqa: C901
    verdict = Verdict()
    seen_files: set[Path] = set()
    for target in targets:
        try:
            found = discover(target)
        except Exception as exc:  # e.g. a symlink loop: Airflow's walk refuses it too
            log.exception("Cannot list pipeline files under %s", target)
            verdict.bad[Path(target)] = PipelineSpecError(
                [SpecIssue(Mark(str(target), 1, 1), "", f"cannot list pipeline files: {type(exc).__name__}: {exc}")])
            continue
        for path in found:
            if path.resolve() not in seen_files:
                seen_files.add(path.resolve())
                verdict.files.append(path)
    ids: dict[str, LoadedPipeline] = {}
    for path in verdict.files:
        try:
            try:  # the DAG's build below constructs the custom operators: once, not twice
                loaded = read_pipeline(path, construct_operators=False, profile=profile)
            except PipelineSpecError:  # a bad file: every problem at once, the operators' own too
                loaded = read_pipeline(path, profile=profile)
            first = ids.get(loaded.pipeline.id)
            if first is not None:
                used = f"pipeline id '{loaded.pipeline.id}' is already used by {first.file}"
                raise PipelineSpecError([SpecIssue(loaded.mark_of(("id",)), "id", used)])
            ids[loaded.pipeline.id] = loaded
            dag = checked_dag(loaded)
            stored_assets(loaded, dag)
            verdict.good.append((loaded, dag))
        except PipelineSpecError as exc:
            verdict.bad[path] = exc
        except Exception as exc:  # a bug of ours must not take the other pipelines down either
            log.exception("Pipeline %s could not be loaded", path)
            verdict.bad[path] = PipelineSpecError(
                [SpecIssue(Mark(str(path), 1, 1), "", f"could not load the pipeline: {type(exc).__name__}: {exc}")])
    for path, error in shared_assets(verdict.good).items():
        verdict.bad[path] = error
    verdict.good = [(loaded, dag) for loaded, dag in verdict.good if loaded.file not in verdict.bad]
    verdict.warnings = check_assets(verdict.good)
    return verdict


def _outlets(dag: DAG) -> Iterator[tuple[str, Any]]:
    """``(stage, Asset)`` for every Asset a task of ``dag`` produces (stage: its task group)."""
    for task in dag.tasks:
        for outlet in task.outlets:
            if getattr(outlet, "uri", None) is not None:
                yield task.task_id.split(".")[0], outlet


def stored_assets(loaded: LoadedPipeline, dag: DAG) -> None:
    """Each Asset of the DAG as the DAG processor stores it (Airflow's own ``AssetModel``: an ASCII
    URI, no reserved scheme). Airflow stores a file's DAGs together, so one Asset it refuses there
    would lose every pipeline of the loader file, with no import error: refused here instead, at
    the stage that produces it."""
    for stage, asset in _outlets(dag):
        uri = asset.uri or ""
        if uri.isascii() and not uri.lower().startswith("airflow:"):
            continue  # what AssetModel checks, cheaply: building one costs ~0.7 ms (SQLAlchemy)
        from airflow.models.asset import AssetModel

        try:
            AssetModel(name=asset.name, uri=asset.uri)
        except Exception as exc:  # noqa: BLE001 - Airflow's own words, at the stage's line
            loc = ("stages", stage) if stage in loaded.pipeline.stages else ("dag",)
            raise _error(loaded, loc, f"Airflow cannot store the Asset {asset.uri!r} ({asset.name}) this stage "
                                      f"produces: {exc}") from None


def shared_assets(good: list[tuple[LoadedPipeline, DAG]]) -> dict[Path, PipelineSpecError]:
    """Pipelines whose stages would write one Asset (two pipelines with one ``data_dir`` and a
    stage name in common write into one folder, and Airflow keeps only one of two Assets with one
    URI: the other pipeline's task then fails on every run). Each such file gets an error at its
    own stage, naming the other file's."""
    from airflow_mlops.factory._build import Plan

    writers: dict[str, list[tuple[LoadedPipeline, str]]] = {}
    for loaded, dag in good:
        for stage, asset in _outlets(dag):
            writers.setdefault(asset.uri, []).append((loaded, stage))
    issues: dict[Path, list[SpecIssue]] = {}
    for uri, found in writers.items():
        if len({loaded.file for loaded, _ in found}) < 2:
            continue
        for loaded, stage in found:
            others = "; ".join(f"stage '{s}' of pipeline '{o.pipeline.id}' ({o.mark_of(('stages', s), key=True)})"
                               for o, s in found if o is not loaded)
            data_dir = Plan(loaded).data_dir
            loc = ("data_dir",) if loaded.pipeline.data_dir else ("stages", stage)
            issues.setdefault(loaded.file, []).append(SpecIssue(
                loaded.mark_of(loc, key=True), format_path(loc),
                f"stage '{stage}' writes {uri} (data_dir {data_dir}), as {others} does: two pipelines would "
                "overwrite each other's data and Airflow keeps only one of two Assets with one URI; give each "
                "pipeline its own data_dir"))
    return {path: PipelineSpecError(found) for path, found in issues.items()}


def _serialized(verdict: Verdict) -> None:
    """Serialize each good DAG as the DAG processor does; a DAG it refuses becomes a bad file."""
    from airflow.serialization.serialized_objects import DagSerialization

    kept = []
    for loaded, dag in verdict.good:
        try:
            DagSerialization.to_dict(dag)
        except RecursionError:
            verdict.bad[loaded.file] = _error(loaded, ("dag",), "Airflow cannot serialize this DAG: a value is nested "
                                                                "too deeply (RecursionError)")
        except Exception as exc:  # noqa: BLE001
            verdict.bad[loaded.file] = _error(loaded, ("dag",), f"Airflow cannot serialize this DAG: "
                                                                f"{type(exc).__name__}: {exc}")
        else:
            kept.append((loaded, dag))
    verdict.good = kept


def checked_dag(loaded: LoadedPipeline) -> DAG:
    """The pipeline's DAG, built and checked as Airflow's DagBag checks a DAG before accepting it;
    a failure is a PipelineSpecError at the part of the YAML it comes from."""
    try:
        dag = build_dag(loaded)
    except StageBuildError as exc:
        at = ("stages", exc.stage)
        if isinstance(exc.error, MissingExtra):  # an operator whose extra is not installed
            custom = registry.runs_users_operator(loaded.pipeline.stages[exc.stage])
            raise _error(loaded, at + (("operator",) if custom else ()), str(exc.error)) from None
        if isinstance(exc.error, ArgumentsError) and loaded.source is not None:
            raise PipelineSpecError(translate_arguments(exc.error, loaded.source, at + ("args",))) from None
        raise _error(loaded, at, f"Airflow refused this stage: {type(exc.error).__name__}: {exc.error}") from None
    except Exception as exc:
        raise _error(loaded, _named_setting(loaded, exc), f"Airflow refused the DAG: {type(exc).__name__}: {exc}") \
            from None
    try:
        dag.timetable.validate()
    except Exception as exc:
        raise _error(loaded, ("dag", "schedule"), f"Airflow refused the schedule: {exc}") from None
    try:
        dag.validate()
        dag.check_cycle()
    except Exception as exc:
        raise _error(loaded, ("dag",), f"Airflow refused the DAG: {type(exc).__name__}: {exc}") from None
    return dag


def _named_setting(loaded: LoadedPipeline, exc: Exception) -> tuple:
    """Where Airflow's refusal points: the ``dag:`` setting its message names that the YAML wrote
    (``max_active_runs`` for "ContinuousTimetable requires max_active_runs <= 1"), else ``dag``."""
    import re

    text = str(exc)
    written = loaded.pipeline.dag.model_fields_set
    for name in sorted(written, key=len, reverse=True):
        if re.search(rf"\b{re.escape(name)}\b", text):
            return ("dag", name)
    return ("dag",)


def _error(loaded: LoadedPipeline, loc: tuple, message: str) -> PipelineSpecError:
    return PipelineSpecError([SpecIssue(loaded.mark_of(loc, key=True), format_path(loc), message)])


def check_assets(good: list[tuple[LoadedPipeline, DAG]]) -> list[SpecIssue]:
    """``schedule_on_assets`` names that none of these pipelines produces. A warning, since a DAG
    written in Python may produce it (``airflow-mlops validate --strict`` makes it an error)."""
    produced = sorted({outlet.name for _, dag in good for task in dag.tasks for outlet in task.outlets
                       if getattr(outlet, "name", None)})
    warnings = []
    for loaded, _ in good:
        for i, name in enumerate(loaded.pipeline.dag.schedule_on_assets):
            if name in produced:
                continue
            loc = ("dag", "schedule_on_assets", i)
            warnings.append(SpecIssue(
                loaded.mark_of(loc), format_path(loc),
                f"no pipeline here produces the asset '{name}'{did_you_mean(name, produced)}; pipelines produce "
                "'<pipeline id>.<stage>' (preprocess, serve and drift stages) and '<pipeline id>.<stage>.model' "
                "(train stages)"))
    return warnings
