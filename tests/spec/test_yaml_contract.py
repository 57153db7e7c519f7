"""What ``airflow-mlops validate`` accepts, Airflow runs exactly as written: validate and the
dags-folder loader reach one verdict (the same errors, at the same YAML positions), and one file
never hurts the others."""

from __future__ import annotations

import logging

import pytest

from airflow_mlops.cli import main
from tests.helpers import write

GOOD = """
    id: good
    stages:
      preprocess: {input: {sklearn_dataset: iris}}
    """


def dagbag(folder):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))


def validate(capsys, *args: str) -> tuple[int, list[str], str]:
    capsys.readouterr()  # only what validate prints
    code = main(["validate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


# Each pipeline passed `validate` before, then failed in Airflow (an import error naming no YAML,
# a file:1:1 placeholder) or only when its task ran.
CASES = [
    pytest.param(
        "id: p\ndag: {schedule: None}\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n",
        ["2:17 dag.schedule: 'None' is a string here, not a missing schedule: write 'schedule: null' (or leave it "
         "out) for a DAG that runs only when triggered"],
        id="schedule-None",
    ),
    pytest.param(
        "id: p\ndag:\n  schedule: '@dialy'\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n",
        ["3:13 dag.schedule: unknown schedule preset '@dialy' (did you mean '@daily'?); presets: '@once', "
         "'@continuous', '@hourly', '@daily', '@weekly', '@monthly', '@quarterly', '@yearly'"],
        id="schedule-preset-typo",
    ),
    pytest.param(
        "id: p\ndag:\n  schedule: every weekday at 6am\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n",
        ["3:13 dag.schedule: not a cron expression or preset: Exactly 5, 6 or 7 columns has to be specified for "
         "iterator expression; write 5 fields 'minute hour day-of-month month day-of-week', e.g. '0 6 * * 1-5' for "
         "06:00 on weekdays, or a preset: '@once', '@continuous', '@hourly', '@daily', '@weekly', '@monthly', "
         "'@quarterly', '@yearly'"],
        id="schedule-words",
    ),
    pytest.param(
        "id: p\ndag:\n  schedule: '0 6 * * mon-fri 2025'\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n",
        ["3:13 dag.schedule: not a cron expression or preset: [0 6 * * mon-fri 2025] is not acceptable, out of range "
         "(Airflow reads a 6th field as seconds and a 7th as the year); write 5 fields 'minute hour day-of-month "
         "month day-of-week', e.g. '0 6 * * 1-5' for 06:00 on weekdays, or a preset: '@once', '@continuous', "
         "'@hourly', '@daily', '@weekly', '@monthly', '@quarterly', '@yearly'"],
        id="schedule-year-field",
    ),
    pytest.param(
        "id: p\nstages:\n  feature engineering:\n    kind: preprocess\n    input: {sklearn_dataset: iris}\n"
        "  train.v2:\n    kind: train\n    estimator: sklearn.linear_model.LogisticRegression\n    target: target\n",
        ["3:3 stages.feature engineering: stage name 'feature engineering' cannot be an Airflow task group id "
         "(letters, digits, '_' and '-' only; '.' separates a group from its tasks): rename it, e.g. "
         "'feature_engineering'",
         "6:3 stages.train.v2: stage name 'train.v2' cannot be an Airflow task group id (letters, digits, '_' and "
         "'-' only; '.' separates a group from its tasks): rename it, e.g. 'train_v2'"],
        id="stage-names",
    ),
    pytest.param(
        "id: p\nstages:\n  hello:\n    kind: custom\n    operator: airflow.providers.standard.operators.bash:BashOperator\n"
        "    args:\n      bash_comand: echo hello\n",
        ["7:7 stages.hello.args.bash_comand: unknown argument 'bash_comand' (did you mean 'bash_command'?); "
         "BashOperator takes 'bash_command', 'env', 'append_env', 'output_encoding', 'skip_on_exit_code', 'cwd', "
         "'output_processor' (and BaseOperator's arguments)"],
        id="operator-argument-typo",
    ),
    pytest.param(
        "id: p\nstages:\n  restore:\n    kind: custom\n    operator: airflow_mlops.operators.backup:RestoreOperator\n"
        "    args:\n      target: /backups\n",
        ["6:5 stages.restore.args: RestoreOperator needs the argument 'dest'"],
        id="operator-argument-missing",
    ),
    pytest.param(
        "id: p\nstages:\n  retention:\n    kind: custom\n"
        "    operator: airflow_mlops.operators.retention:RetentionCleanupOperator\n    args:\n      policies:\n"
        "        - kind: mlflow_model_versions\n          models: [churn]\n          keep_lst: 5\n",
        ["10:11 stages.retention.args.policies.0.keep_lst: unknown key 'keep_lst' (did you mean 'keep_last'?); "
         "expected one of 'max_age', 'keep_last', 'min_keep', 'protected_aliases', 'allow_deleting_aliases', 'kind', "
         "'name', 'models'"],
        id="own-operator-nested-argument",
    ),
    pytest.param(
        "id: p\nstages:\n  train:\n    kind: custom\n    operator: airflow_mlops.operators.gpu_train:GpuTrainOperator\n"
        "    args:\n      script: train.py\n      gpus: -1\n      mlflow: {experimnt: x}\n",
        ["8:13 stages.train.args.gpus: gpus must be a whole number ≥ 0, got -1",
         "9:16 stages.train.args.mlflow.experimnt: unknown key 'experimnt' (did you mean 'experiment'?); expected one "
         "of 'tracking_uri', 'conn_id', 'experiment', 'registered_model', 'artifact_location', 'ui_url'"],
        id="own-operator-every-problem",
    ),
    pytest.param(
        "id: p\nstages:\n  lag:\n    kind: custom\n    operator: airflow_mlops.sensors.kafka:KafkaLagSensor\n"
        "    args: {topics: [t], group_id: g, threshold: 0}\n",
        ["6:49 stages.lag.args.threshold: threshold must be a whole number ≥ 1, got 0"],
        id="own-sensor",
    ),
    pytest.param(
        "id: p\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n"
        "  train: {estimator: sklearn.linear_model.LogisticRegression, target: target}\n"
        "  validate: {alias: latest, previous_alias: V1}\n",
        ["5:21 stages.validate.alias: MLflow reserves the alias 'latest' ('latest' and 'v<number>' already name "
         "versions); choose another, e.g. 'champion' or 'production'",
         "5:45 stages.validate.previous_alias: MLflow reserves the alias 'V1' ('latest' and 'v<number>' already "
         "name versions); choose another, e.g. 'champion' or 'production'"],
        id="reserved-aliases",
    ),
    pytest.param(
        "id: p\nstages:\n  serve: {mode: batch}\n",
        ["3:3 stages.serve: stage 'serve' serves a model, and no stage before it trains or validates one: add a "
         "train or validate stage before it, set 'model: models:/<name>@<alias>' on it, or set "
         "mlflow.registered_model to serve that model's 'champion'",
         "3:3 stages.serve: stage 'serve' scores a dataset, and has none: set 'input' on it, or add a preprocess "
         "stage before it to use its test split (or list one in its depends_on)"],
        id="serve-without-model-or-data",
    ),
    pytest.param(
        "id: p\nstages:\n  preprocess: {input: {sklearn_dataset: iris}, split: null}\n"
        "  train: {estimator: sklearn.linear_model.LogisticRegression, target: target}\n",
        ["4:3 stages.train: stage 'train' trains on the train/test split of an upstream preprocess stage, and has "
         "none; preprocess 'preprocess' has 'split: null' (one dataset, no train/test split): add a preprocess "
         "stage before it (or list one in its depends_on)"],
        id="train-without-split",
    ),
    pytest.param(
        "id: p\nstages:\n  validate: {thresholds: {accuracy: {min: 0.9}}}\n",
        ["3:3 stages.validate: stage 'validate' validates the model version an upstream train stage registers, and "
         "has none: add a train stage before it (or list one in its depends_on)"],
        id="validate-without-train",
    ),
    pytest.param(
        "id: p\nstages:\n  drift: {current: {path: /data/new.csv}}\n",
        ["3:3 stages.drift: stage 'drift' compares 'current' with a reference, and has none: set 'reference' on "
         "it, or add a preprocess stage before it to use its train split (or list one in its depends_on)"],
        id="drift-without-reference",
    ),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_validate_and_airflow_reach_the_same_verdict(dags_folder, capsys, text, expected):
    path = dags_folder / "p.yaml"
    path.write_text(text)
    write(dags_folder, "good.yaml", GOOD)
    errors = [f"{path}:{e}" for e in expected]

    code, lines, err = validate(capsys, dags_folder)
    assert (code, lines) == (1, errors)
    assert f"1 of 2 pipeline file(s) invalid, {len(errors)} error(s)" in err

    bag = dagbag(dags_folder)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["good", "p"]
    assert "invalid-pipeline" in bag.dags["p"].tags
    assert [line for line in bag.dags["p"].doc_md.splitlines() if line.startswith("- ")] == [f"- `{e}`" for e in errors]


def test_what_validate_passes_airflow_loads_and_runs_as_written(dags_folder, capsys):
    """The fixed versions of the cases above: valid, and the DAG is what the YAML says."""
    write(dags_folder, "p.yaml", """
        id: p
        dag: {schedule: "0 6 * * mon-fri"}
        stages:
          feature_engineering: {kind: preprocess, input: {sklearn_dataset: iris}}
          train-v2: {kind: train, estimator: sklearn.linear_model.LogisticRegression, target: target}
          hello:
            kind: custom
            operator: airflow.providers.standard.operators.bash:BashOperator
            args: {bash_command: echo hello}
        """)
    assert validate(capsys, dags_folder)[0] == 0
    bag = dagbag(dags_folder)
    assert bag.import_errors == {}
    dag = bag.dags["p"]
    assert dag.timetable.expression == "0 6 * * mon-fri"
    assert sorted(dag.task_group.children) == ["feature_engineering", "hello", "train-v2"]
    assert dag.get_task("hello.run").bash_command == "echo hello"


def test_a_failure_only_airflow_sees_is_reported_at_the_yaml_that_caused_it(dags_folder, capsys):
    """The DAG is built by validate too: what Airflow refuses while building a stage's tasks is
    reported at that stage (here default_args that no operator accepts), not at file:1:1."""
    path = write(dags_folder, "p.yaml", """
        id: p
        dag: {default_args: {pool_slots: 0}}
        stages:
          preprocess: {input: {sklearn_dataset: iris}}
        """)
    code, lines, _ = validate(capsys, dags_folder)
    assert code == 1
    assert lines == [f"{path}:4:3 stages.preprocess: Airflow refused this stage: ValueError: pool slots for "
                     "preprocess.run in dag p cannot be less than 1"]
    placeholder = dagbag(dags_folder).dags["p"]
    assert lines[0] in placeholder.doc_md


def test_asset_no_pipeline_produces_is_a_warning_and_an_error_with_strict(dags_folder, capsys, caplog):
    write(dags_folder, "monitor.yaml", """
        id: churn_monitor
        stages:
          drift: {reference: {path: /data/ref.csv}, current: {path: /data/new.csv}}
        """)
    retrain = write(dags_folder, "retrain.yaml", """
        id: churn_retrain
        dag: {schedule_on_assets: [churn_monitor.drfit]}
        stages:
          preprocess: {input: {path: /data/churn.csv}}
        """)
    warning = (f"{retrain}:2:28 dag.schedule_on_assets.0: warning: no pipeline here produces the asset "
               "'churn_monitor.drfit' (did you mean 'churn_monitor.drift'?); pipelines produce '<pipeline id>.<stage>' "
               "(preprocess, serve and drift stages) and '<pipeline id>.<stage>.model' (train stages)")
    code, lines, _ = validate(capsys, dags_folder)
    assert (code, lines) == (0, [warning, "2 pipeline file(s) valid, 1 warning(s)"])
    code, lines, err = validate(capsys, "--strict", dags_folder)
    assert (code, lines) == (1, [warning.replace(" warning: ", " ")])
    assert "1 of 2 pipeline file(s) invalid, 1 error(s)" in err

    from airflow_mlops import load_pipelines

    with caplog.at_level(logging.WARNING, logger="airflow_mlops.factory.loader"):
        dags = load_pipelines(folder=dags_folder)
    assert sorted(dags) == ["churn_monitor", "churn_retrain"]  # the loader is never strict
    assert "'churn_monitor.drfit' (did you mean 'churn_monitor.drift'?)" in caplog.text


def test_defaults_are_the_same_whichever_folder_is_validated(dags_folder, capsys):
    """validate given a sub-folder or a file applies the _defaults.yaml above it, like the loader."""
    write(dags_folder, "_defaults.yaml", "resource_profiles: {gpu-box: {cpu: 8, memory: 32Gi, gpu: 1}}\n")
    path = write(dags_folder, "team/p.yaml", """
        id: p
        stages:
          preprocess: {input: {sklearn_dataset: iris}, resources: gpu-box}
        """)
    for target in (dags_folder, dags_folder / "team", path):
        assert validate(capsys, target)[:2] == (0, ["1 pipeline file(s) valid"])
    bag = dagbag(dags_folder)
    assert bag.import_errors == {} and "invalid-pipeline" not in bag.dags["p"].tags


# --- one file can hurt the others ---------------------------------------------------------------------


def test_alias_bomb_is_refused_at_the_alias_and_the_rest_of_the_folder_loads(dags_folder, capsys):
    lines = ["id: bomb", 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):  # each level is 9 aliases of the one before: 9**9 values in all
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*{'a' if i == 1 else f'l{i - 1}'}"] * 9) + "]")
    lines.append("stages: {preprocess: {input: {sklearn_dataset: iris}}}")
    bomb = dags_folder / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    write(dags_folder, "good.yaml", GOOD)
    error = (f"{bomb}:6:10 aliases in this file stand for more than 10,000 values (*l3 alone for 7,381); write the "
             "values out or use fewer nested aliases")
    assert validate(capsys, dags_folder)[:2] == (1, [error])
    bag = dagbag(dags_folder)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["bomb", "good"]
    assert "invalid-pipeline" in bag.dags["bomb"].tags and error in bag.dags["bomb"].doc_md


def test_merge_keys_follow_yaml_and_keep_positions(dags_folder, capsys):
    path = dags_folder / "p.yaml"
    stages = "stages:\n  preprocess: {input: {sklearn_dataset: iris}}\n"
    # Written keys win over merged ones; of two merge sources, the earlier wins.
    path.write_text("id: p\ndag:\n  <<: [{owner: first, retries: 2}, {owner: second, catchup: true}]\n  retries: 4\n"
                    + stages)
    assert validate(capsys, dags_folder)[:2] == (0, ["1 pipeline file(s) valid"])
    dag = dagbag(dags_folder).dags["p"]
    assert (dag.default_args["owner"], dag.default_args["retries"], dag.catchup) == ("first", 4, True)
    # A merged value's error points where the value was written.
    path.write_text("id: p\ndag:\n  <<: {owner: team-a, retries: -2}\n  catchup: true\n" + stages)
    assert validate(capsys, dags_folder)[1] == [f"{path}:3:32 dag.retries: input should be greater than or equal "
                                                "to 0, got -2"]
    # Only a key written twice in one mapping is a duplicate.
    path.write_text("id: p\ndag:\n  <<: {owner: a}\n  retries: 4\n  retries: 5\n" + stages)
    assert validate(capsys, dags_folder)[1] == [f"{path}:5:3 dag.retries: duplicate key 'retries' (first defined "
                                                "at line 4)"]


def test_airflowignore_and_hidden_folders_hide_stale_copies(dags_folder, capsys):
    live = write(dags_folder, "churn.yaml", """
        id: churn
        stages:
          preprocess: {input: {path: /data/churn.csv}}
        """)
    # A notebook's autosave and an old copy: same id, one of them broken.
    write(dags_folder, ".ipynb_checkpoints/churn-checkpoint.yaml", live.read_text().replace("/data", "/old"))
    write(dags_folder, "archive/churn_v1.yaml", "id: churn\nstages: {trian: {}}\n")
    write(dags_folder, ".airflowignore", "archive/\n")
    write(dags_folder, ".churn.yaml.swp.yaml", "garbage: [\n")
    assert validate(capsys, dags_folder)[:2] == (0, ["1 pipeline file(s) valid"])
    bag = dagbag(dags_folder)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["churn"]
    assert "invalid-pipeline" not in bag.dags["churn"].tags
    assert "/data/churn.csv" in bag.dags["churn"].doc_md


def test_broken_files_of_the_same_name_get_a_placeholder_each(dags_folder):
    write(dags_folder, "team_a/broken.yaml", "stages: [\n")
    write(dags_folder, "team_b/broken.yaml", "stages: [\n")
    write(dags_folder, "good.yaml", GOOD)
    bag = dagbag(dags_folder)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["good", "invalid__team_a__broken", "invalid__team_b__broken"]
    assert str(dags_folder / "team_b" / "broken.yaml") in bag.dags["invalid__team_b__broken"].doc_md


def test_names_and_schedule_are_reported_with_the_models_errors(tmp_path, capsys):
    path = write(tmp_path, "churn.yaml", """
        id: churn
        backend: sprak
        dag:
          schedule: "@dialy"
        stages:
          feature engineering: {kind: preprocess, input: {path: /data/churn.parquet}}
        """)
    code, lines, _ = validate(capsys, path)
    assert code == 1
    assert [line.split(" ", 2)[:2] for line in lines] == [
        [f"{path}:2:10", "backend:"], [f"{path}:4:13", "dag.schedule:"], [f"{path}:6:3", "stages.feature"]]


def test_validate_imports_modules_beside_the_pipelines_as_airflow_does(capsys, tmp_path):
    """Airflow puts the dags folder on sys.path: a callback module beside the pipelines resolves
    in ``validate`` without PYTHONPATH, given the folder or one file; a typo'd module still fails.
    The folder is taken off sys.path again afterwards."""
    import sys

    folder = tmp_path / "team_dags"
    write(folder, "team_alerts_beside.py", "def notify(context):\n    pass\n")
    write(folder, "alerted.yaml", """
        id: alerted
        dag: {on_failure_callback: team_alerts_beside.notify}
        stages: {preprocess: {input: {path: /data/x.csv}}}
        """)
    assert str(folder) not in sys.path
    assert validate(capsys, str(folder))[0] == 0
    assert validate(capsys, str(folder / "alerted.yaml"))[0] == 0
    assert str(folder) not in sys.path
    (folder / "alerted.yaml").write_text((folder / "alerted.yaml").read_text().replace("team_alerts_beside", "team_alert"))
    code, lines, _ = validate(capsys, str(folder))
    assert code == 1 and "dag.on_failure_callback" in lines[0] and "team_alert" in lines[0], lines


def test_a_custom_operator_is_constructed_once_per_parse_and_its_value_errors_still_point_at_args(capsys, tmp_path):
    """The loader builds each custom stage's operator once (in the DAG); a file with problems
    still gets every one reported, the operator's own refusal of a value among them."""
    folder = tmp_path / "counted"
    write(folder, "counting_ops.py", """
        from airflow.sdk import BaseOperator

        BUILT = []

        class CountedOperator(BaseOperator):
            def __init__(self, *, size: int = 1, **kwargs):
                super().__init__(**kwargs)
                if size < 0:
                    raise ValueError(f"size must be >= 0, got {size}")
                BUILT.append(self.task_id)
        """)
    write(folder, "counted.yaml", """
        id: counted
        stages:
          step: {kind: custom, operator: "counting_ops:CountedOperator", args: {size: 2}}
        """)
    import sys

    from airflow_mlops.factory.pipelines import load_dags

    sys.path.insert(0, str(folder))
    try:
        import counting_ops

        verdict = load_dags([folder])
        assert [loaded.pipeline.id for loaded, _ in verdict.good] == ["counted"]
        assert counting_ops.BUILT == ["step.run"]  # once: the DAG's task, no second throw-away one
        write(folder, "counted.yaml", """
            id: counted
            stages:
              step: {kind: custom, operator: "counting_ops:CountedOperator", args: {size: -1}}
              other: {kind: custom, operator: "counting_ops:CountedOperator", depends_on: [nope]}
            """)
        code, lines, _ = validate(capsys, str(folder))
        assert code == 1
        assert any("stages.other.depends_on" in line and "unknown stage 'nope'" in line for line in lines), lines
        assert any("stages.step.args" in line and "size must be >= 0, got -1" in line for line in lines), lines
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("counting_ops", None)


def test_a_value_nested_deeper_than_airflow_can_serialize_is_refused_at_its_line(dags_folder, capsys):
    """Before: a param default nested 250 levels passed validate, then Airflow's serializer hit
    RecursionError and the DAG was missing, its import error a raw traceback under the loader."""
    from airflow_mlops.cli import main
    from airflow_mlops.factory.loader import INVALID_TAG, load_pipelines

    deep = "[" * 250 + "1" + "]" * 250
    stages = "stages:\n  preprocess: {input: {sklearn_dataset: iris}}\n"
    write(dags_folder, "deep.yaml", f"id: deep\nparams:\n  layers: {{default: {deep}}}\n{stages}")
    write(dags_folder, "fine.yaml", f"id: fine\n{stages}")
    assert main(["validate", str(dags_folder)]) == 1
    out = capsys.readouterr().out
    assert f"{dags_folder / 'deep.yaml'}:3:" in out
    assert "params.layers.default.0.0.0" in out and "nested more than 64 levels deep: Airflow serializes" in out
    dags = load_pipelines(folder=dags_folder)
    assert INVALID_TAG in dags["deep"].tags and INVALID_TAG not in dags["fine"].tags


@pytest.mark.parametrize(("text", "expected"), [
    ("id: a\nstages:\n  train:\n    <<: *train_defaults\n    target: t\n",
     "4:9 YAML syntax error: found undefined alias 'train_defaults' (no anchor &train_defaults is defined before it)"),
    ("id: a\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n  train:\n    estimator: yes\n    target: t\n",
     "5:16 stages.train.estimator: expected a string, got yes (YAML reads it unquoted as a boolean, True): quote it, "
     "'yes', for the text"),
    ("id: a\ndag:\n  schedule: '@continuous'\n  max_active_runs: 4\nstages:\n  preprocess: {input: {sklearn_dataset: iris}}\n",
     "4:3 dag.max_active_runs: Airflow refused the DAG: ValueError: Invalid max_active_runs: ContinuousTimetable "
     "requires max_active_runs <= 1"),
])
def test_wording_names_what_was_written_and_points_at_its_line(tmp_path, capsys, text, expected):
    """Before: the alias's name was dropped, an unquoted yes showed as True with no hint, and the
    @continuous refusal pointed at dag:, not at max_active_runs."""
    from airflow_mlops.cli import main

    path = write(tmp_path, "p.yaml", text)
    assert main(["validate", str(path)]) == 1
    assert f"{path}:{expected}" in capsys.readouterr().out
