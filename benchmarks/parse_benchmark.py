"""Parse-time cost of YAML pipelines versus the same DAGs hand-written in Python.

    python benchmarks/parse_benchmark.py [--pipelines N] [--repeats R] [--profile]

Method
------
1. Generate N four-stage pipelines (preprocess → train → validate → serve, modelled on
   ``example_configs/breast_cancer.yaml``, ids ``bench_0000`` ...) as YAML files plus a
   ``_defaults.yaml`` and one loader DAG file calling ``load_pipelines(globals(), <folder>)``.
   Then write the same N DAGs by hand twice, one ``.py`` file per DAG, with the same DAG settings,
   task groups (and their tooltips), outlet Assets and ``doc_md`` text:

   - **PythonOperator** (what people write by hand, the baseline of the goal): four
     ``PythonOperator``s calling one small function of the file that validates the stage (a plain
     dict, so Airflow templates it through ``op_kwargs``) and runs ``airflow_mlops.stages.run_stage``
     on it; everything but Airflow is imported inside that function, so parsing imports no stage
     code and no heavy library;
   - **StageOperator**: ``airflow.sdk`` ``DAG`` + ``TaskGroup`` + ``StageOperator`` with the stage
     specs built from the pydantic models directly (what the YAML builds);
   - **bare PythonOperator** (the goal's baseline: what people write by hand when they write
     nothing more): the same four ``PythonOperator``s with the same DAG settings, but no task
     groups, tooltips, docs or Assets. Not part of the equivalence check, since it carries less.
2. Check equivalence: one subprocess per folder fills a ``DagBag`` and dumps every DAG's settings
   and every task's ids, upstream ids, tooltip, outlets, retries, stage spec, stage name, pipeline
   id, MLflow settings, data dir, resources and upstream stages (from the operator, or from the
   PythonOperator's ``op_kwargs`` and its file). The three dumps must be identical (the operator
   type aside), or the script exits non-zero. (These runs also warm ``__pycache__`` in every
   folder, so no side pays first-time bytecode compilation while timed.)
3. Time: R rounds of fresh subprocesses, one per side in turn (YAML, StageOperator,
   PythonOperator). Each one first imports Airflow, ``DagBag``, ``PythonOperator`` and the
   airflow_mlops modules the DAGs use (so Airflow's ~2 s import is not counted), then times only
   ``DagBag(dag_folder=...)`` with ``time.perf_counter`` and checks it has no import errors. The
   medians are compared; the goal is YAML <= 1.2x the bare PythonOperator DAGs. The load
   average is printed before and after: on a busy machine the figures are noisy.
4. ``--profile``: one more subprocess fills the YAML DagBag once with timers around the loader's
   steps (YAML reading, defaults, pydantic validation, cross checks, docs, outlets, operators,
   templating set-up, DAG and task groups, Airflow's DAG checks) and prints where the time goes,
   each step's own time (the steps it calls are counted under their own names).

The environment uses a temporary ``AIRFLOW_HOME``, ``AIRFLOW__CORE__LOAD_EXAMPLES=False`` and a
600 s ``dagbag_import_timeout`` (the loader file builds all N DAGs in one import).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

GOAL = 1.2
STAGES = ("preprocess", "train", "validate", "serve")

DEFAULTS_YAML = """\
backend: batch
dag:
  owner: ml-platform
  retries: 1
  retry_delay: 1m
  tags: [example]
resource_profiles:
  cpu-train: {cpu: 2, memory: 4Gi}
"""

PIPELINE_YAML = """\
id: {id}
description: >
  Pipeline {i}: classify breast tumours as malignant or benign (scikit-learn's bundled Wisconsin dataset):
  preprocess → train a random forest → validate against thresholds → score the held-out rows.
dag:
  schedule: null
  tags: [classification]
mlflow:
  experiment: bench-{i}
  registered_model: {id}_classifier
stages:
  preprocess:
    input: {{sklearn_dataset: breast_cancer}}
    steps:
      - dropna: true
    split: {{test_fraction: 0.25, stratify: target, seed: 7}}
  train:
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {{n_estimators: 100, max_depth: 6, random_state: 7}}
    target: target
    metrics: [accuracy, f1, roc_auc]
    resources: cpu-train
  validate:
    thresholds:
      accuracy: {{min: 0.9}}
      roc_auc: {{min: 0.95}}
    alias: champion
  serve:
    mode: batch
"""

LOADER_PY = """\
# The airflow-mlops loader DAG file: one DAG per pipeline YAML in this folder.
from airflow_mlops import load_pipelines

load_pipelines(globals(), {folder!r})
"""

HAND_PY = '''\
"""{id}: an airflow DAG written by hand with StageOperator."""
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Asset, TaskGroup

from airflow_mlops.backends.stage import StageOperator
from airflow_mlops.spec.models import (
    DataInput, MlflowSettings, PreprocessStage, ServeStage, Split, Step, Threshold, TrainStage, ValidateStage,
)

PIPELINE_ID = {id!r}
DATA_DIR = {data_dir!r}
MLFLOW = MlflowSettings(experiment={experiment!r}, registered_model={model!r})
DOC = {doc!r}

with DAG(
    dag_id=PIPELINE_ID,
    description={description!r},
    schedule=None,
    catchup=False,
    tags=["airflow-mlops", "classification"],  # a pipeline's tags replace those of _defaults.yaml
    default_args={{"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=1)}},
    max_active_runs=16,
    doc_md=DOC,
):
    common = dict(task_id="run", pipeline_id=PIPELINE_ID, mlflow=MLFLOW, data_dir=DATA_DIR)
    with TaskGroup(group_id="preprocess", tooltip="preprocess on batch") as preprocess:
        StageOperator(
            **common, stage_name="preprocess",
            stage=PreprocessStage(
                input=DataInput(sklearn_dataset="breast_cancer"),
                steps=[Step(dropna=True)],
                split=Split(test_fraction=0.25, stratify="target", seed=7),
            ),
            outlets=[Asset(name=f"{{PIPELINE_ID}}.preprocess", uri=f"file://{{DATA_DIR}}/preprocess")],
        )
    with TaskGroup(group_id="train", tooltip="train on batch") as train:
        StageOperator(
            **common, stage_name="train",
            stage=TrainStage(
                estimator="sklearn.ensemble.RandomForestClassifier",
                params={{"n_estimators": 100, "max_depth": 6, "random_state": 7}},
                target="target",
                metrics=["accuracy", "f1", "roc_auc"],
                resources="cpu-train",
            ),
            upstream_tasks=[("preprocess", "preprocess.run")],
            stage_resources={{"cpu": "2", "memory": "4Gi"}},
            outlets=[Asset(name=f"{{PIPELINE_ID}}.train.model", uri={model_uri!r})],
        )
    with TaskGroup(group_id="validate", tooltip="validate on batch") as validate:
        StageOperator(
            **common, stage_name="validate",
            stage=ValidateStage(
                thresholds={{"accuracy": Threshold(min=0.9), "roc_auc": Threshold(min=0.95)}}, alias="champion"
            ),
            upstream_tasks=[("train", "train.run"), ("preprocess", "preprocess.run")],
        )
    with TaskGroup(group_id="serve", tooltip="serve on batch") as serve:
        StageOperator(
            **common, stage_name="serve",
            stage=ServeStage(mode="batch"),
            upstream_tasks=[("validate", "validate.run"), ("train", "train.run"), ("preprocess", "preprocess.run")],
            outlets=[Asset(name=f"{{PIPELINE_ID}}.serve", uri=f"file://{{DATA_DIR}}/serve")],
        )
    preprocess >> train >> validate >> serve
'''

# The stage runner every hand-written side defines (text of the generated files; braces doubled for .format).
RUN_STAGE_PY = '''\
def run_stage(stage_name, stage, upstream=(), resources=None, **context):
    """Run one stage in the worker. The stage code (and pandas, scikit-learn, MLflow) is imported
    here, when the task runs, never when the DAG file is parsed."""
    from pydantic import TypeAdapter

    from airflow_mlops.hooks.mlflow import resolve_target
    from airflow_mlops.spec.models import MlflowSettings, Stage
    from airflow_mlops.stages import run_stage
    from airflow_mlops._core.context import StageContext
    from airflow_mlops._core.names import safe_run_key

    ti = context["ti"]
    ctx = StageContext(
        pipeline_id=PIPELINE_ID, stage_name=stage_name, run_key=safe_run_key(context["run_id"]), data_dir=DATA_DIR,
        mlflow=resolve_target(MlflowSettings(**MLFLOW), PIPELINE_ID),
        upstream=[(name, ti.xcom_pull(task_ids=task_id) or {{}}) for name, task_id in upstream],
        resources=resources,
    )
    return run_stage(TypeAdapter(Stage).validate_python(stage), ctx)

'''

PYOP_PY = '''\
"""{id}: an Airflow DAG written by hand: PythonOperators calling airflow-mlops' stage code."""
from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset, TaskGroup

PIPELINE_ID = {id!r}
DATA_DIR = {data_dir!r}
MLFLOW = {{"experiment": {experiment!r}, "registered_model": {model!r}}}
DOC = {doc!r}


{run_stage}
with DAG(
    dag_id=PIPELINE_ID,
    description={description!r},
    schedule=None,
    catchup=False,
    tags=["airflow-mlops", "classification"],
    default_args={{"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=1)}},
    max_active_runs=16,
    doc_md=DOC,
):
    with TaskGroup(group_id="preprocess", tooltip="preprocess on batch") as preprocess:
        PythonOperator(
            task_id="run", python_callable=run_stage,
            op_kwargs={{"stage_name": "preprocess", "stage": {{
                "kind": "preprocess",
                "input": {{"sklearn_dataset": "breast_cancer"}},
                "steps": [{{"dropna": True}}],
                "split": {{"test_fraction": 0.25, "stratify": "target", "seed": 7}},
            }}}},
            outlets=[Asset(name=f"{{PIPELINE_ID}}.preprocess", uri=f"file://{{DATA_DIR}}/preprocess")],
        )
    with TaskGroup(group_id="train", tooltip="train on batch") as train:
        PythonOperator(
            task_id="run", python_callable=run_stage,
            op_kwargs={{"stage_name": "train", "stage": {{
                "kind": "train",
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {{"n_estimators": 100, "max_depth": 6, "random_state": 7}},
                "target": "target",
                "metrics": ["accuracy", "f1", "roc_auc"],
                "resources": "cpu-train",
            }}, "upstream": [("preprocess", "preprocess.run")], "resources": {{"cpu": "2", "memory": "4Gi"}}}},
            outlets=[Asset(name=f"{{PIPELINE_ID}}.train.model", uri={model_uri!r})],
        )
    with TaskGroup(group_id="validate", tooltip="validate on batch") as validate:
        PythonOperator(
            task_id="run", python_callable=run_stage,
            op_kwargs={{"stage_name": "validate", "stage": {{
                "kind": "validate",
                "thresholds": {{"accuracy": {{"min": 0.9}}, "roc_auc": {{"min": 0.95}}}},
                "alias": "champion",
            }}, "upstream": [("train", "train.run"), ("preprocess", "preprocess.run")]}},
        )
    with TaskGroup(group_id="serve", tooltip="serve on batch") as serve:
        PythonOperator(
            task_id="run", python_callable=run_stage,
            op_kwargs={{"stage_name": "serve", "stage": {{"kind": "serve", "mode": "batch"}}, "upstream": [
                ("validate", "validate.run"), ("train", "train.run"), ("preprocess", "preprocess.run"),
            ]}},
            outlets=[Asset(name=f"{{PIPELINE_ID}}.serve", uri=f"file://{{DATA_DIR}}/serve")],
        )
    preprocess >> train >> validate >> serve
'''

BARE_PY = '''\
"""{id}: the bare hand-written DAG: PythonOperators calling airflow-mlops' stage code, nothing more
(no task groups, tooltips, docs or Assets)."""
from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

PIPELINE_ID = {id!r}
DATA_DIR = {data_dir!r}
MLFLOW = {{"experiment": {experiment!r}, "registered_model": {model!r}}}


{run_stage}
with DAG(
    dag_id=PIPELINE_ID,
    description={description!r},
    schedule=None,
    catchup=False,
    tags=["airflow-mlops", "classification"],
    default_args={{"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=1)}},
    max_active_runs=16,
):
    preprocess = PythonOperator(
            task_id="preprocess", python_callable=run_stage,
            op_kwargs={{"stage_name": "preprocess", "stage": {{
                "kind": "preprocess",
                "input": {{"sklearn_dataset": "breast_cancer"}},
                "steps": [{{"dropna": True}}],
                "split": {{"test_fraction": 0.25, "stratify": "target", "seed": 7}},
            }}}},
    )
    train = PythonOperator(
            task_id="train", python_callable=run_stage,
            op_kwargs={{"stage_name": "train", "stage": {{
                "kind": "train",
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {{"n_estimators": 100, "max_depth": 6, "random_state": 7}},
                "target": "target",
                "metrics": ["accuracy", "f1", "roc_auc"],
                "resources": "cpu-train",
            }}, "upstream": [("preprocess", "preprocess")], "resources": {{"cpu": "2", "memory": "4Gi"}}}},
    )
    validate = PythonOperator(
            task_id="validate", python_callable=run_stage,
            op_kwargs={{"stage_name": "validate", "stage": {{
                "kind": "validate",
                "thresholds": {{"accuracy": {{"min": 0.9}}, "roc_auc": {{"min": 0.95}}}},
                "alias": "champion",
            }}, "upstream": [("train", "train"), ("preprocess", "preprocess")]}},
    )
    serve = PythonOperator(
            task_id="serve", python_callable=run_stage,
            op_kwargs={{"stage_name": "serve", "stage": {{"kind": "serve", "mode": "batch"}}, "upstream": [
                ("validate", "validate"), ("train", "train"), ("preprocess", "preprocess"),
            ]}},
    )
    preprocess >> train >> validate >> serve
'''

SIDES = {  # side → (folder name, label)
    "yaml": ("yaml_dags", "YAML (1 loader file)"),
    "stageop": ("stageoperator_dags", "hand-written StageOperator"),
    "pythonop": ("pythonoperator_dags", "hand-written PythonOperator"),
    "bare": ("bare_pythonoperator_dags", "bare PythonOperator DAG"),
}

# What every child imports before the clock starts: Airflow and what the DAG files of any side use.
PRELOAD = ("airflow", "airflow.dag_processing.dagbag", "airflow.providers.standard.operators.python",
           "airflow_mlops.backends.stage", "airflow_mlops.factory._build", "airflow_mlops.factory.pipelines",
           "airflow_mlops.factory.loader", "airflow_mlops.spec.load", "airflow_mlops.backends.batch")


# --- the child: one DagBag fill in a fresh interpreter ------------------------------------------------


def child(folder: str, mode: str, freeze: bool) -> None:
    import gc
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    from airflow.dag_processing.dagbag import DagBag

    timers = install_timers() if mode == "profile" else None
    if freeze:  # as the DAG processor does before it forks a process per file (dag_processing/manager.py)
        gc.freeze()
    start = time.perf_counter()
    bag = DagBag(dag_folder=folder)
    elapsed = time.perf_counter() - start
    if bag.import_errors:
        sys.exit(f"import errors in {folder}: {json.dumps(bag.import_errors, indent=1)[:4000]}")
    out: dict[str, Any] = {"seconds": elapsed, "dags": len(bag.dags)}
    if timers is not None:
        out["profile"] = timers
    if mode == "dump":
        out["dump"] = {dag.dag_id: dump_dag(dag) for dag in bag.dags.values()}
    print("RESULT " + json.dumps(out))


def dump_dag(d: Any) -> dict[str, Any]:
    return {
        "description": d.description, "schedule": [type(d.timetable).__name__, str(d.schedule)],
        "start_date": str(d.start_date), "catchup": d.catchup, "tags": sorted(d.tags),
        "max_active_runs": d.max_active_runs, "default_args": {k: str(v) for k, v in d.default_args.items()},
        "doc_md": d.doc_md, "tasks": {t.task_id: dump_task(t) for t in d.tasks},
    }


def dump_task(t: Any) -> dict[str, Any]:
    from pydantic import TypeAdapter

    from airflow_mlops.spec.models import MlflowSettings, Stage

    common = {
        "upstream": sorted(t.upstream_task_ids), "tooltip": t.task_group.tooltip,
        "outlets": [[a.name, a.uri] for a in t.outlets],
        "retries": t.retries, "retry_delay": str(t.retry_delay), "owner": t.owner,
    }
    if type(t).__name__ == "PythonOperator":  # what the stage is, read from op_kwargs and the file
        kw, module = t.op_kwargs, t.python_callable.__globals__
        return {**common, "type": None,
                "stage": TypeAdapter(Stage).validate_python(kw["stage"]).model_dump(mode="json"),
                "stage_name": kw["stage_name"], "pipeline_id": module["PIPELINE_ID"],
                "mlflow": MlflowSettings(**module["MLFLOW"]).model_dump(), "data_dir": module["DATA_DIR"],
                "upstream_tasks": [list(u) for u in kw.get("upstream", ())], "resources": kw.get("resources")}
    resources = t.stage_resources.model_dump(exclude_none=True, exclude={"profile"}) if t.stage_resources else None
    return {**common, "type": type(t).__name__,
            "stage": t.stage.model_dump(mode="json"), "stage_name": t.stage_name, "pipeline_id": t.pipeline_id,
            "mlflow": t.mlflow.model_dump(), "data_dir": t.data_dir,
            "upstream_tasks": [list(u) for u in t.upstream_tasks], "resources": resources}


# --- --profile: each step's own time ----------------------------------------------------------------

# (step, module, attribute): the function is replaced by a timed one wherever airflow_mlops refers
# to it (skipped where the code has no such function). A step's time excludes the steps it calls;
# "Airflow DagBag" is what is left of the fill.
STEPS = (
    ("list pipeline files", "airflow_mlops.spec.files", "discover"),
    ("YAML → data + positions", "airflow_mlops.spec._source", "load_source"),
    ("defaults: find, read, lift, merge", "airflow_mlops.spec.files", "defaults_chain"),
    ("defaults: find, read, lift, merge", "airflow_mlops.spec.files", "folder_defaults_chain"),
    ("defaults: find, read, lift, merge", "airflow_mlops.spec.files", "read_defaults"),
    ("defaults: find, read, lift, merge", "airflow_mlops.spec.dag", "lift_default_args"),
    ("defaults: find, read, lift, merge", "airflow_mlops.spec._source", "merge_sources"),
    ("pydantic validation", "airflow_mlops.spec.models", "Pipeline.model_validate"),
    ("cross checks", "airflow_mlops.spec._checks", "check_names_and_schedule"),
    ("cross checks", "airflow_mlops.spec._checks", "check_pipeline"),
    ("read_pipeline, rest", "airflow_mlops.spec.load", "read_pipeline"),
    ("doc_md", "airflow_mlops.factory._build", "_docs"),
    ("outlets (Assets)", "airflow_mlops.factory._build", "_outlets"),
    ("operators (StageOperator)", "airflow_mlops.backends", "build_stage_tasks"),
    ("templating set-up (stage_overrides)", "airflow_mlops.spec.templating", "stage_overrides"),
    ("DAG, task groups, dependencies", "airflow_mlops.factory._build", "build_dag"),
    ("Airflow's DAG checks", "airflow_mlops.factory.pipelines", "checked_dag"),
    ("asset check", "airflow_mlops.factory.pipelines", "check_assets"),
    ("loader, rest", "airflow_mlops.factory.pipelines", "load_dags"),
    ("loader, rest", "airflow_mlops.factory.loader", "load_pipelines"),
)


GC_STEP = "garbage collection (all generations)"


def install_timers() -> dict[str, list[float]]:  # noqa: C901
    import functools
    import gc
    import importlib
    import inspect

    totals: dict[str, list[float]] = {GC_STEP: [0.0, 0]}  # step → [seconds, calls]
    stack: list[list[Any]] = []  # [step, start of its current stretch]
    gc_started = [0.0]

    def collecting(phase: str, info: dict) -> None:  # a collection's pause is its own step
        now = time.perf_counter()
        if phase == "start":
            gc_started[0] = now
            return
        totals[GC_STEP][0] += now - gc_started[0]
        totals[GC_STEP][1] += 1
        if stack:
            stack[-1][1] += now - gc_started[0]

    gc.callbacks.append(collecting)

    def timed(step: str, fn: Any) -> Any:
        generator = inspect.isgeneratorfunction(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            now = time.perf_counter()
            if stack:
                totals[stack[-1][0]][0] += now - stack[-1][1]
            stack.append([step, now])
            totals.setdefault(step, [0.0, 0])[1] += 1
            try:
                result = fn(*args, **kwargs)
                return iter(list(result)) if generator else result
            finally:
                now = time.perf_counter()
                totals[step][0] += now - stack.pop()[1]
                if stack:
                    stack[-1][1] = now
        return wrapper

    modules = [m for name, m in list(sys.modules.items()) if name.startswith("airflow_mlops") and m is not None]
    for step, module_name, attr in STEPS:
        owner: Any = importlib.import_module(module_name)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name, None)
        if original is None:  # not in this version of the code
            continue
        if inspect.ismethod(original):  # a classmethod (pydantic's model_validate)
            setattr(owner, name, classmethod(timed(step, original.__func__)))
            continue
        wrapped = timed(step, original)
        for module in modules:
            for key, value in list(vars(module).items()):
                if value is original:
                    setattr(module, key, wrapped)
    return totals


def print_profile(result: dict) -> None:
    steps = {step: tuple(v) for step, v in result["profile"].items()}
    total = result["seconds"]
    rest = total - sum(seconds for seconds, _ in steps.values())
    print(f"profile of one YAML DagBag fill ({result['dags']} DAGs, {total:.3f} s with timers), own time per step:")
    order = dict.fromkeys([*(step for step, _, _ in STEPS), GC_STEP])
    for step in order:
        if step in steps:
            seconds, calls = steps[step]
            print(f"  {step:<38} {seconds:7.3f} s  {seconds / total:5.1%}  ({calls} calls)")
    print(f"  {'Airflow DagBag: file import, bag':<38} {rest:7.3f} s  {rest / total:5.1%}")


# --- the parent ---------------------------------------------------------------------------------------


def generate(n: int, root: Path, data_root: Path) -> dict[str, Path]:
    folders = {side: root / name for side, (name, _) in SIDES.items()}
    for folder in folders.values():
        folder.mkdir()
    yaml_dir = folders["yaml"]
    (yaml_dir / "_defaults.yaml").write_text(DEFAULTS_YAML)
    (yaml_dir / "mlops_pipelines.py").write_text(LOADER_PY.format(folder=str(yaml_dir)))
    for i in range(n):
        pid = f"bench_{i:04d}"
        text = PIPELINE_YAML.format(id=pid, i=i)
        yaml_file = yaml_dir / f"{pid}.yaml"
        yaml_file.write_text(text)
        description = yaml.safe_load(text)["description"]
        # The same docs the factory writes: a stage table, then the pipeline's own YAML.
        doc = "\n".join([
            f"# {pid}", "", description, "", "| stage | kind | backend | depends on |", "|---|---|---|---|",
            *(f"| {s} | {s} | batch | {prev or '—'} |" for s, prev in zip(STAGES, ("", *STAGES))),
            "", f"Defined in `{yaml_file}`:", "", "```yaml", text.rstrip(), "```",
        ])
        values = dict(
            id=pid, data_dir=str(data_root / "data" / pid), experiment=f"bench-{i}", model=f"{pid}_classifier",
            model_uri=f"x-mlflow-model://{pid}_classifier/{pid}/train", description=description, doc=doc,
        )
        (folders["stageop"] / f"{pid}.py").write_text(HAND_PY.format(**values))
        runner = RUN_STAGE_PY.format()  # its doubled braces undone once
        (folders["pythonop"] / f"{pid}.py").write_text(PYOP_PY.format(**values, run_stage=runner))
        (folders["bare"] / f"{pid}.py").write_text(BARE_PY.format(**values, run_stage=runner))
    return folders


def parse(folder: Path, mode: str, env: dict[str, str], freeze: bool = True) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(folder), mode, str(int(freeze))], env=env,
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"parsing {folder} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def check_equivalent(yaml_dump: dict, other: dict, n: int, label: str) -> None:  # noqa: C901
    if set(yaml_dump) != set(other) or len(yaml_dump) != n:
        sys.exit(f"MISMATCH: dag ids differ (YAML {len(yaml_dump)}, {label} {len(other)}, expected {n}): "
                 f"{sorted(set(yaml_dump) ^ set(other))[:10]}")
    for dag_id in sorted(yaml_dump):
        y, p = yaml_dump[dag_id], other[dag_id]
        if set(y["tasks"]) != set(p["tasks"]):
            sys.exit(f"MISMATCH in {dag_id}: task ids {sorted(y['tasks'])} vs {sorted(p['tasks'])}")
        for key in y:
            if key == "tasks":
                for task_id, task in y["tasks"].items():
                    theirs = p["tasks"][task_id]
                    for field in task:
                        if field == "type" and theirs[field] is None:  # a PythonOperator
                            continue
                        if task[field] != theirs[field]:
                            sys.exit(f"MISMATCH in {dag_id}.{task_id}.{field}:\n  YAML:   {task[field]!r:.1500}\n"
                                     f"  {label}: {theirs[field]!r:.1500}")
            elif y[key] != p[key]:
                sys.exit(f"MISMATCH in {dag_id}.{key}:\n  YAML:   {y[key]!r:.1500}\n  {label}: {p[key]!r:.1500}")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipelines", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also print where the YAML DagBag fill spends its time")
    parser.add_argument("--no-gc-freeze", dest="freeze", action="store_false",
                        help="do not gc.freeze() Airflow's imported objects before the fill (the DAG processor "
                        "does): then a full collection scans all of them")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "MODE", "FREEZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's airflow_mlops
        folder, mode, freeze = args.child
        child(folder, mode, freeze == "1")
        return 0
    n, r = args.pipelines, args.repeats

    with tempfile.TemporaryDirectory(prefix="mlops-parse-bench-") as tmp:
        root = Path(tmp).resolve()
        (root / "airflow_home").mkdir()
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(root / "airflow_home"),
            "AIRFLOW_MLOPS_HOME": str(root / "mlops"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "600",
        }
        folders = generate(n, root, root / "mlops")

        print(f"{n} pipelines x 4 stages, {r} rounds, gc.freeze() before the fill: {'yes' if args.freeze else 'no'}; "
              "checking the YAML, StageOperator and PythonOperator DagBags are equivalent ...", flush=True)
        dumps = {side: parse(folder, "dump", env)["dump"] for side, folder in folders.items() if side != "bare"}
        for side in ("stageop", "pythonop"):
            check_equivalent(dumps["yaml"], dumps[side], n, SIDES[side][1])
        print(f"equivalent: {n} DAGs, same dag ids, task ids, dependencies, settings, tooltips, outlets, specs "
              "and docs")

        print(f"load average before: {load_average()}", flush=True)
        times: dict[str, list[float]] = {side: [] for side in SIDES}
        for run in range(r):
            for side, folder in folders.items():
                result = parse(folder, "time", env, args.freeze)
                if result["dags"] != n:
                    sys.exit(f"{side} run {run}: expected {n} DAGs, got {result['dags']}")
                times[side].append(result["seconds"])
            print(f"  round {run + 1}/{r}: " + ", ".join(f"{SIDES[side][1]} {times[side][-1]:.3f} s" for side in SIDES),
                  flush=True)
        print(f"load average after: {load_average()}")
        if args.profile:
            print_profile(parse(folders["yaml"], "profile", env, args.freeze))

    med = {side: statistics.median(values) for side, values in times.items()}
    for side, (_, label) in SIDES.items():
        print(f"{label + ':':<30} median {med[side]:.3f} s  ({med[side] / n * 1000:.2f} ms/DAG, "
              f"min {min(times[side]):.3f}, max {max(times[side]):.3f})")
    ratio = med["yaml"] / med["bare"]
    print(f"ratio YAML / bare PythonOperator DAG:     {ratio:.2f}x  "
          f"(goal <= {GOAL}x: {'MET' if ratio <= GOAL else 'NOT MET'}; the bare DAG carries no task groups, "
          "tooltips, docs or Assets)")
    print(f"ratio YAML / hand-written PythonOperator: {med['yaml'] / med['pythonop']:.2f}x  (the same DAGs by hand, "
          "with what the YAML's DAGs carry)")
    print(f"ratio YAML / hand-written StageOperator:  {med['yaml'] / med['stageop']:.2f}x  (the earlier baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
