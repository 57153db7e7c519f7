"""The dags folder through Airflow's own DagBag: expected DAGs and tasks, no import errors, broken
pipeline files visible without losing the others, and no heavy imports at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO
from tests.helpers import write

HEAVY = ("pyspark", "mlflow", "kafka", "pynvml", "kubernetes", "pandas", "sklearn")


def dagbag(folder):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))


def test_repo_dags_folder_parses_into_the_example_pipelines():
    bag = dagbag(REPO / "dags")
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["breast_cancer", "breast_cancer_stream", "iris_spark", "mlops_maintenance"]
    dag = bag.dags["breast_cancer"]
    assert {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} == {
        "preprocess.run": [],
        "train.run": ["preprocess.run"],
        "validate.run": ["train.run"],
        "serve.run": ["validate.run"],
    }
    assert sorted(dag.task_group.children) == ["preprocess", "serve", "train", "validate"]
    assert {"airflow-mlops", "classification"} <= set(dag.tags)
    assert dag.default_args["owner"] == "ml-platform"
    assert dag.schedule is None
    # DAG docs show the description and the pipeline's own YAML.
    assert "Classify breast tumours" in dag.doc_md
    assert "estimator: sklearn.ensemble.RandomForestClassifier" in dag.doc_md
    outlets = {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks}
    assert outlets["preprocess.run"][0].endswith("/data/breast_cancer/preprocess")
    assert outlets["train.run"] == ["x-mlflow-model://breast_cancer_classifier/breast_cancer/train"]


def test_broken_pipeline_is_visible_and_loses_only_itself(dags_folder):
    write(dags_folder, "good.yaml", """
        id: good
        stages:
          preprocess: {input: {path: a.csv}}
        """)
    write(dags_folder, "broken.yaml", """
        id: broken
        stages:
          train:
            estimator: sklearn.svm.SVC
            target: y
            resources: {gpu: 0.5}
        """)
    write(dags_folder, "garbage.yaml", "id: [\n")
    bag = dagbag(dags_folder)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["broken", "good", "invalid__garbage"]
    assert [t.task_id for t in bag.dags["good"].tasks] == ["preprocess.run"]

    broken = bag.dags["broken"]
    assert "invalid-pipeline" in broken.tags
    expected = f"{dags_folder / 'broken.yaml'}:6:22 stages.train.resources.gpu: expected a whole number of GPUs, got 0.5"
    assert expected in broken.description
    assert expected in broken.doc_md
    assert broken.dag_display_name == "⚠ broken (invalid pipeline)"
    assert "YAML syntax error" in bag.dags["invalid__garbage"].doc_md

    # Triggering the placeholder fails with the errors rather than doing anything.
    from airflow.sdk.exceptions import AirflowFailException

    task = broken.get_task("invalid_pipeline")
    with pytest.raises(AirflowFailException, match="expected a whole number of GPUs"):
        task.python_callable(*task.op_args)


def test_loading_leaves_the_garbage_collector_as_it_found_it(dags_folder):
    """The loader pauses Python's cyclic collector while it builds DAGs: on again afterwards, also
    after a broken file, and still off when the caller had turned it off."""
    import gc

    from airflow_mlops.factory.pipelines import load_dags

    write(dags_folder, "good.yaml", """
        id: good
        stages:
          preprocess: {input: {path: a.csv}}
        """)
    write(dags_folder, "garbage.yaml", "id: [\n")
    assert gc.isenabled()
    verdict = load_dags([dags_folder])
    assert [loaded.pipeline.id for loaded, _ in verdict.good] == ["good"] and len(verdict.bad) == 1
    assert gc.isenabled()
    gc.disable()
    try:
        load_dags([dags_folder])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_parsing_the_dags_folder_imports_nothing_heavy():
    """A fresh interpreter parses dags/ the way the DAG processor does, then reports sys.modules."""
    code = textwrap.dedent(f"""
        import json, sys
        try:
            from airflow.dag_processing.dagbag import DagBag
        except ImportError:  # Airflow 3.1 (scripts/test-airflow-range.sh runs this test there too)
            from airflow.models.dagbag import DagBag
        bag = DagBag(dag_folder={str(REPO / 'dags')!r})
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})
        print(json.dumps({{"dags": sorted(bag.dag_ids), "errors": bag.import_errors, "heavy": heavy}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["dags"] == ["breast_cancer", "breast_cancer_stream", "iris_spark", "mlops_maintenance"]
    assert report["errors"] == {}
    assert report["heavy"] == []
