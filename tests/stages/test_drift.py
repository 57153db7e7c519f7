"""Drift on synthetic data: a shifted dataset is detected, an unshifted one is not; the report
lands in MLflow; through Airflow, drift emits the Asset a training pipeline is scheduled on."""

from __future__ import annotations

import pytest

from airflow_mlops._core.context import MlflowTarget, StageContext
from airflow_mlops.spec.models import DataInput, DriftStage
from airflow_mlops.stages import StageSkipped, run_stage
from tests.helpers import write


def make_data(path, seed: int, shift: float = 0.0, premium_share: float = 0.2, rows: int = 3000):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    pd.DataFrame({
        "amount": rng.normal(50 + shift * 10, 10, rows),
        "age": rng.integers(18, 80, rows),
        "plan": rng.choice(["basic", "premium"], rows, p=[1 - premium_share, premium_share]),
        "label": rng.integers(0, 2, rows),
    }).to_csv(path, index=False)
    return str(path)


@pytest.fixture
def ctx(tmp_path):
    return StageContext(pipeline_id="monitor", stage_name="drift", run_key="r", data_dir=str(tmp_path / "data"),
                        mlflow=MlflowTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", "monitoring", "m",
                                            str(tmp_path / "artifacts")))


def test_shifted_data_is_detected_and_reported_to_mlflow(tmp_path, ctx):
    import mlflow

    spec = DriftStage(reference=DataInput(path=make_data(tmp_path / "ref.csv", 1)),
                      current=DataInput(path=make_data(tmp_path / "cur.csv", 2, shift=1.0, premium_share=0.6)),
                      exclude=["label"], on_drift="report")
    result = run_stage(spec, ctx)
    assert result["drifted"] is True
    assert sorted(result["drifted_features"]) == ["amount", "plan"]
    assert result["features"]["amount"]["psi"] > 0.2 and result["features"]["amount"]["ks"] > 0.2
    assert result["features"]["plan"]["ks"] is None  # categorical: PSI only
    assert result["features"]["age"]["psi"] < 0.05
    client = mlflow.MlflowClient(tracking_uri=ctx.mlflow.tracking_uri)
    run = client.get_run(result["report_run_id"])
    assert run.data.metrics["drift/features_drifted"] == 2
    assert run.data.metrics["drift/psi/amount"] == pytest.approx(result["features"]["amount"]["psi"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"drift_report.json", "drift_psi.png"} <= artifacts


def test_unshifted_data_is_not_detected(tmp_path, ctx):
    spec = DriftStage(reference=DataInput(path=make_data(tmp_path / "ref.csv", 1)),
                      current=DataInput(path=make_data(tmp_path / "cur.csv", 2)), exclude=["label"], on_drift="report")
    result = run_stage(spec, ctx)
    assert result["drifted"] is False and result["drifted_features"] == []
    assert max(f["psi"] for f in result["features"].values()) < 0.05
    with pytest.raises(StageSkipped, match="no drift"):
        run_stage(spec.model_copy(update={"on_drift": "trigger"}), ctx)


def test_per_feature_threshold_overrides_the_global_one(tmp_path, ctx):
    spec = DriftStage(reference=DataInput(path=make_data(tmp_path / "ref.csv", 1)),
                      current=DataInput(path=make_data(tmp_path / "cur.csv", 2, shift=1.0)),
                      exclude=["label"], on_drift="report", per_feature={"amount": {"psi": 50, "ks": 1.0}})
    assert run_stage(spec, ctx)["drifted_features"] == []


def test_drift_triggers_the_training_pipeline_through_its_asset(airflow_db, mlops_home, dags_folder, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    reference = make_data(tmp_path / "ref.csv", 1)
    write(dags_folder, "retrain.yaml", """
        id: retrain
        dag: {schedule_on_assets: [monitor.drift]}
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)

    def monitor(current):
        write(dags_folder, "monitor.yaml", f"""
            id: monitor
            stages:
              drift:
                reference: {{path: {reference}}}
                current: {{path: {current}}}
                exclude: [label]
            """)
        bag = DagBag(dag_folder=str(dags_folder))
        assert bag.import_errors == {}
        assert type(bag.dags["retrain"].timetable).__name__ == "AssetTriggeredTimetable"
        # dag.test() syncs the whole dags folder to the DB first, so retrain's asset schedule is known.
        dr = bag.dags["monitor"].test()
        return {ti.task_id: ti.state for ti in dr.get_task_instances()}

    def events():
        with create_session() as session:
            return session.scalars(select(AssetEvent).join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                                   .where(AssetModel.name == "monitor.drift")).all()

    assert monitor(make_data(tmp_path / "same.csv", 2)) == {"drift.run": "skipped"}
    assert events() == []
    from airflow.models.dag import DagModel
    from sqlalchemy import update

    with create_session() as session:  # DAGs start paused; a paused DAG is never queued
        session.execute(update(DagModel).where(DagModel.dag_id == "retrain").values(is_paused=False))
    assert monitor(make_data(tmp_path / "shifted.csv", 3, shift=1.5)) == {"drift.run": "success"}
    assert len(events()) == 1
    with create_session() as session:
        queued = session.scalars(select(AssetDagRunQueue.target_dag_id)).all()
    assert "retrain" in queued
