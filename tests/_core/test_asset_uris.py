"""Asset URIs built from what users write, stored by Airflow as it stores them: data folders with
non-ASCII characters, ``#`` or spaces; pipelines that train into one registered model; pipelines
that would write one folder; an Asset Airflow cannot store. Each ends with every other pipeline of
the folder stored and active (through ``airflow dags reserialize``, which stores DAGs the way the
DAG processor does, and through runs)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import release_asset_names, write

STAGES = """
stages:
  preprocess: {input: {sklearn_dataset: breast_cancer}}
  train:
    estimator: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: 10, random_state: 0}
    target: target
  validate:
    thresholds: {accuracy: {min: 0.5}}
    compare: {accuracy: {min_improvement: 0.0}}
"""


def airflow(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=600,
                          env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def stored(dags_folder) -> tuple[set[str], list[str]]:
    """The DAG ids Airflow stored (active) from this folder, and its import errors, after
    ``airflow dags reserialize`` (the DAG processor's way of storing a folder's DAGs)."""
    from airflow.models import DagModel
    from airflow.models.errors import ParseImportError
    from airflow.utils.session import create_session
    from sqlalchemy import select

    airflow("dags", "reserialize")
    with create_session() as session:
        dags = session.execute(select(DagModel.dag_id, DagModel.fileloc).where(DagModel.is_stale.is_(False))).all()
        errors = [e.stacktrace for e in session.scalars(select(ParseImportError))]
    return {d for d, fileloc in dags if str(fileloc).startswith(str(dags_folder))}, errors


def test_asset_uris_are_percent_encoded_from_local_paths_and_uris():
    from airflow_mlops._core.locations import asset_uri

    assert asset_uri("/srv/Équipe/données") == "file:///srv/%C3%89quipe/donn%C3%A9es"
    assert asset_uri("/srv/team #1/data") == "file:///srv/team%20%231/data"
    assert asset_uri("/srv/team #2/data") != asset_uri("/srv/team #1/data")
    assert asset_uri("/data/50%/x?y") == "file:///data/50%25/x%3Fy"
    assert asset_uri("s3://bucket/Équipe/a%20b") == "s3://bucket/%C3%89quipe/a%20b"  # %XX kept in a URI
    assert asset_uri("/plain/ascii_path-1.2") == "file:///plain/ascii_path-1.2"


def test_non_ascii_and_hash_folders_are_stored_and_the_folder_keeps_every_pipeline(
        airflow_db, dags_folder, tmp_path, monkeypatch, capsys):
    """Before: ``/srv/Équipe/données`` made the DAG processor store none of the loader file's DAGs
    (``URI must be ascii``, no import error), and ``#`` cut two URIs down to one."""
    from airflow_mlops.cli import main

    monkeypatch.setenv("AIRFLOW_MLOPS_HOME", str(tmp_path / "mlops home é"))  # non-ASCII home: the defaults
    write(dags_folder, "equipe.yaml", f"id: equipe\ndata_dir: {tmp_path}/Équipe/données\n{STAGES}")
    write(dags_folder, "team1.yaml", f"id: team1\ndata_dir: '{tmp_path}/team #1/data'\n{STAGES}")
    write(dags_folder, "team2.yaml", f"id: team2\ndata_dir: '{tmp_path}/team #2/data'\n{STAGES}")
    write(dags_folder, "home.yaml", f"id: home_default\n{STAGES}")
    assert main(["validate", str(dags_folder)]) == 0, capsys.readouterr()
    ids, errors = stored(dags_folder)
    assert ids == {"equipe", "team1", "team2", "home_default"}
    assert errors == []

    from airflow_mlops.factory.pipelines import load_dags

    outlets = {loaded.pipeline.id: dag.get_task("preprocess.run").outlets[0].uri for loaded, dag in
               load_dags([dags_folder]).good}
    assert outlets["equipe"] == f"file://{tmp_path}/%C3%89quipe/donn%C3%A9es/preprocess"
    assert outlets["team1"] == f"file://{tmp_path}/team%20%231/data/preprocess"
    assert outlets["team2"] == f"file://{tmp_path}/team%20%232/data/preprocess"
    assert outlets["home_default"].startswith(f"file://{tmp_path}/mlops%20home%20%C3%A9/data/")


def test_an_asset_airflow_cannot_store_loses_only_its_pipeline(airflow_db, dags_folder, capsys):
    """A custom operator's own outlet with a URI Airflow refuses to store: that pipeline is refused
    at the stage (in validate and as a placeholder DAG); the folder's others are stored."""
    from airflow_mlops.cli import main

    write(dags_folder, "my_ops.py", """
        from airflow.sdk import Asset
        from airflow.providers.standard.operators.empty import EmptyOperator


        class Publishes(EmptyOperator):
            def __init__(self, **kwargs):
                super().__init__(outlets=[Asset(name="report", uri="file:///rapports/été")], **kwargs)
        """)
    write(dags_folder, "custom.yaml", """
        id: publishes
        stages:
          report:
            kind: custom
            operator: my_ops:Publishes
        """)
    write(dags_folder, "good.yaml", f"id: good_neighbour\n{STAGES}")
    assert main(["validate", str(dags_folder)]) == 1
    out = capsys.readouterr().out
    assert f"{dags_folder / 'custom.yaml'}:3:3 stages.report: Airflow cannot store the Asset " \
           "'file:///rapports/été' (report) this stage produces: URI must be ascii" in out
    ids, _ = stored(dags_folder)
    assert {"good_neighbour", "publishes"} <= ids  # the placeholder keeps the id; the neighbour is there
    from airflow_mlops.factory.loader import INVALID_TAG, load_pipelines

    assert INVALID_TAG in load_pipelines(folder=dags_folder)["publishes"].tags


def test_pipelines_sharing_a_data_dir_are_refused_at_both_lines(dags_folder, tmp_path, capsys):
    from airflow_mlops.cli import main

    write(dags_folder, "a.yaml", f"id: shared_a\ndata_dir: {tmp_path}/shared\n{STAGES}")
    write(dags_folder, "b.yaml", f"id: shared_b\ndata_dir: {tmp_path}/shared/\n{STAGES}")
    write(dags_folder, "c.yaml", f"id: own_c\ndata_dir: {tmp_path}/own\n{STAGES}")
    assert main(["validate", str(dags_folder)]) == 1
    captured = capsys.readouterr()
    out = captured.out
    for mine, other in (("a", "b"), ("b", "a")):
        assert (f"{dags_folder / (mine + '.yaml')}:2:1 data_dir: stage 'preprocess' writes "
                f"file://{tmp_path}/shared/preprocess (data_dir {tmp_path}/shared), as stage 'preprocess' of pipeline "
                f"'shared_{other}' ({dags_folder / (other + '.yaml')}:") in out
        assert "give each pipeline its own data_dir" in out
    assert "c.yaml" not in out
    assert "2 of 3 pipeline file(s) invalid" in captured.err


def test_pipelines_training_into_one_registered_model_both_run_and_compete_for_one_champion(
        airflow_db, mlops_home, dags_folder):
    """Two trainers, one registered model: before, they shared one Asset URI, Airflow kept one
    active and the other's train task failed on every run. Now each is its own Asset; both runs
    are green; the second is judged against the champion the first promoted."""
    import mlflow
    from airflow.utils.state import DagRunState

    from airflow_mlops.factory.loader import load_pipelines

    for pid in ("trainer_a", "trainer_b"):
        write(dags_folder, f"{pid}.yaml", f"id: {pid}\nmlflow: {{registered_model: churn_shared}}\n{STAGES}")
        release_asset_names(pid)
    dags = load_pipelines(folder=dags_folder)
    uris = {pid: dags[pid].get_task("train.run").outlets[0].uri for pid in ("trainer_a", "trainer_b")}
    assert uris == {"trainer_a": "x-mlflow-model://churn_shared/trainer_a/train",
                    "trainer_b": "x-mlflow-model://churn_shared/trainer_b/train"}
    states = {pid: dags[pid].test().state for pid in ("trainer_a", "trainer_b")}
    assert states == {"trainer_a": DagRunState.SUCCESS, "trainer_b": DagRunState.SUCCESS}
    uri = f"sqlite:///{mlops_home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'churn_shared'")) == ["1", "2"]
    second = client.get_model_version("churn_shared", "2")
    assert second.tags["airflow_mlops.decision_detail"].startswith("version 2 vs champion 1: accuracy")
    aliases = {alias: str(version) for alias, version in client.get_registered_model("churn_shared").aliases.items()}
    assert aliases == {"champion": "2", "previous-champion": "1"}


def test_a_stages_asset_event_says_which_run_wrote_what(airflow_db, mlops_home, dags_folder):
    """Before: the Assets a stage published carried no event extra, so a DAG scheduled on them
    could not tell which run's folder (or which day's partition) was written."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_mlops.factory.loader import load_pipelines

    write(dags_folder, "evented.yaml", "id: evented\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n")
    release_asset_names("evented")
    dr = load_pipelines(folder=dags_folder)["evented"].test()
    with create_session() as session:
        (extra,) = session.scalars(select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                   .where(AssetModel.name == "evented.preprocess",
                                          AssetEvent.source_run_id == dr.run_id)).all()
    assert extra["run_id"] == dr.run_id and extra["dag_id"] == "evented" and extra["stage"] == "preprocess"
    assert extra["train_path"].endswith("/train.parquet") and extra["test_path"].endswith("/test.parquet")
    assert extra["rows"] == 150
