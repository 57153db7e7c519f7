"""A pipeline or an operator that needs an extra which is not installed: an invalid pipeline at the
YAML line that needs it, an operator that fails at DAG parse, the same words and the same
``pip install 'airflow-mlops[...]'`` everywhere, and every other pipeline still loading.

Every extra is installed in this virtualenv, so these tests make one absent at the only place
the package looks: ``importlib.util.find_spec`` (``_core.extras`` never imports an extra's
modules to check them). That is a simulation, said here on purpose; the real thing (a
virtualenv with only the core) runs in ``tests/range`` under ``scripts/test-airflow-range.sh``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from airflow_mlops._core import extras
from airflow_mlops.cli import main
from airflow_mlops.factory.pipelines import load_dags
from tests.helpers import write

_real_find_spec = importlib.util.find_spec


@pytest.fixture
def absent(monkeypatch):
    """``absent("pyspark", ...)``: find_spec answers None for these modules (and their submodules),
    and those an earlier test imported are None in sys.modules, so importing them fails too."""

    def make(*modules: str) -> None:
        for name in [n for n in sys.modules if any(n == m or n.startswith(m + ".") for m in modules)] + list(modules):
            monkeypatch.setitem(sys.modules, name, None)

        def find_spec(name, package=None):
            if any(name == m or name.startswith(m + ".") for m in modules):
                return None
            return _real_find_spec(name, package)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return make


SPARK = """\
id: features
stages:
  preprocess:
    backend: spark
    inputs: {flowers: {sklearn_dataset: iris}}
    sql: SELECT * FROM flowers
    split: {test_fraction: 0.3}
"""
BATCH = "id: plain\nstages:\n  preprocess:\n    input: {sklearn_dataset: iris}\n"


# 'all' brings every extra the tests run against; google and microsoft-azure (gs://, abfs://)
# have no emulator on these machines and are not installed here.
UNTESTED = {"google", "microsoft-azure"}


def test_every_tested_extra_is_installed_here_and_reported_so():
    assert extras.state() == {name: name not in UNTESTED for name in extras.EXTRAS}
    assert extras.describe().startswith("Extras installed: apache-spark, cncf-kubernetes, apache-kafka, amazon, gpu; "
                                        "not installed: google, microsoft-azure")


def test_the_info_command_lists_each_extra_and_how_to_install_a_missing_one(absent, capsys):
    absent("pynvml")
    assert main(["info"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("airflow-mlops 0.1.0 on Apache Airflow 3.")
    assert "  [apache-spark] installed: the spark backend and SparkFeatureOperator" in out
    assert any(line.startswith("  [gpu] not installed (pip install 'airflow-mlops[gpu]'): GPU requests") for line in out)


def test_a_spark_pipeline_without_the_spark_extra_is_invalid_at_its_backend_line_the_others_load(tmp_path, absent, capsys):
    absent("pyspark")
    write(tmp_path, "features.yaml", SPARK)
    write(tmp_path, "plain.yaml", BATCH)
    verdict = load_dags([tmp_path])
    assert [loaded.pipeline.id for loaded, _ in verdict.good] == ["plain"]
    (issue,) = verdict.bad[tmp_path / "features.yaml"].issues
    assert (issue.mark.line, issue.field) == (4, "stages.preprocess.backend")
    assert issue.message == (
        "the spark backend needs the 'apache-spark' extra of airflow-mlops, which is not installed here "
        "(missing: pyspark): run pip install 'airflow-mlops[apache-spark]' (with the constraints file of your "
        "Airflow version)")
    # `validate` says the same, at the same line.
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'features.yaml'}:4:14 stages.preprocess.backend: the spark backend needs" in out
    assert "pip install 'airflow-mlops[apache-spark]'" in out


def test_a_pipeline_wide_backend_points_at_the_top_level_line(tmp_path, absent):
    absent("airflow.providers.cncf.kubernetes")
    write(tmp_path, "k.yaml", "id: k\nbackend: kubernetes\nkubernetes: {image: img}\n"
                              "stages:\n  preprocess:\n    input: {sklearn_dataset: iris}\n")
    (issue,) = load_dags([tmp_path]).bad[tmp_path / "k.yaml"].issues
    assert (issue.mark.line, issue.field) == (2, "backend")
    assert "pip install 'airflow-mlops[cncf-kubernetes]'" in issue.message
    assert "missing: airflow.providers.cncf.kubernetes" in issue.message


def test_stream_serving_and_gpu_settings_point_at_their_own_lines(tmp_path, absent):
    absent("kafka", "pynvml", "prometheus_client")
    write(tmp_path, "s.yaml", """\
        id: s
        gpu_metrics: {prometheus_port: 9100}
        stages:
          preprocess:
            input: {sklearn_dataset: iris}
            split: {test_fraction: 0.3}
          train:
            estimator: sklearn.linear_model.LogisticRegression
            target: target
          serve:
            mode: stream
            stream: {input_topic: a, output_topic: b, model_uri: "models:/m@champion"}
        """)
    issues = load_dags([tmp_path]).bad[tmp_path / "s.yaml"].issues
    assert [(i.mark.line, i.field) for i in issues] == [(2, "gpu_metrics.prometheus_port"), (11, "stages.serve.mode")]
    assert "gpu_metrics.prometheus_port needs the 'gpu' extra" in issues[0].message
    assert "serve mode 'stream' needs the 'apache-kafka' extra" in issues[1].message
    assert "pip install 'airflow-mlops[apache-kafka]'" in issues[1].message

    write(tmp_path, "s.yaml", "id: s\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n"
                              "  train: {estimator: sklearn.linear_model.LogisticRegression, target: target,\n"
                              "          resources: {gpu: 1}}\n")
    (issue,) = load_dags([tmp_path]).bad[tmp_path / "s.yaml"].issues
    assert issue.field == "stages.train.resources"
    assert "training on 1 GPU(s) in the worker" in issue.message and "airflow-mlops[gpu]" in issue.message


def test_an_operator_without_its_extra_fails_at_construction_with_the_same_words(absent):
    absent("pyspark")
    from airflow_mlops.operators.spark import SparkFeatureOperator

    with pytest.raises(extras.MissingExtra) as caught:
        SparkFeatureOperator(task_id="features", inputs={"a": "a.csv"}, output="out", sql="SELECT 1")
    assert str(caught.value).startswith("SparkFeatureOperator(task_id='features') needs the 'apache-spark' extra")
    assert "pip install 'airflow-mlops[apache-spark]'" in str(caught.value)
    assert isinstance(caught.value, ImportError)


def test_a_custom_stage_whose_operator_lacks_its_extra_points_at_the_operator_line(tmp_path, absent):
    absent("kafka")
    write(tmp_path, "lag.yaml", """\
        id: lag
        stages:
          wait:
            kind: custom
            operator: airflow_mlops.sensors.kafka:KafkaLagSensor
            args: {topics: t, group_id: g}
        """)
    (issue,) = load_dags([tmp_path]).bad[tmp_path / "lag.yaml"].issues
    assert (issue.mark.line, issue.field) == (5, "stages.wait.operator")
    assert issue.message.startswith("KafkaLagSensor(task_id='wait.run') needs the 'apache-kafka' extra")


def test_a_hand_written_dag_file_with_such_an_operator_is_an_import_error_with_those_words(tmp_path):
    """A fresh interpreter in which find_spec cannot find pyspark parses a DAG file with Airflow's DagBag."""
    write(tmp_path, "dags/spark_dag.py", """\
        # an airflow dag
        import pendulum
        from airflow.sdk import DAG
        from airflow_mlops.operators.spark import SparkFeatureOperator

        with DAG("spark_dag", schedule=None, start_date=pendulum.datetime(2024, 1, 1)):
            SparkFeatureOperator(task_id="features", inputs={"a": "a.csv"}, output="out", sql="SELECT 1")
        """)
    code = textwrap.dedent(f"""
        import importlib.util, json
        real = importlib.util.find_spec
        importlib.util.find_spec = lambda n, p=None: None if n.split(".")[0] == "pyspark" else real(n, p)
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(tmp_path / 'dags')!r})
        print(json.dumps({{"dags": bag.dag_ids, "errors": list(bag.import_errors.values())}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["dags"] == []
    (out,) = report["errors"]
    assert "MissingExtra: SparkFeatureOperator(task_id='features') needs the 'apache-spark' extra" in out
    assert "pip install 'airflow-mlops[apache-spark]'" in out


def test_a_kafka_started_pipeline_without_the_kafka_extra_is_invalid_at_its_trigger_line(tmp_path, absent):
    absent("airflow.providers.apache.kafka")
    write(tmp_path, "t.yaml", """\
        id: started_by_kafka
        dag:
          trigger:
            kafka: {topics: [labels.new]}
        stages:
          preprocess:
            input: {sklearn_dataset: iris}
        """)
    (issue,) = load_dags([tmp_path]).bad[tmp_path / "t.yaml"].issues
    assert (issue.mark.line, issue.field) == (4, "dag.trigger.kafka")
    assert "a pipeline started by Kafka messages needs the 'apache-kafka' extra" in issue.message
    assert "missing: airflow.providers.apache.kafka" in issue.message
    assert "pip install 'airflow-mlops[apache-kafka]'" in issue.message
