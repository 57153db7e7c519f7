"""The Pipeline YAML tab's facts (``ui.source``) without a server: the record survives Airflow's
serialization, a profile's settings are marked as the profile's, environment values are never
shown, and files the api-server does not have are said so (the real api-server: test_ui_plugin)."""

from __future__ import annotations

import pytest

from tests.helpers import write

DEFAULTS = """
    dag:
      owner: ml-platform
      retries: 1
    kubernetes:
      env:
        API_URL: https://internal.example
        LOG_LEVEL: debug
    profiles:
      prod:
        dag: {retries: 3}
      dev: {}
    """
PIPELINE = """
    id: scored
    stages:
      preprocess:
        input: {path: $DATA_ROOT/in.csv}
      train:
        estimator: sklearn.linear_model.LogisticRegression
        target: target
        params: {api_token: hunter2}
    """


def _serialized_doc(dag) -> str:
    """The DAG's ``doc_md`` as the api-server reads it: from the serialized DAG."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.to_dict(dag)["dag"]["doc_md"]


@pytest.fixture()
def built(tmp_path, monkeypatch):
    from airflow_mlops.factory.loader import load_pipelines

    monkeypatch.setenv("AIRFLOW_MLOPS_PROFILE", "prod")
    monkeypatch.setenv("DATA_ROOT", "/very/secret/place")
    folder = tmp_path / "dags"
    write(folder, "_defaults.yaml", DEFAULTS)
    write(folder / "team", "scored.yaml", PIPELINE)
    return folder, _serialized_doc(load_pipelines(folder=folder)["scored"])


def test_settings_from_the_defaults_and_the_profile_are_marked_with_their_file(built):
    from airflow_mlops.ui.source import REDACTED, describe, page_body

    folder, doc = built
    info = describe("scored", doc)
    assert (info["recorded"], info["invalid"], info["profile"]) == (True, False, "prod")
    assert info["profile_origin"] == "from the environment variable AIRFLOW_MLOPS_PROFILE"
    defaults = str((folder / "_defaults.yaml").resolve())
    assert [(f["role"], f["path"]) for f in info["files"]] == [
        ("pipeline", str((folder / "team" / "scored.yaml").resolve())), ("defaults", defaults)]
    settings = {s["key"]: s for s in info["settings"]}
    assert settings["dag.retries"] == {"key": "dag.retries", "value": "3", "from": "profile prod", "file": defaults,
                                       "line": 10}
    assert settings["dag.owner"]["from"] == "defaults" and settings["dag.owner"]["line"] == 2
    assert settings["kubernetes.env.API_URL"]["value"] == REDACTED
    # Environment values are never shown, nor expanded; nor are secret-like keys' values.
    html = page_body(info)
    assert "Built with the pipeline profile <b>prod</b> (from the environment variable AIRFLOW_MLOPS_PROFILE)" in html
    assert "internal.example" not in html and "debug" not in html and "hunter2" not in html
    assert "/very/secret/place" not in html and "$DATA_ROOT/in.csv" in html
    pipeline_lines = [line["text"] for line in info["files"][0]["lines"]]
    assert f"    params: {{api_token: {REDACTED}}}" in pipeline_lines
    assert f"    API_URL: {REDACTED}" in [line["text"] for line in info["files"][1]["lines"]]


def test_files_the_api_server_does_not_have_are_said_so(built):
    from airflow_mlops.ui.source import describe

    folder, doc = built
    (folder / "team" / "scored.yaml").unlink()
    (folder / "_defaults.yaml").unlink()
    pipeline, defaults = describe("scored", doc)["files"]
    # The pipeline's own YAML as parsed is in the DAG's docs: shown from there.
    assert pipeline["available"] and pipeline["shown_from"].startswith("the DAG's docs")
    assert pipeline["lines"][0]["text"] == "id: scored"
    assert not defaults["available"] and "cannot be read on the api-server" in defaults["problem"]
    assert describe("scored", doc)["settings"] == []  # merged again only from the files as parsed


def test_a_file_changed_since_the_parse_shows_the_parsed_yaml(built):
    from airflow_mlops.ui.source import describe

    folder, doc = built
    (folder / "team" / "scored.yaml").write_text("id: scored\n# edited\n")
    (folder / "_defaults.yaml").write_text("dag: {owner: someone-else}\n")
    pipeline, defaults = describe("scored", doc)["files"]
    assert pipeline["shown_from"].startswith("the DAG's docs") and pipeline["lines"][1]["text"] == "stages:"
    assert not defaults["available"] and "has changed since the DAG was parsed" in defaults["problem"]


def test_a_record_names_no_other_file_to_show(tmp_path):
    """The record is in the DAG's docs, which a DAG written in Python could fake: no file but a
    pipeline or defaults YAML, and only with the text it was parsed from, is shown."""
    from airflow_mlops.factory import source_record
    from airflow_mlops.ui.source import describe

    secret = tmp_path / "secret.yaml"
    secret.write_text("password: hunter2\n")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0\n")
    faked = source_record.record(secret, "id: x\n", [(passwd, passwd.read_text()), (secret, secret.read_text())])
    files = describe("faked", faked)["files"]
    assert [f["available"] for f in files] == [False, False, False]
    assert "changed since the DAG was parsed" in files[0]["problem"]
    assert all("not a pipeline or defaults file" in f["problem"] for f in files[1:])


def test_a_dag_without_a_record_says_so():
    from airflow_mlops.ui.source import describe

    info = describe("hand_written", "# A DAG written in Python\n")
    assert not info["recorded"] and info["files"] == [] and "records no pipeline file" in info["message"]
