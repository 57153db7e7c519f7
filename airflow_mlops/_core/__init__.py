"""The core every layer stands on: the stage context, units (quantities, durations, bytes), names
and labels, errors (with ``retryable``), paths and environment, the MLflow client and the bound on
its requests (``mlflow_faults``), secret words.

It imports nothing of airflow_mlops (an import-linter contract checks it) and nothing heavy at
module level; private to the package.
"""
