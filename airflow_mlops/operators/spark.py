"""Spark stages and the SparkFeatureOperator."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from airflow_mlops.operators.stage import StageOperator, stage_failed
from airflow_mlops.spec.models import PreprocessStage, QualityGates, SparkSettings, Split

RESULT_FILE = "_airflow_mlops_result.json"


class SparkStageOperator(StageOperator):
    """Run a stage's Spark code: on an embedded session in the worker when ``spark.conn_id`` is
    unset, else through spark-submit on the connection's cluster (the apache-spark provider's
    SparkSubmitHook), running ``airflow_mlops/runtime.py`` with the stage spec."""

    ui_color = "#fdeee4"

    def __init__(self, *, spark: SparkSettings | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spark = SparkSettings.model_validate(spark or {})

    def run(self, ctx: Any, context: Any = None) -> dict[str, Any]:
        ctx.backend = "spark"
        if self.spark.conn_id is None:
            ctx.spark = {"master": self.spark.master, "conf": self.spark.conf}
            self.log.info("Running on an embedded Spark session (master %s)", self.spark.master)
            return super().run(ctx, context)
        ctx.spark = None
        return self.submit(ctx)

    def submit(self, ctx: Any) -> dict[str, Any]:
        from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

        from airflow_mlops import runtime

        result_file = ctx.output_dir(getattr(self.stage, "output", None)) / RESULT_FILE
        for stale in (result_file, result_file.with_suffix(".failed"), result_file.with_suffix(".skipped")):
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
            application_args=["--payload", runtime.encode_payload(self.stage, ctx), "--result-file", str(result_file)],
            env_vars=python,
        )
        self.log.info("Submitting stage '%s' through Spark connection '%s'", ctx.stage_name, self.spark.conn_id)
        try:
            hook.submit(application=runtime.__file__)
        except Exception as exc:
            failure, skipped = result_file.with_suffix(".failed"), result_file.with_suffix(".skipped")
            if failure.exists():
                raise stage_failed(failure.read_text()) from exc
            if skipped.exists():
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(skipped.read_text()) from exc
            raise
        return json.loads(result_file.read_text())


class SparkFeatureOperator(SparkStageOperator):
    """Feature engineering with PySpark: SQL over named inputs (as tables) or a Python function
    over their DataFrames, data-quality gates, output written as Parquet or CSV and declared as an
    Airflow Asset.

    :param inputs: name → path/URI (or ``{"path": ..., "format": "csv"}``).
    :param sql: Spark SQL over the inputs by name; or
    :param transform: ``'package.module:function'`` called with the inputs as keyword DataFrames.
    :param output: folder the features are written into (``data.<format>``, or ``train.<format>``
        and ``test.<format>`` with ``split``).
    :param quality: data-quality gates (row_count, max_null_fraction, columns, unique).
    :param split: ``{"test_fraction": 0.2, "seed": 42}`` for a train/test split.
    :param conn_id: an Airflow Spark connection (spark-submit); default: embedded ``local[*]``.
    """

    def __init__(
        self,
        *,
        inputs: dict[str, str | dict[str, Any]],
        output: str,
        sql: str | None = None,
        transform: str | None = None,
        format: str = "parquet",
        quality: QualityGates | dict[str, Any] | None = None,
        split: Split | dict[str, Any] | None = None,
        conn_id: str | None = None,
        master: str = "local[*]",
        conf: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow_mlops.lifecycle.specs import validated

        task_id = kwargs.get("task_id", "?")
        owner = f"SparkFeatureOperator '{task_id}'"
        dump = (lambda v: v.model_dump(exclude_unset=True) if hasattr(v, "model_dump") else v)
        stage = validated(PreprocessStage, {
            "inputs": {n: {"path": v} if isinstance(v, str) else dump(v) for n, v in (inputs or {}).items()},
            "sql": sql, "transform": transform, "format": format, "quality": dump(quality), "split": dump(split),
            "output": output,
        }, owner)
        spark = validated(SparkSettings, {"conn_id": conn_id, "master": master, "conf": conf or {}}, owner)
        kwargs.setdefault("outlets", [_output_asset(output, owner)])
        super().__init__(stage=stage, stage_name=task_id, spark=spark, **kwargs)


def _output_asset(output: str, owner: str) -> Any:
    """The Asset a feature output is declared as. A per-run output (``/data/features/{{ ds }}``)
    is one Asset, its folder up to the first template or variable; a relative output is refused,
    since it would resolve against whichever folder parsed the DAG."""
    from airflow.sdk import Asset

    from airflow_mlops.spec.errors import ArgumentsError

    if "://" in output:
        static = output.split("{{")[0].split("{%")[0]
        return Asset(uri=static.rstrip("/") or output)
    if not output.startswith(("/", "~", "$", "{{")):
        raise ArgumentsError.one(owner, "output", f"output must be an absolute path or a URI (it may use ~, $VARS or "
                                 f"templates), got {output!r}: a relative path depends on the worker's folder")
    parts = []
    for part in output.split("/"):
        if "{{" in part or "{%" in part or part.startswith(("$", "~")):
            break
        parts.append(part)
    static = "/".join(parts).rstrip("/")
    if not static:
        return Asset(name=f"airflow-mlops-features:{output}")
    return Asset(uri=f"file://{static}")
