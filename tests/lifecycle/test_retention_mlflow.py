"""Retention of MLflow runs, logged models and registered model versions (``lifecycle.retention``'s
``mlflow_plan``, ``mlflow_apply`` and ``registry``) on a real SQLite MLflow store: protected and
serving aliases, aliases moved between plan and apply, garbage collection of exactly the deleted runs."""

from __future__ import annotations

import time

import pytest

from airflow_mlops.lifecycle.retention import apply, plan, run_retention
from airflow_mlops.lifecycle.specs import RetentionSpec

DAY = 86400
NOW = time.time()


@pytest.fixture
def store(tmp_path):
    """A real SQLite MLflow store: experiment 'exp' with six finished runs (10, 9, 8, 7, 2 and 1 days
    old), each with an artifact and a logged model; the four oldest registered as versions 1–4 of
    'm', version 1 aliased 'champion'. Also a soft-deleted run elsewhere and a soft-deleted
    experiment, which no policy covers."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # create_model_version resolves a 'models:/<id>' source through the global tracking URI.
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"w" * 1000)
    client.create_registered_model("m")
    runs, models = [], []
    now_ms = int(NOW * 1000)
    for i, age in enumerate([10, 9, 8, 7, 2, 1]):
        run = client.create_run(exp, start_time=now_ms - age * DAY * 1000 - 1000, run_name=f"r{i}")
        client.log_artifact(run.info.run_id, str(src / "weights.bin"))
        lm = client.create_logged_model(exp, name=f"model{i}", source_run_id=run.info.run_id)
        client.log_model_artifacts(lm.model_id, str(src))
        client.set_terminated(run.info.run_id, end_time=now_ms - age * DAY * 1000)
        if i < 4:
            client.create_model_version("m", source=f"models:/{lm.model_id}", run_id=run.info.run_id, model_id=lm.model_id)
        runs.append(run.info.run_id)
        models.append(lm.model_id)
    client.set_registered_model_alias("m", "champion", "1")
    other = client.create_experiment("other", artifact_location=str(tmp_path / "other"))
    stray = client.create_run(other)
    client.set_terminated(stray.info.run_id)
    client.delete_run(stray.info.run_id)
    gone = client.create_experiment("gone", artifact_location=str(tmp_path / "gone"))
    client.delete_experiment(gone)
    yield {"uri": uri, "client": client, "exp": exp, "runs": runs, "models": models, "stray": stray.info.run_id,
           "gone": gone, "artifacts": tmp_path / "artifacts"}
    mlflow.set_tracking_uri(None)  # also unsets $MLFLOW_TRACKING_URI, which set_tracking_uri exported


def test_model_versions_and_runs_with_protected_champion(store):
    from mlflow.exceptions import MlflowException

    client, runs = store["client"], store["runs"]
    spec = RetentionSpec(mlflow={"tracking_uri": store["uri"]}, policies=[
        {"kind": "mlflow_runs", "experiments": ["ex*"], "max_age": "3d"},
        {"kind": "mlflow_model_versions", "models": ["m"], "keep_last": 2},
    ])
    dry = run_retention(spec.model_copy(update={"dry_run": True}))
    # Versions 3 and 4 are the two newest; 1 is the champion: only 2 goes. Of the four runs older
    # than 3 days, only r1 (behind version 2, which goes) is unprotected; its logged model goes too.
    assert dry["deleted"] == [f"runs:/{runs[1]}", f"logged-models:/{store['models'][1]}", "models:/m/2"]
    assert dry["policies"][1]["protected"] == ["models:/m/1 (alias champion)"]
    assert f"runs:/{runs[0]} (backs models:/m/1 (alias champion))" in dry["policies"][0]["protected"]
    assert dry["bytes"] == 2 * 1000  # the run's artifact and the logged model's file

    real = run_retention(spec)
    assert real["deleted"] == dry["deleted"] and real["dry_run"] is False
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'm'")) == [1, 3, 4]
    assert client.get_model_version_by_alias("m", "champion").run_id == runs[0]
    with pytest.raises(MlflowException):  # garbage-collected: gone for good, not just deleted
        client.get_run(runs[1])
    assert not (store["artifacts"] / runs[1]).exists()
    assert not (store["artifacts"] / "models" / store["models"][1]).exists()
    for kept in (runs[0], runs[2], runs[3], runs[4], runs[5]):
        assert client.get_run(kept).info.lifecycle_stage == "active"
        assert (store["artifacts"] / kept / "artifacts" / "weights.bin").exists()
    # Soft-deleted things no policy covers are not garbage-collected (plain `mlflow gc` would).
    assert client.get_run(store["stray"]).info.lifecycle_stage == "deleted"
    assert client.get_experiment(store["gone"]).lifecycle_stage == "deleted"


def test_runs_without_registered_versions_by_keep_last(store):
    spec = RetentionSpec(mlflow={"tracking_uri": store["uri"]}, policies=[
        {"kind": "mlflow_runs", "experiments": ["exp"], "keep_last": 1, "garbage_collect": False},
    ])
    summary = run_retention(spec)
    # r5 is the newest and stays; r0–r3 back versions; r4 goes, deleted but not purged.
    assert summary["deleted"] == [f"runs:/{store['runs'][4]}", f"logged-models:/{store['models'][4]}"]
    assert store["client"].get_run(store["runs"][4]).info.lifecycle_stage == "deleted"


def test_alias_moved_between_plan_and_apply_is_honoured(store):
    client = store["client"]
    spec = RetentionSpec(mlflow={"tracking_uri": store["uri"]}, policies=[
        {"kind": "mlflow_model_versions", "models": ["m"], "keep_last": 1},
    ])
    p = plan(spec)
    assert [i.id for i in p.items] == ["models:/m/2", "models:/m/3"]
    client.set_registered_model_alias("m", "champion", "3")  # promoted meanwhile
    apply(p)
    assert [i.id for i in p.deleted] == ["models:/m/2"]
    assert p.policies[0].skipped == [{"item": "models:/m/3", "reason": "now carries protected alias champion"}]
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'm'")) == [1, 3, 4]


def test_model_version_max_age(store):
    """Versions were all created just now; planning as of 40 days ahead makes them 40 days old."""
    spec = RetentionSpec(mlflow={"tracking_uri": store["uri"]}, policies=[
        {"kind": "mlflow_model_versions", "models": ["m"], "max_age": "30d", "min_keep": 1,
         "protected_aliases": ["champion", "challenger"]},
    ])
    store["client"].set_registered_model_alias("m", "challenger", "2")
    assert [i.id for i in plan(spec).items] == []
    assert [i.id for i in plan(spec, now=NOW + 40 * DAY).items] == ["models:/m/3"]


def _versions_plan(store, **policy):
    spec = RetentionSpec(mlflow={"tracking_uri": store["uri"]}, policies=[
        {"kind": "mlflow_model_versions", "models": ["m"], **policy},
    ])
    return plan(spec)


def test_naming_own_protected_aliases_keeps_the_champion_protected(store):
    """Issue 19, item 2: protected_aliases=["challenger"] used to replace the default and plan to
    delete the champion's version; protected_aliases=[] deleted champion and challenger."""
    client = store["client"]
    client.set_registered_model_alias("m", "challenger", "2")
    p = _versions_plan(store, keep_last=1, protected_aliases=["challenger"])
    assert [i.id for i in p.items] == ["models:/m/3"]
    assert sorted(p.policies[0].protected) == ["models:/m/1 (alias champion)", "models:/m/2 (alias challenger)"]

    p = _versions_plan(store, keep_last=1, protected_aliases=[])
    assert [i.id for i in p.items] == ["models:/m/2", "models:/m/3"]  # champion stays
    # The unprotected alias is deleted only in plain sight: the dry run names it.
    assert p.summary()["policies"][0]["aliased"] == ["models:/m/2 (alias challenger)"]


def test_aliases_a_validate_stage_serves_through_are_protected(store):
    """A validate stage records its alias and rollback alias on the registered model; retention
    then protects the versions behind them like the champion's."""
    from airflow_mlops.stages.validate import promote

    client = store["client"]
    promote(client, "m", "2", None, "production", "production-previous", "test")
    client.set_registered_model_alias("m", "production-previous", "3")
    p = _versions_plan(store, keep_last=0)
    assert [i.id for i in p.items] == ["models:/m/4"]
    assert sorted(p.policies[0].protected) == ["models:/m/1 (alias champion)", "models:/m/2 (alias production)",
                                               "models:/m/3 (alias production-previous)"]
    apply(p)
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'm'")) == [1, 2, 3]


def test_only_allow_deleting_aliases_lifts_a_serving_alias(store):
    client = store["client"]
    client.set_registered_model_alias("m", "previous-champion", "2")
    p = _versions_plan(store, keep_last=0)
    assert [i.id for i in p.items] == ["models:/m/3", "models:/m/4"]  # champion and previous-champion stay
    p = _versions_plan(store, keep_last=0, allow_deleting_aliases=["previous-champion"])
    assert [i.id for i in p.items] == ["models:/m/2", "models:/m/3", "models:/m/4"]
    assert p.summary()["policies"][0]["aliased"] == ["models:/m/2 (alias previous-champion)"]
    apply(p)
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'm'")) == [1]
    with pytest.raises(ValueError, match=r"alias\(es\) \['champion'\] are both protected and allowed to be deleted"):
        RetentionSpec(policies=[{"kind": "mlflow_model_versions", "models": ["m"], "keep_last": 1,
                                 "protected_aliases": ["champion"], "allow_deleting_aliases": ["champion"]}])


def test_runs_policy_keeps_the_champions_run_whatever_protected_aliases_says(store):
    spec = RetentionSpec(mlflow={"tracking_uri": store["uri"]}, policies=[
        {"kind": "mlflow_runs", "experiments": ["exp"], "keep_last": 0, "keep_registered": False,
         "protected_aliases": [], "garbage_collect": False},
    ])
    p = plan(spec)
    ids = [i.id for i in p.items if i.kind == "mlflow_run"]
    assert f"runs:/{store['runs'][0]}" not in ids  # backs champion
    assert len(ids) == 5
    apply(p)
    assert store["client"].get_run(store["runs"][0]).info.lifecycle_stage == "active"
