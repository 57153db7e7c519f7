"""Pipeline profiles: one pipeline file, different settings per deployment. The DAG Airflow builds
(its own DagBag) with the active profile, chosen by $AIRFLOW_MLOPS_PROFILE or the Airflow Variable
``mlops_profile``; ``validate --profile`` / ``--all-profiles`` with errors at the profile's lines."""

from __future__ import annotations

import textwrap

import pytest

from airflow_mlops.cli import main
from airflow_mlops.factory.pipelines import PROFILE_ENV, load_dags, read_pipeline
from airflow_mlops.spec.errors import PipelineSpecError
from tests.helpers import write

DEFAULTS = """
    dag: {owner: platform}
    profiles:
      dev:
        mlflow: {conn_id: mlflow_dev}
      prod:
        mlflow: {conn_id: mlflow_prod}
        data_conn_id: aws_prod
        dag: {schedule: "@daily", default_args: {retries: 3}}
    """
CHURN = """
    id: churn
    mlflow: {conn_id: mlflow_local}
    stages:
      preprocess: {input: {sklearn_dataset: breast_cancer}}
      train:
        estimator: sklearn.ensemble.RandomForestClassifier
        target: target
        resources: {cpu: 1, memory: 2Gi}
    profiles:
      prod:
        data_dir: s3://ml-prod/churn
        stages:
          train: {resources: {memory: 8Gi}}
      staging: {}
    """


@pytest.fixture
def dags(dags_folder, monkeypatch):
    """The loader, a _defaults.yaml with profiles dev and prod, and team/churn.yaml with its own."""
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_MLOPS_PROFILE", raising=False)
    write(dags_folder, "_defaults.yaml", DEFAULTS)
    write(dags_folder, "team/churn.yaml", CHURN)
    return dags_folder


def churn_dag(folder):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.dags["churn"]


def settings(dag) -> dict:
    train = dag.get_task("train.run")
    default = train.data_dir.endswith("/mlops/data/churn")  # under $AIRFLOW_MLOPS_HOME
    return {"schedule": dag.schedule, "conn": train.mlflow.conn_id, "data_dir": None if default else train.data_dir,
            "data_conn": train.data_conn_id, "memory": train.stage_resources.memory, "retries": train.retries,
            "owner": train.owner}


def test_airflow_builds_the_pipeline_as_written_when_no_profile_is_active(dags):
    assert settings(churn_dag(dags)) == {"schedule": None, "conn": "mlflow_local", "data_dir": None, "data_conn": None,
                                         "memory": "2Gi", "retries": 0, "owner": "platform"}


def test_the_environment_variable_picks_the_profile_airflow_builds(dags, monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "prod")
    dag = churn_dag(dags)
    # The _defaults.yaml's prod beats the pipeline's own base (mlflow_local); the pipeline's prod adds 8Gi.
    assert settings(dag) == {"schedule": "@daily", "conn": "mlflow_prod", "data_dir": "s3://ml-prod/churn",
                             "data_conn": "aws_prod", "memory": "8Gi", "retries": 3, "owner": "platform"}
    assert "built with its profile `prod`" in dag.doc_md
    monkeypatch.setenv(PROFILE_ENV, "dev")
    assert settings(churn_dag(dags)) == {"schedule": None, "conn": "mlflow_dev", "data_dir": None, "data_conn": None,
                                         "memory": "2Gi", "retries": 0, "owner": "platform"}


def test_the_airflow_variable_picks_it_when_the_environment_variable_is_unset(dags, monkeypatch):
    # An Airflow Variable set the cheap way: Airflow's environment-variables secrets backend.
    from airflow_mlops.factory import source_record

    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_PROFILE", "prod")
    dag = churn_dag(dags)
    assert settings(dag)["conn"] == "mlflow_prod"
    # The DAG records who chose its profile (the Pipeline YAML tab says it).
    assert source_record.read(dag.doc_md)["profile_origin"] == "from the Airflow Variable mlops_profile"
    monkeypatch.setenv(PROFILE_ENV, "staging")  # the environment variable wins
    dag = churn_dag(dags)
    assert settings(dag)["conn"] == "mlflow_local"
    assert source_record.read(dag.doc_md)["profile_origin"] == f"from the environment variable {PROFILE_ENV}"


@pytest.mark.parametrize("process", ["server", "cli"])
def test_a_variable_in_the_metadata_database_picks_it_too(dags, airflow_db, monkeypatch, capsys, process):
    """Airflow's server processes read Variables from the metadata database (the DAG processor asks
    its supervisor, which reads the same table). A command-line process (``airflow-mlops validate``,
    ``airflow dags reserialize``) is neither: the Task SDK's Variable reads only environment
    variables and external secrets backends there, so the package reads the table itself (before:
    such a process silently built the pipeline as written)."""
    from airflow.models.variable import Variable as StoredVariable

    from airflow_mlops.cli import main

    if process == "server":
        monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")
    else:
        monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
    StoredVariable.set("mlops_profile", "dev")
    try:
        assert settings(churn_dag(dags))["conn"] == "mlflow_dev"
        assert main(["validate", str(dags)]) == 0
        assert "valid (with profile 'dev')" in capsys.readouterr().out
    finally:
        StoredVariable.delete("mlops_profile")


def test_the_variable_is_read_once_per_scan_and_only_when_a_pipeline_has_profiles(dags, tmp_path, monkeypatch):
    from airflow.sdk import Variable

    asked = []
    monkeypatch.setattr(Variable, "get", classmethod(lambda cls, key, default=None: asked.append(key) or "dev"))
    plain = tmp_path / "plain"
    write(plain, "p.yaml", "id: plain\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n")
    assert load_dags([plain]).good and asked == []
    write(dags, "team/other.yaml", CHURN.replace("id: churn", "id: other").replace("/churn", "/other"))
    verdict = load_dags([dags])
    assert sorted(lp.pipeline.id for lp, _ in verdict.good) == ["churn", "other"]
    assert {lp.pipeline_profile for lp, _ in verdict.good} == {"dev"} and asked == ["mlops_profile"]


def test_a_variable_that_cannot_be_read_is_an_error_not_the_base(dags, monkeypatch):
    from airflow.sdk import Variable

    def broken(cls, key, default=None):
        raise ConnectionError("secrets backend unreachable")

    monkeypatch.setattr(Variable, "get", classmethod(broken))
    (error,) = load_dags([dags]).bad.values()
    assert [i.message for i in error.issues] == [
        "cannot tell which profile is active: the Airflow Variable 'mlops_profile' could not be read "
        "(ConnectionError: secrets backend unreachable); set AIRFLOW_MLOPS_PROFILE instead"]


def test_an_active_profile_the_pipeline_lacks_is_a_visible_error_naming_the_file_and_its_profiles(
        dags, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv(PROFILE_ENV, "prd")
    bag = DagBag(dag_folder=str(dags))
    assert bag.import_errors == {}
    assert "invalid-pipeline" in bag.dags["churn"].tags
    path = dags / "team" / "churn.yaml"
    assert bag.dags["churn"].description.endswith(
        f"{path}:9:1 profiles: the active profile 'prd' (from the environment variable AIRFLOW_MLOPS_PROFILE) is not "
        "defined for this pipeline (did you mean 'prod'?); it has 'dev', 'prod', 'staging' (in this file and the "
        "_defaults.yaml files above it). Add 'prd: {}' under profiles to run the pipeline as written there")
    # A pipeline without any profile (none in the file, none in a _defaults.yaml above it) is built as written.
    plain = write(tmp_path / "elsewhere", "p.yaml", "id: plain\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n")
    loaded = read_pipeline(plain)
    assert (loaded.pipeline.id, loaded.pipeline_profile, loaded.pipeline_profiles) == ("plain", None, ())


def validate(capsys, *args) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = main(["validate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip()


def test_validate_profile_and_all_profiles_pass_a_good_pipeline(dags, capsys):
    path = dags / "team" / "churn.yaml"
    assert validate(capsys, "-v", "--profile", "prod", dags) == (
        0, [f"{path}: ok (churn, 2 stages, profile prod)", "1 pipeline file(s) valid (with profile 'prod')"], "")
    assert validate(capsys, "-v", "--all-profiles", dags) == (0, [
        f"{path}: ok (churn, 2 stages; profiles dev, prod, staging)",
        "1 pipeline file(s) valid (without a profile and with each of 3: dev, prod, staging)"], "")
    code, out, err = validate(capsys, "--profile", "qa", dags)
    assert code == 1 and out[0].startswith(f"{path}:9:1 profiles: the active profile 'qa' (from --profile) is not "
                                           "defined for this pipeline; it has 'dev', 'prod', 'staging'")


def test_all_profiles_names_the_profile_the_file_and_the_line_of_each_bad_value(dags, capsys):
    write(dags, "_defaults.yaml", DEFAULTS.replace("schedule: \"@daily\"", "schedule: \"@dialy\""))
    path = write(dags, "team/churn.yaml", CHURN + """
      gpu:
        backend: spark
      big:
        stages:
          train: {resources: {memory: 8GB}}
    """)
    defaults = dags / "_defaults.yaml"
    assert validate(capsys, "--profile", "dev", dags)[0] == 0  # the others are not built with dev
    code, out, err = validate(capsys, "--all-profiles", dags)
    assert code == 1, out
    assert out == [
        # A value of the pipeline that the profile's own change makes wrong: at its line, naming the profile.
        f"{path}:6:16 stages.train.estimator: on the spark backend the estimator trains on the cluster, so it must "
        "be a Spark ML one ('pyspark.ml....', e.g. pyspark.ml.classification.LogisticRegression, "
        "pyspark.ml.classification.RandomForestClassifier, pyspark.ml.regression.LinearRegression), got "
        "'sklearn.ensemble.RandomForestClassifier': give a Spark ML estimator, a 'callable', or 'backend: batch' (or "
        "kubernetes) for a scikit-learn estimator (with profile 'gpu')",
        # A bad value a profile wrote: at the profile's line, as the profile's key.
        f"{path}:20:35 profiles.big.stages.train.resources.memory: memory '8GB' is not a Kubernetes quantity (did you "
        "mean '8Gi'?); units are Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)",
        f"{defaults}:8:21 profiles.prod.dag.schedule: unknown schedule preset '@dialy' (did you mean '@daily'?); "
        "presets: '@once', '@continuous', '@hourly', '@daily', '@weekly', '@monthly', '@quarterly', '@yearly'",
    ]
    assert err == ("1 of 1 pipeline file(s) invalid, 3 error(s) (without a profile and with each of 5: dev, prod, "
                   "staging, gpu, big)")


def test_a_profile_cannot_bring_a_key_the_pipeline_refuses(dags, capsys):
    path = write(dags, "team/churn.yaml", CHURN + """
      dev:
        schedule: "@hourly"
        dag: {shedule: "@hourly"}
        stages:
          trian: {resources: small}
    """)
    keys = ("'backend', 'dag', 'mlflow', 'resource_profiles', 'data_dir', 'data_conn_id', 'spark', 'kubernetes', "
            "'prices', 'gpu_metrics', 'params', 'description', 'stages'")
    with pytest.raises(PipelineSpecError) as info:
        read_pipeline(path, profile=None)  # refused whichever profile is active: the file is wrong
    assert [str(i) for i in info.value.issues] == [
        f"{path}:17:5 profiles.dev.schedule: unknown key 'schedule' (a DAG setting: write it under dag, as "
        f"dag.schedule); expected one of {keys}",
        f"{path}:18:11 profiles.dev.dag.shedule: unknown key 'shedule' (did you mean 'schedule'?); expected one of "
        "'schedule', 'schedule_on_assets', 'trigger', 'start_date', 'timezone', 'catchup', 'description', 'tags', "
        "'owner', 'retries', 'retry_delay', 'execution_timeout', 'max_active_runs', 'max_active_tasks', "
        "'dagrun_timeout', 'end_date', 'max_consecutive_failed_dag_runs', 'render_template_as_native_obj', "
        "'fail_fast', 'is_paused_upon_creation', 'dag_display_name', 'on_success_callback', 'on_failure_callback', "
        "'default_args'",
        f"{path}:20:7 profiles.dev.stages.trian: profile 'dev' changes stage 'trian', which the pipeline does not "
        "have (did you mean 'train'?); its stages: 'preprocess', 'train' (a profile changes stages, it adds none)",
    ]
    # In a stage, a key the stage's kind refuses, at its line in the profile, when it is built.
    path = write(dags, "team/churn.yaml", CHURN.replace("{resources: {memory: 8Gi}}", "{resources: {mem: 8Gi}}"))
    code, out, _ = validate(capsys, "--all-profiles", dags)
    assert out == [f"{path}:13:27 profiles.prod.stages.train.resources.mem: unknown key 'mem' (did you mean "
                   "'memory'?); expected one of 'profile', 'cpu', 'memory', 'gpu'"]


def test_a_defaults_file_profile_changes_no_stage_and_no_id(dags):
    write(dags, "_defaults.yaml", DEFAULTS.rstrip(" ") + "      qa:\n        id: other\n        stages: {}\n")
    with pytest.raises(PipelineSpecError) as info:
        read_pipeline(dags / "team" / "churn.yaml", profile=None)
    keys = "'backend', 'dag', 'mlflow', 'resource_profiles', 'data_dir', 'data_conn_id', 'spark', 'kubernetes', " \
           "'prices', 'gpu_metrics', 'params'"
    assert [str(i) for i in info.value.issues] == [
        f"{dags / '_defaults.yaml'}:10:5 profiles.qa.id: unknown key 'id'; expected one of {keys}",
        f"{dags / '_defaults.yaml'}:11:5 profiles.qa.stages: unknown key 'stages'; expected one of {keys}"]


def test_an_error_of_the_pipeline_itself_is_said_once_under_all_profiles(dags, capsys):
    path = write(dags, "team/churn.yaml", CHURN.replace("target: target", "target: target\n        retries: -1"))
    code, out, err = validate(capsys, "--all-profiles", dags)
    assert out == [f"{path}:8:14 stages.train.retries: input should be greater than or equal to 0, got -1"]


def test_the_committed_schema_tells_editors_what_a_profile_takes():
    import json

    import jsonschema
    import yaml

    from tests.conftest import REPO

    validator = jsonschema.Draft202012Validator(json.loads((REPO / "pipeline.schema.json").read_text()))
    doc = yaml.safe_load(textwrap.dedent(CHURN))
    assert list(validator.iter_errors(doc)) == []
    assert list(validator.iter_errors({**yaml.safe_load(textwrap.dedent(DEFAULTS)), **doc})) == []
    doc["profiles"]["prod"].update(mlfow={"conn_id": "x"}, id="other")
    doc["profiles"]["staging"] = {"dag": {"retries": "three"}}
    found = sorted((list(e.absolute_path), e.validator) for e in validator.iter_errors(doc))
    assert found == [(["profiles", "prod"], "additionalProperties"), (["profiles", "staging", "dag"], "anyOf")], found


def test_manifests_render_the_namespace_of_the_profile_asked_for(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.delenv(PROFILE_ENV, raising=False)
    path = write(tmp_path, "k.yaml", """
        id: k
        kubernetes: {namespace: ml-dev, image: registry.example/mlops:1.0}
        stages:
          preprocess: {input: {sklearn_dataset: iris}, backend: kubernetes}
        profiles:
          prod:
            kubernetes: {namespace: ml-prod}
        """)

    def namespaces(*args):
        capsys.readouterr()
        assert main(["manifests", str(path), *args]) == 0
        docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
        return {d["metadata"].get("namespace", d["metadata"]["name"]) for d in docs if d["kind"] != "ClusterRole"}

    assert namespaces() == {"ml-dev"}
    assert namespaces("--profile", "prod") == {"ml-prod"}
    monkeypatch.setenv(PROFILE_ENV, "prod")  # the deployment's, as Airflow builds it
    assert namespaces() == {"ml-prod"}
