"""StageOperator: one built-in stage (preprocess, train, validate, serve, drift) run in the worker,
from a hand-written DAG. The public face of the batch backend's operator
(``airflow_mlops.backends.stage``)."""

from __future__ import annotations

from airflow_mlops.backends.stage import StageOperator

__all__ = ["StageOperator"]
