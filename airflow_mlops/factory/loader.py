"""``load_pipelines(globals())``: every pipeline YAML under a folder becomes a DAG.

Airflow drops *every* DAG of a Python file that raises, so this loader never raises for a bad
pipeline. Each broken file instead becomes a small placeholder DAG — same id when the file names
one, tagged ``invalid-pipeline``, its description and docs carrying every error with
``file:line:column`` — so the problem is visible in the Airflow UI next to the healthy DAGs,
which are all still loaded. The errors also go to the DAG processor log, and
``airflow-mlops validate`` reports them in CI before they ever reach Airflow: both reach their
verdict through ``factory.pipelines.load_dags``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from airflow_mlops._core.names import dag_id_part
from airflow_mlops.spec.errors import PipelineSpecError

log = logging.getLogger(__name__)
INVALID_TAG = "invalid-pipeline"


def load_pipelines(namespace: dict[str, Any] | None = None, folder: str | Path | None = None) -> dict[str, DAG]:
    """Build a DAG for every pipeline file under ``folder`` (default: the calling DAG file's folder)
    and put them into ``namespace`` (pass ``globals()``), where Airflow finds them."""
    from airflow_mlops.factory.pipelines import load_dags

    if folder is None:
        if not namespace or "__file__" not in namespace:
            raise TypeError("load_pipelines needs a folder, or globals() of a DAG file to find it from")
        folder = Path(namespace["__file__"]).parent
    verdict = load_dags([folder])
    dags: dict[str, DAG] = {loaded.pipeline.id: dag for loaded, dag in verdict.good}
    for warning in verdict.warnings:
        log.warning("Pipeline %s", warning)
    for path, error in sorted(verdict.bad.items()):
        log.error("Invalid pipeline %s:\n%s", path, error)
        dag = _invalid_dag(path, error, taken=dags.keys(), folder=Path(folder))
        dags[dag.dag_id] = dag
    if namespace is not None:
        for dag_id, dag in dags.items():
            namespace[f"dag__{re.sub(r'[^0-9A-Za-z_]', '_', dag_id)}"] = dag
    return dags


def _invalid_dag(path: Path, error: PipelineSpecError, taken: Any, folder: Path | None = None) -> DAG:
    from airflow.providers.standard.operators.python import PythonOperator

    dag_id = _declared_id(path)
    if not dag_id or dag_id in taken:
        dag_id = placeholder_id(path, folder, taken)
    from airflow.providers.standard.operators.empty import EmptyOperator

    errors = "\n".join(f"- `{issue}`" for issue in error.issues)
    with DAG(
        dag_id=dag_id,
        dag_display_name=f"⚠ {dag_id} (invalid pipeline)",
        description=f"INVALID PIPELINE {path.name}: {error.issues[0]}"[:1000],
        schedule=None,
        tags=["airflow-mlops", INVALID_TAG],
        doc_md=f"# Invalid pipeline `{path}`\n\nFix these and the DAG comes back on the next parse:\n\n{errors}\n\n"
               f"{_source_record(path, error)}\n",
        is_paused_upon_creation=True,
    ) as dag:
        fail = PythonOperator(task_id="invalid_pipeline", python_callable=_fail, op_args=[str(error)],
                              task_display_name=f"✗ {path.name} is invalid: {len(error.issues)} error(s), "
                                                "fix the YAML")
        # Each error as a task named after it: the DAG's grid, graph and task list show them on the
        # DAG's own page (its description and docs are behind buttons in Airflow 3's UI). They
        # never run: downstream of the failing task.
        fail.custom_operator_name = "invalid pipeline"
        for n, issue in enumerate(error.issues[:MAX_ERROR_TASKS], 1):
            shown = EmptyOperator(task_id=f"error_{n}", task_display_name=error_label(issue, path))
            shown.custom_operator_name = "YAML error"
            fail >> shown
    return dag


MAX_ERROR_TASKS = 20


def _source_record(path: Path, error: PipelineSpecError) -> str:
    """The broken file, the defaults files above it and the errors at their lines, for the UI's
    "Pipeline YAML" tab (``factory.source_record``): whatever of it can be read."""
    from airflow_mlops.factory import source_record
    from airflow_mlops.spec.files import defaults_chain

    def text(file: Path) -> str | None:
        try:
            return file.read_text()
        except (OSError, UnicodeDecodeError):
            return None

    try:
        chain = defaults_chain(path) if path.is_file() else []
    except OSError:
        chain = []
    return source_record.record(path.resolve(), text(path), [(d, text(d)) for d in chain], errors=error.issues)


def error_label(issue: Any, path: Path) -> str:
    """``churn.yaml:6:22 stages.train.resources.gpu: expected ...``: the issue with the file's name
    rather than its whole path, at most 200 characters."""
    text = str(issue).replace(str(path), path.name, 1)
    return text if len(text) <= 200 else text[:199] + "…"


def placeholder_id(path: Path, folder: Path | None, taken: Any) -> str:
    """``invalid__<path below the folder>`` (``/`` as ``__``, no suffix): one per file, so two
    broken ``churn.yaml`` in different folders are both visible."""
    try:
        relative = path.relative_to(folder) if folder is not None and folder.is_dir() else Path(path.name)
    except ValueError:
        relative = Path(path.name)
    if not relative.name:  # the folder itself (it could not be listed)
        relative = Path(path.name or "folder")
    base = "invalid__" + "__".join(dag_id_part(part) for part in relative.with_suffix("").parts)
    dag_id, n = base[:250], 2
    while dag_id in taken:
        dag_id, n = f"{base[:245]}_{n}", n + 1
    return dag_id


def _fail(message: str) -> None:
    from airflow_mlops._core.outcome import failed

    raise failed(f"This pipeline's YAML is invalid:\n{message}")


def _declared_id(path: Path) -> str | None:
    """The ``id:`` of a broken file, if a plain top-level line declares one."""
    try:
        match = re.search(r"^id:\s*['\"]?([A-Za-z0-9_.-]+)['\"]?\s*(#.*)?$", path.read_text(), re.MULTILINE)
    except OSError:
        return None
    return match.group(1) if match and len(match.group(1)) <= 250 else None
