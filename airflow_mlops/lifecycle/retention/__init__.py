"""Retention: decide what a set of policies deletes (``plan``), then delete exactly that (``apply``).

A dry run is ``plan`` alone; a real run is ``plan`` then ``apply`` of that same plan, so the dry
run lists exactly what the real run deletes. ``apply`` re-checks every item just before deleting
it and skips (and reports) anything that vanished, changed since it was planned, or became
protected in between: it never deletes an item the plan does not hold.

Modules, one seam each (imports point down this list, never back):

- ``run``: ``plan``, ``apply``, ``run_retention`` (the entry points; they dispatch by policy kind)
- ``report``: the log lines of a run, ``as_dicts`` (``human_bytes`` is ``_core.units``')
- ``files``: files and folders under a root (never following a symlink)
- ``mlflow_plan`` / ``mlflow_apply``: MLflow runs, logged models and registered model versions
- ``registry``: reading the MLflow store (paging, models, versions, protected aliases)
- ``selection``: the rules every kind shares (max_age, keep_last, min_keep, max_total_size)
- ``model``: ``Item``, ``PolicyPlan``, ``Plan`` (and its JSON summary), ``Candidate``

No MLflow import happens unless a policy needs it.
"""

from airflow_mlops._core.units import human_bytes
from airflow_mlops.lifecycle.retention._model import Candidate, Item, Plan, PolicyPlan
from airflow_mlops.lifecycle.retention._run import apply, plan, run_retention
from airflow_mlops.lifecycle.retention._selection import select, select_rows
from airflow_mlops.lifecycle.retention.report import as_dicts

__all__ = [
    "Candidate", "Item", "Plan", "PolicyPlan", "apply", "as_dicts", "human_bytes", "plan", "run_retention", "select",
    "select_rows",
]
