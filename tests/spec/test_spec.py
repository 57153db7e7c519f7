"""Pipeline files: good ones load, bad ones give file:line:column, the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_mlops.factory.pipelines import load_dags, read_pipeline
from airflow_mlops.spec.errors import PipelineSpecError
from airflow_mlops.spec.load import resolve_resources
from tests.conftest import REPO
from tests.helpers import write

MINIMAL = """
    id: p
    stages:
      preprocess: {input: {sklearn_dataset: iris}}
    """


def errors_of(path: Path, root: Path | None = None) -> list[str]:
    with pytest.raises(PipelineSpecError) as info:
        read_pipeline(path, root)
    return [str(issue) for issue in info.value.issues]


def test_example_pipeline_loads_with_defaults_merged():
    loaded = read_pipeline(REPO / "example_configs" / "breast_cancer.yaml", REPO / "example_configs")
    p = loaded.pipeline
    assert p.id == "breast_cancer"
    assert list(p.stages) == ["preprocess", "train", "validate", "serve"]
    assert [s.kind for s in p.stages.values()] == ["preprocess", "train", "validate", "serve"]
    assert p.dag.owner == "ml-platform"  # from _defaults.yaml
    assert p.dag.retries == 1
    assert p.dag.retry_delay.total_seconds() == 60  # "1m"
    assert p.dag.tags == ["classification"]  # lists are replaced, not appended
    train = p.stages["train"]
    assert resolve_resources(p, train.resources).model_dump() == {"profile": None, "cpu": "2", "memory": "4Gi", "gpu": None}


def test_nearest_defaults_file_wins(tmp_path):
    write(tmp_path, "_defaults.yaml", "dag: {owner: top, retries: 3}\nbackend: batch\n")
    write(tmp_path, "team/_defaults.yaml", "dag: {owner: team}\n")
    path = write(tmp_path, "team/p.yaml", MINIMAL)
    p = read_pipeline(path, tmp_path).pipeline
    assert p.dag.owner == "team"
    assert p.dag.retries == 3  # deep merge keeps what the nearer file does not set


def test_error_in_defaults_file_points_at_the_defaults_file(tmp_path):
    write(tmp_path, "_defaults.yaml", "dag:\n  retries: -1\n")
    path = write(tmp_path, "p.yaml", MINIMAL)
    assert errors_of(path, tmp_path) == [
        f"{tmp_path / '_defaults.yaml'}:2:12 dag.retries: input should be greater than or equal to 0, got -1"
    ]


def test_stages_in_defaults_file_are_refused(tmp_path):
    write(tmp_path, "_defaults.yaml", "stages: {}\n")
    path = write(tmp_path, "p.yaml", MINIMAL)
    assert errors_of(path, tmp_path) == [
        f"{tmp_path / '_defaults.yaml'}:1:1 stages: 'stages' belongs in a pipeline file, not in _defaults.yaml"
    ]


def test_resource_profiles_builtin_named_and_inline_override(tmp_path):
    path = write(tmp_path, "p.yaml", """
        id: p
        resource_profiles:
          big: {cpu: 8, memory: 32Gi, gpu: 2}
        stages:
          a: {kind: preprocess, input: {sklearn_dataset: iris}, resources: training}
          b: {kind: preprocess, input: {sklearn_dataset: iris}, resources: big}
          c: {kind: preprocess, input: {sklearn_dataset: iris}, resources: {profile: inference, memory: 24Gi}}
          d: {kind: preprocess, input: {sklearn_dataset: iris}, resources: {cpu: 500m}}
        """)
    p = read_pipeline(path).pipeline

    def res(name):
        return resolve_resources(p, p.stages[name].resources).model_dump(exclude={"profile"})

    assert res("a") == {"cpu": "16", "memory": "64Gi", "gpu": 4}
    assert res("b") == {"cpu": "8", "memory": "32Gi", "gpu": 2}
    assert res("c") == {"cpu": "4", "memory": "24Gi", "gpu": 1}
    assert res("d") == {"cpu": "500m", "memory": None, "gpu": None}


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            "id: a\nstages:\n  train: {target: x\n",
            ["4:1 YAML syntax error: did not find expected ',' or '}' (while parsing a flow mapping at line 3)"],
            id="yaml-syntax",
        ),
        pytest.param(
            "id: a\nstages:\n  validate: {}\n  validate: {}\n",
            ["4:3 stages.validate: duplicate key 'validate' (first defined at line 3)"],
            id="duplicate-key",
        ),
        pytest.param("- a\n- b\n", ["1:1 a pipeline file must be a mapping (id, stages, ...), got a list"], id="not-mapping"),
        pytest.param("", ["1:1 a pipeline file must be a mapping (id, stages, ...), got an empty file"], id="empty"),
        pytest.param(
            "id: a\nshedule: daily\nstages:\n  validate: {}\n",
            ["2:1 shedule: unknown key 'shedule'; expected one of 'backend', 'dag', 'mlflow', 'resource_profiles', "
             "'data_dir', 'data_conn_id', 'spark', 'kubernetes', 'prices', 'gpu_metrics', 'params', 'profiles', 'id', 'description', 'stages'"],
            id="unknown-top-key",
        ),
        pytest.param(
            "id: a\ndag:\n  shedule: '@daily'\nstages:\n  validate: {}\n",
            ["3:3 dag.shedule: unknown key 'shedule' (did you mean 'schedule'?); expected one of 'schedule', "
             "'schedule_on_assets', 'trigger', 'start_date', 'timezone', 'catchup', 'description', 'tags', 'owner', 'retries', "
             "'retry_delay', 'execution_timeout', 'max_active_runs', 'max_active_tasks', 'dagrun_timeout', 'end_date', "
             "'max_consecutive_failed_dag_runs', 'render_template_as_native_obj', 'fail_fast', 'is_paused_upon_creation', "
             "'dag_display_name', 'on_success_callback', 'on_failure_callback', "
             "'default_args'"],
            id="unknown-nested-key",
        ),
        pytest.param(
            "id: a\nstages:\n  validate:\n    treshold: {}\n",
            ["4:5 stages.validate.treshold: unknown key 'treshold' (did you mean 'thresholds'?); expected one of "
             "'backend', 'depends_on', 'resources', 'retries', 'execution_timeout', 'doc', 'queue', 'pool', 'kubernetes', "
             "'kind', 'thresholds', "
             "'compare', 'alias', 'previous_alias', 'on_reject', 'approval'"],
            id="unknown-stage-key",
        ),
        pytest.param(
            "id: a\ndag:\n  retries: lots\nstages:\n  validate: {}\n",
            ["3:12 dag.retries: input should be a valid integer, unable to parse string as an integer, got 'lots'"],
            id="wrong-type",
        ),
        pytest.param(
            "id: a\nbackend: sprak\nstages:\n  validate: {}\n",
            ["2:10 backend: unknown backend 'sprak' (did you mean 'spark'?); expected one of 'batch', 'spark', 'kubernetes'"],
            id="unknown-backend",
        ),
        pytest.param(
            "id: a\nstages:\n  fit:\n    kind: trian\n",
            ["4:11 stages.fit.kind: unknown kind 'trian' (did you mean 'train'?); expected one of 'preprocess', 'train', "
             "'validate', 'serve', 'drift', 'custom'"],
            id="unknown-kind",
        ),
        pytest.param(
            "id: a\nstages:\n  fit:\n    target: y\n",
            ["4:5 stages.fit: this stage needs a 'kind': one of 'preprocess', 'train', 'validate', 'serve', 'drift', 'custom' "
             "(or name the stage after its kind)"],
            id="missing-kind",
        ),
        pytest.param(
            "id: a\nstages:\n  train:\n    estimator: sklearn.svm.SVC\n",
            ["4:5 stages.train.target: required field is missing"],
            id="missing-field",
        ),
        pytest.param(
            "id: a\nstages:\n  train:\n    estimator: x.Y\n    target: t\n    resources: {gpu: 0.5}\n",
            ["6:22 stages.train.resources.gpu: expected a whole number of GPUs, got 0.5"],
            id="fractional-gpu",
        ),
        pytest.param(
            "id: a\nstages:\n  validate: {resources: {memory: 32}}\n",
            ["3:34 stages.validate.resources.memory: memory 32 has no unit, which Kubernetes reads as 32 bytes "
             "(did you mean '32Gi'?); units are Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)"],
            id="memory-without-unit",
        ),
        pytest.param(
            "id: a\nstages:\n  validate: {resources: {memory: 512, cpu: 2}}\n"
            "  serve: {resources: {memory: 16GB}}\n",
            ["3:34 stages.validate.resources.memory: memory 512 has no unit, which Kubernetes reads as 512 bytes "
             "(did you mean '512Mi'?); units are Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)",
             "4:31 stages.serve.resources.memory: memory '16GB' is not a Kubernetes quantity (did you mean '16Gi'?); "
             "units are Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)"],
            id="memory-near-misses",
        ),
        pytest.param(
            "id: a\nresource_profiles:\n  big: {memory: 512m, cpu: 500M}\nstages:\n  validate: {resources: big}\n",
            ["3:17 resource_profiles.big.memory: memory '512m' is not a Kubernetes quantity ('m' is thousandths of a "
             "byte) (did you mean '512Mi'?); units are Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)",
             "3:28 resource_profiles.big.cpu: expected a CPU quantity like 4, 0.5 or '500m', got '500M' (did you mean "
             "'500m'?)"],
            id="profile-memory-millibytes-and-cpu-megacores",
        ),
        pytest.param(
            "id: a\nkubernetes: {image: x, volumes: [{claim: data, mount_path: /data, size: 100}]}\nstages:\n"
            "  validate: {}\n",
            ["2:73 kubernetes.volumes.0.size: size 100 has no unit, which Kubernetes reads as 100 bytes (did you mean "
             "'100Gi'?); units are Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)"],
            id="volume-size-without-unit",
        ),
        pytest.param(
            "id: a\nstages:\n  validate: {resources: 3}\n",
            ["3:25 stages.validate.resources: expected a mapping or a string, got 3"],
            id="union-no-member-matches",
        ),
        pytest.param(
            "id: a\nstages:\n  validate: {depends_on: [trian]}\n  train: {estimator: x.Y, target: t}\n",
            ["3:27 stages.validate.depends_on: unknown stage 'trian' (did you mean 'train'?); stages are 'validate', 'train'"],
            id="unknown-dependency",
        ),
        pytest.param(
            "id: a\nstages:\n  a: {kind: validate, depends_on: c}\n  b: {kind: validate}\n  c: {kind: validate}\n",
            ["3:35 stages.a.depends_on: dependency cycle: a → b → c → a"],
            id="cycle",
        ),
        pytest.param(
            "id: a\nstages:\n  drift: {resources: trainng, current: {path: c.csv}, reference: {path: r.csv}}\n",
            ["3:22 stages.drift.resources: unknown resource profile 'trainng' (did you mean 'training'?); "
             "known: 'training', 'inference', 'small'"],
            id="unknown-profile",
        ),
        pytest.param(
            "id: a\nstages:\n  step:\n    kind: custom\n    operator: no_such_pkg.ops:Op\n",
            ["5:15 stages.step.operator: cannot import operator 'no_such_pkg.ops:Op': "
             "ModuleNotFoundError: No module named 'no_such_pkg'"],
            id="custom-operator-not-importable",
        ),
        pytest.param(
            "id: a\nstages:\n  step:\n    kind: custom\n    operator: airflow.providers.standard.operators.empty:Nope\n",
            ["5:15 stages.step.operator: cannot import operator 'airflow.providers.standard.operators.empty:Nope': "
             "AttributeError: module 'airflow.providers.standard.operators.empty' has no attribute 'Nope'"],
            id="custom-operator-missing-attribute",
        ),
        pytest.param(
            "id: a\nstages:\n  preprocess:\n    callable: no_such_module_xyz:load\n",
            ["4:15 stages.preprocess.callable: module 'no_such_module_xyz' of callable 'no_such_module_xyz:load' "
             "is not importable"],
            id="callable-not-found",
        ),
        pytest.param(
            "id: a\nstages:\n  preprocess:\n    input: {path: a.csv}\n    transform: no_such_features:join\n",
            ["5:16 stages.preprocess.transform: module 'no_such_features' of transform 'no_such_features:join' "
             "is not importable"],
            id="transform-not-found",
        ),
        pytest.param(
            "id: a\nmlflow: {tracking_uri: 'sqlite:///mlflow.db'}\nstages:\n  validate: {}\n",
            ["2:24 mlflow.tracking_uri: a relative SQLite path depends on each worker's current directory; use an "
             "absolute one, e.g. 'sqlite:////srv/mlflow/mlflow.db' (four slashes), got 'sqlite:///mlflow.db'"],
            id="relative-sqlite",
        ),
        pytest.param(
            "id: a\nstages:\n  preprocess: {input: {path: a.csv}}\n  train: {backend: spark, estimator: x.Y, target: t}\n",
            ["4:38 stages.train.estimator: on the spark backend the estimator trains on the cluster, so it must be a "
             "Spark ML one ('pyspark.ml....', e.g. pyspark.ml.classification.LogisticRegression, "
             "pyspark.ml.classification.RandomForestClassifier, pyspark.ml.regression.LinearRegression), got 'x.Y': "
             "give a Spark ML estimator, a 'callable', or 'backend: batch' (or kubernetes) for a scikit-learn estimator"],
            id="spark-train-sklearn",
        ),
        pytest.param(
            "id: a\nstages:\n  preprocess:\n    input: {path: a.csv}\n    sql: SELECT 1\n",
            ["5:10 stages.preprocess.sql: 'sql' runs on Spark: set 'backend: spark' on this stage, or use 'transform' with pandas"],
            id="sql-on-batch",
        ),
        pytest.param(
            "id: a\nbackend: spark\nstages:\n  preprocess:\n    input: {path: a.csv}\n    steps: [{dropna: true}]\n",
            ["6:12 stages.preprocess.steps: built-in steps are pandas operations; on the spark backend use 'sql' or 'transform'"],
            id="steps-on-spark",
        ),
        pytest.param(
            "id: a\nstages:\n  preprocess:\n    input: {path: a.csv}\n    inputs: {b: {path: b.csv}}\n",
            ["4:5 stages.preprocess: give exactly one of 'callable', 'input' or 'inputs'"],
            id="two-sources",
        ),
        pytest.param(
            "id: a\nstages:\n  preprocess: {backend: kubernetes, input: {path: a.csv}}\n",
            ["3:25 stages.preprocess.backend: the kubernetes backend needs an image with airflow-mlops installed: "
             "set kubernetes.image on the pipeline or the stage"],
            id="kubernetes-without-image",
        ),
        pytest.param(  # the stage's own settings over the pipeline's, as its pod would be made
            "id: a\nkubernetes: {image: x}\nstages:\n  preprocess:\n    backend: kubernetes\n"
            "    kubernetes: {image: ''}\n    input: {path: a.csv}\n",
            ["5:14 stages.preprocess.backend: the kubernetes backend needs an image with airflow-mlops installed: "
             "set kubernetes.image on the pipeline or the stage"],
            id="kubernetes-stage-clears-the-image",
        ),
        pytest.param(
            "id: a\nkubernetes: {image: x, volumes: [{claim: Data_1, mount_path: data}]}\nstages:\n  validate: {}\n",
            ["2:42 kubernetes.volumes.0.claim: string should match pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$', got 'Data_1'",
             "2:62 kubernetes.volumes.0.mount_path: string should match pattern '^/', got 'data'"],
            id="kubernetes-bad-volume",
        ),
        pytest.param(
            "id: a\nprices: {gpu_hours: 3, cpu_hour: -1}\nstages:\n  validate: {}\n",
            ["2:10 prices.gpu_hours: unknown key 'gpu_hours' (did you mean 'gpu_hour'?); expected one of 'gpu_hour', "
             "'cpu_hour', 'memory_gib_hour', 'currency'",
             "2:34 prices.cpu_hour: input should be greater than or equal to 0, got -1"],
            id="bad-prices",
        ),
        pytest.param(
            "id: a\ngpu_metrics: {pushgateway_url: 'gw:9091'}\nstages:\n  validate: {}\n",
            ["2:32 gpu_metrics.pushgateway_url: string should match pattern '^https?://', got 'gw:9091'"],
            id="bad-pushgateway",
        ),
    ],
)
def test_bad_file_reports_position_field_and_expectation(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert errors_of(path) == [f"{path}:{e}" for e in expected]


def test_all_errors_of_a_file_are_reported_together(tmp_path):
    path = write(tmp_path, "p.yaml", """
        id: p
        dag: {retries: -2, owner: 7}
        stages:
          validate: {alias: "bad alias", colour: red}
        """)
    errors = errors_of(path)
    assert [e.split(" ", 2)[1] for e in errors] == ["dag.retries:", "dag.owner:", "stages.validate.alias:", "stages.validate.colour:"]


def test_one_bad_file_loses_only_itself_and_duplicate_ids_are_refused(tmp_path):
    write(tmp_path, "a.yaml", MINIMAL)
    write(tmp_path, "b.yaml", "id: q\nstages: {preprocess: {input: {path: a.csv}}}\n")
    write(tmp_path, "c.yaml", "id: p\nstages: {preprocess: {input: {path: a.csv}}}\n")
    write(tmp_path, "broken.yaml", "id: [\n")
    verdict = load_dags([tmp_path])
    good, bad = [loaded for loaded, _ in verdict.good], verdict.bad
    assert sorted(lp.pipeline.id for lp in good) == ["p", "q"]
    assert sorted(path.name for path in bad) == ["broken.yaml", "c.yaml"]
    assert str(bad[tmp_path / "c.yaml"]) == f"{tmp_path / 'c.yaml'}:1:5 id: pipeline id 'p' is already used by {tmp_path / 'a.yaml'}"


def test_operator_resources_refuse_memory_without_a_unit():
    from airflow_mlops.operators.gpu_train import GpuTrainOperator

    with pytest.raises(ValueError, match=r"memory 32 has no unit, which Kubernetes reads as 32 bytes "
                                         r"\(did you mean '32Gi'\?\)"):
        GpuTrainOperator(task_id="t", entrypoint="tests.gpu_entrypoints:train", resources={"memory": 32})
    for good, expected in (("32Gi", "32Gi"), ("1.5Gi", "1.5Gi"), ("500M", "500M")):
        op = GpuTrainOperator(task_id="t", entrypoint="tests.gpu_entrypoints:train", resources={"memory": good})
        assert op.held_resources.memory == expected
