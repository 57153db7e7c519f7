"""The Spark engine on a real local Spark session: features, quality gates, spark-submit, scoring,
and a YAML pipeline with Spark stages through Airflow."""

from __future__ import annotations

import json

import pytest

from airflow_mlops._core.context import MlflowTarget, StageContext
from airflow_mlops.spec.models import DataInput, PreprocessStage, QualityGates, ServeStage, TrainStage
from airflow_mlops.stages import StageFailed, run_stage
from airflow_mlops.stages.data import read_dataset
from tests.helpers import write

CUSTOMERS = "id,segment\n1,retail\n2,retail\n3,business\n4,business\n5,new\n"
ORDERS = """order_id,customer_id,amount
10,1,20.5
11,1,10.0
12,2,5.25
13,3,100.0
14,3,
15,4,42.0
16,4,8.0
"""
SQL = """
SELECT c.id, c.segment, COUNT(o.order_id) AS n_orders, COALESCE(SUM(o.amount), 0.0) AS spend
FROM customers c LEFT JOIN orders o ON o.customer_id = c.id
GROUP BY c.id, c.segment
"""


@pytest.fixture
def data(tmp_path):
    write(tmp_path, "customers.csv", CUSTOMERS)
    write(tmp_path, "orders.csv", ORDERS)
    return {"customers": DataInput(path=str(tmp_path / "customers.csv")), "orders": DataInput(path=str(tmp_path / "orders.csv"))}


@pytest.fixture
def ctx_for(tmp_path):
    target = MlflowTarget(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e", registered_model="m",
                          artifact_location=str(tmp_path / "artifacts"))

    def make(stage: str, engine: str = "spark", upstream=()):
        return StageContext(pipeline_id="p", stage_name=stage, run_key="r1", data_dir=str(tmp_path / "data"),
                            mlflow=target, upstream=list(upstream), engine=engine,
                            spark={"master": "local[2]", "conf": {}} if engine == "spark" else None)

    return make


def test_sql_features_over_named_inputs(spark, data, ctx_for):
    spec = PreprocessStage(inputs=data, sql=SQL, split=None,
                           quality=QualityGates(row_count={"min": 5, "max": 5}, unique=["id"], columns={"spend": "double"}))
    result = run_stage(spec, ctx_for("features"))
    got = read_dataset(result["data_path"]).sort_values("id")
    assert got.to_dict("list") == {
        "id": [1, 2, 3, 4, 5], "segment": ["retail", "retail", "business", "business", "new"],
        "n_orders": [2, 1, 2, 2, 0], "spend": [30.5, 5.25, 100.0, 50.0, 0.0],
    }
    assert result["quality"] == {"rows": 5, "nulls": {}, "duplicates": {"id": 0}}
    assert result["data_path"].endswith("/data/features/r1/data.parquet")


def test_transform_function_over_spark_dataframes(spark, data, ctx_for):
    spec = PreprocessStage(inputs=data, transform="tests.fixtures_code:spend_per_segment", split=None, format="csv")
    result = run_stage(spec, ctx_for("features"))
    got = read_dataset(result["data_path"]).sort_values("segment").fillna(-1)  # 'new' has no orders: null spend
    assert got.to_dict("list") == {"segment": ["business", "new", "retail"], "spend": [150.0, -1, 35.75]}


@pytest.mark.parametrize("engine", ["spark", "pandas"])
def test_failed_gates_report_measured_numbers_on_both_engines(spark, data, ctx_for, engine):
    gates = QualityGates(
        row_count={"min": 10}, max_null_fraction={"amount": 0.1}, unique=["customer_id"],
        columns={"amount": "string", "discount": None},
    )
    spec = PreprocessStage(input=data["orders"], quality=gates, split=None)
    with pytest.raises(StageFailed) as info:
        run_stage(spec, ctx_for("features", engine=engine))
    message = str(info.value)
    assert "row count 7 is below the minimum 10" in message
    assert "column 'amount' is 14.29% null (1 of 7 rows), above the allowed 10.00%" in message
    assert "customer_id is not unique: 3 duplicate row(s)" in message
    assert "column 'amount' has type double, expected string" in message
    assert "required column 'discount' is missing" in message


def test_spark_submit_path_against_a_local_master(spark, data, ctx_for, monkeypatch, tmp_path):
    """The cluster path for real: spark-submit (shipped with pyspark) runs airflow_mlops/runtime.py
    on a local[2] master from an Airflow Spark connection, in a separate driver process."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.operators.spark import SparkFeatureOperator

    monkeypatch.setenv("AIRFLOW_CONN_SPARK_LOCAL", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    inputs = {name: source.path for name, source in data.items()}
    op = SparkFeatureOperator(task_id="features", inputs=inputs, sql=SQL, output=str(tmp_path / "out"),
                              conn_id="spark_local", quality={"unique": ["id"]})
    result = op.run(ctx_for("features"))
    assert result["data_path"] == str(tmp_path / "out" / "data.parquet")
    assert read_dataset(result["data_path"]).sort_values("id")["n_orders"].tolist() == [2, 1, 2, 2, 0]

    failing = SparkFeatureOperator(task_id="features", inputs=inputs, sql=SQL, output=str(tmp_path / "out2"),
                                   conn_id="spark_local", quality={"row_count": {"max": 3}})
    with pytest.raises(AirflowFailException, match="row count 5 is above the maximum 3"):
        failing.run(ctx_for("features"))


def test_feature_operator_refuses_bad_arguments_at_parse_time(tmp_path):
    from airflow_mlops.operators.spark import SparkFeatureOperator

    with pytest.raises(ValueError, match=r"(?s)SparkFeatureOperator 'f': invalid arguments:.*give 'sql' or 'transform', not both"):
        SparkFeatureOperator(task_id="f", inputs={"a": "a.csv"}, sql="SELECT 1", transform="m:f", output=str(tmp_path))
    with pytest.raises(ValueError, match=r"quality.row_count.min: Input should be greater than or equal to 0"):
        SparkFeatureOperator(task_id="f", inputs={"a": "a.csv"}, output=str(tmp_path), quality={"row_count": {"min": -1}})


def test_spark_scoring_equals_pandas_scoring(spark, ctx_for):
    prep = run_stage(PreprocessStage(input=DataInput(sklearn_dataset="iris")), ctx_for("prep", engine="pandas"))
    train = run_stage(TrainStage(estimator="sklearn.linear_model.LogisticRegression", target="target",
                                 params={"max_iter": 300}), ctx_for("train", "pandas", [("prep", prep)]))
    upstream = [("train", train), ("prep", prep)]
    on_pandas = run_stage(ServeStage(), ctx_for("serve_pandas", "pandas", upstream))
    on_spark = run_stage(ServeStage(), ctx_for("serve_spark", "spark", upstream))
    pandas_rows = read_dataset(on_pandas["predictions_path"])
    spark_rows = read_dataset(on_spark["predictions_path"])
    assert on_spark["rows"] == on_pandas["rows"] == 30
    features = [c for c in pandas_rows.columns if c not in ("prediction",)]
    merged = pandas_rows.merge(spark_rows, on=features, suffixes=("_pandas", "_spark"))
    assert len(merged) == 30
    assert str(spark_rows["prediction"].dtype) == "int64"  # a scalar column, like pandas scoring gives
    assert merged["prediction_pandas"].tolist() == merged["prediction_spark"].tolist()


def test_yaml_pipeline_with_spark_stages_through_airflow(spark, airflow_db, mlops_home, dags_folder, tmp_path):
    import mlflow

    write(tmp_path, "customers.csv", CUSTOMERS)
    rows = "\n".join(f"{i},{1 + i % 5},{(i * 7) % 50 + 0.5},{int(i % 3 == 0)}" for i in range(200))
    write(tmp_path, "orders.csv", "order_id,customer_id,amount,returned\n" + rows + "\n")
    write(dags_folder, "returns.yaml", f"""
        id: returns
        spark:
          master: local[2]
        stages:
          preprocess:
            backend: spark
            inputs:
              orders: {{path: {tmp_path / 'orders.csv'}}}
              customers: {{path: {tmp_path / 'customers.csv'}}}
            sql: |
              SELECT o.amount, c.id AS customer, CAST(c.segment = 'business' AS INT) AS business, o.returned
              FROM orders o JOIN customers c ON o.customer_id = c.id
            quality:
              row_count: {{min: 100}}
              max_null_fraction: {{amount: 0.0}}
            split: {{test_fraction: 0.3, seed: 3}}
          train:
            estimator: sklearn.tree.DecisionTreeClassifier
            params: {{max_depth: 3, random_state: 0}}
            target: returned
          validate:
            thresholds: {{accuracy: {{min: 0.5}}}}
          serve:
            backend: spark
        """)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dag = bag.dags["returns"]
    assert type(dag.get_task("preprocess.run")).__name__ == "SparkStageOperator"
    assert type(dag.get_task("train.run")).__name__ == "StageOperator"
    dr = dag.test()
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert set(states.values()) == {"success"}, states

    serve = next(ti for ti in dr.get_task_instances() if ti.task_id == "serve.run").xcom_pull(task_ids="serve.run")
    prep = next(ti for ti in dr.get_task_instances() if ti.task_id == "preprocess.run").xcom_pull(task_ids="preprocess.run")
    assert serve["rows"] == len(read_dataset(prep["test_path"])) > 0
    predictions = read_dataset(serve["predictions_path"])
    assert set(predictions["prediction"].unique()) <= {0, 1}
    assert prep["quality"]["rows"] == 200
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("returns", "champion").version) == "1"


def test_feature_operator_arguments_are_checked_like_the_other_operators(tmp_path, capsys):
    """Issue 19, item 6: unknown keys got raw pydantic text and the type gates were only checked
    when the task ran. Both fail at parse now, with a did-you-mean; the YAML's gates too."""
    from airflow_mlops.cli import main
    from airflow_mlops.operators.spark import SparkFeatureOperator

    with pytest.raises(ValueError) as err:
        SparkFeatureOperator(task_id="features", inputs={"events": "/data/events.csv"}, output="/data/features",
                             sql="select * from events", quality={"row_cuont": {"min": 1}})
    assert "quality.row_cuont: unknown key 'row_cuont' (did you mean 'row_count'?)" in str(err.value)
    with pytest.raises(ValueError) as err:
        SparkFeatureOperator(task_id="features", inputs={"events": "/data/events.csv"}, output="/data/features",
                             sql="select * from events", quality={"columns": {"user_id": "strng"}})
    assert "quality.columns: column 'user_id': unknown type 'strng' (did you mean 'string'?)" in str(err.value)
    (tmp_path / "p.yaml").write_text(
        "id: gates\nstages:\n  preprocess:\n    input: {sklearn_dataset: iris}\n"
        "    quality:\n      columns: {target: lnog}\n")
    assert main(["validate", str(tmp_path / "p.yaml")]) == 1
    assert (f"{tmp_path / 'p.yaml'}:6:16 stages.preprocess.quality.columns: column 'target': unknown type 'lnog' "
            "(did you mean 'long'?)") in capsys.readouterr().out


def test_feature_operator_renders_inputs_sql_and_output_per_run(spark, data, airflow_db, mlops_home, dags_folder,
                                                                tmp_path):
    """Issue 19, item 3: inputs, SQL and the output folder of SparkFeatureOperator are templates,
    rendered per run; the declared Asset is the output's folder up to the per-run part, never a
    path under whichever folder parsed the DAG (a relative output is refused at parse)."""
    from airflow.dag_processing.dagbag import DagBag

    from airflow_mlops.operators.spark import SparkFeatureOperator

    write(dags_folder, "features.py", f"""
        # Airflow DAG: features per day
        from airflow.sdk import DAG
        from airflow_mlops import SparkFeatureOperator

        with DAG("features_daily", schedule=None, params={{"orders": {data['orders'].path!r}, "min_amount": 0}}):
            SparkFeatureOperator(task_id="features", inputs={{"orders": "{{{{ params.orders }}}}"}},
                                 sql="SELECT * FROM orders WHERE amount > {{{{ params.min_amount }}}}",
                                 output="{tmp_path}/features/{{{{ ds_nodash }}}}", master="local[2]")
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    task = bag.dags["features_daily"].get_task("features")
    assert [a.uri for a in task.outlets] == [f"file://{tmp_path}/features"]
    dr = bag.dags["features_daily"].test(run_conf={"min_amount": 20})
    ti = dr.get_task_instances()[0]
    assert ti.state == "success"
    result = ti.xcom_pull(task_ids="features")
    day = dr.logical_date.strftime("%Y%m%d")
    assert result["data_path"] == f"{tmp_path}/features/{day}/data.parquet"
    amounts = read_dataset(result["data_path"])["amount"].tolist()
    assert amounts and min(amounts) > 20
    with pytest.raises(ValueError, match=r"output: 'features/\{\{ ds \}\}' is a relative path: it would resolve against"):
        SparkFeatureOperator(task_id="f", inputs={"a": "/a.csv"}, sql="SELECT 1", output="features/{{ ds }}")
