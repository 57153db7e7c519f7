"""The docs site (mkdocs.yml, docs/): built strictly as CI builds it (scripts/docs.sh: a broken
link, a missing page, a docstring mkdocstrings cannot read or a snippet whose file is gone fails
it), its reference pages generated from the code, and no setting the code reads missing from the
configuration page."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO


def _settings_in_code() -> set[str]:
    found = set()
    for path in (REPO / "airflow_mlops").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        found |= set(re.findall(r"AIRFLOW_MLOPS_[A-Z0-9_]*[A-Z0-9]", text))
        found |= {f"[mlops] {option}" for option in re.findall(r"conf\.get\(\s*[\"']mlops[\"'],\s*[\"'](\w+)[\"']", text)}
    return found


def test_every_setting_the_code_reads_is_on_the_configuration_page():
    from airflow_mlops._core.settings import NOT_SETTINGS, SETTINGS

    documented = {s.name for s in SETTINGS}
    read = _settings_in_code() - NOT_SETTINGS
    assert read - documented == set(), "settings read in the code but missing from _core/settings.py"
    assert documented - read == set(), "settings documented but read nowhere"


def test_every_pipeline_yaml_field_is_described():
    """The YAML reference (and the JSON Schema editors show) says what each field does."""
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from gen_docs import _models

    from airflow_mlops.spec.models import Pipeline

    seen, queue, bare = set(), [Pipeline], []
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description:
                bare.append(f"{model.__name__}.{name}")
            queue += _models(field.annotation)
    assert len(seen) > 25 and bare == []


def test_the_docs_site_builds_strictly_from_the_code(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(["bash", "scripts/docs.sh", str(site)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    pipeline = (site / "reference" / "pipeline-yaml" / "index.html").read_text()
    for field in ("approval", "assigned_users", "currency", "on_reject", "schedule_on_assets"):
        assert f"<code>{field}</code>" in pipeline, field
    config = (site / "reference" / "configuration" / "index.html").read_text()
    for name in ("AIRFLOW_MLOPS_HOME", "AIRFLOW_MLOPS_KAFKA_CONFIG", "[mlops] mlflow_ui_url"):
        assert name in config, name
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "airflow-mlops validate" in cli and "python -m airflow_mlops.stream" in cli
    operators = (site / "reference" / "operators" / "index.html").read_text()
    for name in ("GpuTrainOperator", "StreamInferenceOperator", "PromotionApprovalOperator", "KafkaLagSensor"):
        assert name in operators, name
    # The example pipeline is included from example_configs/, not copied: the page holds the file.
    started = (site / "getting-started" / "index.html").read_text()
    assert "breast_cancer_classifier" in started and "load_pipelines" in started
    # A list right after a paragraph line is a list on the site too (Python-Markdown needs the
    # blank line that GitHub does not): the deployment page's list of what it runs.
    deployment = (site / "how-to" / "deployment" / "index.html").read_text()
    assert "<li>Postgres 15 holding the Airflow and MLflow databases;</li>" in deployment


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub and mkdocs' toc make it (for the headings used here)."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_the_readme_is_a_front_page_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 160, "the README is the front page: details go to docs/"
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert len(links) >= 20
    for target, anchor in links:
        if target.startswith("http"):
            continue
        path = REPO / target
        assert path.exists(), f"README links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+\s+(.*)$", path.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"README links to {target}#{anchor}: no such heading"
