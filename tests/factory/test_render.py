"""``airflow-mlops render``: a pipeline YAML → a plain Python DAG file. Each pipeline here is
rendered, the rendered file imported (no YAML beside it), and both DAGs compared: as Airflow
serializes them, and task by task with the fields Airflow does not serialize (the stage spec and
the settings each operator runs with)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import write

RUFF = Path(sys.executable).with_name("ruff")
HEAVY = ["pyspark", "mlflow", "kafka", "pynvml", "kubernetes", "pandas", "sklearn"]

CALLBACKS = '''
import logging


def notify(context):
    logging.getLogger("alerts").error("failed: %s", context["ti"].task_id)


def celebrate(context):
    logging.getLogger("alerts").info("done: %s", context["dag_run"].run_id)
'''

# Kubernetes and Spark stages, resource profiles from a _defaults.yaml, fan-in, every task setting,
# Params, a zoned start date, task and DAG callbacks, a human approval, a drift and a custom stage.
EVERYTHING = """
id: everything
description: Every setting render writes out.
backend: kubernetes
kubernetes:
  image: registry.example/mlops:1.0
  namespace: ml
  volumes: [{claim: training-data, mount_path: /data, read_only: true}]
  env: {LOG_LEVEL: debug}
params:
  day_file: {type: string, default: /data/day.csv, description: The extract}
  trees: {type: integer, default: 200, minimum: 10, maximum: 2000}
  note: hello
dag:
  schedule: "0 6 * * *"
  timezone: Europe/Berlin
  start_date: 2025-03-01
  end_date: 2030-01-01
  catchup: false
  tags: [render]
  owner: team-a
  retries: 2
  retry_delay: 90s
  execution_timeout: 2h
  dagrun_timeout: 6h
  max_active_tasks: 4
  max_active_runs: 1
  on_failure_callback: alerts.notify
  on_success_callback: [alerts:celebrate]
  default_args:
    on_retry_callback: alerts.notify
    email: [ops@example.com]
data_dir: /srv/mlops/everything
mlflow: {experiment: render, registered_model: everything_model}
stages:
  extract:
    kind: preprocess
    backend: spark
    inputs: {day: {path: "{{ params.day_file }}"}}
    sql: SELECT * FROM day
    split: {test_fraction: 0.2, seed: 3}
    pool: spark_pool
    doc: Features on Spark.
  reference:
    kind: preprocess
    backend: batch
    input: {sklearn_dataset: iris}
    depends_on: []
    queue: small
  train:
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: "{{ params.trees }}"}
    target: target
    resources: gpu-box
    depends_on: [extract, reference]
    retries: 0
    execution_timeout: 30m
    kubernetes: {namespace: ml-gpu, node_selector: {pool: gpu}}
  validate:
    backend: batch
    thresholds: {accuracy: {min: 0.8}}
    approval: {timeout: 4h, assigned_users: [alice]}
  drift:
    backend: batch
    current: {path: /data/new.csv}
    depends_on: extract
  serve:
    mode: online
    depends_on: validate
  tidy:
    kind: custom
    operator: airflow.providers.standard.operators.bash:BashOperator
    args: {bash_command: "echo {{ ds }}", env: {A: "1"}}
    depends_on: [serve, drift]
"""

DEFAULTS = """
resource_profiles:
  gpu-box: {cpu: "8", memory: 32Gi, gpu: 1}
prices: {gpu_hour: 3.0}
dag: {tags: [from-defaults]}
"""

ON_ASSETS = """
id: on_assets
dag:
  schedule_on_assets: [everything.extract, other.features]
  start_date: "2025-01-02T03:04:05+01:00"
stages:
  serve:
    model: models:/everything_model@champion
    input: {path: /data/today.parquet}
"""

ZONED_CRON = """
id: zoned_cron
dag: {schedule: "30 2 * * *", timezone: America/New_York, retries: 0}
stages:
  preprocess: {input: {path: /data/a.csv}, output: "/data/out/{{ ds }}"}
"""

ON_KAFKA = """
id: on_kafka
dag:
  trigger: {kafka: {topics: [labels.new], connection: kafka_labels, poll_interval: 2}}
params: {rows: 10}
stages:
  preprocess: {input: {path: a.csv}}
"""


def yaml_dag(path: Path):
    """The DAG the loader builds from one pipeline file (which must be valid)."""
    from airflow_mlops.factory.pipelines import load_dags

    verdict = load_dags([path], serialize=True)
    assert not verdict.bad, {str(p): str(e) for p, e in verdict.bad.items()}
    (_, dag), = verdict.good
    return dag


def import_dag(path: Path, name: str):
    """The ``dag`` a rendered file defines, imported as Airflow would (no YAML read)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def render_and_import(pipeline: Path, out_dir: Path):
    """(the YAML's DAG, the rendered file's DAG, the rendered file), rendered through the CLI."""
    from airflow_mlops.cli import main

    expected = yaml_dag(pipeline)
    out = out_dir / f"rendered_{expected.dag_id}.py"
    assert main(["render", str(pipeline), "-o", str(out)]) == 0
    return expected, import_dag(out, f"rendered_{expected.dag_id}"), out


def _model(value):
    """A spec model's class, values and the fields that were set (a stage's ``kind`` aside: the
    rendered file names the stage's class instead)."""
    return None if value is None else (type(value).__name__, value.model_dump(),
                                       sorted(value.model_fields_set - {"kind"}))


STAGE_FIELDS = ("stage_name", "pipeline_id", "data_dir", "data_conn_id", "upstream_tasks", "stage_overrides",
                "judged_task_id", "subject", "body", "options", "assigned_users", "response_timeout")
MODEL_FIELDS = ("stage", "mlflow", "stage_resources", "prices", "gpu_metrics", "spark", "kubernetes")
TASK_FIELDS = ("retries", "retry_delay", "pool", "queue", "execution_timeout", "doc_md", "owner", "email",
               "executor_config", "template_fields", "custom_operator_name", "trigger_rule", "ui_color")


def _task_view(task) -> dict:
    view = {"type": f"{type(task).__module__}.{type(task).__qualname__}",
            "group": task.task_group.group_id if task.task_group else None,
            "upstream": sorted(task.upstream_task_ids), "downstream": sorted(task.downstream_task_ids),
            "outlets": [repr(o) for o in task.outlets], "inlets": [repr(i) for i in task.inlets],
            "templated": {f: repr(getattr(task, f, None)) for f in task.template_fields},
            "callbacks": {k: getattr(task, k, None) for k in ("on_failure_callback", "on_retry_callback",
                                                               "on_success_callback", "on_execute_callback")}}
    view.update({f: getattr(task, f, None) for f in TASK_FIELDS})
    view.update({f: getattr(task, f, "-") for f in STAGE_FIELDS})
    view.update({f: _model(getattr(task, f, None)) for f in MODEL_FIELDS})
    view["pod"] = _pod(task)
    return view


def _pod(task) -> dict | None:
    """The pod a Kubernetes stage task runs in (as KubernetesPodOperator would create it), its
    random name suffix aside."""
    if not hasattr(task, "pod_operator"):
        return None
    from airflow_mlops.backends.kubernetes._podspec import as_dict

    pod = as_dict(task.pod_operator(["-m", "airflow_mlops.runtime", "--payload", "e30="]).build_pod_request_obj(
        dry_run=True))
    pod["metadata"].pop("name")
    return pod


def _serialized(dag) -> dict:
    from airflow.serialization.serialized_objects import DagSerialization

    data = DagSerialization.to_dict(dag)["dag"]
    for key in ("fileloc", "relative_fileloc"):
        data.pop(key, None)
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def assert_same_dag(yaml_dag, py_dag) -> None:
    assert py_dag.dag_id == yaml_dag.dag_id
    settings = ("description", "start_date", "end_date", "catchup", "tags", "max_active_runs", "max_active_tasks",
                "dagrun_timeout", "doc_md", "timezone", "on_failure_callback", "on_success_callback",
                "is_paused_upon_creation", "render_template_as_native_obj", "fail_fast")
    assert {s: getattr(py_dag, s) for s in settings} == {s: getattr(yaml_dag, s) for s in settings}
    assert py_dag.default_args == yaml_dag.default_args
    assert py_dag.params.dump() == yaml_dag.params.dump()
    assert type(py_dag.timetable) is type(yaml_dag.timetable)
    assert getattr(py_dag.timetable, "summary", None) == getattr(yaml_dag.timetable, "summary", None)
    assert py_dag.task_ids == yaml_dag.task_ids
    assert sorted(py_dag.task_group_dict) == sorted(yaml_dag.task_group_dict)
    for group_id, group in yaml_dag.task_group_dict.items():
        other = py_dag.task_group_dict[group_id]
        assert (other.tooltip, sorted(other.children), sorted(other.upstream_group_ids)) == \
            (group.tooltip, sorted(group.children), sorted(group.upstream_group_ids)), group_id
    for task in yaml_dag.tasks:
        assert _task_view(py_dag.get_task(task.task_id)) == _task_view(task), task.task_id
    # and everything else Airflow stores of a DAG (timetable, Asset schedule, task groups, each
    # task's serialized fields), but where the file is
    assert _serialized(py_dag) == _serialized(yaml_dag)


@pytest.fixture
def folder(dags_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The dags folder with a callbacks module beside the pipelines (Airflow puts it on sys.path)."""
    write(dags_folder, "alerts.py", CALLBACKS)
    monkeypatch.syspath_prepend(str(dags_folder))
    return dags_folder


@pytest.mark.parametrize("name", ["breast_cancer", "iris_spark", "breast_cancer_stream", "maintenance"])
def test_the_example_pipelines_render_to_the_same_dag(name, example_dags_folder, tmp_path):
    yaml_dag, py_dag, out = render_and_import(example_dags_folder / f"{name}.yaml", tmp_path)
    assert_same_dag(yaml_dag, py_dag)
    text = out.read_text()
    assert f"from {example_dags_folder / (name + '.yaml')}" in text
    assert f"Defaults baked in from {example_dags_folder / '_defaults.yaml'}" in text


@pytest.mark.parametrize("text", [EVERYTHING, ON_ASSETS, ZONED_CRON, ON_KAFKA],
                         ids=["kubernetes-spark-approval-callbacks", "asset-schedule", "zoned-cron", "kafka-trigger"])
def test_pipelines_render_to_the_same_dag(text, folder, tmp_path):
    write(folder, "_defaults.yaml", DEFAULTS)
    pipeline = write(folder / "team", "pipeline.yaml", text)
    # beside the YAML, as a team leaving it would put it: pods get the DAG file's folder on PYTHONPATH
    yaml_dag, py_dag, out = render_and_import(pipeline, pipeline.parent)
    assert_same_dag(yaml_dag, py_dag)
    if text is EVERYTHING:  # the pod settings were compared: the profile's GPU, the stage's namespace
        pod = _pod(py_dag.get_task("train.run"))
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["metadata"]["namespace"] == "ml-gpu"
    code = [line for line in out.read_text().split('DOC_MD = """')[0].splitlines() if not line.startswith("#")]
    assert not [line for line in code if "yaml" in line.lower() or "load_pipelines" in line]


def test_the_rendered_file_shows_every_task_and_setting(folder, tmp_path):
    """What a reviewer reads: public operators, each stage spec as keyword arguments, the profile
    and the defaults baked in; no YAML loader."""
    write(folder, "_defaults.yaml", DEFAULTS)
    pipeline = write(folder, "everything.yaml", EVERYTHING)
    _, _, out = render_and_import(pipeline, tmp_path)
    text = out.read_text()
    assert "load_pipelines" not in text and "read_pipeline" not in text and "import yaml" not in text
    for line in ["from airflow_mlops.operators.stage import (\n    KubernetesModelServerOperator,\n"
                 "    KubernetesStageOperator,\n    SparkStageOperator,\n    StageOperator,\n)",
                 "from airflow_mlops.operators.approval import PromotionApprovalOperator",
                 "from airflow.providers.standard.operators.bash import BashOperator",
                 'stage_resources=Resources(cpu="8", memory="32Gi", gpu=1)',  # the profile, resolved
                 "PRICES = PriceTable(gpu_hour=3.0)",                          # from _defaults.yaml
                 'tags=["airflow-mlops", "render"]',
                 'with TaskGroup(group_id="validate", tooltip="validate on batch") as validate:',
                 "validate_run >> PromotionApprovalOperator(",
                 "on_failure_callback=[alerts.notify]",
                 'start_date=pendulum.datetime(2025, 3, 1, tz="Europe/Berlin")',
                 "serve >> tidy", "drift >> tidy", "reference >> train"]:
        assert line in text, line
    assert 'estimator="sklearn.ensemble.RandomForestClassifier"' in text
    assert f"# Defaults baked in from {folder / '_defaults.yaml'}." in text


ODD_NAMES = """
id: odd-names.v2
dag: {on_failure_callback: alerts.notify}
stages:
  dag: {kind: preprocess, input: {path: /data/a.csv}}
  alerts: {kind: preprocess, input: {path: /data/b.csv}, depends_on: []}
  class: {kind: train, estimator: sklearn.linear_model.LogisticRegression, target: y, depends_on: [dag, alerts]}
  2nd-step: {kind: validate, depends_on: class}
  StageOperator: {kind: serve, depends_on: 2nd-step}
"""


def test_stage_names_that_are_python_names_render_as_their_own_variables(folder, tmp_path):
    """Stages named like the file's own names (``dag``, an imported module or class, a keyword, a
    number first) get variables of their own; the DAG is still the same."""
    pipeline = write(folder, "odd.yaml", ODD_NAMES)
    yaml_dag, py_dag, out = render_and_import(pipeline, tmp_path)
    assert_same_dag(yaml_dag, py_dag)
    text = out.read_text()
    for line in ['as dag_:', 'as alerts_2:', 'as class_:', 'as _2nd_step:', 'as StageOperator_2:', "dag_ >> class_",
                 "class_ >> _2nd_step", "on_failure_callback=[alerts.notify]"]:
        assert line in text, line


def test_the_rendered_file_passes_ruff_and_imports_nothing_heavy(folder, tmp_path):
    write(folder, "_defaults.yaml", DEFAULTS)
    pipeline = write(folder, "everything.yaml", EVERYTHING)
    out = folder / "rendered_everything.py"
    from airflow_mlops.cli import main

    assert main(["render", str(pipeline), "-o", str(out)]) == 0
    os.remove(pipeline)  # the rendered file needs no YAML
    if RUFF.exists():
        checked = subprocess.run([str(RUFF), "check", "--config", str(REPO / "pyproject.toml"), str(out)],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    code = (f"import json, sys\nsys.path.insert(0, {str(folder)!r})\n"
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('r', {str(out)!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"print(json.dumps([m.dag.dag_id, sorted(n for n in sys.modules if n.split('.')[0] in {HEAVY!r})]))")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert json.loads(ran.stdout.strip().splitlines()[-1]) == ["everything", []]


def test_a_bad_pipeline_gets_validates_errors_and_nothing_is_written(dags_folder, tmp_path, capsys):
    from airflow_mlops.cli import main

    bad = write(dags_folder, "churn.yaml", """
        id: churn
        stages:
          train:
            estimator: sklearn.ensemble.RandomForestClassifier
            target: churned
            resources: {gpu: 0.5}
        """)
    assert main(["validate", str(bad)]) == 1
    validate_errors = capsys.readouterr().out.strip().splitlines()
    assert validate_errors and validate_errors[0].startswith(f"{bad}:6:")
    out = tmp_path / "churn.py"
    assert main(["render", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[:len(validate_errors)] == validate_errors
    assert "stages.train.resources.gpu" in err and "nothing rendered" in err
    assert not out.exists()
    assert main(["render", str(dags_folder / "missing.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
    defaults = write(dags_folder, "_defaults.yaml", "dag: {retries: 1}\n")
    assert main(["render", str(defaults)]) == 1
    assert "not a pipeline file" in capsys.readouterr().err


def test_an_output_it_cannot_write_is_one_line_and_never_the_pipeline_itself(dags_folder, tmp_path, capsys):
    """-o naming the pipeline file it reads, a folder, or a file in a missing folder: exit 1, one
    line on stderr (no traceback), and the pipeline YAML left as it was."""
    from airflow_mlops.cli import main

    pipeline = write(dags_folder, "small.yaml", """
        id: small
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    text = pipeline.read_text()
    (tmp_path / "out").mkdir()
    for output, says in ((pipeline, "is the file this command reads"),
                         (tmp_path / "out", "cannot write it (Is a directory)"),
                         (tmp_path / "missing" / "small.py", "cannot write it (No such file or directory)")):
        assert main(["render", str(pipeline), "-o", str(output)]) == 1
        err = capsys.readouterr().err
        assert err == f"{output}: {says}" + ("; give another -o\n" if output == pipeline else "; nothing written\n")
    assert pipeline.read_text() == text
    assert not (tmp_path / "missing").exists()
    assert main(["render", str(dags_folder)]) == 1
    assert capsys.readouterr().err == f"{dags_folder}: a folder (render takes one pipeline YAML file)\n"


def test_a_rendered_dag_runs_as_the_yaml_one_does(airflow_db, mlops_home, dags_folder, tmp_path):
    """The same small batch pipeline from YAML and from its rendered file, each run with
    dag.test(): both register a model version that passes the gate, with the same metrics."""
    import mlflow
    from airflow.utils.state import DagRunState

    from airflow_mlops import load_pipelines
    from airflow_mlops.cli import main

    text = """
        id: {id}
        mlflow: {{registered_model: {id}_model}}
        stages:
          preprocess:
            input: {{sklearn_dataset: breast_cancer}}
            split: {{test_fraction: 0.25, seed: 7, stratify: target}}
          train:
            estimator: sklearn.linear_model.LogisticRegression
            params: {{max_iter: 5000}}
            target: target
          validate:
            thresholds: {{accuracy: {{min: 0.9}}}}
        """
    # Two pipelines alike but for the id (Airflow ties an Asset name to one URI): one stays YAML,
    # the other is rendered into the dags folder and its YAML removed.
    write(dags_folder, "small.yaml", text.format(id="small"))
    other = write(tmp_path, "small_py.yaml", text.format(id="small_py"))
    assert main(["render", str(other), "-o", str(dags_folder / "small_py.py")]) == 0
    os.remove(other)
    yaml_dag = load_pipelines(folder=dags_folder)["small"]
    py_dag = import_dag(dags_folder / "small_py.py", "small_py")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    metrics = {}
    for dag, model in ((yaml_dag, "small_model"), (py_dag, "small_py_model")):
        dr = dag.test()
        assert dr.state == DagRunState.SUCCESS, {ti.task_id: ti.state for ti in dr.get_task_instances()}
        champion = client.get_model_version_by_alias(model, "champion")
        assert str(champion.version) == "1"
        assert champion.tags["airflow_mlops.validation"] == "passed"
        metrics[model] = client.get_run(champion.run_id).data.metrics["accuracy"]
    assert metrics["small_model"] == pytest.approx(metrics["small_py_model"])


def test_literals_build_equal_values():
    """Each value the renderer writes evaluates, with the imports it collected, to an equal value."""
    import datetime as dt

    import pendulum

    from airflow_mlops.factory._literals import Imports, Literals

    values = [
        {"a": [1, 2.5, None, True], "b": {"c": ("x",)}, 3: "it's \"quoted\" ✓"},
        dt.timedelta(seconds=90), dt.timedelta(seconds=1.5), dt.timedelta(days=2), dt.timedelta(0),
        dt.datetime(2025, 3, 1, 6, 30), dt.date(2025, 3, 1),
        pendulum.datetime(2025, 3, 1, tz="Europe/Berlin"), pendulum.instance(dt.datetime.fromisoformat(
            "2025-01-02T03:04:05+01:00")),
        "word " * 60, ["word " * 30, {"deep": "word " * 30}],
    ]
    imports = Imports()
    lit = Literals(imports)
    texts = [lit.expr(v) for v in values]
    namespace: dict = {}
    exec("\n".join(imports.lines()), namespace)
    for value, text in zip(values, texts):
        built = eval(text, namespace)
        assert built == value, text
        if isinstance(value, dt.datetime):
            assert built.utcoffset() == value.utcoffset(), text


def test_a_pipeline_profile_is_baked_in_as_the_loader_builds_it(folder, tmp_path, monkeypatch):
    """``render --profile prod`` writes the DAG the loader builds under AIRFLOW_MLOPS_PROFILE=prod:
    the profile's schedule, retries and MLflow connection, and a header naming the profile."""
    from airflow_mlops.cli import main
    from airflow_mlops.factory.pipelines import PROFILE_ENV

    pipeline = write(folder, "churn_profiles.yaml", """
        id: churn_profiles
        mlflow: {conn_id: mlflow_local}
        stages:
          preprocess: {input: {sklearn_dataset: breast_cancer}}
          train: {estimator: sklearn.linear_model.LogisticRegression, target: target}
        profiles:
          prod:
            mlflow: {conn_id: mlflow_prod}
            dag: {schedule: "@daily", default_args: {retries: 3}}
        """)
    out = tmp_path / "churn_prod.py"
    assert main(["render", str(pipeline), "--profile", "prod", "-o", str(out)]) == 0
    rendered = import_dag(out, "churn_prod")
    monkeypatch.setenv(PROFILE_ENV, "prod")
    expected = yaml_dag(pipeline)
    # The one difference by design: who chose the profile, as the Pipeline YAML tab shows it.
    baked, chosen = "baked in by airflow-mlops render --profile", f"from the environment variable {PROFILE_ENV}"
    assert baked in rendered.doc_md and chosen in expected.doc_md
    rendered.doc_md = rendered.doc_md.replace(baked, chosen)
    assert_same_dag(expected, rendered)
    assert rendered.default_args["retries"] == 3
    assert rendered.get_task("train.run").mlflow.conn_id == "mlflow_prod"
    assert "# Pipeline profile 'prod' baked in" in out.read_text()
    monkeypatch.delenv(PROFILE_ENV)
    assert main(["render", str(pipeline), "-o", str(tmp_path / "churn_base.py")]) == 0
    assert import_dag(tmp_path / "churn_base.py", "churn_base").get_task("train.run").mlflow.conn_id == "mlflow_local"
