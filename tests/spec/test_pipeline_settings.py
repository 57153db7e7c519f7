"""What a user writes at the DAG level reaches Airflow: dates keep their offsets and time zones,
the nearest file wins whichever way a setting is written, callbacks are functions, params are
Params, and templatable fields accept templates while the rest is still checked at parse time.
Checked on the DAGs Airflow's own DagBag builds, and on their serialized form (what the scheduler,
the API and the UI use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from airflow_mlops.factory.pipelines import read_pipeline
from airflow_mlops.spec.errors import PipelineSpecError
from tests.helpers import write


def dagbag(folder):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag


def serialized(dag):
    """The DAG as the scheduler and the API server see it."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def errors_of(path, root=None) -> list[str]:
    with pytest.raises(PipelineSpecError) as info:
        read_pipeline(path, root)
    return [str(issue) for issue in info.value.issues]


# --- 1. dates and time zones -----------------------------------------------------------------------


def test_daily_job_stays_at_six_local_time_across_the_dst_change(dags_folder):
    write(dags_folder, "berlin.yaml", """
        id: berlin
        dag:
          schedule: "0 6 * * *"
          timezone: Europe/Berlin
          start_date: 2025-03-27
          catchup: true
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    dag = serialized(dagbag(dags_folder).dags["berlin"])
    from airflow.timetables.base import TimeRestriction

    runs, last = [], None
    for _ in range(5):
        info = dag.timetable.next_dagrun_info(
            last_automated_data_interval=last, restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True))
        runs.append(info.logical_date)
        last = info.data_interval
    # Summer time starts on 2025-03-30: 06:00 in Berlin is 05:00 UTC before, 04:00 UTC after.
    assert [r.in_timezone("Europe/Berlin").strftime("%m-%d %H:%M") for r in runs] == [
        "03-27 06:00", "03-28 06:00", "03-29 06:00", "03-30 06:00", "03-31 06:00"]
    assert [r.in_timezone("UTC").hour for r in runs] == [5, 5, 5, 4, 4]
    assert dag.start_date == datetime(2025, 3, 26, 23, 0, tzinfo=timezone.utc)  # midnight in Berlin


def test_start_date_keeps_its_offset(dags_folder):
    write(dags_folder, "offset.yaml", """
        id: offset
        dag:
          schedule: "@daily"
          start_date: "2025-03-01T00:00:00+01:00"
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    dag = dagbag(dags_folder).dags["offset"]
    assert dag.start_date == datetime(2025, 2, 28, 23, 0, tzinfo=timezone.utc)
    assert dag.timezone.utcoffset(None) == timedelta(hours=1)


def test_a_naive_start_date_is_in_airflows_default_timezone(tmp_path):
    """[core] default_timezone is read when Airflow starts: a fresh interpreter with it set."""
    write(tmp_path / "dags", "naive.yaml", """
        id: naive
        dag: {schedule: "@daily", start_date: "2025-03-01T06:00:00"}
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    write(tmp_path / "dags", "pipelines.py", "# airflow dag\nfrom airflow_mlops import load_pipelines\nload_pipelines(globals())\n")
    code = textwrap.dedent(f"""
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(tmp_path / 'dags')!r})
        assert bag.import_errors == {{}}, bag.import_errors
        dag = bag.dags["naive"]
        print("RESULT", dag.start_date.isoformat(), dag.timezone.name)
    """)
    env = {**os.environ, "AIRFLOW__CORE__DEFAULT_TIMEZONE": "America/New_York"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    assert line.split()[1:] == ["2025-03-01T11:00:00+00:00", "America/New_York"]  # 06:00 EST


def test_unknown_timezone_is_refused_with_a_suggestion(tmp_path):
    path = write(tmp_path, "p.yaml", "id: p\ndag: {timezone: Europe/Berln}\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n")
    assert errors_of(path) == [
        f"{path}:2:17 dag.timezone: unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?); expected an "
        "IANA name such as 'Europe/Berlin', 'America/New_York' or 'UTC'"]


# --- 2. precedence -----------------------------------------------------------------------------------


def test_the_pipelines_own_setting_beats_defaults_written_the_other_way(dags_folder):
    write(dags_folder, "_defaults.yaml", """
        dag:
          default_args: {retries: 3, owner: platform, retry_delay: 10m, pool: shared}
        """)
    write(dags_folder, "team/_defaults.yaml", "dag: {execution_timeout: 1h}\n")
    write(dags_folder, "team/p.yaml", """
        id: own
        dag:
          retries: 0
          default_args: {owner: team-a}
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    dag = dagbag(dags_folder).dags["own"]
    task = dag.get_task("preprocess.run")
    assert (task.retries, task.owner, task.retry_delay, task.pool) == (0, "team-a", timedelta(minutes=10), "shared")
    assert task.execution_timeout == timedelta(hours=1)
    assert dag.default_args["retries"] == 0


def test_one_setting_written_both_ways_in_one_file_is_refused(tmp_path):
    path = write(tmp_path, "p.yaml", """
        id: p
        dag:
          retries: 1
          default_args:
            retries: 2
            schedule: "@daily"
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    assert errors_of(path) == [
        f"{path}:5:5 dag.default_args.retries: the same setting as dag.retries (line 3); write it once, as dag.retries",
        f"{path}:6:5 dag.default_args.schedule: 'schedule' is a DAG setting, not a task default: write it as dag.schedule",
    ]


def test_both_ways_in_a_defaults_file_point_at_it(tmp_path):
    write(tmp_path, "_defaults.yaml", "dag:\n  owner: a\n  default_args: {owner: b}\n")
    path = write(tmp_path, "p.yaml", "id: p\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n")
    assert errors_of(path, tmp_path) == [
        f"{tmp_path / '_defaults.yaml'}:3:18 dag.default_args.owner: the same setting as dag.owner (line 2); "
        "write it once, as dag.owner"]


# --- 5. callbacks ------------------------------------------------------------------------------------


def test_callbacks_become_functions(dags_folder, monkeypatch):
    monkeypatch.syspath_prepend(str(dags_folder))  # Airflow puts the dags folder on sys.path
    write(dags_folder, "alerting_cb.py", "def notify(context):\n    pass\n\n\ndef page(context):\n    pass\n")
    write(dags_folder, "p.yaml", """
        id: cb
        dag:
          on_failure_callback: alerting_cb:page
          default_args:
            on_failure_callback: alerting_cb.notify
            on_retry_callback: [alerting_cb.notify, alerting_cb:page]
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    import alerting_cb

    dag = dagbag(dags_folder).dags["cb"]
    task = dag.get_task("preprocess.run")
    assert list(task.on_failure_callback) == [alerting_cb.notify]
    assert list(task.on_retry_callback) == [alerting_cb.notify, alerting_cb.page]
    assert dag.on_failure_callback == [alerting_cb.page]
    assert dag.has_on_failure_callback and not dag.has_on_success_callback


@pytest.mark.parametrize("value, message", [
    ("alerts_nowhere.notify", "cannot resolve callback 'alerts_nowhere.notify': ModuleNotFoundError: No module named "
                              "'alerts_nowhere'"),
    ("json:nope", "cannot resolve callback 'json:nope': AttributeError: module 'json' has no attribute 'nope'"),
    ("json.decoder", "cannot resolve callback 'json.decoder': 'json.decoder' is a module, not a function"),
    ("notify", "cannot resolve callback 'notify': expected an import path like 'package.module:function' or "
               "'package.module.function', got 'notify'"),
])
def test_a_callback_that_does_not_resolve_is_refused_at_its_line(tmp_path, value, message):
    path = write(tmp_path, "p.yaml", f"id: p\ndag:\n  default_args:\n    on_failure_callback: {value}\nstages:\n  preprocess: {{input: {{sklearn_dataset: iris}}}}\n")
    assert errors_of(path) == [f"{path}:4:26 dag.default_args.on_failure_callback: {message}"]


def test_sla_callbacks_are_refused_as_removed(tmp_path):
    path = write(tmp_path, "p.yaml", "id: p\ndag:\n  default_args: {sla_miss_callback: a.b}\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:3:18 dag.default_args.sla_miss_callback: Airflow 3 has no SLAs")


# --- 4. params and templates at parse time ---------------------------------------------------------------


def test_params_become_dag_params_for_the_trigger_form(dags_folder):
    write(dags_folder, "p.yaml", """
        id: with_params
        params:
          day_file: {type: string, default: /data/today.csv, description: The day's extract}
          trees: {type: integer, default: 100, minimum: 1, maximum: 1000}
          mode: {type: string, enum: [fast, full], default: fast}
          note: hello
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    dag = serialized(dagbag(dags_folder).dags["with_params"])
    dumped = {name: param.dump() for name, param in dag.params.items()}
    assert dumped["day_file"]["value"] == "/data/today.csv"
    assert dumped["day_file"]["description"] == "The day's extract"
    assert dumped["trees"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert dumped["mode"]["schema"] == {"type": "string", "enum": ["fast", "full"]}
    assert dumped["note"]["value"] == "hello"


@pytest.mark.parametrize("text, expected", [
    ("params: {trees: {type: integer, default: many}}", "2:17 params.trees: default 'many' is not of type integer"),
    ("params: {mode: {enum: [a, b], default: c}}", "2:16 params.mode: default 'c' is not one of enum ['a', 'b']"),
    ("params: {n: {type: integer, default: 0, minimum: 1}}", "2:13 params.n: default 0 is below the minimum 1"),
    ("params: {n: {type: intger}}", "2:20 params.n.type: unknown type 'intger' (did you mean 'integer'?); expected one "
     "of 'string', 'integer', 'number', 'boolean', 'array', 'object', 'null'"),
    ("params: {n: {typ: integer}}", "2:14 params.n.typ: unknown key 'typ' (did you mean 'type'?); expected one of "
     "'type', 'default', 'description', 'title', 'enum', 'minimum', 'maximum', 'format'"),
    ("dag: {schedule: '@daily'}\nparams: {day: {type: string}}",
     "3:10 params.day: a scheduled pipeline's params need a default (scheduled runs have no one to set them)"),
])
def test_bad_params_are_refused_at_their_line(tmp_path, text, expected):
    path = write(tmp_path, "p.yaml", f"id: p\n{text}\nstages:\n  preprocess: {{input: {{sklearn_dataset: iris}}}}\n")
    assert errors_of(path) == [f"{path}:{expected}"]


def test_templates_are_accepted_where_values_vary_per_run_and_values_are_still_checked(tmp_path):
    path = write(tmp_path, "p.yaml", """
        id: p
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
          train: {estimator: sklearn.tree.DecisionTreeClassifier, target: target}
          validate:
            thresholds: {accuracy: {min: "{{ params.min_accuracy }}"}, f1: {min: lots}}
        """)
    assert errors_of(path) == [f"{path}:6:74 stages.validate.thresholds.f1.min: input should be a valid number, "
                               "unable to parse string as a number, got 'lots'"]
    path.write_text(path.read_text().replace(", f1: {min: lots}", ""))
    stage = read_pipeline(path).pipeline.stages["validate"]
    assert stage.thresholds["accuracy"].min == "{{ params.min_accuracy }}"


def test_templated_stream_topics_are_checked_once_rendered(tmp_path):
    path = write(tmp_path, "p.yaml", """
        id: p
        stages:
          serve:
            mode: stream
            stream: {topics: "events.{{ ds_nodash }}", output_topic: "{{ params.out }}", model_uri: "models:/m/1"}
        """)
    stage = read_pipeline(path).pipeline.stages["serve"]
    from airflow_mlops.spec.templating import StageRenderError, render_stage

    rendered = render_stage(stage, {"stream": {"topics": "events.20250301", "output_topic": "scored"}}, "serve")
    assert (rendered.stream.topics, rendered.stream.output_topic) == ("events.20250301", "scored")
    with pytest.raises(StageRenderError, match=r"stage 'serve': after rendering its templates, stream.output_topic: "
                                               r"string should match pattern .* \(rendered: 'bad topic'\)"):
        render_stage(stage, {"stream": {"topics": "events", "output_topic": "bad topic"}}, "serve")


def test_the_json_schema_says_where_templates_and_params_go():
    from airflow_mlops.spec.models import Pipeline

    schema = json.dumps(Pipeline.model_json_schema())
    assert '"pattern": "\\\\{\\\\{|\\\\{%"' in schema
    assert '"ParamSpec"' in schema and '"timezone"' in schema


def test_every_dag_level_setting_is_set_under_dag_and_refused_with_its_place_under_default_args(tmp_path, capsys):
    """Before: dagrun_timeout, max_active_tasks, render_template_as_native_obj and end_date under
    default_args were dropped without a word; the first two could not be set under dag: either
    (dagrun_timeout got the did-you-mean execution_timeout), and an unquoted end_date there was a
    raw AttributeError at 2:1."""
    from datetime import timedelta

    from airflow_mlops.cli import main
    from airflow_mlops.factory.pipelines import load_dags
    from tests.helpers import write

    good = write(tmp_path / "good", "p.yaml", """
        id: settings
        dag:
          dagrun_timeout: 6h
          max_active_tasks: 3
          render_template_as_native_obj: true
          end_date: 2030-01-10
          max_consecutive_failed_dag_runs: 4
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    ((_, dag),) = load_dags([good]).good
    assert dag.dagrun_timeout == timedelta(hours=6) and dag.max_active_tasks == 3
    assert dag.render_template_as_native_obj is True and dag.max_consecutive_failed_dag_runs == 4
    assert dag.end_date.isoformat().startswith("2030-01-10T00:00:00")
    bad = write(tmp_path / "bad", "p.yaml", """
        id: settings
        dag:
          default_args:
            end_date: 2025-01-10
            dagrun_timeout: 6h
            max_active_tasks: 3
            render_template_as_native_obj: true
            user_defined_macros: {x: 1}
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [
        f"{bad}:4:5 dag.default_args.end_date: 'end_date' is a DAG setting, not a task default: write it as dag.end_date",
        f"{bad}:5:5 dag.default_args.dagrun_timeout: 'dagrun_timeout' is a DAG setting, not a task default: write it "
        "as dag.dagrun_timeout",
        f"{bad}:6:5 dag.default_args.max_active_tasks: 'max_active_tasks' is a DAG setting, not a task default: "
        "write it as dag.max_active_tasks",
        f"{bad}:7:5 dag.default_args.render_template_as_native_obj: 'render_template_as_native_obj' is a DAG setting, "
        "not a task default: write it as dag.render_template_as_native_obj"]
    assert out[4].startswith(f"{bad}:8:5 dag.default_args.user_defined_macros: 'user_defined_macros' is an argument "
                             "of the DAG, not a task default")


def test_without_a_start_date_a_run_for_a_past_day_runs_every_stage(airflow_db, mlops_home, dags_folder):
    """Before: the package's default start_date 2025-01-01 made a run for 2024-01-01 (reprocessing
    a past day with {{ ds }}) schedule no task at all, and the run ended green."""
    from datetime import datetime, timezone

    from airflow.utils.state import DagRunState

    from airflow_mlops.factory.loader import load_pipelines
    from tests.helpers import write

    write(dags_folder, "past.yaml", """
        id: reprocess
        dag: {schedule: "0 6 * * *", timezone: Europe/Berlin}
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    dag = load_pipelines(folder=dags_folder)["reprocess"]
    assert dag.start_date is None
    assert str(dag.timetable.timezone.name if hasattr(dag.timetable.timezone, "name") else dag.timetable.timezone) \
        == "Europe/Berlin"
    dr = dag.test(logical_date=datetime(2024, 1, 1, 5, tzinfo=timezone.utc))
    assert dr.state == DagRunState.SUCCESS
    assert {ti.task_id: ti.state for ti in dr.get_task_instances()} == {"preprocess.run": "success"}


def test_a_run_before_the_start_date_fails_with_a_note_instead_of_ending_green(airflow_db, mlops_home, dags_folder):
    """Before: with an explicit start_date, a run for an earlier logical date scheduled no task
    (Airflow creates no task instance before a task's start date) and ended green. The package's
    listener (loaded by its plugin) fails such a run and its note says why; a run on a later date
    is untouched, and so is a hand-written DAG without the pipeline tag."""
    from datetime import datetime, timezone

    from airflow.utils.state import DagRunState

    from airflow_mlops.factory.loader import load_pipelines
    from airflow_mlops.listeners import empty_run_reason
    from tests.helpers import write

    write(dags_folder, "dated.yaml", """
        id: dated
        dag: {schedule: "0 6 * * *", start_date: 2025-03-01}
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    dag = load_pipelines(folder=dags_folder)["dated"]
    early = dag.test(logical_date=datetime(2024, 1, 1, 6, tzinfo=timezone.utc))
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    def stored(run):  # state and note as the database holds them
        with create_session() as session:
            row = session.query(DagRun).filter_by(dag_id="dated", run_id=run.run_id).one()
            return row.state, row.note

    state, note = stored(early)
    assert early.state == state == DagRunState.FAILED
    assert early.get_task_instances() == []
    assert note.startswith("No stage ran: the logical date 2024-01-01T06:00:00+00:00 is before the "
                                 "pipeline's start_date 2025-03-01T00:00:00+00:00")
    later = dag.test(logical_date=datetime(2025, 3, 2, 6, tzinfo=timezone.utc))
    assert later.state == DagRunState.SUCCESS and stored(later) == (DagRunState.SUCCESS, None)
    assert {ti.task_id: ti.state for ti in later.get_task_instances()} == {"preprocess.run": "success"}

    class _Task:
        start_date, end_date = datetime(2025, 3, 1, tzinfo=timezone.utc), None

    class _HandWritten:
        tags, tasks = ["team"], [_Task()]

    assert empty_run_reason(_HandWritten(), datetime(2024, 1, 1, tzinfo=timezone.utc)) is None
