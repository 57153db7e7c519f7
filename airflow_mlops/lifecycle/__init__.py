"""Data and model lifecycle: retention (what may be deleted, and deleting exactly that) and
incremental backups with verified restore.

Plain Python, backend-agnostic: ``retention.plan`` / ``retention.apply`` / ``retention.run_retention``
and ``backup.run_backup`` / ``backup.run_restore`` / ``backup.verify_snapshot`` take the pydantic
specs of ``specs`` (or plain dicts). The Airflow operators in ``airflow_mlops.operators.retention``
and ``airflow_mlops.operators.backup`` are thin wrappers. Nothing here imports MLflow at module level.
"""
