"""What a streaming-inference run does, as a typed spec (pydantic only: cheap to import at DAG
parse time). The connection to Kafka is not part of it: it comes from an Airflow connection
(``airflow_mlops.hooks.kafka``) or is passed to ``run_stream`` as a client config."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_mlops._core.secrets import is_secret
from airflow_mlops.spec.base import IMPORT_PATH
from airflow_mlops.spec.templating import TEMPLATABLE_VALUE, allows_template

DEFAULT_DECODER = "airflow_mlops.stream._codecs:json_decoder"
# Topic names Kafka accepts: 1-249 of [a-zA-Z0-9._-].
TOPIC = r"^[A-Za-z0-9._-]{1,249}$"


class StreamSpec(BaseModel):
    """Consume ``topics`` in consumer group ``group_id``, score micro-batches of up to
    ``batch_size`` records with an MLflow pyfunc model, produce one prediction per record to
    ``output_topic`` (keyed like its input, the model version in a header) and commit the
    consumed offsets only once the batch's predictions (and dead letters) are acknowledged.

    The run is bounded: it ends after ``max_records`` records, ``max_duration`` seconds, or
    ``idle_timeout`` seconds without a record, whichever comes first.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        from airflow_mlops.spec.renamed import take_renamed

        return take_renamed("StreamSpec", data) if isinstance(data, dict) else data

    # Both may be Jinja templates in a pipeline's serve stage, checked once rendered.
    topics: str | list[str] = Field(..., description="Topic (or list of topics) to consume.")
    output_topic: Annotated[str, *TEMPLATABLE_VALUE] = Field(
        ..., pattern=TOPIC, description="Topic the predictions are produced to.")
    group_id: str | None = Field(
        None, min_length=1, description="Consumer group; offsets are committed for it. The operator defaults it to "
        "'airflow-mlops.<dag_id>.<task_id>'."
    )
    model_uri: str | None = Field(
        None, min_length=1, description="MLflow model URI, e.g. 'models:/churn@champion' or 'models:/churn/3'. "
        "An alias is resolved to its version once, at start, so the whole run uses one version."
    )
    dead_letter_topic: Annotated[str | None, *TEMPLATABLE_VALUE] = Field(
        None, pattern=TOPIC, description="Where records that fail to decode or score go, with the error in headers. "
        "Without one, such a record fails the run (its batch is not committed)."
    )
    auto_create_output_topics: bool = Field(
        False, description="A missing output or dead-letter topic is left to the broker to create (its "
        "auto.create.topics.enable) when the run starts; by default it fails the run before anything is consumed. "
        "Input topics must always exist: a consumer never creates one.",
    )
    halt_on_failed_batch: int | None = Field(
        50, ge=1, description="If every record of a batch of at least this many fails to decode or score, stop the "
        "run (a model or schema problem, not poison records) instead of dead-lettering them all; null: never stop.",
    )
    batch_size: Annotated[Annotated[int, Field(ge=1, le=100_000)], *TEMPLATABLE_VALUE] = Field(
        1000, description="Records per micro-batch (one model.predict call).")
    max_records: Annotated[Annotated[int, Field(ge=1)] | None, *TEMPLATABLE_VALUE] = Field(
        None, description="Stop after consuming this many records.")
    max_duration: Annotated[Annotated[float, Field(gt=0)] | None, *TEMPLATABLE_VALUE] = Field(
        None, description="Stop after this many seconds (the current batch completes); 'max_seconds' before.")
    idle_timeout: Annotated[Annotated[float, Field(gt=0)] | None, *TEMPLATABLE_VALUE] = Field(
        30.0, description="Stop after this many seconds without a record ('idle_timeout_s' before). While no partition is assigned, twice the "
        "consumer's session_timeout_ms is added (time for a dead member to expire and the group to rebalance)."
    )
    decoder: str = Field(
        DEFAULT_DECODER, pattern=IMPORT_PATH,
        description="'package.module:function' taking the record value (bytes) and returning a mapping of fields.",
    )
    features: list[str] | None = Field(
        None, description="Fields fed to the model; default: the model signature's inputs, else every decoded field."
    )
    output_key: str = Field(
        "input", pattern=r"^(input|none|field:.+)$",
        description="Key of each prediction: 'input' (the input record's key), 'none', or 'field:<name>'.",
    )
    prediction_field: str = Field("prediction", min_length=1, description="Name of the prediction in the output JSON.")
    output_fields: list[str] = Field(
        default_factory=list, description="Decoded input fields copied into the output JSON (e.g. an id)."
    )
    output_headers: dict[str, str] = Field(
        default_factory=dict, description="Static headers added to every prediction (besides 'model_version')."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group without committed offsets starts."
    )
    engine: Literal["confluent", "kafka-python"] = Field(
        "confluent", description="Kafka client library: 'confluent' (confluent-kafka/librdkafka, the client of "
        "Airflow's own Kafka provider; the default, several times faster here) or 'kafka-python'. Same guarantees "
        "on both.")
    broker_timeout: float = Field(
        30.0, gt=0, le=3600, description="Seconds the Kafka brokers may stay unreachable (no answer, no "
        "acknowledgement, no commit) before the run fails with a retryable 'Kafka broker ... did not answer' "
        "error; sets the clients' own timeouts (delivery, request, flush, commit).")
    poll_timeout_ms: int = Field(500, ge=1, description="Longest wait of one poll for records.")
    progress_interval: float = Field(10.0, gt=0, description="How often progress (records, rate, lag) is logged.")
    consumer_config: dict[str, Any] = Field(
        default_factory=dict, description="Extra consumer settings (tuning, not secrets), in kafka-python or librdkafka names; translated for "
        "the engine."
    )
    producer_config: dict[str, Any] = Field(
        default_factory=dict, description="Extra producer settings (tuning, not secrets), in kafka-python or librdkafka names; translated for "
        "the engine."
    )

    @field_validator("topics")
    @classmethod
    def _topics(cls, v: str | list[str], info: ValidationInfo) -> str | list[str]:
        import re

        names = [v] if isinstance(v, str) else v
        if not names:
            raise PydanticCustomError("topics", "give at least one input topic")
        bad = [n for n in names if not re.match(TOPIC, n) and not allows_template(n, info)]
        if bad:
            raise PydanticCustomError(
                "topic", "invalid topic name(s) {bad}: 1-249 characters of letters, digits, '.', '_' and '-'",
                {"bad": bad},
            )
        return v

    @model_validator(mode="after")
    def _distinct_topics(self) -> "StreamSpec":
        if self.output_topic in self.input_topics:
            raise PydanticCustomError("loop", "output_topic {t} is also an input topic", {"t": repr(self.output_topic)})
        if self.dead_letter_topic and self.dead_letter_topic in (*self.input_topics, self.output_topic):
            raise PydanticCustomError(
                "dlq", "dead_letter_topic {t} must differ from the input and output topics",
                {"t": repr(self.dead_letter_topic)},
            )
        for name in ("consumer_config", "producer_config"):
            secret = [k for k in getattr(self, name) if is_secret(k)]
            if secret:
                raise PydanticCustomError(
                    "secret_in_spec", "{name} must not hold secrets ({keys}); put them in the Kafka connection's extra",
                    {"name": name, "keys": secret},
                )
        _no_unsafe_overrides(self.consumer_config, self.producer_config)
        return self

    @property
    def input_topics(self) -> list[str]:
        return [self.topics] if isinstance(self.topics, str) else list(self.topics)


class StreamServeSettings(StreamSpec):
    """``serve.stream`` in a pipeline YAML: a ``StreamSpec`` plus the Kafka connection. The model
    URI defaults to the version the upstream stages produced (``models:/<name>/<version>``)."""

    kafka_conn_id: str = Field("kafka_default", description="Airflow connection: host = bootstrap servers, "
                               "extra = client settings: librdkafka names as for Airflow's Kafka provider (bootstrap.servers, "
                               "security.protocol, sasl.*) or kafka-python names.")


# Tuning settings that would silently drop the no-loss guarantee: offsets are committed only after
# the predictions and dead letters are acknowledged by every in-sync replica.
_UNSAFE = {
    "consumer_config": {
        "enable_auto_commit": (lambda v: v not in (False, "false", "False"),
                               "auto-commit would commit offsets of records that were never scored"),
        "group_id": (lambda v: True, "set the consumer group with group_id"),
        "allow_auto_create_topics": (lambda v: v not in (False, "false", "False"),
                                     "a consumer would create a mistyped input topic and score nothing from it"),
        "enable_auto_offset_store": (lambda v: v not in (False, "false", "False"),
                                     "offsets are committed explicitly, after the predictions are acknowledged"),
    },
    "producer_config": {
        "acks": (lambda v: str(v) not in ("all", "-1"),
                 "predictions must reach every in-sync replica before the input offsets are committed; keep acks='all'"),
    },
}


def _no_unsafe_overrides(consumer: dict[str, Any], producer: dict[str, Any]) -> None:
    from airflow_mlops.kafka.config import normalize

    for name, given in (("consumer_config", consumer), ("producer_config", producer)):
        for dotted, value in normalize(given).items():
            key = dotted.replace(".", "_")  # librdkafka's name of the same setting
            rule = _UNSAFE[name].get(key)
            if rule and rule[0](value):
                raise PydanticCustomError("unsafe_override", "{name}.{key}={value} is not allowed: {why}",
                                          {"name": name, "key": key, "value": repr(value), "why": rule[1]})
