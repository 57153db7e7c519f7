"""Issue 19, item 5: reading commands never create an MLflow store. MLflow creates a missing
SQLite file (and its folder) on first use; `rollback`, `cost` and retention plans must instead
say that the store is not there, and say when a registered model does not exist."""

from __future__ import annotations

from airflow_mlops.cli import main


def test_rollback_and_cost_on_a_missing_store_name_the_path_and_create_nothing(tmp_path, capsys):
    store = tmp_path / "srv" / "mlops" / "mlflow.db"
    uri = f"sqlite:///{store}"
    assert main(["rollback", "churn_model", "--tracking-uri", uri]) == 1
    assert f"no MLflow store at {store}: the file does not exist" in capsys.readouterr().err
    assert main(["cost", "manual__2026-01-01T00:00:00+00:00", "--tracking-uri", uri]) == 1
    assert f"no MLflow store at {store}: the file does not exist" in capsys.readouterr().err
    assert not (tmp_path / "srv").exists(), "a read-only command created the store's folder"


def test_rollback_of_an_unknown_model_says_so(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("churn_model")
    assert main(["rollback", "churn_modle", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert f"there is no registered model named 'churn_modle' (did you mean 'churn_model'?) in the MLflow registry at {uri}" in err
    assert main(["rollback", "churn_model", "--tracking-uri", uri]) == 1  # exists, but nothing to roll back to
    assert "model 'churn_model' has no 'previous-champion' alias to roll back to" in capsys.readouterr().err


def test_retention_against_a_missing_store_deletes_nothing_says_so_and_creates_nothing(tmp_path):
    """A fresh install's maintenance run (no store yet) must not fail; a mistyped store path must
    not get an empty store: the policy's notes name the path instead."""
    from airflow_mlops.lifecycle.retention import run_retention
    from airflow_mlops.lifecycle.specs import RetentionSpec

    store = tmp_path / "typo" / "mlflow.db"
    spec = RetentionSpec(mlflow={"tracking_uri": f"sqlite:///{store}"}, policies=[
        {"kind": "mlflow_model_versions", "models": ["m"], "keep_last": 1}])
    summary = run_retention(spec)
    assert summary["items"] == 0
    assert summary["policies"][0]["notes"] == [f"no MLflow store at {store}: the file does not exist (check the "
                                               f"tracking URI sqlite:///{store}; reading never creates a store)"]
    assert not (tmp_path / "typo").exists()


def test_validate_on_a_missing_folder_says_so(tmp_path, capsys):
    """Issue 19, item 6: it printed '1 of 0 pipeline file(s) invalid, 0 error(s)'."""
    assert main(["validate", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope'}: no such file or folder" in err
    assert "0 of 0 pipeline file(s) invalid, 0 error(s); 1 of the 1 path(s) given do not exist" in err
