"""Issue 19, item 3: the named operators are templated like Airflow's own. Their arguments are
rendered per run (``{{ ds }}``, ``{{ params.x }}``, ``{{ ti.xcom_pull(...) }}``), shown in the
task's rendered fields, checked at parse where they hold no template, and checked again once
rendered. Real Airflow (dag.test()), real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import write
from tests.spec.test_pipeline_templating import api_get, run, xcom

LIFECYCLE_DAG = """
    # Airflow DAG: backup, restore and retention with per-run arguments
    from airflow.sdk import DAG, Param
    from airflow_mlops import BackupOperator, RestoreOperator, RetentionCleanupOperator
    from airflow_mlops.lifecycle.specs import DirectorySource, FilesPolicy

    with DAG("lifecycle_templated", schedule=None, params={{"src": Param("{src}"), "keep": Param(2),
             "age": Param("1d"), "dry": Param(True)}}):
        backup = BackupOperator(task_id="backup", target="{root}/backups/{{{{ ds_nodash }}}}",
                                sources=[DirectorySource(name="models", path="{{{{ params.src }}}}")],
                                keep_last="{{{{ params.keep }}}}")
        restore = RestoreOperator(task_id="restore", target="{root}/backups/{{{{ ds_nodash }}}}",
                                  snapshot="{{{{ ti.xcom_pull('backup')['snapshot'] }}}}",
                                  dest="{root}/restored/{{{{ ds_nodash }}}}")
        clean = RetentionCleanupOperator(task_id="clean", dry_run="{{{{ params.dry }}}}", policies=[
            FilesPolicy(root="{{{{ params.src }}}}", max_age="{{{{ params.age }}}}")])
        backup >> restore >> clean
    """


def test_lifecycle_operators_render_their_arguments_per_run(airflow_db, mlops_home, dags_folder, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    src = tmp_path / "models"
    (src / "v1").mkdir(parents=True)
    (src / "v1" / "model.bin").write_bytes(b"weights")
    old = src / "v1" / "model.bin"
    os.utime(old, (1_000_000_000, 1_000_000_000))  # 2001: older than any max_age
    write(dags_folder, "lifecycle.py", LIFECYCLE_DAG.format(src=src, root=tmp_path))
    bag = DagBag(dag_folder=str(dags_folder))
    assert bag.import_errors == {}
    dr, states = run(bag.dags["lifecycle_templated"])
    assert states == {"backup": "success", "restore": "success", "clean": "success"}, states
    day = dr.logical_date.strftime("%Y%m%d") if dr.logical_date else None
    backup = xcom(dr, "backup")
    assert backup["target"].endswith(f"/backups/{day}") and backup["files"] == 1
    restored = xcom(dr, "restore")
    assert restored["snapshot"] == backup["snapshot"]
    assert (Path(restored["dest"]) / "models" / "v1" / "model.bin").read_bytes() == b"weights"
    clean = xcom(dr, "clean")
    assert clean["dry_run"] is True and clean["planned_items"] == 1 and old.exists()  # "True" rendered, read as a bool
    rendered = api_get(f"/dags/lifecycle_templated/dagRuns/{dr.run_id}/taskInstances/restore")["rendered_fields"]
    assert rendered["spec_args"]["snapshot"] == backup["snapshot"]
    assert rendered["spec_args"]["dest"] == f"{tmp_path}/restored/{day}"


def test_templated_arguments_are_checked_at_parse_where_they_hold_none_and_again_once_rendered(
        airflow_db, mlops_home, dags_folder, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    from airflow_mlops import BackupOperator

    with pytest.raises(ValueError, match=r"keep_last: Input should be greater than or equal to 1"):
        BackupOperator(task_id="b", target="/backups", sources=[{"name": "d", "path": "/data"}], keep_last=0)
    with pytest.raises(ValueError, match=r"target: .*expected an absolute path"):
        BackupOperator(task_id="b", target="backups", sources=[{"name": "d", "path": "/data"}])
    write(dags_folder, "bad_render.py", f"""
        # Airflow DAG whose rendered argument is wrong
        from airflow.sdk import DAG
        from airflow_mlops import BackupOperator

        with DAG("bad_render", schedule=None, params={{"keep": "none"}}):
            BackupOperator(task_id="backup", target="{tmp_path}/b", sources=[{{"name": "d", "path": "{tmp_path}"}}],
                           keep_last="{{{{ params.keep }}}}", retries=2)
        """)
    bag = DagBag(dag_folder=str(dags_folder))
    assert "bad_render.py" not in {Path(k).name for k in bag.import_errors}
    dr, states = run(bag.dags["bad_render"])
    assert states == {"backup": "failed"}
    ti = dr.get_task_instances()[0]
    assert ti.try_number == 1  # a rendered value the model refuses is not retried


def test_the_dead_letter_topic_is_templated_like_the_other_topics():
    """Before: a template in dead_letter_topic was refused at parse with the raw pattern message,
    while the input and output topics could be templated."""
    from airflow_mlops.operators.stream import StreamInferenceOperator, validated_spec

    op = StreamInferenceOperator(task_id="score", topics="events", output_topic="scored.{{ ds_nodash }}",
                                 dead_letter_topic="dlq.{{ ds_nodash }}", model_uri="models:/m@champion")
    assert op.stream_args["dead_letter_topic"] == "dlq.{{ ds_nodash }}" and "stream_args" in op.template_fields
    rendered = {**op.stream_args, "dead_letter_topic": "dlq.20260101", "output_topic": "scored.20260101"}
    assert validated_spec(rendered, "score", rendered=True).dead_letter_topic == "dlq.20260101"
    with pytest.raises(ValueError, match="dead_letter_topic"):  # rendered to a name Kafka refuses: the task fails
        validated_spec({**rendered, "dead_letter_topic": "dlq 20260101"}, "score", rendered=True)


def test_dynamic_task_mapping_works_over_the_stream_operators_documented_arguments(tmp_path):
    """Before: StreamInferenceOperator.partial(topics=..., batch_size=..., idle_timeout=...) failed
    at import ('unexpected keyword arguments'): only spec= could be mapped, and nothing said so."""
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "mapped.py").write_text(
        "# Airflow DAG\nfrom airflow.sdk import DAG\nfrom airflow_mlops import StreamInferenceOperator\n\n"
        "with DAG('mapped_stream', schedule=None):\n"
        "    StreamInferenceOperator.partial(task_id='score', topics='events', batch_size=100, idle_timeout=5,\n"
        "                                    model_uri='models:/m@champion').expand(\n"
        "        output_topic=['scored.eu', 'scored.us'], max_records=[1000, 2000])\n")
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    task = bag.dags["mapped_stream"].get_task("score")
    assert task.partial_kwargs["batch_size"] == 100 and set(task.expand_input.value) == {"output_topic", "max_records"}
    (tmp_path / "mapped.py").write_text(
        "# Airflow DAG\nfrom airflow.sdk import DAG\nfrom airflow_mlops import StreamInferenceOperator\n\n"
        "with DAG('mapped_stream', schedule=None):\n"
        "    StreamInferenceOperator.partial(task_id='score', topics='events').expand(batch_sise=[1, 2])\n")
    errors = DagBag(dag_folder=str(tmp_path)).import_errors
    assert "batch_sise" in next(iter(errors.values()))


def test_old_argument_names_warn_at_the_line_of_the_dag_file_that_uses_them(tmp_path):
    """Before: mlflow_conn_id=, tracking_uri= and prices.memory_gb_hour warned nothing under
    Airflow (a DeprecationWarning Python hides), and the warnings that did appear pointed at the
    package's own files. Airflow records them now as the DAG file's import warnings, at its lines."""
    from airflow.dag_processing.dagbag import DagBag

    dag_file = tmp_path / "old_names.py"
    dag_file.write_text(
        "# Airflow DAG with old argument names\nfrom airflow.sdk import DAG\n"
        "from airflow_mlops import GpuTrainOperator, StreamInferenceOperator\n\n"
        "with DAG('old_names', schedule=None):\n"
        "    StreamInferenceOperator(task_id='score', topics='events', output_topic='scored',\n"
        "                            model_uri='models:/m@champion', tracking_uri='http://mlflow:5000')\n"
        "    GpuTrainOperator(task_id='train', entrypoint='tests.gpu_entrypoints:train_forest', sample_interval_s=2,\n"
        "                     prices={'memory_gb_hour': 0.1}, backend='local')\n")
    import warnings

    from airflow_mlops.spec.renamed import MlopsDeprecationWarning

    with warnings.catch_warnings():  # as Python's default filters: this suite's pyproject hides "is deprecated"
        warnings.simplefilter("default", MlopsDeprecationWarning)
        bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    warned = bag.captured_warnings[str(dag_file)]
    assert warned == (
        f"{dag_file}:6: airflow_mlops.spec.renamed.MlopsDeprecationWarning: StreamInferenceOperator: mlflow_conn_id= "
        "and tracking_uri= are deprecated, use mlflow={'tracking_uri': 'http://mlflow:5000'}",
        f"{dag_file}:8: airflow_mlops.spec.renamed.MlopsDeprecationWarning: GpuTrainOperator: sample_interval_s is "
        "deprecated, use sample_interval",
        f"{dag_file}:8: airflow_mlops.spec.renamed.MlopsDeprecationWarning: prices.memory_gb_hour is deprecated, use "
        "memory_gib_hour (memory is billed per GiB)",
        f"{dag_file}:8: airflow_mlops.spec.renamed.MlopsDeprecationWarning: GpuTrainOperator: backend='local' is "
        "deprecated, use backend='batch'")
