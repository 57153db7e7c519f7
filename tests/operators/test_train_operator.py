"""GpuTrainOperator: the train stage run from Python. It builds the same GpuTrainJob as a YAML
train stage, with an entrypoint as what to train, and runs it through the same TrainingRun:
argument checks at parse time, end to end through Airflow on CPU (retries resume from the
checkpoint and never register twice, the cost report by stage), as the train stage of a YAML
pipeline, and training code beside the DAG file. Its kubernetes pod: tests/stages/train/test_train_runner.py.

No machine here has an NVIDIA GPU or driver: the real ``pynvml`` fails here
(``NVMLError_LibraryNotFound``), so training runs on CPU, recording that no GPU was used. Airflow
(SQLite, dag.test), MLflow (SQLite), the training subprocesses and the Airflow REST API are real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import checkpoint_tries, extra_links, write

# --- the operator: argument checks at parse time, parse cost -----------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give exactly one of entrypoint="),
    ({"entrypoint": "a.b:c", "script": "x.py"}, "give exactly one of"),
    ({"entrypoint": "not a path"}, "entrypoint must look like 'package.module:function'"),
    ({"entrypoint": "a.b:c", "gpus": 1.5}, "gpus must be a whole number"),
    ({"entrypoint": "a.b:c", "gpus": -1}, "gpus must be a whole number"),
    ({"entrypoint": "a.b:c", "gpus": 2, "gpu_ids": [0, 1]}, "not both"),
    ({"entrypoint": "a.b:c", "gpu_ids": [0, 0]}, "distinct GPU indices"),
    ({"entrypoint": "a.b:c", "gpu_ids": "zero"}, "gpu_ids must be GPU indices"),
    ({"entrypoint": "a.b:c", "gpu_ids": 1.5}, "gpu_ids must be GPU indices"),
    ({"entrypoint": "a.b:c", "sample_interval": 0}, "sample_interval must be"),
    ({"entrypoint": "a.b:c", "sample_interval_s": 0}, "sample_interval must be"),
    ({"entrypoint": "a.b:c", "prices": {"gpu_hour": -2}}, "gpu_hour"),
    ({"entrypoint": "a.b:c", "resources": {"gpu": 0.5}}, "whole number of GPUs"),
    ({"entrypoint": "a.b:c", "resources": "huge"}, "unknown resource profile 'huge'"),
    ({"entrypoint": "a.b:c", "backend": "slurm"}, "backend must be one of"),
    ({"entrypoint": "a.b:c", "backend": "kubernetes"}, "needs an image with airflow-mlops installed: give kubernetes={'image': ...}"),
    ({"entrypoint": "a.b:c", "upstream_task": "prep"}, "target= (the label column) is required"),
    ({"script": "train.py", "train_path": "/d.parquet", "target": "y"}, "hand datasets to a callable entrypoint"),
    ({"entrypoint": "a.b:c", "args": ["--x"]}, "args= are for script=/module="),
    ({"entrypoint": "a.b:c", "mlflow": {"tracking_uri": "sqlite:///rel.db"}}, "relative SQLite path"),
    ({"entrypoint": "a.b:c", "pushgateway_url": "pushgw:9091"}, "pushgateway_url must be an http"),
    ({"entrypoint": "a.b:c", "distributed": {"nodes": 2}},
     "distributed: distributed= runs a torchrun group of pods: it needs backend='kubernetes', got 'batch'"),
    ({"entrypoint": "a.b:c", "backend": "kubernetes", "kubernetes": {"image": "x"}, "distributed": {"nodes": 0}},
     "distributed.nodes: Input should be greater than or equal to 1"),
    ({"entrypoint": "a.b:c", "test_path": "/t.parquet", "target": "y"}, "test_path: test_path needs train_path"),
    ({"entrypoint": "a.b:c", "env": {"N": 1}}, "env: env must map names to string values"),
])
def test_operator_rejects_bad_arguments_when_the_dag_is_parsed(kwargs, message):
    from airflow_mlops.operators.gpu_train import GpuTrainOperator

    with pytest.raises(ValueError, match=re.escape(message)):
        GpuTrainOperator(task_id="t", **kwargs)


def test_dag_file_with_the_gpu_operators_parses_without_heavy_imports(tmp_path):
    # The entrypoint's module is located at parse, never run: its heavy imports stay out.
    write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/mod.py", "import pandas, sklearn\n\ndef fit(params):\n    pass\n")
    dag_file = write(tmp_path, "gpu_dag.py", """
        # Airflow DAG with the GPU operators
        from airflow.sdk import DAG
        from airflow_mlops.operators.gpu_train import GpuTrainOperator
        from airflow_mlops.sensors.gpu import GpuAvailableSensor

        with DAG("gpu_parse", schedule=None) as dag:
            wait = GpuAvailableSensor(task_id="wait", count=2, min_free_memory="16Gi", deferrable=True)
            train = GpuTrainOperator(task_id="train", entrypoint="pkg.mod:fit", gpu_ids="{{ ti.xcom_pull('wait') }}",
                                     backend="kubernetes", kubernetes={"image": "img:1"}, resources="training")
            wait >> train
        """)
    code = textwrap.dedent(f"""
        import sys
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(dag_file)!r})
        assert bag.import_errors == {{}}, bag.import_errors
        assert sorted(bag.dags["gpu_parse"].task_ids) == ["train", "wait"]
        heavy = sorted(m for m in ("mlflow", "pynvml", "pandas", "sklearn", "kubernetes", "pyspark") if m in sys.modules)
        print("HEAVY", heavy)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout



# --- GpuTrainOperator end to end through Airflow, on CPU ---------------------------------------

GPU_DAG = """
    # Airflow DAG: GpuTrainOperator on a machine without a GPU
    from datetime import timedelta

    from airflow.sdk import DAG
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.backends.stage import StageOperator
    from airflow_mlops.spec.models import DataInput, PreprocessStage

    ENV = {{"PYTHONPATH": {repo!r}}}


    class CrashAfterRegistering(GpuTrainOperator):
        \"\"\"The worker is lost after the model version was registered, before the task ended.\"\"\"

        def execute(self, context):
            result = super().execute(context)
            if context["ti"].try_number == 1:
                raise RuntimeError("worker lost after registering the model")
            return result


    with DAG("gpu_cpu", schedule=None) as dag:
        prep = StageOperator(task_id="prep", stage_name="prep", pipeline_id="gpu_cpu",
                             stage=PreprocessStage(input=DataInput(sklearn_dataset="breast_cancer")))
        forest = GpuTrainOperator(task_id="forest", entrypoint="tests.gpu_entrypoints:train_forest", env=ENV,
                                  hyperparams={{"n_estimators": 20, "random_state": 0}},
                                  mlflow={{"registered_model": "forest"}}, resources={{"cpu": 2, "memory": "4Gi"}},
                                  prices={{"cpu_hour": 0.5, "memory_gib_hour": 0.25}})
        frames = GpuTrainOperator(task_id="frames", entrypoint="tests.gpu_entrypoints:train_on_frames", env=ENV,
                                  upstream_task="prep", target="target", gpus=0, hyperparams={{"max_iter": 5000}},
                                  mlflow={{"registered_model": "frames"}}, mlflow_ui_url="https://mlflow.example.com/")
        resumable = GpuTrainOperator(task_id="resumable", entrypoint="tests.gpu_entrypoints:resumable", env=ENV,
                                     hyperparams={{"epochs": 4, "crash_after": 2}}, mlflow={{"registered_model": "resumable"}},
                                     retries=1, retry_delay=timedelta(seconds=0))
        crashy = CrashAfterRegistering(task_id="crashy", entrypoint="tests.gpu_entrypoints:train_forest", env=ENV,
                                       hyperparams={{"n_estimators": 5, "random_state": 0}},
                                       mlflow={{"registered_model": "crashy"}}, retries=1, retry_delay=timedelta(seconds=0))
        script = GpuTrainOperator(task_id="script", module="tests.gpu_entrypoints", args=["--max-depth", "2"], env=ENV,
                                  mlflow={{"registered_model": "script_tree"}})
        prep >> frames
    """


@pytest.fixture(scope="module")
def gpu_dag_run(airflow_db, tmp_path_factory):
    """One run of the DAG for the tests that read it (it trains six times: ~2-3 minutes here).
    Its own MLflow store and dags folder, like the mlops_home and dags_folder fixtures."""
    from airflow.dag_processing.dagbag import DagBag

    tmp = tmp_path_factory.mktemp("gpu_dag")
    home, folder = tmp / "mlops", tmp / "dags"
    folder.mkdir()
    bundle = {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
              "kwargs": {"path": str(folder)}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_MLOPS_HOME", str(home))
        mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
        mp.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([bundle]))
        write(folder, "gpu_cpu.py", GPU_DAG.format(repo=str(REPO)))
        bag = DagBag(dag_folder=str(folder))
        assert bag.import_errors == {}
        dag = bag.dags["gpu_cpu"]
        dr = dag.test()  # (conftest puts MLflow's process-wide URIs back after each test)
        tis = {ti.task_id: ti for ti in dr.get_task_instances()}
        yield dag, dr, tis, home


def _client(mlops_home):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")


def _runs(client, task_id):
    experiment = client.get_experiment_by_name("gpu_cpu")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`airflow.task_id` = '{task_id}'")
    return sorted(runs, key=lambda r: int(r.data.tags["airflow.try_number"]))


def test_gpu_train_operator_end_to_end_on_cpu(gpu_dag_run):
    from airflow_mlops._core.names import safe_run_key

    dag, dr, tis, home = gpu_dag_run
    assert {k: ti.state for k, ti in tis.items()} == dict.fromkeys(
        ["prep", "forest", "frames", "resumable", "crashy", "script"], "success")
    client = _client(home)

    # forest: trained in a subprocess without GPUs, registered, and says no GPU was used
    result = tis["forest"].xcom_pull(task_ids="forest")
    (run,) = _runs(client, "forest")
    assert result["run_id"] == run.info.run_id and run.info.status == "FINISHED"
    assert result["model_version"] == "1" and result["model_uri"] == "models:/forest/1"
    assert [str(v.version) for v in client.search_model_versions("name = 'forest'")] == ["1"]
    version = client.get_model_version("forest", "1")
    assert version.run_id == run.info.run_id
    assert version.tags["airflow_mlops.gpu.available"] == "false"
    assert version.tags["airflow_mlops.task_key"] == f"gpu_cpu/{dr.run_id}/forest"
    tags = run.data.tags
    assert tags["airflow_mlops.gpu.available"] == "false"
    assert "NVMLError_LibraryNotFound" in tags["airflow_mlops.gpu.reason"]
    assert tags["airflow_mlops.gpu.ids"] == ""
    assert result["gpu"] == {"available": False, "ids": [], "names": [], "reason": tags["airflow_mlops.gpu.reason"]}
    assert run.data.params == {"n_estimators": "20", "random_state": "0", "gpus": "0"}
    assert run.data.metrics["accuracy"] == result["metrics"]["accuracy"] > 0.9
    assert not any(k.startswith("gpu/") for k in run.data.metrics)  # no GPU metrics without a driver
    # cost: held resources (2 CPUs, 4Gi, no GPU) × wall-clock × this task's prices
    m, cost = run.data.metrics, result["cost"]
    hours = cost["wall_seconds"] / 3600
    assert cost["gpu_hours"] == 0 and cost["cpu_hours"] == pytest.approx(2 * hours)
    assert cost["memory_gib_hours"] == pytest.approx(4 * hours)
    assert cost["total"] == pytest.approx(2 * hours * 0.5 + 4 * hours * 0.25)
    assert {k: m[f"cost/{k}"] for k in cost} == pytest.approx(cost)
    assert json.loads(tags["airflow_mlops.cost.prices"]) == {"gpu_hour": 2.5, "cpu_hour": 0.5, "memory_gib_hour": 0.25,
                                                               "currency": "USD"}
    # the environment the training process got
    checkpoint = home / "checkpoints" / "gpu_cpu" / safe_run_key(dr.run_id) / "forest"
    assert result["checkpoint_dir"] == tags["airflow_mlops.checkpoint_dir"] == str(checkpoint)
    (seen,) = checkpoint_tries(checkpoint)
    assert seen["env"] == {"CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                           "AIRFLOW_MLOPS_CHECKPOINT_DIR": str(checkpoint), "MLFLOW_RUN_ID": run.info.run_id,
                           "AIRFLOW_MLOPS_PARAMS": json.dumps({"n_estimators": 20, "random_state": 0})}
    assert seen["checkpoint_dir"] == str(checkpoint)
    # the "MLflow run" extra link: Airflow stored what get_link returned, for the UI
    experiment_id = run.info.experiment_id
    assert result["mlflow_run_url"] == f"http://localhost:5000/#/experiments/{experiment_id}/runs/{run.info.run_id}"
    assert tis["forest"].xcom_pull(task_ids="forest", key="_link_MlflowRunLink") == result["mlflow_run_url"]
    assert tis["forest"].xcom_pull(task_ids="forest", key="mlflow_run_url") == result["mlflow_run_url"]

    # frames: datasets from the upstream preprocess stage; gpus=0 by choice; a custom UI address
    frames = tis["frames"].xcom_pull(task_ids="frames")
    assert frames["gpu"]["reason"] == "no GPUs requested (gpus=0)"
    assert frames["metrics"]["train_rows"] == 455.0 and frames["metrics"]["accuracy"] > 0.85
    assert tis["frames"].xcom_pull(task_ids="frames", key="_link_MlflowRunLink") == (
        f"https://mlflow.example.com/#/experiments/{experiment_id}/runs/{frames['run_id']}")
    assert client.get_model_version("frames", "1").run_id == frames["run_id"]

    # script: a module entrypoint logged its own model into the run; the operator registered it
    script = tis["script"].xcom_pull(task_ids="script")
    assert script["model_version"] == "1" and script["metrics"]["accuracy"] > 0.85
    assert client.get_model_version("script_tree", "1").run_id == script["run_id"]
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)  # put back by _mlflow_globals_put_back
    mlflow.set_registry_uri(client.tracking_uri)
    x = mlflow.pyfunc.load_model("models:/script_tree/1").metadata.get_input_schema().input_names()
    assert len(x) == 30  # the registered version loads, with the script's 30 input columns
    assert checkpoint_tries(script["checkpoint_dir"])[0]["argv"] == ["--max-depth", "2"]


def test_retry_resumes_from_the_checkpoint_and_never_registers_twice(gpu_dag_run):
    dag, dr, tis, home = gpu_dag_run
    client = _client(home)

    # resumable: try 1 crashed after epoch 2; try 2 resumed there, in the same checkpoint folder
    assert tis["resumable"].try_number == 2
    first, second = _runs(client, "resumable")
    assert (first.info.status, second.info.status) == ("FAILED", "FINISHED")
    checkpoint = first.data.tags["airflow_mlops.checkpoint_dir"]
    assert second.data.tags["airflow_mlops.checkpoint_dir"] == checkpoint
    tries = checkpoint_tries(checkpoint)
    assert [t["resumed_from"] for t in tries] == [0, 2]
    assert tries[0]["env"]["AIRFLOW_MLOPS_CHECKPOINT_DIR"] == tries[1]["env"]["AIRFLOW_MLOPS_CHECKPOINT_DIR"] == checkpoint
    assert second.data.metrics["resumed_from_epoch"] == 2 and second.data.metrics["epochs"] == 4
    assert first.data.metrics["cost/total"] > 0  # the failed try's resources are billed too
    assert [str(v.version) for v in client.search_model_versions("name = 'resumable'")] == ["1"]

    # crashy: try 1 registered version 1 then the worker was lost; try 2 reused it
    assert tis["crashy"].try_number == 2
    (only_run,) = _runs(client, "crashy")  # try 2 created no run of its own
    assert [str(v.version) for v in client.search_model_versions("name = 'crashy'")] == ["1"]
    result = tis["crashy"].xcom_pull(task_ids="crashy")
    assert result["reused"] is True and result["run_id"] == only_run.info.run_id and result["model_version"] == "1"
    assert result["cost"]["total"] == pytest.approx(only_run.data.metrics["cost/total"])
    assert tis["crashy"].xcom_pull(task_ids="crashy", key="_link_MlflowRunLink").endswith(f"/runs/{only_run.info.run_id}")


def test_cost_report_by_stage(gpu_dag_run):
    dag, dr, tis, home = gpu_dag_run
    client = _client(home)
    expected = {}
    for task in ("forest", "frames", "resumable", "crashy", "script"):
        expected[task] = sum(r.data.metrics["cost/total"] for r in _runs(client, task))
    uri = f"sqlite:///{home / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-m", "airflow_mlops.cli", "cost", dr.run_id, "--dag", "gpu_cpu",
                          "--tracking-uri", uri, "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["stage"]: r for r in json.loads(out.stdout)}
    assert set(rows) == set(expected)
    assert {k: r["total"] for k, r in rows.items()} == pytest.approx(expected)
    assert rows["resumable"]["runs"] == 2 and rows["forest"]["runs"] == 1
    table = subprocess.run([sys.executable, "-m", "airflow_mlops.cli", "cost", dr.run_id, "--tracking-uri", uri],
                           capture_output=True, text=True, cwd=REPO, timeout=300).stdout
    assert f"cost of DAG run '{dr.run_id}' by stage" in table
    total_line = next(line for line in table.splitlines() if line.startswith("TOTAL"))
    assert float(total_line.split()[-1]) == pytest.approx(sum(expected.values()), abs=1e-4)
    missing = subprocess.run([sys.executable, "-m", "airflow_mlops.cli", "cost", "no_such_run", "--tracking-uri", uri],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
    assert missing.returncode == 1 and "no task of DAG run 'no_such_run' recorded a cost" in missing.stdout



# --- as the train stage of a YAML pipeline, and the link through Airflow's REST API ---------------

YAML_PIPELINE = """
    id: gpu_yaml
    mlflow: {{registered_model: gpu_yaml_model}}
    stages:
      preprocess:
        input: {{sklearn_dataset: breast_cancer}}
        split: {{test_fraction: 0.25, stratify: target, seed: 7}}
      train:
        kind: custom
        operator: airflow_mlops.operators.gpu_train:GpuTrainOperator
        args:
          entrypoint: tests.gpu_entrypoints:train_on_frames
          upstream_task: preprocess.run
          target: target
          hyperparams: {{max_iter: 5000}}
          mlflow: {{registered_model: gpu_yaml_model}}
          env: {{PYTHONPATH: {repo}}}
      validate:
        thresholds: {{accuracy: {{min: 0.8}}}}
    """


def test_gpu_train_operator_as_the_train_stage_of_a_yaml_pipeline(airflow_db, mlops_home, dags_folder):
    import mlflow
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, "gpu_yaml.yaml", YAML_PIPELINE.format(repo=json.dumps(str(REPO))))
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dag = bag.dags["gpu_yaml"]
    assert type(dag.get_task("train.run")).__name__ == "GpuTrainOperator"
    dr = dag.test()
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states == {"preprocess.run": "success", "train.run": "success", "validate.run": "success"}, states
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("gpu_yaml_model", "champion")
    assert str(champion.version) == "1" and champion.tags["airflow_mlops.gpu.available"] == "false"
    run = client.get_run(champion.run_id)
    assert run.data.metrics["train_rows"] == 426  # 75 % of 569 rows, from the preprocess stage's split
    assert run.data.metrics["cost/total"] > 0

    url = f"http://localhost:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert extra_links("gpu_yaml", dr.run_id, "train.run") == {"MLflow run": url}


def test_training_code_beside_the_dag_file_imports_in_the_training_process(airflow_db, mlops_home, dags_folder):
    """Issue 19, item 4: an entrypoint module beside the DAG file (in a subfolder of the dags
    folder, not on the worker's path) is found by the training process; one that cannot be found
    fails when the DAG is parsed, not after an MLflow run and a retry."""
    import mlflow
    from airflow.dag_processing.dagbag import DagBag

    write(dags_folder, "team/churn_training.py", """
        def fit(params):
            from sklearn.datasets import load_iris
            from sklearn.tree import DecisionTreeClassifier

            x, y = load_iris(return_X_y=True, as_frame=True)
            model = DecisionTreeClassifier(max_depth=params["depth"]).fit(x, y)
            return {"model": model, "metrics": {"accuracy": float(model.score(x, y))}, "input_example": x.head(3)}
        """)
    write(dags_folder, "team/churn_dag.py", """
        # Airflow DAG whose training code sits beside it
        from airflow.sdk import DAG
        from airflow_mlops import GpuTrainOperator

        with DAG("churn_beside", schedule=None):
            GpuTrainOperator(task_id="train", entrypoint="churn_training:fit", gpus=0, hyperparams={"depth": 3},
                             mlflow={"registered_model": "churn_beside"})
        """)
    write(dags_folder, "team/typo_dag.py", """
        # Airflow DAG naming training code that is not there
        from airflow.sdk import DAG
        from airflow_mlops import GpuTrainOperator

        with DAG("churn_typo", schedule=None):
            GpuTrainOperator(task_id="train", entrypoint="churn_trainig:fit", gpus=0)
            GpuTrainOperator(task_id="script", script="train.py", gpus=0)
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    errors = {Path(k).name: v for k, v in bag.import_errors.items()}
    assert "cannot find module 'churn_trainig' of entrypoint= 'churn_trainig:fit': searched " \
           f"{dags_folder / 'team'}, {dags_folder}" in errors["typo_dag.py"]
    assert "churn_typo" not in bag.dag_ids
    dr = bag.dags["churn_beside"].test()
    assert {ti.task_id: ti.state for ti in dr.get_task_instances()} == {"train": "success"}
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlops_home / 'mlflow.db'}")
    assert str(client.get_latest_versions("churn_beside")[0].version) == "1"


def test_sample_interval_has_one_name_and_the_old_one_still_works():
    """Issue 19, item 7: the YAML's gpu_metrics.sample_interval and the operator's argument are one
    word now; sample_interval_s still works, with the package's deprecation warning."""
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.spec.renamed import MlopsDeprecationWarning

    assert GpuTrainOperator(task_id="t", entrypoint="tests.gpu_entrypoints:train_forest",
                            sample_interval=0.5).sample_interval == 0.5
    with pytest.warns(MlopsDeprecationWarning, match="sample_interval_s is deprecated, use sample_interval"):
        op = GpuTrainOperator(task_id="t", entrypoint="tests.gpu_entrypoints:train_forest", sample_interval_s=2)
    assert op.sample_interval == 2.0


def test_backend_is_batch_and_local_is_its_deprecated_name():
    """Issue 25, item 3: the worker is "batch" for GpuTrainOperator as for every stage; "local"
    still works, with the package's deprecation warning naming the new value."""
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.spec.renamed import MlopsDeprecationWarning

    assert GpuTrainOperator(task_id="t", entrypoint="tests.gpu_entrypoints:train_forest").backend == "batch"
    with pytest.warns(MlopsDeprecationWarning, match="backend='local' is deprecated, use backend='batch'"):
        op = GpuTrainOperator(task_id="t", entrypoint="tests.gpu_entrypoints:train_forest", backend="local")
    assert op.backend == "batch"


def test_every_problem_is_reported_with_its_argument():
    from airflow_mlops._core.errors import ArgumentsError
    from airflow_mlops.operators.gpu_train import GpuTrainOperator
    from airflow_mlops.spec.gpu_train import GpuTrainSpec

    with pytest.raises(ArgumentsError) as caught:
        GpuTrainOperator(task_id="t", script="train.py", gpus=-1, sample_interval=0, mlflow={"experimnt": "x"})
    assert caught.value.model is GpuTrainSpec
    assert [e["loc"] for e in caught.value.errors] == [("gpus",), ("mlflow", "experimnt"), ("sample_interval",)]
    assert "mlflow.experimnt: unknown key 'experimnt' (did you mean 'experiment'?)" in str(caught.value)


def test_templates_are_validated_again_once_rendered():
    """Validated at parse with templates standing in, and again once Airflow rendered them: a
    rendered value that does not fit fails the task without a retry (a retry renders the same)."""
    from airflow_mlops._core.compat import AirflowFailException
    from airflow_mlops.operators.gpu_train import GpuTrainOperator

    def rendered(**params):
        op = GpuTrainOperator(task_id="t", entrypoint="{{ params.entrypoint }}", gpu_ids="{{ params.ids }}",
                              train_path="/data/{{ ds }}.parquet", target="y")
        op.render_template_fields({"params": params, "ds": "2026-01-01"})
        return op.rendered_spec()

    spec = rendered(entrypoint="tests.gpu_entrypoints:train_forest", ids="[0, 2]")
    assert (spec.entrypoint, spec.gpu_ids, spec.gpu_count()) == ("tests.gpu_entrypoints:train_forest", [0, 2], None)
    assert spec.train_path == "/data/2026-01-01.parquet"
    with pytest.raises(AirflowFailException, match=r"\(after rendering its templates\): invalid arguments:\n  "
                                                   r"gpu_ids: gpu_ids must be GPU indices"):
        rendered(entrypoint="tests.gpu_entrypoints:train_forest", ids="the freest")
    with pytest.raises(AirflowFailException, match="entrypoint must look like 'package.module:function'"):
        rendered(entrypoint="not an import path", ids="0")
    # Located once rendered, as a literal one is at parse: before, a misspelt module rendered from
    # a template was only found missing inside the training process.
    with pytest.raises(AirflowFailException, match=r"\(after rendering its templates\): entrypoint: cannot find module "
                                                   r"'tests.gpu_entrypoint' of entrypoint="):
        rendered(entrypoint="tests.gpu_entrypoint:train_forest", ids="0")
