"""The approval task of a validate stage with ``approval:``: Airflow's human-in-the-loop form
(Approve / Reject, the gate's comparison in its body), then, in the same task, the decision
carried out: on Approve the alias moves (the version judged again against the champion of that
moment), on Reject or no answer within the timeout the version is recorded as rejected. Who
answered and when is tagged on the version (``airflow_mlops.approval``) and in its decision detail,
which the Models page shows.

Needs Airflow 3.1+ (the standard provider's ``HITLOperator``). On Airflow 3.3+ the task waits in
the ``awaiting_input`` state (no triggerer involved) and the scheduler applies the timeout's
default (Reject); on 3.1 and 3.2 it defers to the triggerer.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.providers.standard.operators.hitl import HITLOperator

from airflow_mlops.backends.stage import StageOperator
from airflow_mlops.spec.operator_args import RESULT_TASK

APPROVAL_TASK = "approval"


class PromotionApprovalOperator(HITLOperator, StageOperator):
    """Ask a person to approve the promotion the validate stage's ``run`` task judged, then carry
    out the answer.

    :param stage: the validate stage's spec (its ``approval`` says the timeout and who may answer).
    :param stage_name: the stage's name (MLflow tags, log lines).
    :param judged_task_id: the task whose result (the validate stage run with ``approval``) was
        judged; default ``<stage_name>.run``, the pipeline's own task group.
    :param kwargs: StageOperator's (``mlflow``, ``pipeline_id``, …) and BaseOperator's arguments.

    The form's subject and body are templates rendered from the judged result when the task runs.
    Returns validate's result (``model_name``, ``model_version``, ``alias``, ``previous_champion``,
    ``model_uri``) on Approve; skips (``on_reject: skip``) or fails on Reject and on timeout.
    """

    template_fields: Sequence[str] = ("subject", "body", "stage_overrides", "data_dir")

    def __init__(self, *, stage: Any, stage_name: str, judged_task_id: str | None = None, **kwargs: Any) -> None:
        from airflow_mlops.spec.models import ValidateStage

        stage = ValidateStage.model_validate(stage) if isinstance(stage, dict) else stage
        approval = stage.approval
        if approval is None:
            raise ValueError(f"task {kwargs.get('task_id')!r}: the validate stage has no 'approval' settings "
                             "(give it approval: {timeout: ...})")
        self.judged_task_id = judged_task_id or f"{stage_name}.{RESULT_TASK}"
        judged = f"ti.xcom_pull(task_ids='{self.judged_task_id}')"
        subject = approval.subject or (
            f"Promote {{{{ {judged}['model_name'] }}}} version {{{{ {judged}['model_version'] }}}} "
            f"to '{stage.alias}'?")
        hours = approval.timeout.total_seconds() / 3600
        body = (f"**The gate:** {{{{ {judged}['gate_detail'] }}}}\n\n"
                f"**Current '{stage.alias}':** version {{{{ {judged}['champion'] or 'none' }}}}\n\n"
                f"*Approve* moves '{stage.alias}' to this version (the version it replaces keeps "
                f"'{stage.previous_alias}'); *Reject* leaves '{stage.alias}' where it is. No answer within "
                f"{hours:g} h rejects it.")
        users = [{"id": u, "name": u} for u in approval.assigned_users] or None
        super().__init__(subject=subject, body=body, options=["Approve", "Reject"], defaults=["Reject"],
                         multiple=False, assigned_users=users, response_timeout=approval.timeout,
                         stage=stage, stage_name=stage_name, **kwargs)
        self.custom_operator_name = "approval (human-in-the-loop)"
        self._answer: dict[str, Any] = {}

    def execute(self, context: Any) -> Any:
        return HITLOperator.execute(self, context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """The answer (or the timeout's Reject) arrived: carry it out as the stage would."""
        answer = HITLOperator.execute_complete(self, context, event)
        self._answer = dict(answer)
        return StageOperator.execute(self, context)

    def run(self, ctx: Any, context: Any = None) -> dict[str, Any]:
        from airflow_mlops.stages.validate import conclude

        judged = context["ti"].xcom_pull(task_ids=self.judged_task_id) or {}
        return self.outcome(conclude, self.stage, ctx, judged, self._answer)


def call(*, stage: Any, stage_name: str, plan: Any, task_args: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """The approval task's operator and arguments; it follows the stage's ``run`` task in its
    group (``run >> approval``)."""
    from airflow_mlops.backends import stage_operator_args

    return PromotionApprovalOperator, {**stage_operator_args(stage, stage_name, plan), "task_id": APPROVAL_TASK,
                                       **task_args}
