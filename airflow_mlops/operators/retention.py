"""RetentionCleanupOperator: delete old files, MLflow runs and model versions by policy, safely."""

from __future__ import annotations

from typing import Any, Sequence

from airflow_mlops._core.orphan import end_with_parent
from airflow_mlops.lifecycle.specs import RetentionSpec
from airflow_mlops.operators.spec_args import SpecArgsOperator


class RetentionCleanupOperator(SpecArgsOperator):
    """Apply retention policies: max age, keep last N, size budget.

    :param policies: a list of ``FilesPolicy`` / ``MlflowRunsPolicy`` / ``MlflowModelVersionsPolicy``
        (or the same as dicts, with ``kind: files | mlflow_runs | mlflow_model_versions``; a dict
        without ``kind`` is a files policy).
    :param dry_run: only list what a real run would delete. A run triggered with
        ``{"dry_run": true}`` in its conf is a dry run too (the conf can only turn a dry run on).
    :param mlflow: MLflow settings (``tracking_uri``, ``conn_id``…), resolved when the task runs
        with the same precedence as the pipeline stages.

    Never deletes outside a files policy's root (symlinks are not followed), a model version behind
    a serving alias (``champion``, ``previous-champion`` and every alias a pipeline's validate
    stage sets; a policy's ``protected_aliases`` adds more, only ``allow_deleting_aliases`` lifts
    one) or the run behind it, or anything no policy covers. Returns (XCom) a summary: items and bytes deleted (or that would be), per policy, the
    first deleted ids, what was protected and what was skipped (vanished, permission denied…).
    The arguments are validated here, so a bad policy fails when the DAG is parsed. Every argument
    is a template field (a policy's ``root="/data/{{ ds }}"``, ``dry_run="{{ params.dry_run }}"``),
    validated again once rendered, when the task runs.
    """

    ui_color = "#fdecea"
    spec_model = RetentionSpec

    def __init__(self, *, policies: Sequence[Any], dry_run: bool = False, mlflow: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        data: dict[str, Any] = {"policies": list(policies) if isinstance(policies, (list, tuple)) else policies,
                                "dry_run": dry_run}
        if mlflow is not None:
            data["mlflow"] = mlflow
        self._set_spec(data)

    def execute(self, context: Any) -> dict[str, Any]:
        end_with_parent()  # a worker lost under this task must not leave its work running twice
        from airflow_mlops.lifecycle.retention import run_retention

        spec = self.rendered_spec()
        conf = getattr(context.get("dag_run"), "conf", None) or {}
        if conf.get("dry_run") is True and not spec.dry_run:
            self.log.info("dry_run requested in the DAG run's conf: nothing will be deleted")
            spec = spec.model_copy(update={"dry_run": True})
        from airflow_mlops._core.outcome import airflow_outcome

        # A DependencyFailed (logged first already): permanent ones end without retries; a policy
        # that cannot apply (StageFailed: its root missing): no retry fixes it (_core.outcome).
        with airflow_outcome():
            return run_retention(spec, tracking_uri=self.tracking_uri(spec), logger=self.log)

    def tracking_uri(self, spec: Any) -> str | None:
        """The store of the MLflow policies, its connection resolved here, once (its credentials go
        to this task's process, where the MLflow client reads them); None when no policy reads
        MLflow (files only: no store, no connection needed)."""
        if all(policy.kind == "files" for policy in spec.policies):
            return None
        from airflow_mlops._core.mlflow import use_credentials
        from airflow_mlops.hooks.mlflow import resolve_target

        target = resolve_target(spec.mlflow, "retention")
        use_credentials(target)
        return target.tracking_uri
