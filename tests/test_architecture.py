"""The house rules that are not import contracts (those run as `lint-imports` in scripts/test.sh):
the root's public surface, module sizes, and the stage registry's view of kinds and backends."""

from __future__ import annotations

import ast
import importlib
import typing
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "airflow_mlops"


def test_the_root_exports_the_loader_the_named_operators_and_sensors():
    import airflow_mlops

    public = set(airflow_mlops.__all__) - {"__version__"}
    assert public == set(airflow_mlops._PUBLIC)
    for name in public:  # every advertised name resolves, lazily
        assert getattr(airflow_mlops, name) is not None
    assert "StageOperator" not in public and "EmbeddedBroker" not in public


@pytest.mark.parametrize("name, home", [("StageOperator", "airflow_mlops.operators.stage"),
                                        ("EmbeddedBroker", "airflow_mlops.kafka.broker")])
def test_names_moved_off_the_root_still_import_with_a_warning(name, home):
    import airflow_mlops

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(airflow_mlops, name)
    assert value is getattr(importlib.import_module(home), name)
    assert any(home in str(w.message) for w in caught)


def test_no_package_defines_a_name_that_one_of_its_submodules_would_replace():
    """Importing ``pkg.name`` sets ``pkg.name`` to that module: a function ``name`` defined in
    ``pkg/__init__.py`` beside a ``pkg/name.py`` is silently replaced by the module once anything
    imports it, and the next caller of ``pkg.name(...)`` gets "'module' object is not callable"."""
    import pkgutil

    shadowed = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        package = ".".join(init.parent.relative_to(PACKAGE.parent).parts)
        names = {m.name for m in pkgutil.iter_modules([str(init.parent)])}
        defined = {line.split("(")[0].split()[-1] for line in init.read_text().splitlines()
                   if line.startswith(("def ", "class "))}
        shadowed += [f"{package}.{name}" for name in sorted(names & defined)]
    assert not shadowed, f"a submodule replaces these names once imported: {shadowed}"


def test_no_module_over_400_lines_without_a_reason_at_its_top():
    """A long module says why at its top (``Long module: <reason>``) or is split."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        if len(lines) > 400 and not any("Long module:" in line for line in lines[:15]):
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {len(lines)} lines")
    assert not too_long, "split these modules or say why at their top:\n" + "\n".join(too_long)


def test_the_stage_registry_covers_every_kind_and_mode_with_an_engine_for_each_backend():
    from airflow_mlops.backends.kubernetes import KubernetesStageOperator
    from airflow_mlops.backends.spark.operator import SparkStageOperator
    from airflow_mlops.backends.stage import StageOperator
    from airflow_mlops.spec.models import AVAILABLE_BACKENDS, STAGE_KINDS, ServeStage
    from airflow_mlops.stages import registry

    engine_of = {"batch": StageOperator.engine, "spark": SparkStageOperator.engine,
                 "kubernetes": KubernetesStageOperator.engine}  # the engine each backend's context names
    assert set(engine_of) == set(AVAILABLE_BACKENDS) and set(engine_of.values()) == set(registry.ENGINE_MODULES)

    assert set(registry.KINDS) == set(STAGE_KINDS)
    assert set(registry.KINDS["serve"].modes) == set(typing.get_args(ServeStage.model_fields["mode"].annotation))
    for name, kind in registry.KINDS.items():
        assert set(kind.backends) <= set(AVAILABLE_BACKENDS), name
        if name == "custom":
            continue
        for backend in kind.backends:  # the engine the runner would import exists and has run()
            module = importlib.import_module(registry.engine_module(name, engine_of[backend]))
            assert callable(module.run), (name, backend)


@pytest.mark.parametrize("kind, backend, expected", [
    ("drift", "spark", "the spark backend runs preprocess, train and serve stages, not drift; give this stage "
                       "'backend: batch' (or kubernetes)"),
])
def test_a_kind_on_a_backend_that_does_not_run_it_is_refused_naming_what_does(kind, backend, expected):
    from airflow_mlops.stages import registry

    class Stage:  # only what the registry reads
        mode = None

    Stage.kind = kind
    assert list(registry.problems(Stage(), backend)) == [(None, expected)]


def test_the_backends_that_host_servers_are_the_ones_that_build_them():
    """``spec.models.SERVER_BACKENDS`` is the one answer to "does this backend run serve's online
    mode as a server of its own?": ``backends.stage_task_call`` then calls its ``server_call``."""
    from airflow_mlops.spec.models import AVAILABLE_BACKENDS, SERVER_BACKENDS

    building = {b for b in AVAILABLE_BACKENDS if hasattr(importlib.import_module(f"airflow_mlops.backends.{b}"),
                                                         "server_call")}
    assert building == set(SERVER_BACKENDS)


@pytest.mark.parametrize("backend, expected", [
    ("batch", ["stage 'serve' sends a sample to the model server from a dataset, and has none: set 'input' on it, "
               "or add a preprocess stage before it to use its test split (or list one in its depends_on)"]),
    ("kubernetes", []),  # a Deployment of its own: the task sends it no sample
])
def test_online_serving_needs_a_dataset_only_where_the_task_starts_the_server(backend, expected):
    from airflow_mlops.spec.models import Pipeline
    from airflow_mlops.stages import registry

    pipeline = Pipeline.model_validate({"id": "p", "backend": backend, "kubernetes": {"image": "x"},
                                        "mlflow": {"registered_model": "m"}, "stages": {"serve": {"mode": "online"}}})
    assert [message for _, message in registry.input_problems(pipeline, {"serve": []})] == expected


def test_only_the_outcome_table_raises_airflows_task_exceptions():
    """"Fail, skip or retry?" has one answer, ``_core/outcome.py``: no other module constructs
    AirflowFailException, AirflowSkipException or AirflowSensorTimeout (catching them is fine)."""
    import re

    made = re.compile(r"\b(AirflowFailException|AirflowSkipException|AirflowSensorTimeout)\(")
    allowed = {PACKAGE / "_core" / "outcome.py", PACKAGE / "_core" / "compat.py"}
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
                 for path in sorted(PACKAGE.rglob("*.py")) if path not in allowed
                 for n, line in enumerate(path.read_text().splitlines(), 1) if made.search(line)]
    assert not offenders, "raise _core.outcome's failed()/skipped()/timed_out() instead:\n" + "\n".join(offenders)


@pytest.mark.parametrize("error, airflow, code", [
    ("StageFailed('below threshold')", "AirflowFailException", 3),
    ("StageSkipped('the challenger lost')", "AirflowSkipException", 4),
    ("DependencyFailed('MLflow', failure='refused', during='x', action='y', retryable=False)", "AirflowFailException", 3),
    ("DependencyFailed('MLflow', failure='timed out', during='x', action='y')", "DependencyFailed", 1),
    ("TrackingUriError('relative')", "AirflowFailException", 3),
    ("MissingTopic('no topic')", "AirflowFailException", 3),
    ("BrokerLost('Kafka broker', failure='lost', during='x', action='y')", "BrokerLost", 1),
    ("RestoreError('corrupted')", "AirflowFailException", 3),
    ("RuntimeError('a crash')", "RuntimeError", 1),
])
def test_each_error_has_one_outcome_in_a_task_and_one_exit_code(error, airflow, code):
    from airflow_mlops._core.errors import DependencyFailed, StageFailed, StageSkipped  # noqa: F401
    from airflow_mlops._core.outcome import airflow_outcome, exit_code
    from airflow_mlops.hooks.mlflow import TrackingUriError  # noqa: F401
    from airflow_mlops.lifecycle.backup import RestoreError  # noqa: F401
    from airflow_mlops.stream.errors import BrokerLost, MissingTopic  # noqa: F401

    exc = eval(error)
    assert exit_code(exc) == code
    with pytest.raises(BaseException) as raised:
        with airflow_outcome():
            raise exc
    assert type(raised.value).__name__ == airflow
    assert str(exc) in str(raised.value)


# --- only stages/ branches on kind or mode, only backends/ on backend ------------------------------
# spec/ defines the table (Pipeline.backend_of, SERVER_BACKENDS, the models' own validators) and is
# not checked; stages/registry.py *is* the stage x backend table, so it compares backends.
BRANCH_EXCEPTIONS: dict[str, str] = {
    # "path:line source" (no line number: the source as ast.unparse writes it) -> why it stays
}


def _branch_values() -> tuple[set[str], set[str]]:
    from airflow_mlops.spec.models import AVAILABLE_BACKENDS, STAGE_KINDS, ServeStage

    modes = typing.get_args(ServeStage.model_fields["mode"].annotation)
    return set(AVAILABLE_BACKENDS), set(STAGE_KINDS) | set(modes)


def _compared_names(node: ast.AST) -> set[str]:
    """What an operand of a comparison is called: ``stage.backend`` and ``backend`` -> backend,
    ``getattr(stage, "mode", None)`` -> mode, ``pipeline.backend_of(stage)`` -> backend."""
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant):
            return {str(node.args[1].value)}
        if isinstance(func, ast.Attribute) and func.attr == "backend_of":
            return {"backend"}
    return set()


def _constants(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_constants(e) for e in node.elts)) if node.elts else set()
    if isinstance(node, ast.MatchValue):
        return _constants(node.value)
    if isinstance(node, ast.MatchOr):
        return set().union(*(_constants(p) for p in node.patterns))
    return set()


def branches(source: str, area: str) -> list[str]:
    """The comparisons (``==``, ``!=``, ``in``, ``match``/``case``) in ``source`` that decide on a
    backend, kind or mode where ``area`` may not: ``"outside"`` (not stages/, backends/ or spec/)
    may decide on none of them, ``"stages"`` not on a backend, ``"backends"`` not on a kind or mode.
    A backend is anything named ``backend`` or (outside stages/) a backend value (``"kubernetes"``);
    a kind or mode is a kind or mode value compared with something named ``kind`` or ``mode``. Returns
    ``"line: source"`` for each."""
    backends, kinds_and_modes = _branch_values()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Match):
            operands = [node.subject, *(case.pattern for case in node.cases)]
        else:
            continue
        values = set().union(*(_constants(o) for o in operands))
        names = set().union(*(_compared_names(o) for o in operands))
        # In stages/ "batch" and "spark" also name a serve mode and an engine: there only a name says backend.
        on_backend = "backend" in names or (bool(values & backends) and area != "stages")
        on_kind = bool(values & kinds_and_modes) and bool(names & {"kind", "mode"})
        if (on_backend and area in ("outside", "stages")) or (on_kind and area in ("outside", "backends")):
            found.append(f"{node.lineno}: {ast.unparse(node.subject if isinstance(node, ast.Match) else node)}")
    return found


def _area(path: Path) -> str | None:
    top = path.relative_to(PACKAGE).parts[0]
    if top == "spec" or path == PACKAGE / "stages" / "registry.py":
        return None
    return top if top in ("stages", "backends") else "outside"


def test_only_stages_branch_on_kind_or_mode_and_only_backends_on_backend():
    """DESIGN.md's rule: stage code does not know which backend runs it, a backend does not know
    what a stage computes, and nothing else decides either; they ask the table (``stages.registry``,
    ``Pipeline.backend_of`` / ``hosts_server``, a backend module's own attributes)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        area = _area(path)
        if area is None:
            continue
        rel = path.relative_to(PACKAGE.parent)
        offenders += [f"{rel}:{hit}" for hit in branches(path.read_text(), area)
                      if f"{rel}:{hit.split(': ', 1)[1]}" not in BRANCH_EXCEPTIONS]
    assert not offenders, ("ask the stage x backend table instead (stages.registry, Pipeline.backend_of / hosts_server, "
                           "the backend module), or list an exception with its reason:\n" + "\n".join(offenders))


@pytest.mark.parametrize("area, source, caught", [
    ("outside", "if stage.backend == 'kubernetes': pass", True),
    ("outside", "if pipeline.backend_of(stage) in ('spark', 'batch'): pass", True),
    ("outside", "x = 'gpu' if spec.backend == 'batch' else 'cncf-kubernetes'", True),
    ("outside", "if backend != other_backend: pass", True),
    ("outside", "if stage.kind == 'custom': pass", True),
    ("outside", "if getattr(stage, 'mode', None) == 'online': pass", True),
    ("outside", "match stage.backend:\n    case 'spark' | 'batch': pass", True),
    ("stages", "in_worker = pipeline.backend_of(stage) != 'kubernetes'", True),
    ("stages", "reads = stage.mode == 'batch'", False),
    ("backends", "if stage.kind != 'custom': pass", True),
    ("backends", "if backend == 'kubernetes': pass", False),
    ("outside", "if produces == 'drift': pass", False),  # what the registry says a kind produces
    ("outside", "if policy.kind == 'files': pass", False),  # not a stage kind
    ("outside", "if protocol in ('file', 'local'): pass", False),
    ("stages", "if job.builtin.engine == 'spark': pass", False),  # the engine, which the backend chose
])
def test_the_branch_rule_catches_a_branch_and_nothing_else(area, source, caught):
    assert bool(branches(source, area)) is caught
