"""The serve stage in stream mode: what ``stages/serve/__init__.py`` calls for ``mode: stream``.

    serve:
      mode: stream
      stream:
        kafka_conn_id: kafka_default
        topics: transactions
        output_topic: transactions.scored
        dead_letter_topic: transactions.dlq
        max_duration: 600

The model is the version the upstream stages produced (``model_uri`` in their results, e.g.
``models:/churn/3``) unless ``stream.model_uri`` names one; the consumer group defaults to
``airflow-mlops.<pipeline id>.<stage name>``; MLflow is the pipeline's store. The Kafka connection
is resolved by the task's operator (``StageContext.kafka``): in a pod it comes from a Secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_mlops._core.context import StageContext
    from airflow_mlops.spec.stream import StreamServeSettings


def run_serve_stream(settings: "StreamServeSettings", ctx: "StageContext", model: str | None = None) -> dict[str, Any]:
    """Score ``settings.topics`` with ``settings.model_uri``, else the serve stage's ``model``
    (resolved like batch serving: ``stages.tracking.serving_model``)."""
    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops.spec.stream import StreamSpec
    from airflow_mlops.stream.errors import StreamError
    from airflow_mlops.stream.loop import run_stream

    data = settings.model_dump(exclude={"kafka_conn_id"})
    from airflow_mlops.stages.serve.model import serving_model

    data["model_uri"] = settings.model_uri or serving_model(model, ctx)["model_uri"]
    data["group_id"] = settings.group_id or f"airflow-mlops.{ctx.pipeline_id}.{ctx.stage_name}"
    spec = StreamSpec.model_validate(data)
    if ctx.kafka is None:  # the operator resolves stream.kafka_conn_id into the context
        raise StageFailed(f"stage '{ctx.stage_name}': no Kafka client config reached the stage (the connection "
                          f"'{settings.kafka_conn_id}' is resolved by the task's operator)")
    try:
        return run_stream(spec, ctx.kafka, tracking_uri=ctx.mlflow.tracking_uri, logger=ctx.log)
    except StreamError as exc:  # retried or not as its ``retryable`` says (_core.outcome)
        ctx.log.error("%s", exc)  # the one message to act on, first (a lost broker: what was committed)
        raise
