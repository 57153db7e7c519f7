"""A promotion approved by a person (validate ``approval:``), on a real deployment: api-server,
scheduler (LocalExecutor), dag-processor and triggerer as separate processes
(tests/airflow_stack.py), Airflow's own human-in-the-loop form answered by clicking in Chromium
(over the DevTools protocol, tests/cdp.py). Approve moves the alias and records who and when;
Reject leaves the champion where it is and skips serving."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.airflow_stack import LOADER
from tests.ui_stack import chromium_binary

PIPELINE = """
id: approve_stack
stages:
  preprocess: {input: {sklearn_dataset: iris}}
  train:
    estimator: sklearn.linear_model.LogisticRegression
    params: {max_iter: 300}
    target: target
    metrics: [accuracy]
  validate:
    thresholds: {accuracy: {min: 0.5}}
    compare: {accuracy: {direction: higher}}
    on_reject: skip
    approval: {timeout: 1h}
  serve: {mode: batch}
"""
FINISHED = ("success", "failed", "skipped", "upstream_failed")


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, and CI=true: the browser tests must run")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


def _states(stack, run_id: str) -> dict[str, str]:
    return {row["task_id"]: row["state"]
            for row in stack.cli_json("tasks", "states-for-dag-run", "approve_stack", run_id)}


def _wait(stack, run_id: str, done, what: str, timeout: float = 300) -> dict[str, str]:
    deadline, states = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        stack._check_alive()
        states = _states(stack, run_id)
        if done(states):
            return states
        time.sleep(2)
    raise TimeoutError(f"{what}: not reached in {timeout:.0f} s: {states}\n{stack.output_tail()}")


def _answer_in_the_ui(stack, tab, run_id: str, button: str) -> str:
    """Open the approval task's "Required Actions" in Airflow's UI, click ``button``; the form's text.

    Not before the scheduler has taken in the end of the workload that parked the task: Airflow
    3.3 fails a resumed task when the parking workload's late "success" event arrives while the
    answer's workload runs (seen here when the answer came within 5 s on a loaded machine)."""
    parked = (f"Received executor event with state success for task instance TaskInstanceKey(dag_id='approve_stack', "
              f"task_id='validate.approval', run_id='{run_id}'")
    deadline = time.monotonic() + 120
    while parked not in stack.output("scheduler") and time.monotonic() < deadline:
        time.sleep(1)
    tab.go(f"{stack_url(stack)}/dags/approve_stack/runs/{run_id}/tasks/validate.approval/required_actions")
    find = (f"[...document.querySelectorAll('button')].find(b => b.textContent.trim() === {json.dumps(button)})")
    tab.wait_for(f"!!{find}")
    text = tab.eval("document.body.innerText")
    tab.eval(f"{find}.setAttribute('data-click-me', '1')")
    tab.click("button[data-click-me='1']")
    return text


def stack_url(stack) -> str:
    return f"http://127.0.0.1:{stack.port}"


def test_a_person_approves_or_rejects_the_promotion_in_the_airflow_ui(airflow_stack, browser, tmp_path_factory):
    from mlflow import MlflowClient

    from tests.cdp import Chromium

    stack = airflow_stack
    (stack.dags / "approve_stack.yaml").write_text(PIPELINE)
    (stack.dags / "pipelines.py").write_text(LOADER)
    stack.wait_for_dag("approve_stack")
    stack.cli("dags", "unpause", "approve_stack")
    client = MlflowClient(tracking_uri=f"sqlite:///{stack.home / 'mlops' / 'mlflow.db'}")
    chrome = Chromium(browser, tmp_path_factory.mktemp("cdp-approval") / "profile")
    try:
        tab = chrome.page()
        # Run 1: the first version waits for a person; Approve in the form moves 'champion' to it.
        stack.cli("dags", "trigger", "approve_stack", "--run-id", "approve_1")
        states = _wait(stack, "approve_1", lambda s: s.get("validate.approval") == "awaiting_input"
                       or s.get("validate.approval") in FINISHED, "approval asked")
        assert states["validate.approval"] == "awaiting_input", states
        name = "approve_stack"  # the registered model: the pipeline id
        assert client.get_model_version(name, "1").tags["airflow_mlops.decision"] == "awaiting-approval"
        assert not client.get_registered_model(name).aliases  # nothing promoted before the answer
        form = _answer_in_the_ui(stack, tab, "approve_1", "Approve")
        assert f"Promote {name} version 1 to 'champion'?" in form and "first version to pass" in form, form[:3000]
        states = _wait(stack, "approve_1", lambda s: all(v in FINISHED for v in s.values()), "run 1 finished")
        assert states == {"preprocess.run": "success", "train.run": "success", "validate.run": "success",
                          "validate.approval": "success", "serve.run": "success"}, stack.output_tail()
        assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"champion": "1"}
        v1 = client.get_model_version(name, "1").tags
        approval = json.loads(v1["airflow_mlops.approval"])
        assert approval["decision"] == "approved" and approval["by"] and not approval["timed_out"], approval
        assert v1["airflow_mlops.decision"] == "promoted" and f"approved by {approval['by']}" in \
            v1["airflow_mlops.decision_detail"]

        # Run 2: the same model again (it ties, which passes the gate); Reject leaves v1 champion.
        stack.cli("dags", "trigger", "approve_stack", "--run-id", "approve_2")
        _wait(stack, "approve_2", lambda s: s.get("validate.approval") == "awaiting_input", "approval asked again")
        form = _answer_in_the_ui(stack, tab, "approve_2", "Reject")
        assert "version 2 vs champion 1: accuracy" in form, form[:3000]  # the gate's comparison in the form
        states = _wait(stack, "approve_2", lambda s: all(v in FINISHED for v in s.values()), "run 2 finished")
        assert (states["validate.approval"], states["serve.run"]) == ("skipped", "skipped"), states
        assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"champion": "1"}
        v2 = client.get_model_version(name, "2").tags
        assert v2["airflow_mlops.decision"] == "rejected"
        assert f"rejected by {approval['by']}" in v2["airflow_mlops.decision_detail"]
        assert json.loads(v2["airflow_mlops.approval"])["decision"] == "rejected"
        # The run's page says why it skipped: the task's note and the run's (the package's listener).
        api = "/api/v2/dags/approve_stack/dagRuns/approve_2"
        ti = tab.eval(f"fetch('{api}/taskInstances/validate.approval').then(r => r.json())")
        run = tab.eval(f"fetch('{api}').then(r => r.json())")
        assert ti["note"].startswith("Skipped: model 'approve_stack' version 2 rejected by "), ti
        assert run["note"].startswith("Skipped: validate.approval: model 'approve_stack' version 2 rejected by "), run
    finally:
        chrome.close()
