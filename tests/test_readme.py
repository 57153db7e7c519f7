"""The README is executable: every fenced code block of README.md, and of the docs site's pages
(docs/**/*.md but the generated reference), is run here, or marked as not runnable (on a docs
page, by a ``<!-- fragment -->`` line right above the fence; ``<!-- file=dags/x.py -->`` there
names a companion file). A docs block
whose body is one snippet line (``--8<-- "example_configs/x.yaml"``) is checked as the file it
shows. The fence's info string says which; GitHub shows its first word as the language.

    ```yaml              a complete pipeline: `airflow-mlops validate --strict` passes on it alone
                         in an empty folder (no _defaults.yaml). One call checks every such block.
    ```python            a DAG file: written into a dags folder of its own beside the file= blocks,
                         loaded by DagBag without import errors, and each of its DAGs run with
                         dag.test() until every task succeeds, against a real SQLite MLflow store,
                         embedded Spark and the embedded Kafka broker (tansu). What a run must leave
                         behind is checked too, for the DAGs in CHECKS.
    ```python file=dags/x.py  (or yaml)
                         a file the examples need beside them (training code, a callback module,
                         the pipeline the loader reads): written at that path in every dags folder
                         above; a yaml one is validated like any other.
    ```bash              each line a command, run with bash in an empty folder, exit 0; a `# ...`
                         line right under a command is its expected output.
    ```text              program output: not run. A `$ airflow-mlops validate ...` transcript is
                         compared with a real run over the files in VALIDATE_INPUTS.
    ```<lang> fragment   part of a file, or a command CI cannot run (pip from the index, docker
                         compose, the whole suite): not run.

The examples run as written, except that server paths move under the test's folder
(SUBSTITUTIONS) and the test prepares what they read (PREPARE: input files, a registered model,
records on a topic, the connections they name).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import REPO

README = REPO / "README.md"
LANGUAGES = {"yaml", "python", "bash", "text"}
# Paths the examples use on a server, and where they go in the test's folder (<root>).
SUBSTITUTIONS = {"/data/": "<root>/data/", "/srv/": "<root>/srv/"}


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    info: str
    body: str
    source: str = "README.md"  # the page, relative to the repository

    @property
    def key(self) -> str:
        """Unique among every page's blocks, usable in a file name."""
        return f"{re.sub(r'[^0-9A-Za-z]+', '_', self.source)}_{self.line}"

    @property
    def words(self) -> list[str]:
        return self.info.split()

    @property
    def lang(self) -> str:
        return self.words[0] if self.words else ""

    @property
    def fragment(self) -> bool:
        return "fragment" in self.words[1:]

    @property
    def file(self) -> str | None:
        return next((w[len("file="):] for w in self.words[1:] if w.startswith("file=")), None)

    def runs(self, lang: str) -> bool:
        return self.lang == lang and not self.fragment


def read_blocks(text: str, source: str = "README.md") -> list[Block]:
    """Every fenced block, also those indented in a list (the fence's indent is removed from the
    body); a body that is one snippet line is replaced by the file it includes."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        # On a docs page (mkdocs' fences take no extra words) the words "fragment" and "file=..."
        # are a comment right above the fence: <!-- fragment -->, <!-- file=dags/x.py -->.
        comment = re.fullmatch(r"\s*<!--\s*(.*?)\s*-->\s*", lines[i - 1]) if i > 0 else None
        marks = comment.group(1).split() if comment else []
        marked = " ".join(marks) if marks and all(w == "fragment" or w.startswith("file=") for w in marks) else ""
        start, indent, body = i + 1, opening.group(1), []
        i += 1
        while not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        text_body = "\n".join(body) + "\n"
        snippet = re.fullmatch(r'--8<-- "([^"]+)"\n', text_body)
        if snippet:
            text_body = (REPO / snippet.group(1)).read_text()
        info = " ".join(filter(None, [opening.group(2).strip(), marked]))
        blocks.append(Block(start, info, text_body, source))
        i += 1
    return blocks


GENERATED_PAGES = {"docs/reference/pipeline-yaml.md", "docs/reference/configuration.md", "docs/reference/cli.md"}
DOCS_PAGES = sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md")
                    if str(p.relative_to(REPO)) not in GENERATED_PAGES)
README_BLOCKS = read_blocks(README.read_text())
BLOCKS = README_BLOCKS + [b for page in DOCS_PAGES for b in read_blocks((REPO / page).read_text(), page)]
FILES = [b for b in BLOCKS if b.file and not b.fragment]


def block_id(block: Block) -> str:
    return f"{block.source}:{block.line}"


def substitute(text: str, root: Path) -> str:
    """SUBSTITUTIONS: an absolute /data/... or /srv/... path (also in sqlite:////srv/...) moves under root."""
    return re.sub(r"(?<![\w.~-])/(data|srv)/", lambda m: f"{root}/{m.group(1)}/", text)


def command_env() -> dict[str, str]:
    """This checkout's package and the virtualenv's commands first, as in CI."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def write_companions(root: Path, base: Path) -> Path:
    """The file= blocks at their paths under base; returns base/dags."""
    for block in FILES:
        path = base / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(substitute(block.body, root))
    (base / "dags").mkdir(parents=True, exist_ok=True)
    return base / "dags"


# -- every block is marked ------------------------------------------------------------------------


def test_every_block_says_how_it_is_checked():
    unmarked = [f"{block_id(b)}: ```{b.info}" for b in BLOCKS if b.lang not in LANGUAGES]
    assert not unmarked, (f"README blocks need a language among {sorted(LANGUAGES)} "
                          f"(and 'fragment' if CI cannot run them): {unmarked}")
    for b in BLOCKS:
        extra = [w for w in b.words[1:] if w != "fragment" and not w.startswith("file=")]
        assert not extra, f"{block_id(b)}: unknown fence words {extra}"
        if b.file:
            assert b.lang in ("yaml", "python") and not b.fragment, f"{block_id(b)}: file= is for yaml/python files"
            assert b.file.startswith("dags/") and ".." not in b.file, f"{block_id(b)}: file= names a path under dags/"
        if b.lang == "text":
            assert not b.fragment, f"{block_id(b)}: text is never run; 'fragment' says nothing there"
    assert len({b.file for b in FILES}) == len(FILES), "two blocks are the same file"
    for b in BLOCKS:  # what is run must at least parse
        if b.runs("yaml"):
            yaml.safe_load(b.body)
        if b.runs("python"):
            compile(b.body, block_id(b), "exec")
    runnable = [b for b in README_BLOCKS if b.lang != "text" and not b.fragment]
    assert len(runnable) >= len(README_BLOCKS) // 2, "most of the README should run"


# -- yaml: each pipeline validates on its own -----------------------------------------------------


def test_yaml_blocks_validate_each_alone(tmp_path):
    """Each yaml block alone in an empty folder, all in one `validate --strict` (so a schedule on
    another block's asset must name one that exists); Python modules a pipeline names (callbacks)
    come from the file= blocks, on PYTHONPATH as Airflow puts the dags folder on sys.path."""
    dags = write_companions(tmp_path, tmp_path / "user")
    paths = []
    for b in BLOCKS:
        if b.runs("yaml"):
            path = tmp_path / f"block_{b.key}" / "pipeline.yaml"
            path.parent.mkdir()
            path.write_text(b.body)
            paths.append((b, path))
    env = command_env()
    env["PYTHONPATH"] = os.pathsep.join([str(dags), env["PYTHONPATH"]])
    done = subprocess.run(["airflow-mlops", "validate", "--strict", "-v", *(str(p) for _, p in paths)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for b, path in paths:
        pipeline_id = yaml.safe_load(b.body)["id"]
        assert f"{path}: ok ({pipeline_id}," in done.stdout, f"{block_id(b)}:\n{done.stdout}"
    assert done.stdout.strip().endswith(f"{len(paths)} pipeline file(s) valid")
    # A pipeline with profiles is checked as Airflow builds it with each of them.
    profiled = [str(p) for b, p in paths if "profiles" in yaml.safe_load(b.body)]
    assert profiled
    done = subprocess.run(["airflow-mlops", "validate", "--strict", "--all-profiles", *profiled], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_example_configs_validate_each_copied_alone(tmp_path):
    """`example_configs/` holds pipelines to copy: each works without the folder's _defaults.yaml."""
    paths = []
    for config in sorted((REPO / "example_configs").glob("[!_]*.yaml")):
        (tmp_path / config.stem).mkdir()
        paths.append(shutil.copy(config, tmp_path / config.stem / config.name))
    done = subprocess.run(["airflow-mlops", "validate", "--strict", *map(str, paths)], capture_output=True,
                          text=True, env=command_env(), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"{len(paths)} pipeline file(s) valid"


def _within(part, whole, where="") -> list[str]:
    """Where ``part`` says something ``whole`` does not (mappings: every key of part; lists: item by item)."""
    if isinstance(part, dict) and isinstance(whole, dict):
        return [d for k, v in part.items()
                for d in (_within(v, whole[k], f"{where}.{k}") if k in whole else [f"{where}.{k}: not in the file"])]
    if isinstance(part, list) and isinstance(whole, list) and len(part) == len(whole):
        return [d for i, (p, w) in enumerate(zip(part, whole)) for d in _within(p, w, f"{where}.{i}")]
    return [] if part == whole else [f"{where}: README {part!r}, file {whole!r}"]


def test_readme_copies_of_example_configs_say_what_the_files_say():
    """A block that presents itself as example_configs/<name>.yaml holds nothing the file does not."""
    copies = {}
    for b in BLOCKS:
        if b.runs("yaml"):
            pipeline_id = yaml.safe_load(b.body)["id"]
            for config in (REPO / "example_configs").glob("[!_]*.yaml"):
                if yaml.safe_load(config.read_text())["id"] == pipeline_id:
                    copies[block_id(b)] = (yaml.safe_load(b.body), yaml.safe_load(config.read_text()))
    assert len(copies) >= 2  # iris_spark and mlops_maintenance
    for where, (shown, shipped) in copies.items():
        assert _within(shown, shipped) == [], where


# -- text: validate transcripts -------------------------------------------------------------------

# The files behind the README's `$ airflow-mlops validate` transcripts (its section "When a
# pipeline is wrong"): each mistake at the line and column the transcript shows.
VALIDATE_INPUTS = {
    "pipelines/churn.yaml": """
        id: churn
        backend: sprak
        dag:
          schedule: "@dialy"
        stages:
          feature engineering:
            kind: preprocess
            input: {path: /data/churn.parquet}
          fit:
            kind: train
            estimator: sklearn.ensemble.RandomForestClassifier
            target: churned
            resources: {gpu: 0.5}
        """,
    "pipelines/maintenance.yaml": """
        id: maintenance
        dag: {schedule: "@daily"}
        stages:
          report:
            kind: custom
            operator: airflow.providers.standard.operators.bash:BashOperator
            args: {bash_comand: "echo nightly"}
          retention:
            kind: custom
            operator: airflow_mlops.operators.retention:RetentionCleanupOperator
            args:
              policies:
                - {kind: mlflow_model_versions, models: [churn], keep_lst: 5}
        """,
    "pipelines/monitor.yaml": """
        id: churn_monitor
        dag: {schedule: "@daily"}
        stages:
          drift:
            reference: {path: /data/churn/train.parquet}
            current: {path: /data/churn/last_week.parquet}
            on_drift: trigger
        """,
    "pipelines/retrain.yaml": """
        id: retrain
        dag: {schedule_on_assets: [churn_monitor.drfit]}
        stages:
          preprocess: {input: {path: /data/churn.parquet}}
          train: {estimator: sklearn.ensemble.RandomForestClassifier, target: churned}
        """,
    "pipelines/scoring.yaml": """
        id: scoring
        stages:
          serve:
            input: {path: /data/churn/today.parquet}
        """,
    # writing-pipelines.md, "Profiles": the _defaults.yaml it shows, and a pipeline with two bad profiles.
    "profiles/_defaults.yaml": """
        # profiles/_defaults.yaml: the connections of each deployment, for every pipeline below
        profiles:
          dev:
            mlflow: {conn_id: mlflow_dev}
          staging:
            mlflow: {conn_id: mlflow_staging}
          prod:
            mlflow: {conn_id: mlflow_prod}
            dag: {owner: ml-platform, retries: 2}
        """,
    "profiles/churn.yaml": """
        id: churn
        stages:
          preprocess:
            input: {path: /data/churn.parquet}
          train:
            estimator: sklearn.ensemble.RandomForestClassifier
            target: churned
        profiles:
          staging:
            dag: {schedule: "@dialy"}
          prod:
            data_dir: s3://ml-prod/churn
            stages:
              train: {resources: {cpu: 4, memroy: 8Gi}}
        """,
}
TRANSCRIPTS = [b for b in BLOCKS if b.lang == "text" and b.body.startswith("$ airflow-mlops validate ")]


def test_there_are_validate_transcripts():
    assert len(TRANSCRIPTS) >= 3
    # The _defaults.yaml a page shows (a fragment: it is no pipeline) is the one its transcript read.
    shown = [b.body for b in BLOCKS if b.lang == "yaml" and b.body.startswith("# profiles/_defaults.yaml:")]
    assert shown == [textwrap.dedent(VALIDATE_INPUTS["profiles/_defaults.yaml"]).lstrip()]


@pytest.mark.parametrize("block", TRANSCRIPTS, ids=block_id)
def test_validate_transcript_is_real_output(block, tmp_path):
    for name, text in VALIDATE_INPUTS.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text).lstrip())
    command, *expected = block.body.splitlines()
    done = subprocess.run(["bash", "-c", command[2:]], capture_output=True, text=True, env=command_env(),
                          cwd=tmp_path, timeout=300)
    # The errors go to standard output, the verdict line to standard error.
    assert done.stdout.splitlines() + done.stderr.splitlines() == expected


# -- bash: commands against a store and folders the test makes -------------------------------------


def two_champions(root: Path) -> None:
    """The store `rollback` reads: breast_cancer_classifier version 2 is champion, 1 previous-champion."""
    import mlflow

    db = root / "srv" / "mlops" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    client.create_registered_model("breast_cancer_classifier")
    for _ in range(2):
        client.create_model_version("breast_cancer_classifier", source=str(db.parent / "mlartifacts"))
    client.set_registered_model_alias("breast_cancer_classifier", "previous-champion", "1")
    client.set_registered_model_alias("breast_cancer_classifier", "champion", "2")


def rolled_back(root: Path) -> None:
    import mlflow

    uri = f"sqlite:///{root / 'srv' / 'mlops' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version_by_alias("breast_cancer_classifier", "champion").version in ("1", 1)
    assert client.get_model_version_by_alias("breast_cancer_classifier", "previous-champion").version in ("2", 2)


def schema_written(root: Path) -> None:
    schema = json.loads((root / "pipeline.schema.json").read_text())
    assert schema["title"] == "airflow-mlops pipeline" and "stages" in schema["properties"]


def rendered_same_dag(root: Path) -> None:
    """`airflow-mlops render dags/tumour_classifier.yaml -o tumour_classifier.py` wrote a DAG file
    that builds the DAG the YAML builds (tests/factory/test_render.py compares them)."""
    import contextlib

    from tests.factory.test_render import assert_same_dag, import_dag, yaml_dag

    with contextlib.chdir(root):  # the paths as the command was given them (the DAG docs name the file)
        expected = yaml_dag(Path("dags/tumour_classifier.yaml"))
        assert_same_dag(expected, import_dag(root / "tumour_classifier.py", "readme_tumour_classifier"))


# By command (its first two words): what the test makes before it, and checks after it.
PREPARE_COMMAND = {"airflow-mlops rollback": two_champions, "airflow-mlops render": lambda root: write_companions(root, root)}
CHECK_COMMAND = {"airflow-mlops rollback": rolled_back, "airflow-mlops schema": schema_written,
                 "airflow-mlops render": rendered_same_dag}
BASH = [b for b in BLOCKS if b.runs("bash")]


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, the `# ` lines right under it: its expected output)."""
    out: list[tuple[str, list[str]]] = []
    for line in block.body.splitlines():
        if line.startswith("# ") and out:
            out[-1][1].append(line[2:])
        elif line.strip() and not line.startswith("#"):
            out.append((line, []))
    return out


@pytest.mark.parametrize("block", BASH, ids=block_id)
def test_bash_block_runs(block, tmp_path):
    for command, expected in commands(block):
        key = " ".join(command.split()[:2])
        assert key in CHECK_COMMAND, f"{block_id(block)}: say what `{key}` must leave behind in CHECK_COMMAND"
        PREPARE_COMMAND.get(key, lambda root: None)(tmp_path)
        done = subprocess.run(["bash", "-c", substitute(command, tmp_path)], capture_output=True, text=True,
                              env=command_env(), cwd=tmp_path, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
        if expected:
            assert done.stdout.splitlines() == [substitute(line, tmp_path) for line in expected], command
        CHECK_COMMAND[key](tmp_path)


# -- python: DAG files run with dag.test() ---------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """One MLflow store (and data folder) for all the README's DAGs; server paths under root."""
    root = tmp_path_factory.mktemp("readme")
    home = root / "mlops"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_MLOPS_HOME", str(home))
        # StreamInferenceOperator(mlflow_conn_id="mlflow_default"): the same store.
        mp.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": uri}))
        yield SimpleNamespace(root=root, home=home, uri=uri)


def client(world):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=world.uri, registry_uri=world.uri)


def version_of(world, model: str, alias: str) -> str:
    return str(client(world).get_model_version_by_alias(model, alias).version)


# What a README DAG reads, made before its run: (world, monkeypatch, request) → None.

def customer_features_inputs(world, monkeypatch, request):
    import pandas as pd

    request.getfixturevalue("spark")  # the session's Spark: the operator's embedded session is that one
    data = world.root / "data"
    data.mkdir(exist_ok=True)
    pd.DataFrame({"id": range(7), "customer_id": [1, 1, 2, 3, 3, 3, 9]}).to_parquet(data / "orders.parquet")
    (data / "customers.csv").write_text("id,name\n1,Ada\n2,Grace\n3,Edsger\n4,Barbara\n")


def transactions_on_a_topic(world, monkeypatch, request):
    """The broker the kafka_default connection names (consumer joins sped up, as in every Kafka test
    here), topics, a 'fraud' model at champion, and 120 transactions to score."""
    import mlflow

    from tests.kafka_helpers import FAST_GROUP, produce_json, register_sklearn, shared_broker

    broker = shared_broker()
    for topic in ("transactions", "transactions.scored", "transactions.dlq"):
        broker.create_topic(topic, 2)
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps(
        {"conn_type": "kafka", "host": broker.bootstrap_servers, "extra": FAST_GROUP}))
    register_sklearn(world.uri, "fraud")
    mlflow.set_tracking_uri(None)  # registering set them process-wide; the run must find its own
    mlflow.set_registry_uri(None)
    produce_json(broker, "transactions", {f"t{i}": {"a": (i - 60) / 20, "b": (i % 7) - 3.0} for i in range(120)})
    world.broker = broker


def checkpoints_and_a_store(world, monkeypatch, request):
    """Five checkpoints of one job, oldest first, and the MLflow store (made by the DAGs before, if run)."""
    import time

    job = world.root / "srv" / "checkpoints" / "churn-job"
    job.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for epoch in range(1, 6):
        path = job / f"epoch-{epoch}.ckpt"
        path.write_bytes(os.urandom(1024))
        os.utime(path, (now - 3600 * (6 - epoch),) * 2)
    client(world).search_experiments()  # creates the store if no DAG before made it


def customers_and_orders(world, monkeypatch, request):
    """400 customers whose churn follows their tenure, fee and orders (with noise), and their orders."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 400
    tenure, fee = rng.integers(1, 72, n), rng.uniform(10, 120, n)
    n_orders = rng.poisson(3, n)
    risk = 0.04 * fee - 0.06 * tenure - 0.5 * n_orders + rng.normal(0, 1, n)
    customers = pd.DataFrame({"customer_id": range(n), "tenure_months": tenure, "monthly_fee": fee.round(2),
                              "churned": (risk > np.median(risk)).astype(int)})
    orders = pd.DataFrame({"customer_id": np.repeat(np.arange(n), n_orders)})
    orders["amount"] = rng.uniform(5, 200, len(orders)).round(2)
    folder = world.root / "data" / "churn"
    folder.mkdir(parents=True, exist_ok=True)
    customers.to_csv(folder / "customers.csv", index=False)
    orders.to_parquet(folder / "orders.parquet")


def watch_the_log(world, monkeypatch, request):
    world.capfd = request.getfixturevalue("capfd")  # dag.test() prints the task logs


PREPARE = {
    "customer_features": customer_features_inputs,
    "score_transactions": transactions_on_a_topic,
    "train_on_gpus": watch_the_log,
    "housekeeping": checkpoints_and_a_store,
    "churn_own": customers_and_orders,
}


# What a README DAG's run must leave behind: (world, dag, dag run) → None.

def tumour_classifier_champion(world, dag, dr):
    version = client(world).get_model_version_by_alias("tumour_classifier", "champion")
    assert client(world).get_run(version.run_id).data.metrics["accuracy"] >= 0.9


def customer_features_written(world, dag, dr):
    from airflow_mlops.stages.data import read_dataset

    result = dr.get_task_instance("customer_features").xcom_pull(task_ids="customer_features")
    assert result["data_path"] == str(world.root / "data" / "features" / "customers" / "data.parquet")
    rows = read_dataset(result["data_path"]).sort_values("id")
    assert rows["id"].tolist() == [1, 2, 3, 4] and rows["n_orders"].tolist() == [2, 1, 3, 0]


def transactions_scored_then_a_quiet_window_skips(world, dag, dr):
    from tests.kafka_helpers import headers, read_all

    summary = dr.get_task_instance("score").xcom_pull(task_ids="score")
    assert (summary["records_in"], summary["predictions_out"], summary["dead_letters"]) == (120, 120, 0)
    scored = read_all(world.broker, "transactions.scored")
    assert sorted(r.key.decode() for r in scored) == sorted(f"t{i}" for i in range(120))
    assert {headers(r)["model_version"] for r in scored} == {version_of(world, "fraud", "champion")}
    # Every record is consumed now: the next window is quiet. Its sensor times out (after 2 s
    # here, 15 minutes as written) and skips the run's tasks; the run succeeds.
    wait = dag.get_task("wait_for_records")
    wait.timeout, wait.poke_interval = 2, 1
    quiet = dag.test()
    assert quiet.state == "success"
    assert {ti.task_id: ti.state for ti in quiet.get_task_instances()} == {"wait_for_records": "skipped",
                                                                         "score": "skipped"}


def trained_on_a_gpu_or_said_why_not(world, dag, dr):
    from airflow_mlops.telemetry.nvml import NO_GPU_MESSAGE

    result = dr.get_task_instance("train").xcom_pull(task_ids="train")
    assert result["model_name"] == "churn_classifier" and result["metrics"]["accuracy"] > 0.75
    run = client(world).get_run(result["run_id"])
    assert run.data.params["lr"] == "0.01" and run.data.params["epochs"] == "20"
    assert Path(result["checkpoint_dir"], "model.pkl").is_file()  # where a retry would resume
    if result["gpu"]["available"]:  # a machine with an NVIDIA driver: its GPU, sampled by NVML
        assert len(result["gpu"]["ids"]) == 1 and run.data.metrics["gpu/hours"] > 0
    else:  # no driver (CI): trained on the CPU, and the log and the run say why
        assert "NVML" in result["gpu"]["reason"] and run.data.tags["airflow_mlops.gpu.available"] == "false"
        log = world.capfd.readouterr()
        assert NO_GPU_MESSAGE in log.out + log.err


def backed_up_then_cleaned(world, dag, dr):
    job = world.root / "srv" / "checkpoints" / "churn-job"
    assert sorted(p.name for p in job.iterdir()) == ["epoch-3.ckpt", "epoch-4.ckpt", "epoch-5.ckpt"]
    (manifest,) = (world.root / "srv" / "backups" / "mlops" / "snapshots").rglob("*.json")
    files = json.dumps(json.loads(manifest.read_text()))
    assert all(f"epoch-{n}.ckpt" in files for n in range(1, 6)) and "mlflow.db" in files  # before the cleaning


def own_code_trained_and_scored(world, dag, dr):
    from airflow_mlops.stages.data import read_dataset

    version = client(world).get_model_version_by_alias("churn_own", "champion")
    run = client(world).get_run(version.run_id)
    assert run.data.params["C"] == "0.5" and run.data.metrics["roc_auc"] >= 0.75
    pre = dr.get_task_instance("preprocess.run").xcom_pull(task_ids="preprocess.run")
    assert pre["columns"] == ["tenure_months", "monthly_fee", "churned", "n_orders", "spend"]  # the transform's
    served = dr.get_task_instance("serve.run").xcom_pull(task_ids="serve.run")
    assert len(read_dataset(served["predictions_path"])) == pre["test_rows"] == 100


def hand_written_champion(world, dag, dr):
    assert version_of(world, "hand_written", "champion") == "1"


CHECKS = {
    "tumour_classifier": tumour_classifier_champion,
    "customer_features": customer_features_written,
    "score_transactions": transactions_scored_then_a_quiet_window_skips,
    "train_on_gpus": trained_on_a_gpu_or_said_why_not,
    "housekeeping": backed_up_then_cleaned,
    "hand_written": hand_written_champion,
    "churn_own": own_code_trained_and_scored,
}
PYTHON = [b for b in BLOCKS if b.runs("python") and not b.file]


@pytest.mark.parametrize("block", PYTHON, ids=block_id)
def test_python_block_runs(block, world, monkeypatch, request):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    dags = write_companions(world.root, world.root / f"block_{block.key}")
    (dags / f"readme_{block.key}.py").write_text(substitute(block.body, world.root))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags))  # dag.test() syncs the DAGs from there
    monkeypatch.syspath_prepend(str(dags))  # as Airflow puts the dags folder (the bundle) on sys.path
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([{
        "name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
        "kwargs": {"path": str(dags)}}]))
    bag = DagBag(dag_folder=str(dags))
    assert bag.import_errors == {}
    assert bag.dags, f"{block_id(block)} defines no DAG"
    for dag_id, dag in sorted(bag.dags.items()):
        assert "invalid-pipeline" not in dag.tags, dag.description
        PREPARE.get(dag_id, lambda *a: None)(world, monkeypatch, request)
        dr = dag.test()
        states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
        assert dr.state == DagRunState.SUCCESS and set(states.values()) == {"success"}, (dag_id, states)
        assert dag_id in CHECKS, f"{block_id(block)}: say in CHECKS what DAG '{dag_id}' must leave behind"
        CHECKS[dag_id](world, dag, dr)
