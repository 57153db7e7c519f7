"""The house rules that are not import contracts (those run as `lint-imports` in scripts/test.sh):
the root's public surface, module sizes, and the stage registry's view of kinds and backends."""

from __future__ import annotations

import importlib
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
    import typing

    from airflow_mlops.spec.models import AVAILABLE_BACKENDS, STAGE_KINDS, ServeStage
    from airflow_mlops.stages import registry

    assert set(registry.KINDS) == set(STAGE_KINDS)
    assert set(registry.KINDS["serve"].modes) == set(typing.get_args(ServeStage.model_fields["mode"].annotation))
    for name, kind in registry.KINDS.items():
        assert set(kind.backends) <= set(AVAILABLE_BACKENDS), name
        if name == "custom":
            continue
        for backend in kind.backends:  # the engine the runner would import exists and has run()
            module = importlib.import_module(registry.engine_module(name, backend))
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
