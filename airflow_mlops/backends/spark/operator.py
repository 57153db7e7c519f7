"""The spark backend's operator: a stage's Spark code on an embedded session in the worker, or
through spark-submit on a cluster."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import replace
from typing import Any

from airflow_mlops._core.extras import require
from airflow_mlops._core.outcome import failed, for_airflow, skipped
from airflow_mlops._core.result import outcome_files
from airflow_mlops.backends.stage import StageOperator
from airflow_mlops.spec.models import SparkSettings

RESULT_FILE = "_airflow_mlops_result.json"


class SparkStageOperator(StageOperator):
    """Run a stage's Spark code: on an embedded session in the worker when ``spark.conn_id`` is
    unset, else through spark-submit on the connection's cluster (the apache-spark provider's
    SparkSubmitHook), running ``airflow_mlops/runtime.py`` with the stage spec."""

    ui_color = "#fdeee4"
    engine = "spark"
    backend_label = "spark"

    def __init__(self, *, spark: SparkSettings | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        require("apache-spark", f"{type(self).__name__}(task_id={self.task_id!r})")
        self.spark = SparkSettings.model_validate(spark or {})

    def spark_session_settings(self) -> dict[str, Any] | None:
        """An embedded session's settings; None under spark-submit, where the cluster's own
        configuration applies."""
        if self.spark.conn_id is not None:
            return None
        return {"master": self.spark.master, "conf": self.spark.conf,
                "connect_timeout": self.spark.connect_timeout.total_seconds()}

    def run(self, ctx: Any, context: Any = None) -> dict[str, Any]:
        from airflow_mlops._core.errors import DependencyFailed

        try:
            if self.spark.conn_id is None:
                self.log.info("Running on an embedded Spark session (master %s)", self.spark.master)
                return super().run(ctx, context)
            return self.submit(ctx)
        except DependencyFailed as exc:  # the Spark master: its message first, and the retry decision
            raise for_airflow(exc, self.log) from exc

    def submit(self, ctx: Any) -> dict[str, Any]:
        from pathlib import Path

        from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

        from airflow_mlops._core.connections import check

        # The Spark hook would log "defaulting to yarn" for a connection it cannot find, and submit there.
        check(self.spark.conn_id, "spark.conn_id", instead="the embedded session (spark.master)")
        from airflow_mlops._core.storage import is_remote
        from airflow_mlops.backends import runtime
        from airflow_mlops.backends.spark.submit import MasterWatch
        from airflow_mlops.stages.spark_master import check_master, master_unreachable, unreachable

        location = ctx.output_location(getattr(self.stage, "output", None))
        # The result protocol's file is local to this worker (spark-submit runs the driver here, in
        # client mode); data on object storage gets a temporary folder for it.
        folder = Path(tempfile.mkdtemp(prefix="airflow-mlops-result-")) if is_remote(location) else Path(location)
        result_file = folder / RESULT_FILE
        for stale in (result_file, *outcome_files(result_file)):
            stale.unlink(missing_ok=True)  # never read an earlier try's result
        # spark-submit ships with pyspark next to this interpreter; the hook looks it up on PATH.
        here = os.path.dirname(sys.executable)
        if os.environ.get("PATH", "").split(os.pathsep)[0] != here:  # once, not on every submit
            os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
        python = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        hook = SparkSubmitHook(
            conn_id=self.spark.conn_id,
            conf={k: str(v) for k, v in self.spark.conf.items()},
            name=f"airflow-mlops {ctx.pipeline_id}.{ctx.stage_name}",
            # Under spark-submit the cluster's configuration applies, whatever context was given.
            application_args=["--payload", runtime.encode_payload(self.stage, replace(ctx, spark=None)),
                              "--result-file", str(result_file)],
            env_vars=python,
        )
        # The master as the hook resolved it from the connection (host, port, or a full URL).
        master = (getattr(hook, "_connection", None) or {}).get("master") or ""
        timeout = self.spark.connect_timeout.total_seconds()
        during = f"spark-submit of stage '{ctx.stage_name}' (Spark connection '{self.spark.conn_id}')"
        kept = (f"no application is left on the master; Spark publishes output in {result_file.parent} only when "
                "its job commits: a rerun writes it whole")
        check_master(master, timeout, during=during, kept=kept)
        self.log.info("Submitting stage '%s' through Spark connection '%s' (master %s)", ctx.stage_name,
                      self.spark.conn_id, master)
        try:
            with MasterWatch(hook, timeout) as watch:
                hook.submit(application=runtime.__file__)
        except Exception as exc:
            failure, skip_file = outcome_files(result_file)
            if failure.exists():
                raise failed(failure.read_text()) from exc
            if skip_file.exists():
                raise skipped(skip_file.read_text()) from exc
            if watch.gave_up:
                raise unreachable(master, timeout, RuntimeError(watch.last_line or "refused"), during=during,
                                  kept=kept + "; spark-submit was stopped before the master took the application"
                                  ) from exc
            if master_unreachable(master):
                raise unreachable(master, timeout, exc, during=during, kept=kept) from exc
            raise
        return json.loads(result_file.read_text())
