"""Stage fields that vary per run, through Airflow (dag.test()): templates rendered from params and
the run's conf, shown in the task's rendered fields, validated once rendered; ``~``/``$VAR``
expanded in the worker; callbacks that really run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write


def api_get(path: str) -> dict:
    """What the Airflow UI gets from the API server."""
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    app = create_app()
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    response = TestClient(app).get(f"/api/v2{path}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def run(dag, **kwargs):
    dr = dag.test(**kwargs)
    return dr, {ti.task_id: ti.state for ti in dr.get_task_instances()}


def xcom(dr, task_id: str) -> dict:
    return next(ti for ti in dr.get_task_instances() if ti.task_id == task_id).xcom_pull(task_ids=task_id)


@pytest.fixture
def iris_days(tmp_path) -> dict[str, Path]:
    """Two daily extracts of different sizes."""
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    days = {"day1": tmp_path / "in" / "day1.csv", "day2": tmp_path / "in" / "day2.csv"}
    days["day1"].parent.mkdir()
    frame.iloc[::2].to_csv(days["day1"], index=False)  # 75 rows
    frame.to_csv(days["day2"], index=False)  # 150 rows
    return days


def test_templates_render_from_params_and_the_runs_conf(airflow_db, mlops_home, dags_folder, iris_days, tmp_path,
                                                        monkeypatch):
    import mlflow

    from airflow_mlops import load_pipelines

    monkeypatch.setenv("OUT_ROOT", str(tmp_path / "out"))
    write(dags_folder, "daily.yaml", f"""
        id: daily_iris
        params:
          day_file: {{type: string, default: "{iris_days['day1']}", description: The day's extract}}
          trees: {{type: integer, default: 5, minimum: 1}}
          min_accuracy: {{type: number, default: 0.5}}
        stages:
          preprocess:
            input: {{path: "{{{{ params.day_file }}}}"}}
            output: "${{OUT_ROOT}}/prep/{{{{ ds }}}}"
          train:
            estimator: sklearn.ensemble.RandomForestClassifier
            params: {{n_estimators: "{{{{ params.trees }}}}", random_state: 0}}
            target: target
          validate:
            thresholds: {{accuracy: {{min: "{{{{ params.min_accuracy }}}}"}}}}
        """)
    dag = load_pipelines(folder=dags_folder)["daily_iris"]
    dr, states = run(dag, run_conf={"day_file": str(iris_days["day2"]), "trees": 7})
    assert set(states.values()) == {"success"}, states

    ds = dr.logical_date.strftime("%Y-%m-%d")
    prep = xcom(dr, "preprocess.run")
    assert prep["rows"] == 150  # day2, from the run's conf, not the default day1
    assert Path(prep["train_path"]).parent == tmp_path / "out" / "prep" / ds
    train = xcom(dr, "train.run")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    assert client.get_run(train["run_id"]).data.params["n_estimators"] == "7"

    # The UI's "Rendered Template" view: what each task's templates became in this run.
    def rendered(task_id):
        return api_get(f"/dags/daily_iris/dagRuns/{dr.run_id}/taskInstances/{task_id}")["rendered_fields"]

    assert rendered("preprocess.run")["stage_overrides"] == {
        "input": {"path": str(iris_days["day2"])}, "output": f"${{OUT_ROOT}}/prep/{ds}"}
    assert rendered("train.run")["stage_overrides"] == {"params": {"n_estimators": "7"}}
    assert rendered("validate.run")["stage_overrides"] == {"thresholds": {"accuracy": {"min": "0.5"}}}

    # The trigger form's fields.
    params = api_get("/dags/daily_iris/details")["params"]
    assert params["day_file"]["value"] == str(iris_days["day1"])
    assert params["day_file"]["description"] == "The day's extract"
    assert params["trees"]["schema"] == {"type": "integer", "minimum": 1}


def test_a_rendered_value_its_model_refuses_fails_the_task_and_the_failure_callback_runs(
        airflow_db, mlops_home, dags_folder, tmp_path, monkeypatch):
    from airflow_mlops import load_pipelines

    monkeypatch.syspath_prepend(str(dags_folder))  # as Airflow does for the dags folder
    alerts = tmp_path / "alerts.txt"
    write(dags_folder, "team_alerts.py", f"""
        def notify(context):
            with open({str(alerts)!r}, "a") as f:
                f.write(f"{{context['ti'].task_id}}: {{context['exception']}}\\n")
        """)
    write(dags_folder, "gate.yaml", """
        id: rendered_gate
        params:
          min_accuracy: 0.9
        dag:
          default_args: {on_failure_callback: team_alerts.notify}
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
          train: {estimator: sklearn.tree.DecisionTreeClassifier, target: target}
          validate:
            thresholds: {accuracy: {min: "{{ params.min_accuracy }}"}}
        """)
    dag = load_pipelines(folder=dags_folder)["rendered_gate"]  # its own id: an Asset name has one URI per session
    dr, states = run(dag, run_conf={"min_accuracy": "high"})
    assert states == {"preprocess.run": "success", "train.run": "success", "validate.run": "failed"}
    assert alerts.read_text() == (
        "validate.run: stage 'validate': after rendering its templates, thresholds.accuracy.min: input should be a "
        "valid number, unable to parse string as a number (rendered: 'high')\n")


def test_home_and_environment_variables_expand_in_the_worker(airflow_db, mlops_home, dags_folder, iris_days, tmp_path,
                                                             monkeypatch, capfd):
    from airflow_mlops import load_pipelines

    write(dags_folder, "env.yaml", """
        id: env_paths
        data_dir: ~/pipeline-data
        mlflow:
          tracking_uri: sqlite:///${STORE_DIR}/mlflow.db
        stages:
          preprocess:
            input: {path: "${EXTRACTS}/day1.csv"}
          train:
            estimator: sklearn.tree.DecisionTreeClassifier
            target: target
        """)
    write(dags_folder, "unset.yaml", """
        id: unset_var
        stages:
          preprocess:
            input: {path: "${NO_SUCH_VARIABLE_FOR_THIS_TEST}/day1.csv"}
        """)
    dags = load_pipelines(folder=dags_folder)
    # Set only now, after parsing: the worker's environment is the one that counts.
    home = tmp_path / "worker-home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("EXTRACTS", str(iris_days["day1"].parent))
    (tmp_path / "store").mkdir()

    dr, states = run(dags["env_paths"])
    assert set(states.values()) == {"success"}, states
    prep = xcom(dr, "preprocess.run")
    assert prep["rows"] == 75
    assert Path(prep["train_path"]).is_relative_to(home / "pipeline-data" / "preprocess")
    assert (tmp_path / "store" / "mlflow.db").is_file()
    assert not (mlops_home / "mlflow.db").exists()
    assert xcom(dr, "train.run")["model_uri"] == "models:/env_paths/1"

    capfd.readouterr()
    dr, states = run(dags["unset_var"])
    assert states == {"preprocess.run": "failed"}
    assert ("stage 'preprocess': input.path: environment variable $NO_SUCH_VARIABLE_FOR_THIS_TEST in path "
            "'${NO_SUCH_VARIABLE_FOR_THIS_TEST}/day1.csv' is not set") in capfd.readouterr().out


def test_spark_stages_read_the_rendered_paths(spark, airflow_db, mlops_home, dags_folder, iris_days):
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, "spark_daily.yaml", f"""
        id: spark_daily
        spark: {{master: "local[2]"}}
        params:
          day_file: "{iris_days['day1']}"
        stages:
          preprocess:
            backend: spark
            inputs:
              day: {{path: "{{{{ params.day_file }}}}"}}
            sql: SELECT * FROM day WHERE target < 2
            split: null
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dag = bag.dags["spark_daily"]
    assert type(dag.get_task("preprocess.run")).__name__ == "SparkStageOperator"
    dr, states = run(dag, run_conf={"day_file": str(iris_days["day2"])})
    assert states == {"preprocess.run": "success"}
    from airflow_mlops.stages.data import read_dataset

    assert len(read_dataset(xcom(dr, "preprocess.run")["data_path"])) == 100  # day2's classes 0 and 1 (day1: 50)


def test_kubernetes_pods_run_the_rendered_stage(kube_cluster, kube_namespace, airflow_db, mlops_home, dags_folder):
    """The pod gets the stage as rendered in the worker: a train param from the run's conf."""
    import mlflow

    from tests.conftest import REPO

    pipeline = kube_namespace.replace("-", "_")
    write(dags_folder, "k8s.yaml", f"""
        id: {pipeline}
        params:
          c: 1.0
        kubernetes:
          image: python:3.11
          namespace: {kube_namespace}
          config_file: {kube_cluster.kubeconfig}
          schedule_timeout: 20s
          env: {{PYTHONPATH: {REPO}}}
        stages:
          preprocess:
            input: {{sklearn_dataset: iris}}
          train:
            backend: kubernetes
            resources: {{cpu: 1, memory: 1Gi, gpu: 1}}
            estimator: sklearn.linear_model.LogisticRegression
            params: {{C: "{{{{ params.c }}}}", max_iter: 500}}
            target: target
        """)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dag = bag.dags[pipeline]
    assert type(dag.get_task("train.run")).__name__ == "KubernetesStageOperator"
    dr, states = run(dag, run_conf={"c": 0.25})
    assert states == {"preprocess.run": "success", "train.run": "success"}, states
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    assert client.get_run(xcom(dr, "train.run")["run_id"]).data.params["C"] == "0.25"
