"""Stage data on object storage, against a real S3-protocol server (moto's): a pipeline whose
``data_dir`` is a bucket writes and reads every stage there through Airflow's ObjectStoragePath
and an Airflow connection; locations that are neither absolute paths nor supported URIs are
refused at their YAML line; a named connection that does not exist fails at once, naming it;
Spark says what it lacks before it runs; and a git-sync flip changes no location or Asset URI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import release_asset_names, write

PIPELINE = """
stages:
  preprocess:
    input: {sklearn_dataset: breast_cancer}
  train:
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: 10, random_state: 0}
    target: target
  validate:
    thresholds: {accuracy: {min: 0.8}}
  serve: {}
"""


def test_a_pipeline_with_its_data_dir_in_a_bucket_writes_and_reads_every_stage_there(
        airflow_db, mlops_home, dags_folder, s3_server, monkeypatch, tmp_path):
    """Credentials and endpoint come from an Airflow connection (data_conn_id) only: no AWS_*
    variable is set, so nothing reaches the bucket but through the connection."""
    import mlflow
    from airflow.utils.state import DagRunState

    from airflow_mlops.factory.loader import load_pipelines

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_PIPELINE_BUCKET", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": s3_server.endpoint, "region_name": "us-east-1"}}))
    bucket = s3_server.bucket("stages")
    write(dags_folder, "in_bucket.yaml",
          f"id: in_bucket\ndata_dir: s3://{bucket}/pipelines/in_bucket\ndata_conn_id: pipeline_bucket\n{PIPELINE}")
    release_asset_names("in_bucket")
    monkeypatch.chdir(tmp_path)
    dag = load_pipelines(folder=dags_folder)["in_bucket"]
    assert dag.get_task("preprocess.run").outlets[0].uri == f"s3://{bucket}/pipelines/in_bucket/preprocess"
    dr = dag.test()
    assert dr.state == DagRunState.SUCCESS, {ti.task_id: ti.state for ti in dr.get_task_instances()}

    from airflow_mlops._core.names import safe_run_key

    run = safe_run_key(dr.run_id)
    assert s3_server.keys(bucket) == [f"pipelines/in_bucket/preprocess/{run}/test.parquet",
                                      f"pipelines/in_bucket/preprocess/{run}/train.parquet",
                                      f"pipelines/in_bucket/serve/{run}/predictions.parquet"]
    serve = dr.get_task_instance("serve.run").xcom_pull(task_ids="serve.run")
    assert serve["predictions_path"].startswith(f"s3://{bucket}/pipelines/in_bucket/serve/") and serve["rows"] > 0
    assert "pipeline_bucket@" not in json.dumps(serve)  # the connection id is not part of any location
    # Nothing landed on a local disk under a folder named after the URI.
    for root in (dags_folder, tmp_path, Path.cwd()):
        assert not list(Path(root).rglob("s3:*")), root
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    assert [str(v.version) for v in client.search_model_versions("name = 'in_bucket'")] == ["1"]


def test_a_named_storage_connection_that_does_not_exist_fails_at_once_naming_it(tmp_path, s3_server):
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.spec.models import PreprocessStage
    from airflow_mlops.stages import StageFailed, run_stage

    ctx = StageContext(pipeline_id="p", stage_name="preprocess", run_key="r1",
                       data_dir=f"s3://{s3_server.bucket()}/p", data_conn_id="s3_dat",
                       mlflow=MlflowTarget(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="p", registered_model="p"))
    with pytest.raises(StageFailed) as err:
        run_stage(PreprocessStage(input={"sklearn_dataset": "iris"}), ctx)
    assert str(err.value).startswith("the Airflow connection 's3_dat' (data_conn_id, for s3:// data) does not exist")
    assert "AIRFLOW_CONN_S3_DAT" in str(err.value)


def test_a_local_file_another_worker_wrote_is_reported_as_such(tmp_path):
    from airflow_mlops.stages import StageFailed
    from airflow_mlops.stages.data import read_dataset

    with pytest.raises(StageFailed, match=r"no file at .*/train.parquet on this worker \(.*\)\. If another task wrote "
                                          r"it, it is on that worker's disk: workers that share no disk need data_dir "
                                          r"on object storage"):
        read_dataset(str(tmp_path / "elsewhere" / "train.parquet"))


@pytest.mark.parametrize(("yaml", "expected"), [
    ("id: a\ndata_dir: s3:/bucket/a\nstages:\n  validate: {}\n",
     "2:11 data_dir: 's3:/bucket/a' is neither an absolute path nor a URI: a URI needs '//' after 's3:' "
     "(e.g. 's3://bucket/prefix')"),
    ("id: a\ndata_dir: data/a\nstages:\n  validate: {}\n",
     "2:11 data_dir: 'data/a' is a relative path: it would resolve against whichever folder a worker runs in"),
    ("id: a\nstages:\n  preprocess:\n    input: {path: ftp://host/a.csv}\n",
     "4:19 stages.preprocess.input.path: unsupported URI scheme 'ftp://' in 'ftp://host/a.csv'; expected an absolute "
     "path or a URI of file://, s3://, gs://, gcs://, abfs://, abfss://, az://"),
    ("id: a\nstages:\n  preprocess:\n    input: {sklearn_dataset: iris}\n    output: out/x\n",
     "5:13 stages.preprocess.output: 'out/x' is a relative path"),
    ("id: a\ndata_dir: s3:///nobucket\nstages:\n  validate: {}\n",
     "2:11 data_dir: 's3:///nobucket' names no bucket or container (e.g. 's3://bucket/prefix')"),
    ("id: a\ndata_dir: gs://bucket/a\nstages:\n  validate: {}\n",
     "2:11 data_dir: gs:// data needs the 'google' extra of airflow-mlops, which is not installed here"),
])
def test_locations_neither_absolute_nor_a_supported_uri_are_refused_at_their_line(tmp_path, capsys, yaml, expected):
    from airflow_mlops.cli import main

    path = write(tmp_path, "p.yaml", yaml)
    assert main(["validate", str(path)]) == 1
    assert f"{path}:{expected}" in capsys.readouterr().out


def test_spark_says_what_it_lacks_for_a_bucket_before_any_job_runs(spark):
    from airflow_mlops.stages import StageFailed
    from airflow_mlops.stages.spark_session import readable_by

    assert readable_by(spark, "/tmp/x") == "/tmp/x"
    with pytest.raises(StageFailed) as err:
        readable_by(spark, "s3://bucket/features")
    message = str(err.value)
    assert message.startswith("this Spark session cannot read or write s3://bucket/features (s3a://: ")
    assert "org.apache.hadoop:hadoop-aws" in message and "spark.hadoop.fs.s3a.*" in message


def test_a_git_sync_flip_moves_no_location_and_no_asset_uri(tmp_path, capsys):
    """The dags folder as git-sync lays it out: ``repo -> .worktrees/<commit>``, flipped to a new
    worktree and the old one deleted. Inputs shipped with the pipeline resolve through ``repo``;
    Asset URIs are the same from both commits; a relative data_dir is refused, saying why."""
    from airflow_mlops.cli import main
    from airflow_mlops.factory.pipelines import load_dags

    root = tmp_path / "dags"
    (root / ".worktrees").mkdir(parents=True)
    text = (f"id: synced\ndata_dir: {tmp_path}/data/synced\nstages:\n  preprocess: {{input: {{path: data/in.csv}}}}\n"
            "  serve: {model: 'models:/m@champion', input: {path: data/in.csv}}\n")
    seen = []
    for commit in ("c1", "c2"):
        worktree = root / ".worktrees" / commit
        write(worktree, "pipelines/synced.yaml", text)
        link = root / "repo.new"
        os.symlink(f".worktrees/{commit}", link)
        os.replace(link, root / "repo")  # the atomic flip
        if commit == "c2":
            shutil.rmtree(root / ".worktrees" / "c1")
        ((loaded, dag),) = load_dags([root / "repo" / "pipelines"]).good
        seen.append(({t.task_id: [a.uri for a in t.outlets] for t in dag.tasks},
                     loaded.pipeline.stages["preprocess"].input.path))
    assert seen[0] == seen[1]
    outlets, input_path = seen[0]
    assert outlets["preprocess.run"] == [f"file://{tmp_path}/data/synced/preprocess"]
    assert input_path == f"{root}/repo/pipelines/data/in.csv"
    write(root / ".worktrees" / "c2", "pipelines/relative.yaml", "id: rel\ndata_dir: out\nstages:\n  validate: {}\n")
    assert main(["validate", str(root / "repo" / "pipelines" / "relative.yaml")]) == 1
    assert "data_dir: 'out' is a relative path" in capsys.readouterr().out


def test_retention_keeps_the_newest_run_folders_of_a_prefix_in_a_bucket(s3_server, monkeypatch):
    """A files policy whose root is a bucket prefix: run folders (unit: directory) beyond the
    newest two are deleted object by object; nothing outside the prefix is touched; a dry run
    lists exactly what the real run deletes; a prefix with nothing under it fails, naming it."""
    import time

    import boto3

    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops.lifecycle.retention import run_retention
    from tests.s3_helpers import s3_environment

    s3_environment(s3_server, monkeypatch)
    bucket = s3_server.bucket("retained")
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    for run in range(4):  # one second apart: S3 keeps modification times in whole seconds
        for name in ("train.parquet", "test.parquet"):
            client.put_object(Bucket=bucket, Key=f"data/p/preprocess/run-{run}/{name}", Body=b"x" * 100)
        time.sleep(1.1)
    client.put_object(Bucket=bucket, Key="elsewhere/keep.txt", Body=b"x")
    policy = {"kind": "files", "root": f"s3://{bucket}/data/p/preprocess", "unit": "directory", "depth": 1,
              "keep_last": 2}
    dry = run_retention({"policies": [policy], "dry_run": True})
    runs = f"s3://{bucket}/data/p/preprocess"
    assert dry["items"] == 2 and dry["bytes"] == 400 and dry["deleted"] == [f"{runs}/run-0", f"{runs}/run-1"]
    assert len(s3_server.keys(bucket)) == 9  # a dry run deletes nothing
    summary = run_retention({"policies": [policy]})
    assert summary["items"] == 2 and summary["dry_run"] is False and summary["deleted"] == dry["deleted"]
    assert s3_server.keys(bucket) == [
        "data/p/preprocess/run-2/test.parquet", "data/p/preprocess/run-2/train.parquet",
        "data/p/preprocess/run-3/test.parquet", "data/p/preprocess/run-3/train.parquet", "elsewhere/keep.txt"]
    with pytest.raises(StageFailed, match=r"nothing exists under the root s3://.*/data/typo"):
        run_retention({"policies": [{**policy, "root": f"s3://{bucket}/data/typo"}]})
