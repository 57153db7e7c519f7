"""serve mode online on one machine, through Airflow: a real MLflow model server answers
predictions over REST, and a newer version replaces it."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from tests.helpers import free_port, write


@pytest.fixture
def port():
    port = free_port()
    yield port


def test_online_server_answers_and_a_new_version_replaces_it(airflow_db, mlops_home, dags_folder, port):
    import mlflow
    import pandas as pd
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, "online.yaml", f"""
        id: online
        stages:
          preprocess:
            input: {{sklearn_dataset: iris}}
          train:
            estimator: sklearn.linear_model.LogisticRegression
            params: {{max_iter: 300}}
            target: target
          validate:
            thresholds: {{accuracy: {{min: 0.8}}}}
          serve:
            mode: online
            port: {port}
        """)
    pids = []
    try:
        for expected_version in ("1", "2"):
            dr = DagBag(dag_folder=str(dags_folder)).dags["online"].test()
            states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
            assert set(states.values()) == {"success"}, states
            result = next(ti for ti in dr.get_task_instances() if ti.task_id == "serve.run").xcom_pull(task_ids="serve.run")
            pids.append(result["pid"])
            assert result["endpoint"] == f"http://127.0.0.1:{port}/invocations"
            assert result["model_uri"] == f"models:/online/{expected_version}"

            # Ask the server ourselves and compare with the registered model scored locally.
            rows = pd.DataFrame({"sepal length (cm)": [5.1, 6.7], "sepal width (cm)": [3.5, 3.0],
                                 "petal length (cm)": [1.4, 5.2], "petal width (cm)": [0.2, 2.3]})
            body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
            request = urllib.request.Request(result["endpoint"], data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                served = json.loads(response.read())["predictions"]
            # Both URIs: a models:/ URI is resolved in the registry and its files through the
            # tracking store (without one MLflow made ./mlflow.db). conftest puts them back.
            mlflow.set_tracking_uri(f"sqlite:///{mlops_home / 'mlflow.db'}")
            mlflow.set_registry_uri(f"sqlite:///{mlops_home / 'mlflow.db'}")
            local = mlflow.pyfunc.load_model(result["model_uri"]).predict(rows).tolist()
            assert served == local == [0, 2]
        # The second run stopped the first run's server before starting its own.
        with pytest.raises(ProcessLookupError):
            os.kill(pids[0], 0)
    finally:
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
