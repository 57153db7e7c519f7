"""The MLOps pages inside the Airflow UI, end to end: the demo pipeline (breast_cancer, with a
champion comparison added) really runs twice through Airflow — v1 promoted, v2 rejected — and a
drift monitor twice; a real ``airflow api-server`` loads the plugin through its entry point; the
JSON API is checked to the value, each page is rendered in headless Chromium (screenshots kept
under the pytest tmp dir), an anonymous request is refused when login is required, and an
unreachable MLflow is said so on the page.

Chromium: skipped only when no binary is installed and ``CI`` is not ``true``; in CI it must run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import release_asset_names, write
from tests.ui_stack import ApiServer, chromium, chromium_binary, http

COMPARE = """    compare:
      roc_auc: {direction: higher, min_improvement: 0.01}
    alias: champion"""
OOM_MESSAGE = ("stage 'train' ran out of memory: Kubernetes killed pod ml/breast-cancer-train-x (OOMKilled: exit "
               "code 137) at its memory limit of 1Gi. A retry with the same limit would be killed again: raise the "
               "stage's resources.memory, or give it a resource profile with more")


BROKEN = """id: churn_broken
stages:
  train:
    kind: train
    estimator: sklearn.ensemble.RandomForestClassifier
    target: churned
    bogus: 1
"""


def _drift_data(path: Path, seed: int, shift: float) -> str:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    pd.DataFrame({"radius": rng.normal(14 + shift * 4, 3, 2000), "texture": rng.normal(19, 4, 2000),
                  "clinic": rng.choice(["north", "south"], 2000, p=[0.5, 0.5])}).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="session")
def ui_store(airflow_db, tmp_path_factory):
    """The demo's MLflow store after: breast_cancer run twice (v1 promoted; v2 the same model,
    rejected: no roc_auc gain over the champion), tumour_drift run twice (no drift, then drift)."""
    from airflow.dag_processing.dagbag import DagBag

    base = tmp_path_factory.mktemp("ui")
    mlops, dags = base / "mlops", base / "dags"
    dags.mkdir()
    shutil.copy(REPO / "example_configs" / "_defaults.yaml", dags)
    demo = (REPO / "example_configs" / "breast_cancer.yaml").read_text()
    assert "    alias: champion" in demo
    (dags / "breast_cancer.yaml").write_text(demo.replace("    alias: champion", COMPARE))
    (dags / "pipelines.py").write_text("# Airflow DAGs\nfrom airflow_mlops import load_pipelines\n\n"
                                       "load_pipelines(globals())\n")
    reference = _drift_data(base / "reference.csv", 1, 0.0)
    states = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_MLOPS_HOME", str(mlops))
        mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags))
        mp.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([{
            "name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(dags)}}]))
        release_asset_names("breast_cancer.")  # the demo test's pipeline of the same id left its own
        for n in (1, 2):
            dr = DagBag(dag_folder=str(dags)).dags["breast_cancer"].test()
            states[f"breast_cancer#{n}"] = {ti.task_id: ti.state for ti in dr.get_task_instances()}
        for n, shift in ((1, 0.0), (2, 1.0)):
            current = _drift_data(base / f"current{n}.csv", 1 + n, shift)
            write(dags, "tumour_drift.yaml", f"""
                id: tumour_drift
                stages:
                  drift:
                    reference: {{path: {reference}}}
                    current: {{path: {current}}}
                    on_drift: report
                """)
            dr = DagBag(dag_folder=str(dags)).dags["tumour_drift"].test()
            states[f"tumour_drift#{n}"] = {ti.task_id: ti.state for ti in dr.get_task_instances()}
        # A broken pipeline beside them: its placeholder DAG, stored as the DAG processor stores it.
        (dags / "churn_broken.yaml").write_text(BROKEN)
        from airflow.dag_processing.dagbag import sync_bag_to_db

        sync_bag_to_db(DagBag(dag_folder=str(dags)), "dags-folder", None)
    assert states["breast_cancer#1"] == dict.fromkeys(
        ["preprocess.run", "train.run", "validate.run", "serve.run"], "success")
    assert (states["breast_cancer#2"]["validate.run"], states["breast_cancer#2"]["serve.run"]) == \
        ("failed", "upstream_failed")
    assert states["tumour_drift#1"] == states["tumour_drift#2"] == {"drift.run": "success"}
    # A third training try whose pod Kubernetes killed for memory, as its worker records it.
    from airflow_mlops._core.context import MlflowTarget
    from airflow_mlops.stages.train.failures import record_failure

    target = MlflowTarget(tracking_uri=f"sqlite:///{mlops / 'mlflow.db'}", experiment="breast-cancer",
                          registered_model="breast_cancer_classifier")
    assert record_failure(target, {"airflow.dag_id": "breast_cancer", "airflow.run_id": "manual__oom",
                                   "airflow.task_id": "train.run", "airflow.try_number": "1",
                                   "airflow_mlops.task_key": "breast_cancer/manual__oom/train.run"},
                          reason="OOMKilled", message=OOM_MESSAGE)
    return mlops


@pytest.fixture(scope="session")
def ui_server(ui_store, tmp_path_factory):
    """The api-server as a newcomer runs it: no login (all admins)."""
    server = ApiServer(tmp_path_factory.mktemp("api-open"), ui_store, all_admins=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def locked_server(ui_store, tmp_path_factory):
    """Login required, and MLflow pointed at a port nobody listens on."""
    from tests.airflow_stack import free_port

    server = ApiServer(tmp_path_factory.mktemp("api-locked"), ui_store, all_admins=False,
                       **{"mlops.tracking_uri": f"http://127.0.0.1:{free_port()}"}).start()
    yield server
    server.stop()


def test_models_api_reports_versions_aliases_decisions_and_cost(ui_server):
    status, body = http(f"{ui_server.url}/mlops/api/models")
    assert status == 200, body
    models = json.loads(body)
    assert [m["name"] for m in models] == ["breast_cancer_classifier"]
    model = models[0]
    assert (model["champion"], model["previous_champion"], model["aliases"]) == ("1", None, {"champion": "1"})
    assert model["dag_ids"] == ["breast_cancer"]
    v2, v1 = model["versions"]
    assert (v1["version"], v1["aliases"], v1["decision"], v1["decision_detail"]) == \
        ("1", ["champion"], "defended", v2["decision_detail"])
    assert (v2["version"], v2["aliases"], v2["decision"]) == ("2", [], "rejected")
    auc = v1["metrics"]["roc_auc"]
    assert v2["decision_detail"] == (f"version 2 vs champion 1: roc_auc {auc:.4g} vs {auc:.4g} (higher is better, "
                                     "gain +0, needed 0.01: not enough)")
    assert set(v1["metrics"]) == {"accuracy", "f1", "roc_auc"}  # no cost/ or gpu/ figures among them
    for v in (v1, v2):
        assert v["dag_id"] == "breast_cancer" and v["task_id"] == "train.run"
        assert v["dag_run_url"] == f"/dags/breast_cancer/runs/{v['dag_run_id'].replace(':', '%3A').replace('+', '%2B')}"
        assert v["mlflow_run_url"].endswith(f"/runs/{v['run_id']}")
        cost = v["cost"]
        # cpu-train holds 2 CPUs and 4 GiB, no GPU; billed 0.1 per CPU-h and 0.05 per GiB-h (_defaults.yaml)
        assert cost["gpu_hours"] == 0 and cost["memory_gib_hours"] == pytest.approx(2 * cost["cpu_hours"])
        assert cost["total"] == pytest.approx(cost["cpu_hours"] * 0.1 + cost["memory_gib_hours"] * 0.05)
        assert v["prices"] == {"currency": "USD", "gpu_hour": 2.5, "cpu_hour": 0.1, "memory_gib_hour": 0.05}
        assert v["params"]["n_estimators"] == "100"  # the fitted hyperparameters, as MLflow stores them
        assert v["gpu"]["available"] is False and "GPU" in v["gpu"]["reason"]
    # what the gate judged on, recorded with the version (the pages chart these metrics first)
    assert v2["gate"] == {"compare": {"roc_auc": "higher"},
                          "thresholds": {"accuracy": {"min": 0.9, "max": None}, "roc_auc": {"min": 0.95, "max": None}}}
    (oom,) = model["failed_trainings"]
    assert (oom["dag_id"], oom["dag_run_id"], oom["try_number"], oom["reason"], oom["message"]) == \
        ("breast_cancer", "manual__oom", "1", "OOMKilled", OOM_MESSAGE)
    assert oom["dag_run_url"] == "/dags/breast_cancer/runs/manual__oom"
    assert http(f"{ui_server.url}/mlops/api/models/no_such_model")[0] == 404


def test_drift_and_dag_api(ui_server):
    status, body = http(f"{ui_server.url}/mlops/api/drift")
    assert status == 200, body
    (monitor,) = json.loads(body)
    assert (monitor["dag_id"], monitor["task_id"]) == ("tumour_drift", "drift.run")
    latest = monitor["latest"]
    assert sorted(latest["features"]) == ["clinic", "radius", "texture"]
    assert latest["features"]["radius"]["drifted"] is True and latest["features"]["radius"]["psi"] > 0.2
    assert latest["features"]["texture"]["drifted"] is False and latest["features"]["clinic"]["ks"] is None
    assert latest["drifted_count"] == 1
    assert [t["drifted_count"] for t in monitor["trend"]] == [0, 1]  # oldest first
    assert monitor["trend"][0]["psi"]["radius"] < 0.1 < monitor["trend"][1]["psi"]["radius"]

    summary = json.loads(http(f"{ui_server.url}/mlops/api/dags/breast_cancer")[1])
    (model,) = summary["models"]
    assert (model["name"], model["champion"], model["latest"]["version"], model["latest"]["decision"]) == \
        ("breast_cancer_classifier", "1", "2", "rejected")
    assert summary["drift"] == []
    assert json.loads(http(f"{ui_server.url}/mlops/api/dags/tumour_drift")[1])["models"] == []


def test_pipeline_yaml_api_gives_the_file_its_defaults_and_where_each_setting_came_from(ui_server, ui_store):
    """The Pipeline YAML tab's facts: the pipeline file line by line, the _defaults.yaml that
    applied, and each setting the defaults gave with the file and line it came from."""
    dags = ui_store.parent / "dags"
    status, body = http(f"{ui_server.url}/mlops/api/dags/breast_cancer/source")
    assert status == 200, body
    info = json.loads(body)
    assert (info["recorded"], info["invalid"], info["profile"], info["errors"]) == (True, False, None, [])
    pipeline, defaults = info["files"]
    assert (pipeline["role"], pipeline["path"], pipeline["available"], pipeline["shown_from"]) == \
        ("pipeline", str((dags / "breast_cancer.yaml").resolve()), True, "disk")
    written = (dags / "breast_cancer.yaml").read_text().splitlines()
    assert [(line["number"], line["text"]) for line in pipeline["lines"]] == list(enumerate(written, 1))
    assert not any(line["errors"] for line in pipeline["lines"])
    assert (defaults["role"], defaults["path"]) == ("defaults", str((dags / "_defaults.yaml").resolve()))
    owner_line = next(n for n, text in enumerate((dags / "_defaults.yaml").read_text().splitlines(), 1)
                      if text.strip() == "owner: ml-platform")
    settings = {s["key"]: s for s in info["settings"]}
    assert settings["dag.owner"] == {"key": "dag.owner", "value": "ml-platform", "from": "defaults",
                                     "file": defaults["path"], "line": owner_line}
    assert settings["backend"]["value"] == "batch"
    assert "dag.tags" not in settings  # the pipeline's own tags win: not the defaults' setting
    assert all(s["file"] == defaults["path"] for s in info["settings"])

    status, body = http(f"{ui_server.url}/mlops/api/dags/no_such_dag/source")
    assert status == 404, body
    status, body = http(f"{ui_server.url}/mlops/api/dags/breast_cancer/source?path=/etc/passwd")
    assert status == 200 and "root:" not in body  # a request names no file


def test_a_broken_pipelines_placeholder_shows_its_failing_lines(ui_server, ui_store):
    status, body = http(f"{ui_server.url}/mlops/api/dags/churn_broken/source")
    assert status == 200, body
    info = json.loads(body)
    assert info["invalid"] is True and info["errors"]
    broken = info["files"][0]
    assert broken["path"] == str((ui_store.parent / "dags" / "churn_broken.yaml").resolve())
    assert [line["text"] for line in broken["lines"]] == BROKEN.splitlines()
    bogus = broken["lines"][BROKEN.splitlines().index("    bogus: 1")]
    assert any("stages.train.bogus: unknown key 'bogus'" in e for e in bogus["errors"]), bogus
    failing = {line["number"] for line in broken["lines"] if line["errors"]}
    assert failing == {e["line"] for e in info["errors"] if e["file"] == broken["path"]}
    assert info["files"][1]["role"] == "defaults"  # the defaults that applied, shown with it


def test_plugin_registers_nav_entries_and_dag_tab(ui_server):
    status, body = http(f"{ui_server.url}/api/v2/plugins")
    assert status == 200, body
    (plugin,) = [p for p in json.loads(body)["plugins"] if p["name"] == "airflow_mlops"]
    apps = {a["name"]: (a["bundle_url"], a["destination"], a["url_route"]) for a in plugin["react_apps"]}
    assert apps == {"Models": ("mlops/static/mlops-view.js?view=models", "nav", "mlops-models"),
                    "Drift": ("mlops/static/mlops-view.js?view=drift", "nav", "mlops-drift"),
                    "MLOps": ("mlops/static/mlops-view.js?view=dag", "dag", "mlops"),
                    "Pipeline YAML": ("mlops/static/mlops-view.js?view=source", "dag", "mlops-source")}
    assert plugin["external_views"] == []  # an iframe's sandbox let no link leave it
    assert plugin["listeners"] == ["airflow_mlops.listeners"]
    assert "/mlops" in [a["url_prefix"] for a in plugin["fastapi_apps"]]
    status, script = http(f"{ui_server.url}/mlops/static/mlops-view.js")
    assert status == 200 and "globalThis.AirflowPlugin = MlopsView" in script
    assert "Failed to" not in ui_server.output() and "Traceback" not in ui_server.output()


def test_connection_editor_gets_the_mlflow_form(ui_server):
    """What Airflow 3's connection editor asks the api-server for, answered from provider info."""
    status, body = http(f"{ui_server.url}/ui/connections/hook_meta")
    assert status == 200, body
    (meta,) = [m for m in json.loads(body) if m["connection_type"] == "mlflow"]
    assert meta["hook_name"] == "MLflow"
    assert meta["standard_fields"]["host"] == {
        "hidden": False, "title": "Tracking URI or host",
        "placeholder": "http://mlflow:5000, mlflow.example.com/tracking or sqlite:////srv/mlflow/mlflow.db"}
    assert meta["standard_fields"]["login"]["title"] == "Username (basic auth)"
    assert "MlflowConnectionHook' is not fully initialized" not in ui_server.output()


def test_kafka_connection_form_has_the_security_fields(ui_server):
    """The mlops_kafka form asks for the security protocol, the SASL mechanism (choices) and the CA
    file, besides the bootstrap servers and the SASL username and password."""
    status, body = http(f"{ui_server.url}/ui/connections/hook_meta")
    assert status == 200, body
    (meta,) = [m for m in json.loads(body) if m["connection_type"] == "mlops_kafka"]
    fields = meta["extra_fields"]
    assert fields["security_protocol"]["schema"]["enum"][:4] == ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
    assert "SCRAM-SHA-512" in fields["sasl_mechanism"]["schema"]["enum"]
    assert fields["ssl_cafile"]["schema"]["title"] == "CA certificate file"
    assert meta["standard_fields"]["login"]["title"] == "SASL username"


def test_anonymous_refused_when_login_is_required(locked_server):
    for path in ("/mlops/api/models", "/mlops/models", "/mlops/drift", "/mlops/dags/breast_cancer",
                 "/mlops/api/dags/breast_cancer", "/mlops/api/dags/breast_cancer/source",
                 "/mlops/dags/breast_cancer/source", "/mlops/api/dags/churn_broken/source"):
        status, body = http(locked_server.url + path)
        assert status == 401, (path, body)
        assert "champion" not in body and "estimator" not in body
    status, _ = http(f"{locked_server.url}/mlops/api/models", token="not-a-jwt")
    assert status in (401, 403)
    # A browser opening a page without a session is sent to Airflow's login, to come back after.
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(f"{locked_server.url}/mlops/models", headers={"Accept": "text/html"})
    try:
        urllib.request.build_opener(NoRedirect).open(request, timeout=30)
        raise AssertionError("the page was served without a login")
    except urllib.error.HTTPError as exc:
        assert exc.code == 303
        assert exc.headers["Location"] == "/auth/login?next=" + urllib.parse.quote_plus(f"{locked_server.url}/mlops/models")


def test_unreachable_mlflow_is_said_on_the_page(locked_server):
    token = locked_server.token()
    status, body = http(f"{locked_server.url}/mlops/models", token=token)
    assert status == 503
    assert "MLflow tracking store (http://127.0.0.1:" in body and "could not be read" in body
    assert "to do: check that the tracking server is up" in body
    assert "Traceback" not in body
    status, body = http(f"{locked_server.url}/mlops/api/drift", token=token)
    assert status == 503 and json.loads(body)["detail"].startswith("MLflow tracking store (http://127.0.0.1:")


@pytest.fixture(scope="session")
def browser():
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, and CI=true: the browser tests must run "
                        "(scripts/setup.sh installs it with apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


@pytest.mark.parametrize("page, expected", [
    ("/mlops/models", ["breast_cancer_classifier", "★ champion", "v1", "v2", "rejected", "defended",
                       "roc_auc per version (the gate compares it: higher is better)", "training cost per version (USD)",
                       "no GPU", "GPU-h", "MLflow run", "hyperparameters", "n_estimators = 100",
                       'Models</a>', "mlflow ui", "Failed trainings", "OOMKilled", "at its memory limit of 1Gi",
                       "breast_cancer / manual__oom"]),
    ("/mlops/drift", ["tumour_drift", "radius", "texture", "clinic", "drift", "1 of 3 features drifted",
                      "PSI per feature", "(log scale)", "PSI limit", "threshold 0.2"]),
    ("/mlops/dags/breast_cancer", ["breast_cancer_classifier", "champion", "v2", "rejected", "not enough",
                                   "training cost", "DAG run", "roc_auc per version"]),
    ("/mlops/dags/churn_broken/source", ["Pipeline YAML · churn_broken", "This pipeline does not load",
                                         "churn_broken.yaml", '<tr class="failing" data-line="7">',
                                         "unknown key 'bogus'", "Defaults file", "owner: ml-platform"]),
])
def test_pages_render_in_chromium(ui_server, browser, page, expected, tmp_path_factory):
    """Each page standing alone (opened at /mlops/...), rendered by Chromium."""
    folder = tmp_path_factory.mktemp("screenshots")
    shot = folder / (page.strip("/").replace("/", "_") + ".png")
    dom = chromium(browser, ui_server.url + page, folder / "profile", screenshot=shot)
    print(f"screenshot of {page}: {shot}")
    for text in expected:
        assert text in dom, (text, dom[:3000])
    if "/source" not in page:
        assert "<svg" in dom and ('class="bar' in dom or 'class="series"' in dom)
    if page == "/mlops/models":
        assert 'class="bar champion"' in dom and 'class="bar rejected"' in dom
        v1 = json.loads(http(f"{ui_server.url}/mlops/api/models/breast_cancer_classifier")[1])["versions"][1]
        assert f'{v1["cost"]["total"]:,.6f} USD' in dom  # one number format, with the currency
        assert "e-0" not in dom.split('<table class="versions">')[1]
        # links into Airflow stay in the window; MLflow's open a new tab
        assert f'<a href="{v1["dag_run_url"]}">breast_cancer / {v1["dag_run_id"]}</a>' in dom
        assert f'href="{v1["mlflow_run_url"]}" target="_blank" rel="noopener noreferrer"' in dom
        # the gate's metric on an axis that shows the difference: it does not start at 0
        roc = dom.split('aria-label="roc_auc per version')[1].split("</svg>")[0]
        assert "axis starts at" in roc and "champion v1" in roc


def test_a_value_axis_shows_the_difference_that_decided_a_gate():
    """roc_auc 0.9952 against 0.9954 (a gap that rejected a version) on bars from 0 looked the
    same; the axis now starts just below the values, and says so."""
    from airflow_mlops.ui import charts

    low, top = charts.value_range([0.9952, 0.9954])
    assert 0.99 < low < 0.9952 and 0.9954 < top < 1.0
    svg = charts.bars("roc_auc per version", [("v1", 0.9954, "champion"), ("v2", 0.9952, "rejected")],
                      lines=[("champion v1", 0.9954), ("threshold min", 0.95)])
    heights = [float(part.split('"')[0]) for part in svg.split('height="')[2:]]
    assert heights[0] > heights[1] * 1.5, heights  # the bars differ visibly
    assert "axis starts at" in svg and 'class="ref-line"' in svg
    # the threshold far below the values is named, not drawn at a scale that flattens the bars
    assert "threshold min 0.95 ↓ below the axis" in svg
    assert charts.value_range([0.0001, 0.3]) == (0.0, pytest.approx(0.3 * 1.08))  # costs: from 0


@pytest.fixture(scope="module")
def airflow_ui(ui_server, browser, tmp_path_factory):
    """Airflow's own UI in headless Chromium (driven over CDP), its user's choices set as Airflow
    stores them: dark theme, and Asia/Tokyo as the time zone."""
    from tests.cdp import Chromium

    chrome = Chromium(browser, tmp_path_factory.mktemp("cdp") / "profile")
    tab = chrome.page()
    tab.go(f"{ui_server.url}/")
    tab.eval("localStorage.setItem('theme', 'dark'); localStorage.setItem('timezone', JSON.stringify('Asia/Tokyo'))")
    yield chrome, tab
    chrome.close()


def test_the_mlops_pages_are_part_of_airflows_ui_and_every_link_works(ui_server, airflow_ui, tmp_path_factory):
    """By clicking, in Airflow's UI: the Models page is in Airflow's page (no iframe), dark with
    the user's dark theme, times in the user's time zone; a DAG run link lands on that run in the
    same window; an MLflow link opens a new tab; the DAG tab shows the gate's metric first; the
    Pipeline YAML tab shows the file and the settings its defaults gave."""
    chrome, tab = airflow_ui
    folder = tmp_path_factory.mktemp("screenshots-airflow")
    v1 = json.loads(http(f"{ui_server.url}/mlops/api/models/breast_cancer_classifier")[1])["versions"][1]

    tab.go(f"{ui_server.url}/plugin/mlops-models")
    tab.wait_for("!!document.querySelector('.mlops-view .mlops tr.version')")
    tab.screenshot(folder / "airflow_models_dark.png")
    print(f"screenshots: {folder}")
    assert tab.eval("document.querySelectorAll('iframe').length") == 0
    assert tab.eval("document.documentElement.classList.contains('dark')")
    # Airflow's dark theme reaches the page: light text on Airflow's dark background.
    text = tab.eval("getComputedStyle(document.querySelector('.mlops')).color")
    assert _luminance(text) > 0.6, text
    background = tab.eval("getComputedStyle(document.body).backgroundColor")
    assert _luminance(background) < 0.3, background
    # Times in the user's zone (Tokyo is UTC+9 all year).
    shown = tab.eval("document.querySelector('tr.version[data-version=\"1\"] time').textContent")
    created = v1["created"]  # 'YYYY-MM-DD HH:MM:SS UTC'
    tokyo = datetime.strptime(created, "%Y-%m-%d %H:%M:%S UTC") + timedelta(hours=9)
    assert shown.startswith(tokyo.strftime("%Y-%m-%d %H:%M:%S")), (shown, created)
    # The failed trainings' table: the same dark styles, its time in the user's zone too.
    cell = "document.querySelector('table.failed-trainings tr.failed-training td')"
    assert _luminance(tab.eval(f"getComputedStyle({cell}).color")) > 0.6
    assert tab.eval(f"{cell}.querySelector('time').getAttribute('title').endsWith('(UTC)')")

    # An MLflow link: a new tab, this one stays.
    before = {p["targetId"] for p in chrome.pages()}
    tab.click('tr.version[data-version="1"] a[target="_blank"]')
    deadline = time.monotonic() + 30
    opened: list[dict] = []
    while not opened and time.monotonic() < deadline:
        opened = [p for p in chrome.pages() if p["targetId"] not in before]
    assert opened and opened[0]["url"].startswith(v1["mlflow_run_url"].split("#")[0]), opened
    assert tab.eval("location.pathname") == "/plugin/mlops-models"

    # A DAG run link: Airflow's page of that run, in the same window, through Airflow's router.
    tab.eval("window.__same_document = true")
    tab.click(f'tr.version[data-version="1"] a[href="{v1["dag_run_url"]}"]')
    tab.wait_for(f"location.pathname === {json.dumps(v1['dag_run_url'])}")
    assert tab.eval("window.__same_document") is True  # no page reload: Airflow's router moved
    tab.screenshot(folder / "airflow_dag_run_after_click.png")

    # The DAG tab: the gate's metric charted first, its axis not from 0; "all versions" leads to Models.
    tab.go(f"{ui_server.url}/dags/breast_cancer/plugin/mlops")
    tab.wait_for("!!document.querySelector('.mlops-view svg.chart')")
    tab.screenshot(folder / "airflow_dag_tab_dark.png")
    first = tab.eval("document.querySelector('.mlops-view svg.chart').getAttribute('aria-label')")
    assert first.startswith("roc_auc per version"), first
    tab.click('.mlops-view a[href$="/plugin/mlops-models#model-breast_cancer_classifier"]')
    tab.wait_for("location.pathname === '/plugin/mlops-models' && !!document.querySelector('.mlops-view tr.version')")
    tab.go(f"{ui_server.url}/plugin/mlops-drift")
    tab.wait_for("!!document.querySelector('.mlops-view svg.chart line.threshold')")
    tab.screenshot(folder / "airflow_drift_dark.png")

    # The Pipeline YAML tab: the settings the defaults gave, then the file line by line.
    tab.go(f"{ui_server.url}/dags/breast_cancer/plugin/mlops-source")
    tab.wait_for("!!document.querySelector('.mlops-view table.yaml tr[data-line]')")
    tab.screenshot(folder / "airflow_pipeline_yaml_dark.png")
    assert tab.eval("document.querySelector('.mlops-view h2[data-role=pipeline] code').textContent").endswith(
        "breast_cancer.yaml")
    assert "ml-platform" in tab.eval("document.querySelector('.mlops-view table.settings').textContent")


def _luminance(css: str) -> float:
    """0 (black) to 1 (white) for ``rgb(...)`` / ``rgba(...)`` / ``color(srgb ...)`` / ``oklch(...)``
    (Airflow's theme colours; its lightness is the first figure)."""
    import re

    numbers = [float(n) for n in re.findall(r"[\d.]+", css)[:3]]
    if css.startswith("oklch("):
        return numbers[0] / 100 if "%" in css.split()[0] else numbers[0]
    scale = 1.0 if css.startswith("color(") else 255.0
    r, g, b = (n / scale for n in numbers)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
