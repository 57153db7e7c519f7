"""Stage code called directly (no Airflow), against a real SQLite MLflow store."""

from __future__ import annotations

import pytest

from airflow_mlops._core.context import MlflowTarget, StageContext
from airflow_mlops.spec.models import DataInput, PreprocessStage, ServeStage, Split, Step, TrainStage
from airflow_mlops.stages import StageFailed, run_stage


@pytest.fixture
def make_ctx(tmp_path):
    target = MlflowTarget(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="exp", registered_model="model",
        artifact_location=str(tmp_path / "artifacts"),
    )

    def make(stage: str, upstream=(), task_key="dag/run-1/train.run"):
        return StageContext(
            pipeline_id="p", stage_name=stage, run_key="run-1", data_dir=str(tmp_path / "data"), mlflow=target,
            upstream=list(upstream), tags={"airflow_mlops.task_key": task_key},
        )

    return make


def test_preprocess_callable_steps_and_split(make_ctx):
    import pandas as pd

    spec = PreprocessStage(
        callable="tests.fixtures_code:make_frame", kwargs={"rows": 40},
        steps=[Step(dropna=["noise"]), Step(query="x >= 4"), Step(rename={"x": "feature"})],
        split=Split(test_fraction=0.25, seed=1), format="csv",
    )
    result = run_stage(spec, make_ctx("prep"))
    train, test = pd.read_csv(result["train_path"]), pd.read_csv(result["test_path"])
    # 40 rows, 4 have a null in 'noise' (0, 10, 20, 30), 3 more have x < 4 (1, 2, 3): 33 remain.
    assert result["rows"] == 33 and len(train) + len(test) == 33
    assert len(test) == 9  # ceil(0.25 * 33)
    assert list(train.columns) == ["feature", "noise", "label"]
    assert (train["feature"] >= 4).all()
    assert result["train_path"].endswith("/data/prep/run-1/train.csv")


def test_train_retry_reuses_the_version_an_earlier_try_registered(make_ctx):
    import mlflow

    prep = run_stage(PreprocessStage(callable="tests.fixtures_code:make_frame", steps=[Step(fillna={"noise": 0})]),
                     make_ctx("prep"))
    spec = TrainStage(callable="tests.fixtures_code:threshold_model", target="label", params={"max_iter": 100})
    first = run_stage(spec, make_ctx("train", [("prep", prep)]))
    retry = run_stage(spec, make_ctx("train", [("prep", prep)]))
    other_run = run_stage(spec, make_ctx("train", [("prep", prep)], task_key="dag/run-2/train.run"))

    assert first["model_version"] == "1" and first["metrics"]["custom"] == 42.0
    # same run, same version, same metrics: no duplicate; the first try's cost, as recorded then
    assert {k: v for k, v in retry.items() if k not in ("cost", "gpu", "reused")} == {
        k: v for k, v in first.items() if k not in ("cost", "gpu", "reused")}
    assert (first["reused"], retry["reused"]) == (False, True)
    assert first["cost"]["total"] > 0 and retry["cost"] == pytest.approx(first["cost"])
    assert other_run["model_version"] == "2"
    client = mlflow.MlflowClient(tracking_uri=make_ctx("x").mlflow.tracking_uri)
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'model'")) == ["1", "2"]


def test_train_and_serve_fail_clearly_on_wrong_columns(make_ctx, tmp_path):
    prep = run_stage(PreprocessStage(callable="tests.fixtures_code:make_frame"), make_ctx("prep"))
    with pytest.raises(StageFailed, match="target column 'nope' is not in the training data"):
        run_stage(TrainStage(estimator="sklearn.dummy.DummyClassifier", target="nope"), make_ctx("train", [("prep", prep)]))

    trained = run_stage(
        TrainStage(estimator="sklearn.dummy.DummyClassifier", target="label"), make_ctx("train", [("prep", prep)])
    )
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(StageFailed, match=r"lacks the model's input columns \['x', 'noise'\]"):
        run_stage(ServeStage(input=DataInput(path=str(other))), make_ctx("serve", [("train", trained)]))


def test_stage_without_upstream_reference_names_what_is_missing(make_ctx):
    with pytest.raises(StageFailed, match="stage 'train' needs 'train_path' from an upstream stage, but upstream stages gave: nothing"):
        run_stage(TrainStage(estimator="sklearn.dummy.DummyClassifier", target="y"), make_ctx("train"))


def return_the_rows(**_):
    """A preprocess callable that returns the data itself (a dict of rows), not references."""
    return {"rows": [{"id": i, "text": "x" * 100} for i in range(2000)], "data_path": "/tmp/never-written"}


def test_a_stage_that_returns_its_data_is_refused_before_xcom_and_the_log(tmp_path, caplog):
    """Before: a callable returning a 37 MB dict had it pushed to XCom and logged as one line."""
    from airflow_mlops._core.compat import AirflowFailException
    from airflow_mlops._core.context import MlflowTarget, StageContext
    from airflow_mlops.backends.stage import StageOperator
    from airflow_mlops.spec.models import PreprocessStage

    op = StageOperator(task_id="prep", stage=PreprocessStage(callable="tests.stages.test_stages:return_the_rows"),
                       stage_name="prep")
    ctx = StageContext(pipeline_id="p", stage_name="prep", run_key="r", data_dir=str(tmp_path),
                       mlflow=MlflowTarget(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="p", registered_model="p"))
    op.stage_context = lambda context: ctx
    with pytest.raises(AirflowFailException) as err:
        op.execute({"run_id": "r"})
    message = str(err.value)
    assert message.startswith("stage 'prep' returned 2")
    assert "for XCom ('rows' " in message and "over the 64 KiB a stage result may hold" in message
    assert "Return a pandas DataFrame (the stage writes it), or write the data yourself and return its paths" in message
    assert not any(len(r.getMessage()) > 5000 for r in caplog.records)  # nothing logged whole


def test_rows_that_do_not_fit_the_signature_fail_with_one_message_or_are_set_aside(tmp_path, caplog):
    """Before: an integer column with one missing value gave a raw MLflow traceback that dumped the
    whole frame, named neither stage nor file, and was retried."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(20, 80, 200), "income": rng.normal(50, 10, 200)})
    frame["target"] = (frame["age"] > 50).astype(int)
    frame.to_parquet(tmp_path / "people.parquet")
    ctx = lambda stage, upstream=(): StageContext(  # noqa: E731
        pipeline_id="p", stage_name=stage, run_key="r1", data_dir=str(tmp_path / "data"),
        mlflow=MlflowTarget(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="p", registered_model="p",
                            artifact_location=str(tmp_path / "artifacts")), upstream=list(upstream),
        tags={"airflow_mlops.task_key": f"p/r1/{stage}", "airflow.try_number": "1"})
    prep = run_stage(PreprocessStage(input=DataInput(path=str(tmp_path / "people.parquet"))), ctx("preprocess"))
    train = run_stage(TrainStage(estimator="sklearn.linear_model.LogisticRegression", target="target"),
                      ctx("train", [("preprocess", prep)]))
    incoming = frame.drop(columns=["target"]).head(10).astype({"age": "float64"})
    incoming.loc[[2, 5], "age"] = np.nan
    incoming.to_parquet(tmp_path / "incoming.parquet")
    serve = ServeStage(input=DataInput(path=str(tmp_path / "incoming.parquet")), model=train["model_uri"])
    with pytest.raises(StageFailed) as err:
        run_stage(serve, ctx("serve"))
    message = str(err.value)
    assert message == (f"stage 'serve': 2 of 10 rows of {tmp_path / 'incoming.parquet'} do not fit the signature of "
                       f"{train['model_uri']}: column 'age' is long in the signature and holds no value (2 rows). Set "
                       "on_bad_rows: set_aside to score the others and keep these in rejected.parquet")
    assert "income" not in message  # no data in the message

    result = run_stage(serve.model_copy(update={"on_bad_rows": "set_aside"}), ctx("serve"))
    assert result["rows"] == 8 and result["rejected_rows"] == 2
    rejected = pd.read_parquet(result["rejected_path"])
    assert list(rejected["income"]) == list(incoming.loc[[2, 5], "income"]) and rejected["age"].isna().all()
    assert set(rejected["rejected_reason"]) == {"column 'age' is long in the signature and holds no value"}
    assert len(pd.read_parquet(result["predictions_path"])) == 8


def test_a_stage_result_in_the_log_ends_each_url_with_its_line():
    """The log viewer linkifies URLs up to the next space: inside a dict's repr the link took the
    closing "'," along. Each key now has its own line."""
    from airflow_mlops._core.result import shown

    text = shown({"mlflow_run_url": "http://mlflow:5000/#/experiments/1/runs/abc", "rows": 150})
    assert text.splitlines() == ["", "  mlflow_run_url: http://mlflow:5000/#/experiments/1/runs/abc", "  rows: 150"]


def test_every_mlflow_link_follows_one_setting(monkeypatch):
    """The train task's "MLflow run" link and the UI plugin's pages both take [mlops]
    mlflow_ui_url (here through Airflow's environment variable); a pipeline's own mlflow.ui_url
    still wins for its tasks; without any, a server tracking URI, else mlflow ui's address."""
    from airflow_mlops.stages.train.job import ui_base
    from airflow_mlops.ui.app import mlflow_ui

    monkeypatch.delenv("AIRFLOW_MLOPS_MLFLOW_UI_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__MLOPS__MLFLOW_UI_URL", raising=False)
    assert ui_base("sqlite:////srv/mlflow.db") == "http://localhost:5000"
    assert mlflow_ui("sqlite:////srv/mlflow.db") == {"base": "http://localhost:5000", "configured": False}
    assert ui_base("http://mlflow:5000/") == "http://mlflow:5000"
    monkeypatch.setenv("AIRFLOW__MLOPS__MLFLOW_UI_URL", "https://mlflow.example.com/")
    assert ui_base("sqlite:////srv/mlflow.db") == "https://mlflow.example.com"
    assert mlflow_ui("sqlite:////srv/mlflow.db") == {"base": "https://mlflow.example.com", "configured": True}
    assert ui_base("sqlite:////srv/mlflow.db", "https://team.example.com") == "https://team.example.com"


def test_rows_that_do_not_fit_the_signature_are_found_in_every_dtype():
    """The serve stage's row check skips columns whose dtype rules a fault out (the benchmark's
    million clean rows cost 0.5 s before), and still finds each fault where it can be: a missing
    value in pandas' nullable Int64 and in an object column, text in a numeric one, a fraction in
    an integer one read back as float."""
    import numpy as np
    import pandas as pd
    from mlflow.types.schema import ColSpec, Schema

    from airflow_mlops.stages.serve import signature_problems

    schema = Schema([ColSpec("long", "a"), ColSpec("double", "b"), ColSpec("boolean", "c")])
    mixed = pd.DataFrame({"a": pd.array([1, None, 3], dtype="Int64"), "b": ["1.5", "2", "x"],
                          "c": [True, False, None]})
    assert _listed(signature_problems(mixed, schema)) == [
        None, "column 'a' is long in the signature and holds no value",
        "column 'b' is double in the signature and holds a value that is not a number"]
    floats = pd.DataFrame({"a": [1.0, 2.5, np.nan], "b": [1.0, 2.0, 3.0], "c": [True, False, True]})
    assert _listed(signature_problems(floats, schema)) == [
        None, "column 'a' is long in the signature and holds a fraction",
        "column 'a' is long in the signature and holds no value"]
    clean = pd.DataFrame({"a": [1, 2], "b": [1.0, np.nan], "c": [True, False]})
    assert signature_problems(clean, schema) is None


def _listed(reasons):
    return None if reasons is None else reasons.tolist()
