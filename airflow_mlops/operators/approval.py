"""PromotionApprovalOperator: a person approves a validated model version before its alias
moves, in Airflow's human-in-the-loop form (Airflow 3.1+), from a hand-written DAG. The public face
of ``airflow_mlops.backends.approval`` (a pipeline's ``validate: approval:`` builds the same task)."""

from __future__ import annotations

from airflow_mlops.backends.approval import PromotionApprovalOperator

__all__ = ["PromotionApprovalOperator"]
