"""What each stage kind is, in one table: the backends and modes it runs on, what it produces, and
where its engines live. The factory (Assets), the checks behind ``airflow-mlops validate`` and the
engine runner all read it; a new kind or mode is an entry here plus its folder ``stages/<kind>/``.

Pure data and string checks: read at every DAG parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping

from airflow_mlops._core import extras
from airflow_mlops.stages import needs

# (the stage's field at fault, None for its backend, or a tuple: a place in the pipeline; the message)
Problem = tuple[str | tuple | None, str]


@dataclass(frozen=True)
class Kind:
    """One stage kind.

    :param backends: the backends that run it (``batch``, ``spark``, ``kubernetes``).
    :param modes: for a kind with modes (serve), each mode's backends; the kind's ``backends`` hold
        for a mode not listed.
    :param produces: ``dataset`` (a folder of files), ``model`` (a registered model version),
        ``drift`` (a drift report), or None: what the factory publishes as the stage's Asset.
    :param server_modes: modes that run as a long-lived model server rather than a task that ends
        (a backend in ``spec.models.SERVER_BACKENDS`` builds its own server for them; on the others
        the kind's engine starts it in the task).
    :param rules: the kind's own checks for a backend (``(stage, backend) -> problems``).
    :param why_not: for a mode, why the backends it lacks cannot run it (the message's reason).
    :param needs: what a stage of the kind reads from the stages before it (``stages.needs``).
    :param users_operator: the stage is the user's own operator (``operator:`` with ``args:``), built
        from its import path wherever Airflow runs it: no backend builds it, and the checks of
        backends, extras and upstream needs do not apply (``runs_users_operator``).
    """

    backends: tuple[str, ...]
    modes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    produces: Literal["dataset", "model", "drift"] | None = None
    server_modes: tuple[str, ...] = ()
    rules: Callable[[Any, str], Iterator[Problem]] | None = None
    why_not: Mapping[str, str] = field(default_factory=dict)
    doing: str = ""  # the kind as an activity in messages ('online serving'); default: its name
    needs: Callable[[Any, needs.Upstream, Any], Iterator[str]] | None = None  # what it reads from upstream
    users_operator: bool = False


def _preprocess_rules(stage: Any, backend: str) -> Iterator[Problem]:
    """Spark runs SQL or a transform over Spark DataFrames; pandas has no SQL."""
    if backend == "spark":
        if stage.steps:
            yield "steps", "built-in steps are pandas operations; on the spark backend use 'sql' or 'transform'"
        if stage.callable:
            yield "callable", "on the spark backend read with 'input'/'inputs' and transform with 'sql' or 'transform'"
        if stage.split and stage.split.stratify:
            yield "split", "a stratified split is not available on the spark backend; remove 'stratify'"
    elif stage.sql:
        yield "sql", "'sql' runs on Spark: set 'backend: spark' on this stage, or use 'transform' with pandas"


def _train_rules(stage: Any, backend: str) -> Iterator[Problem]:
    """A Spark ML estimator trains on Spark, a scikit-learn style one in a process; torchrun groups
    are pods (``spec.training``)."""
    from airflow_mlops.spec.training import SPARK_ML_PREFIX, is_spark_ml

    spark_ml = is_spark_ml(stage.estimator)
    if backend == "spark" and stage.estimator and not spark_ml:
        yield "estimator", (f"on the spark backend the estimator trains on the cluster, so it must be a Spark ML one "
                            f"('{SPARK_ML_PREFIX}...', e.g. pyspark.ml.classification.LogisticRegression, "
                            "pyspark.ml.classification.RandomForestClassifier, pyspark.ml.regression.LinearRegression), "
                            f"got '{stage.estimator}': give a Spark ML estimator, a 'callable', or 'backend: batch' "
                            "(or kubernetes) for a scikit-learn estimator")
    elif backend != "spark" and spark_ml:
        yield "estimator", (f"'{stage.estimator}' is a Spark ML estimator: it trains on Spark, so give this stage "
                            f"'backend: spark'; on the {backend} backend use a scikit-learn style estimator "
                            "(e.g. sklearn.linear_model.LogisticRegression) or a 'callable'")
    if stage.distributed is not None:
        if backend != "kubernetes":
            yield "distributed", (f"'distributed' runs torchrun over several pods: give this stage 'backend: kubernetes' "
                                  f"(not {backend}); Spark ML estimators spread over the Spark cluster without it")
        elif stage.estimator:
            yield "distributed", ("'distributed' launches your training function on every rank: give a 'callable' "
                                  "(a function using torch.distributed), not an 'estimator'")
    if stage.spark is not None and backend != "spark":
        yield "spark", f"'spark' settings are for the spark backend; this stage runs on {backend}"


ALL = ("batch", "spark", "kubernetes")
KINDS: dict[str, Kind] = {
    "preprocess": Kind(backends=ALL, produces="dataset", rules=_preprocess_rules),
    "train": Kind(backends=ALL, produces="model", rules=_train_rules, needs=needs.train),
    "validate": Kind(backends=("batch", "kubernetes"), needs=needs.validate),
    "serve": Kind(backends=ALL, produces="dataset", server_modes=("online",), doing="serving", needs=needs.serve,
                  modes={"batch": ALL, "online": ("batch", "kubernetes"), "stream": ("batch", "kubernetes")}),
    "drift": Kind(backends=("batch", "kubernetes"), produces="drift", needs=needs.drift),
    "custom": Kind(backends=ALL, users_operator=True),  # the backend is not ours to run
}


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def problems(stage: Any, backend: str, pipeline: Any = None) -> Iterator[Problem]:
    """Why ``stage`` cannot run on ``backend`` (its field, or None for the backend; a message)."""
    del pipeline
    kind = KINDS[stage.kind]
    if backend not in kind.backends:
        runs = [name for name, k in KINDS.items() if backend in k.backends and not k.users_operator]
        others = [b for b in kind.backends if b != backend]
        yield None, (f"the {backend} backend runs {_listed(runs)} stages, not {stage.kind}; give this stage "
                     f"'backend: {others[0]}'" + (f" (or {_listed(others[1:])})" if others[1:] else ""))
        return
    mode = getattr(stage, "mode", None)
    if mode in kind.modes and backend not in kind.modes[mode]:
        where = " (or ".join(kind.modes[mode][:2]) + (")" if len(kind.modes[mode]) > 1 else "")
        doing = kind.doing or stage.kind
        if backend == "spark":
            yield "mode", f"{mode} {doing} is not a Spark job: use backend {where} for it"
        else:
            why = kind.why_not.get(mode) or f"use backend {where} for it"
            yield "mode", f"{mode} {doing} does not run on the {backend} backend: {why}"
    if kind.rules is not None:
        yield from kind.rules(stage, backend)


# What needs an extra (``_core.extras``): a backend, a mode, GPUs in the worker.
BACKEND_EXTRAS = {"spark": "apache-spark", "kubernetes": "cncf-kubernetes"}
MODE_EXTRAS = {"stream": "apache-kafka"}
GPU_EXTRA = "gpu"


def extra_problems(stage: Any, backend: str, pipeline: Any) -> Iterator[Problem]:
    """What the stage needs from an extra that is not installed here, at the setting that needs
    it (None: the backend; a tuple: a pipeline-wide setting, reported once). A custom stage's
    operator checks its own extra when constructed (``_core.extras.require``: MissingExtra, which
    ``spec.operator_args`` and the DAG build report at the stage's ``operator`` line)."""
    if runs_users_operator(stage):
        return
    yield from _storage_extra_problems(stage, pipeline)
    extra = BACKEND_EXTRAS.get(backend)
    if extra and not extras.installed(extra):
        yield None, extras.missing_message(extra, f"the {backend} backend")
    mode = getattr(stage, "mode", None)
    if mode in MODE_EXTRAS and not extras.installed(MODE_EXTRAS[mode]):
        yield "mode", extras.missing_message(MODE_EXTRAS[mode], f"{stage.kind} mode '{mode}'")
    if stage.kind == "train" and backend == "batch" and not extras.installed(GPU_EXTRA):
        from airflow_mlops.spec.load import resolve_resources

        held = resolve_resources(pipeline, stage.resources)
        if held is not None and held.gpu:
            yield "resources", extras.missing_message(
                GPU_EXTRA, f"training on {held.gpu} GPU(s) in the worker (NVML picks and measures them)")
        metrics = pipeline.gpu_metrics
        first = next(s for s in pipeline.stages.values() if s.kind == "train")
        if stage is first and (metrics.prometheus_port or metrics.pushgateway_url):  # once per pipeline
            setting = "prometheus_port" if metrics.prometheus_port else "pushgateway_url"
            yield ("gpu_metrics", setting), extras.missing_message(GPU_EXTRA, f"gpu_metrics.{setting}")


def _storage_extra_problems(stage: Any, pipeline: Any) -> Iterator[Problem]:
    """Object-storage locations whose scheme's extra is not installed (``_core.storage.EXTRA_OF``):
    the stage's output and inputs, and (with the first stage, once) the pipeline's data_dir."""
    from airflow_mlops._core.storage import extra_needed

    found: list[tuple[Any, str]] = []
    if stage is next(iter(pipeline.stages.values())) and pipeline.data_dir:
        found.append((("data_dir",), pipeline.data_dir))
    if getattr(stage, "output", None):
        found.append(("output", stage.output))
    for name in type(stage).model_fields:
        value = getattr(stage, name)
        for item in (value.values() if isinstance(value, dict) else [value]):
            if getattr(item, "path", None) and hasattr(item, "sklearn_dataset"):  # a DataInput
                found.append((name, item.path))
    for at, location in found:
        extra = extra_needed(location)
        if extra and not extras.installed(extra):
            yield at, extras.missing_message(extra, location.split("://")[0] + ":// data")


def input_problems(pipeline: Any, upstream: dict[str, list[str]]) -> Iterator[tuple[str, str]]:
    """``(stage name, message)`` for what a stage needs from the stages before it and lacks;
    ``upstream``: each stage's upstream stages, nearest first."""
    for name, stage in pipeline.stages.items():
        kind = KINDS[stage.kind]
        if kind.needs is None or any(runs_users_operator(pipeline.stages[u]) for u in upstream[name]):
            continue  # a custom stage upstream may return anything
        for message in kind.needs(stage, needs.upstream_of(pipeline, upstream[name]), pipeline):
            yield name, f"stage '{name}' {message}"


def produces(kind: str) -> str | None:
    """``dataset``, ``model``, ``drift`` or None: what a stage of this kind publishes."""
    return KINDS[kind].produces


def runs_users_operator(stage: Any) -> bool:
    """Whether the stage is the user's own operator (a custom stage; ``Kind.users_operator``)."""
    return KINDS[stage.kind].users_operator


def runs_as_server(stage: Any) -> bool:
    """Whether the stage is a long-lived model server (serve, mode online)."""
    return getattr(stage, "mode", None) in KINDS[stage.kind].server_modes


# Where each engine's code lives in a kind's folder (``StageContext.engine``, which the backend sets).
ENGINE_MODULES = {"pandas": "", "spark": ".spark"}


def engine_module(kind: str, engine: str) -> str:
    """The module whose ``run(spec, ctx)`` computes the stage on ``engine``: the kind's pandas
    engine ``stages/<kind>/__init__.py``, or its Spark engine ``stages/<kind>/spark.py``. Raises
    KeyError for an engine not in ``ENGINE_MODULES``."""
    return f"airflow_mlops.stages.{kind}{ENGINE_MODULES[engine]}"
