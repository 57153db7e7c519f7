"""Parse-time cost of YAML pipelines versus the same DAGs hand-written in Python.

    python benchmarks/parse_benchmark.py [--pipelines N] [--repeats R]

Method
------
1. Generate N four-stage pipelines (preprocess → train → validate → serve, modelled on
   ``example_configs/breast_cancer.yaml``, ids ``bench_0000`` ...) as YAML files plus a
   ``_defaults.yaml`` and one loader DAG file calling ``load_pipelines(globals(), <folder>)``.
   In a second folder, write the same N DAGs by hand: one ``.py`` file each, using ``airflow.sdk``
   ``DAG`` + ``TaskGroup`` + ``StageOperator`` with the stage specs built from the pydantic models
   directly, the same DAG settings, outlet Assets, tooltips and ``doc_md`` text.
2. Check equivalence: one subprocess per folder fills a ``DagBag`` and dumps every DAG's settings
   and every task's ids, upstream ids, outlets, stage spec, MLflow settings and data dir. The two
   dumps must be identical, or the script exits non-zero. (These runs also warm ``__pycache__``
   in both folders, so neither side pays first-time bytecode compilation while timed.)
3. Time: R fresh subprocesses per side, alternating YAML / Python. Each one first imports Airflow,
   ``DagBag`` and the airflow_mlops modules the DAGs use (so Airflow's ~2 s import is not counted),
   then times only ``DagBag(dag_folder=...)`` with ``time.perf_counter`` and checks it has no
   import errors. The medians are compared; the goal is YAML <= 1.2x hand-written.

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
from pathlib import Path

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

from airflow_mlops.operators.stage import StageOperator
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
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
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

# Runs in a fresh interpreter: argv = folder, mode ("time" or "dump").
CHILD = r"""
import json, sys, time
import airflow
from airflow.dag_processing.dagbag import DagBag
import airflow_mlops.operators.stage, airflow_mlops.factory.build, airflow_mlops.spec.load

folder, mode = sys.argv[1], sys.argv[2]
start = time.perf_counter()
bag = DagBag(dag_folder=folder)
elapsed = time.perf_counter() - start
if bag.import_errors:
    sys.exit(f"import errors in {folder}: {json.dumps(bag.import_errors, indent=1)[:4000]}")
out = {"seconds": elapsed, "dags": len(bag.dags)}
if mode == "dump":
    def task(t):
        return {
            "upstream": sorted(t.upstream_task_ids),
            "tooltip": t.task_group.tooltip,
            "outlets": [[a.name, a.uri] for a in t.outlets],
            "retries": t.retries, "retry_delay": str(t.retry_delay), "owner": t.owner,
            "stage": t.stage.model_dump(mode="json"), "stage_name": t.stage_name,
            "pipeline_id": t.pipeline_id, "mlflow": t.mlflow.model_dump(), "data_dir": t.data_dir,
            "upstream_tasks": [list(u) for u in t.upstream_tasks], "type": type(t).__name__,
        }
    out["dump"] = {
        d.dag_id: {
            "description": d.description, "schedule": [type(d.timetable).__name__, str(d.schedule)],
            "start_date": str(d.start_date), "catchup": d.catchup, "tags": sorted(d.tags), "max_active_runs": d.max_active_runs,
            "default_args": {k: str(v) for k, v in d.default_args.items()}, "doc_md": d.doc_md,
            "tasks": {t.task_id: task(t) for t in d.tasks},
        }
        for d in bag.dags.values()
    }
print("RESULT " + json.dumps(out))
"""


def generate(n: int, root: Path, data_root: Path) -> tuple[Path, Path]:
    yaml_dir, py_dir = root / "yaml_dags", root / "python_dags"
    yaml_dir.mkdir()
    py_dir.mkdir()
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
        (py_dir / f"{pid}.py").write_text(HAND_PY.format(
            id=pid, data_dir=str(data_root / "data" / pid), experiment=f"bench-{i}", model=f"{pid}_classifier",
            model_uri=f"mlflow-model://{pid}_classifier", description=description, doc=doc,
        ))
    return yaml_dir, py_dir


def parse(folder: Path, mode: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"parsing {folder} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def check_equivalent(yaml_dump: dict, py_dump: dict, n: int) -> None:
    if set(yaml_dump) != set(py_dump) or len(yaml_dump) != n:
        sys.exit(f"MISMATCH: dag ids differ (YAML {len(yaml_dump)}, Python {len(py_dump)}, expected {n}): "
                 f"{sorted(set(yaml_dump) ^ set(py_dump))[:10]}")
    for dag_id in sorted(yaml_dump):
        y, p = yaml_dump[dag_id], py_dump[dag_id]
        if set(y["tasks"]) != set(p["tasks"]):
            sys.exit(f"MISMATCH in {dag_id}: task ids {sorted(y['tasks'])} vs {sorted(p['tasks'])}")
        for key in y:
            if y[key] != p[key]:
                sys.exit(f"MISMATCH in {dag_id}.{key}:\n  YAML:   {y[key]!r:.1500}\n  Python: {p[key]!r:.1500}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipelines", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
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
        yaml_dir, py_dir = generate(n, root, root / "mlops")

        print(f"{n} pipelines x 4 stages, {r} runs each; checking both DagBags are equivalent ...", flush=True)
        check_equivalent(parse(yaml_dir, "dump", env)["dump"], parse(py_dir, "dump", env)["dump"], n)
        print(f"equivalent: {n} DAGs, same dag ids, task ids, dependencies, settings, outlets, specs and docs")

        times: dict[str, list[float]] = {"yaml": [], "python": []}
        for run in range(r):
            for side, folder in (("yaml", yaml_dir), ("python", py_dir)):
                result = parse(folder, "time", env)
                if result["dags"] != n:
                    sys.exit(f"{side} run {run}: expected {n} DAGs, got {result['dags']}")
                times[side].append(result["seconds"])
            print(f"  run {run + 1}/{r}: YAML {times['yaml'][-1]:.3f} s, hand-written {times['python'][-1]:.3f} s",
                  flush=True)

    med = {side: statistics.median(values) for side, values in times.items()}
    ratio = med["yaml"] / med["python"]
    print(f"YAML (1 loader file, {n} pipelines): median {med['yaml']:.3f} s  ({med['yaml'] / n * 1000:.2f} ms/DAG)")
    print(f"hand-written Python ({n} files):     median {med['python']:.3f} s  ({med['python'] / n * 1000:.2f} ms/DAG)")
    print(f"ratio YAML / hand-written: {ratio:.2f}x")
    print(f"goal: YAML <= {GOAL}x hand-written: {'MET' if ratio <= GOAL else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
