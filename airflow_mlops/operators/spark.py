"""SparkFeatureOperator: feature engineering with PySpark from hand-written DAGs (the preprocess
stage on the spark backend)."""

from __future__ import annotations

from typing import Any

from airflow_mlops._core.extras import require
from airflow_mlops.backends.spark.operator import SparkStageOperator
from airflow_mlops.spec.models import PreprocessStage, QualityGates, SparkSettings, Split


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
    :param connect_timeout: how long the Spark master may take to accept a connection (and
        spark-submit's application) before the task fails, retryable: ``"60s"`` by default.
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
        connect_timeout: Any = None,
        **kwargs: Any,
    ) -> None:
        from airflow_mlops.lifecycle.specs import validated

        task_id = kwargs.get("task_id", "?")
        owner = f"SparkFeatureOperator '{task_id}'"
        require("apache-spark", f"SparkFeatureOperator(task_id={task_id!r})")  # before its arguments' checks
        def dump(v: Any) -> Any:
            return v.model_dump(exclude_unset=True) if hasattr(v, "model_dump") else v

        stage = validated(PreprocessStage, {
            "inputs": {n: {"path": v} if isinstance(v, str) else dump(v) for n, v in (inputs or {}).items()},
            "sql": sql, "transform": transform, "format": format, "quality": dump(quality), "split": dump(split),
            "output": output,
        }, owner)
        settings = {"conn_id": conn_id, "master": master, "conf": conf or {}}
        if connect_timeout is not None:
            settings["connect_timeout"] = connect_timeout
        spark = validated(SparkSettings, settings, owner)
        kwargs.setdefault("outlets", [_output_asset(output, owner)])
        super().__init__(stage=stage, stage_name=task_id, spark=spark, **kwargs)


def _output_asset(output: str, owner: str) -> Any:
    """The Asset a feature output is declared as. A per-run output (``/data/features/{{ ds }}``)
    is one Asset, its folder up to the first template or variable; a relative output is refused,
    since it would resolve against whichever folder parsed the DAG."""
    from airflow.sdk import Asset

    from airflow_mlops._core.errors import ArgumentsError
    from airflow_mlops._core.locations import asset_uri

    if "://" in output:
        static = output.split("{{")[0].split("{%")[0]
        return Asset(uri=asset_uri(static.rstrip("/") or output))
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
    return Asset(uri=asset_uri(static))
