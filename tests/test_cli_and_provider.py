"""The ``airflow-mlops`` command and the provider registration."""

from __future__ import annotations

import json
import subprocess
import sys

from airflow_mlops.cli import main
from tests.conftest import REPO
from tests.helpers import write


def test_validate_lists_every_error_of_every_file_and_exits_nonzero(tmp_path, capsys):
    write(tmp_path, "ok.yaml", "id: ok\nstages: {preprocess: {input: {path: a.csv}}}\n")
    write(tmp_path, "a.yaml", "id: a\nbackend: sprak\nstages: {validate: {}}\n")
    write(tmp_path, "sub/b.yaml", "id: b\ndag: {retries: x, shedule: 1}\nstages: {validate: {}}\n")
    assert main(["validate", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'a.yaml'}:2:10 backend: unknown backend 'sprak'")
    assert lines[1].startswith(f"{tmp_path / 'sub' / 'b.yaml'}:2:16 dag.retries:")
    assert lines[2].startswith(f"{tmp_path / 'sub' / 'b.yaml'}:2:19 dag.shedule: unknown key")
    assert len(lines) == 3
    assert "2 of 3 pipeline file(s) invalid, 3 error(s)" in err


def test_validate_passes_the_examples():
    assert main(["validate", str(REPO / "example_configs")]) == 0


def test_schema_is_exported_from_the_models_and_matches_the_committed_copy(tmp_path):
    out = tmp_path / "schema.json"
    assert main(["schema", "-o", str(out)]) == 0
    schema = json.loads(out.read_text())
    assert schema["required"] == ["id", "stages"]
    assert set(schema["properties"]["backend"]["enum"]) == {"batch", "spark", "kubernetes"}
    assert schema["additionalProperties"] is False
    # The copy editors use (example_configs refer to it) must not drift from the models.
    assert json.loads((REPO / "pipeline.schema.json").read_text()) == schema


def test_airflow_lists_the_provider():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_mlops")]
    info = ep.load()()
    assert info["package-name"] == "airflow-mlops"
    assert info["connection-types"][0]["connection-type"] == "mlflow"

    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"], capture_output=True, text=True, check=True
    )
    providers = {p["package_name"]: p for p in json.loads(out.stdout)}
    assert providers["airflow-mlops"]["version"] == "0.1.0"


def test_the_committed_schema_accepts_every_example_and_checks_the_package_operators_args():
    """What an editor shows: no false errors on the examples (stages named after their kind without
    ``kind:``, ``cpu: 2``), and the package's operators' ``args`` checked by their own specs."""
    import jsonschema
    import yaml

    validator = jsonschema.Draft202012Validator(json.loads((REPO / "pipeline.schema.json").read_text()))
    for path in sorted((REPO / "example_configs").glob("[!_]*.yaml")):
        assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))] == [], path.name
    doc = yaml.safe_load((REPO / "example_configs" / "maintenance.yaml").read_text().replace("keep_last: 5", "keep_lst: 5"))

    def leaves(error):
        return [error, *(leaf for sub in error.context for leaf in leaves(sub))]

    found = [(list(e.absolute_path), e.message) for top in validator.iter_errors(doc) for e in leaves(top)]
    assert any(path == ["stages", "retention", "args", "policies", 0] and "'keep_lst'" in message
               and "Additional properties are not allowed" in message for path, message in found), found
    # An operator without a spec is described by its signature: a wrong type flagged, a template taken.
    wait = {"id": "g", "stages": {"wait": {"kind": "custom", "operator": "airflow_mlops:GpuAvailableSensor",
                                           "args": {"count": "two", "retries": 2}}}}
    assert any(list(e.absolute_path) == ["stages", "wait", "args", "count"]
               for top in validator.iter_errors(wait) for e in leaves(top)), list(validator.iter_errors(wait))
    wait["stages"]["wait"]["args"]["count"] = "{{ params.gpus }}"
    assert list(validator.iter_errors(wait)) == []
    # GpuTrainOperator by its spec: the spellings it reads (a profile name, '0,1', a template) taken.
    gpu = {"id": "g", "stages": {"fit": {"kind": "custom", "operator": "airflow_mlops:GpuTrainOperator",
                                         "args": {"entrypoint": "pkg.mod:fit", "gpus": "two", "retries": 2}}}}
    assert any(list(e.absolute_path) == ["stages", "fit", "args", "gpus"]
               for top in validator.iter_errors(gpu) for e in leaves(top)), list(validator.iter_errors(gpu))
    gpu["stages"]["fit"]["args"] = {"entrypoint": "pkg.mod:fit", "gpu_ids": "0,1", "resources": "training",
                                    "args": [], "retries": 2}
    assert list(validator.iter_errors(gpu)) == []
    gpu["stages"]["fit"]["args"].update(gpu_ids="{{ ti.xcom_pull('wait') }}", resources={"profile": "small", "gpu": 1})
    assert list(validator.iter_errors(gpu)) == []

