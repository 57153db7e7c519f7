"""StreamInferenceOperator: Kafka topic → micro-batches → MLflow pyfunc model → Kafka topic, as a
bounded Airflow task. Thin: it validates a ``StreamSpec`` when the DAG is parsed, resolves the
Kafka and MLflow connections when it runs, and calls ``airflow_mlops.stream.run_stream``."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from airflow.sdk import BaseOperator

from airflow_mlops._core.errors import ArgumentsError
from airflow_mlops._core.extras import require
from airflow_mlops._core.orphan import end_with_parent
from airflow_mlops.spec.stream import StreamSpec


def validated_spec(data: dict[str, Any], owner: str, *, rendered: bool = False) -> StreamSpec:
    """``StreamSpec`` from ``data``, or a ValueError naming every bad argument (a DAG-parse error).
    ``rendered``: the templates have been rendered, so none may stand in for a value any more."""
    from airflow_mlops._core.validation import validated
    from airflow_mlops.spec.templating import RENDERED

    return validated(StreamSpec, data, owner, {RENDERED: True} if rendered else None)


@functools.cache
def _operator_params() -> frozenset[str]:
    return frozenset(inspect.signature(BaseOperator.__init__).parameters)


def _near_misses(kwargs: dict[str, Any], task_id: Any) -> None:
    """A misspelt stream argument (``batch_sise``) gets a did-you-mean rather than Airflow's
    generic "Invalid arguments were passed"."""
    import difflib

    for key in kwargs:
        if key in _operator_params():
            continue
        close = difflib.get_close_matches(key, sorted(StreamSpec.model_fields), n=1)
        if close:
            raise ValueError(f"StreamInferenceOperator '{task_id}': invalid arguments:\n  "
                             f"{key}: unknown argument (did you mean '{close[0]}'?)")


class StreamInferenceOperator(BaseOperator):
    """Score a Kafka topic with an MLflow model, at least once, and end.

    Consumes ``topics`` in consumer group ``group_id``; decodes each record (JSON objects by
    default; ``decoder`` names your own function); scores micro-batches of ``batch_size`` records
    with one ``model.predict`` call on a pandas DataFrame; produces one prediction per record to
    ``output_topic`` — keyed like its input, JSON ``{"prediction": ...}``, the model version in
    the ``model_version`` header — and commits the consumed offsets only once the broker has
    acknowledged the batch's predictions. A record that fails to decode or score goes to
    ``dead_letter_topic`` (its original bytes; error, source topic/partition/offset in headers)
    and the batch goes on. The task ends after ``max_records`` records, ``max_duration`` seconds
    or ``idle_timeout`` seconds without a record, and returns (XCom) a summary: records in,
    predictions out, dead letters, batches, elapsed seconds, rate, final lag. Every topic must
    exist before anything is consumed: a missing one (a typo) fails the task without retries,
    with a did-you-mean (see ``airflow_mlops.stream._preflight``).

    :type topics: str or list[str]
    :keyword topics: topic or list of topics to consume.
    :type output_topic: str
    :keyword output_topic: topic for the predictions.
    :type model_uri: str
    :keyword model_uri: MLflow model URI (``models:/name@alias``, ``models:/name/3``, ``runs:/…``);
        an alias is resolved to its version once, when the task starts.
    :type group_id: str
    :keyword group_id: consumer group; default ``airflow-mlops.<dag_id>.<task_id>``.
    :type dead_letter_topic: str
    :keyword dead_letter_topic: where failing records go; without one, a failing record fails the task.
    :param kafka_conn_id: Airflow connection, e.g. one of type ``kafka`` made for Airflow's own Kafka
        provider (extra = librdkafka settings: ``bootstrap.servers``, ``security.protocol``,
        ``sasl.mechanism``, ``sasl.username``/``sasl.password``…) or of this package's type
        ``mlops_kafka`` (host = bootstrap servers, login/password = SASL credentials); translated
        for the engine. Logged redacted only.
    :type engine: str
    :keyword engine: ``"confluent"`` (confluent-kafka, default) or ``"kafka-python"``: same guarantees.
    :type broker_timeout: float
    :keyword broker_timeout: seconds the brokers may stay unreachable before the task fails with a
        retryable "Kafka broker ... did not answer" error saying what was committed (default 30).
    :param mlflow: the MLflow store, as for every operator: ``{"conn_id": ...}`` (an ``mlflow`` connection)
        or ``{"tracking_uri": ...}``; default: resolved like the stages do. (``mlflow_conn_id=`` and
        ``tracking_uri=`` are its deprecated forms.)
        Default: ``$MLFLOW_TRACKING_URI``, else the SQLite store under ``$AIRFLOW_MLOPS_HOME``.
    :param spec: a ``StreamSpec`` (or dict) to start from; keyword arguments override it.

    Every other ``StreamSpec`` field is accepted as a keyword argument too: ``batch_size``,
    ``max_records``, ``max_duration``, ``idle_timeout``, ``decoder``, ``features``,
    ``output_key``, ``output_fields``, ``output_headers``, ``prediction_field``,
    ``auto_offset_reset``, ``auto_create_output_topics``, ``halt_on_failed_batch``, ``poll_timeout_ms``,
    ``engine``, ``broker_timeout``,
    ``progress_interval``, ``consumer_config``, ``producer_config``. They are validated here, so
    a bad one fails when the DAG is parsed, and they can be Jinja templates.
    """

    # __init__ takes every StreamSpec field through **kwargs: named here for signature checks
    # (airflow-mlops validate reports any other argument as unknown).
    accepted_kwargs = frozenset(StreamSpec.model_fields) | {"input_topic", "max_seconds", "idle_timeout_s",
                                                            "progress_interval_s", "mlflow_conn_id",
                                                            "tracking_uri"}  # deprecated names
    template_fields = ("stream_args", "kafka_conn_id", "mlflow")
    template_fields_renderers = {"stream_args": "json", "mlflow": "json"}
    ui_color = "#fff3e0"

    def __init__(
        self,
        *,
        kafka_conn_id: str = "kafka_default",
        mlflow: Any = None,
        spec: StreamSpec | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow_mlops.spec.renamed import pop_renamed

        # The MLflow store is named like every other operator's: mlflow={"conn_id"|"tracking_uri": ...}.
        moved = {new: kwargs.pop(old) for old, new in (("mlflow_conn_id", "conn_id"), ("tracking_uri", "tracking_uri"))
                 if old in kwargs}
        if moved:
            from airflow_mlops.spec.renamed import warn_deprecated

            warn_deprecated(f"StreamInferenceOperator: mlflow_conn_id= and tracking_uri= are deprecated, use "
                            f"mlflow={moved!r}")
        mlflow = {**(mlflow.model_dump(exclude_none=True) if hasattr(mlflow, "model_dump") else dict(mlflow or {})),
                  **moved}
        tracking_uri = mlflow.get("tracking_uri")

        fields = {**pop_renamed("StreamInferenceOperator", kwargs),
                  **{k: kwargs.pop(k) for k in list(kwargs) if k in StreamSpec.model_fields}}
        _near_misses(kwargs, kwargs.get("task_id"))
        super().__init__(**kwargs)
        require("apache-kafka", f"{type(self).__name__}(task_id={self.task_id!r})")
        base = spec.model_dump(exclude_unset=True) if isinstance(spec, StreamSpec) else dict(spec or {})
        data = {**base, **fields}
        if not data.get("group_id"):
            data["group_id"] = f"airflow-mlops.{self.dag_id}.{self.task_id}" if self.has_dag() else \
                f"airflow-mlops.{self.task_id}"
        owner = f"{type(self).__name__} '{self.task_id}'"
        self.spec = validated_spec(data, owner)
        if not self.spec.model_uri:
            raise ArgumentsError(owner, [{"loc": ("model_uri",), "msg": "required (e.g. 'models:/churn@champion')",
                                          "type": "argument"}])
        from airflow_mlops._core.tracking_uri import store_problem

        if store_problem(tracking_uri, parse_time=True):  # the rule of every tracking URI (see hooks/mlflow.py)
            raise ArgumentsError(owner, [{"loc": ("mlflow", "tracking_uri"), "msg": store_problem(tracking_uri, parse_time=True),
                                          "type": "argument"}])
        self.stream_args = data
        self.kafka_conn_id = kafka_conn_id
        self.mlflow = mlflow

    # Every StreamSpec field is a documented argument, so Airflow's partial()/expand() (dynamic task
    # mapping) must know them: they join the signature Airflow reads when the class is made.
    __init__.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        *[p for p in inspect.signature(__init__).parameters.values() if p.kind != p.VAR_KEYWORD],
        *[inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
          for name in StreamSpec.model_fields if name not in ("spec",)],
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ])

    def resolve_tracking_uri(self) -> str:
        """The rendered ``mlflow`` settings' tracking URI (``hooks.mlflow.resolve_target``); a
        connection's credentials go to this task's process, where MLflow loads the model."""
        from airflow_mlops._core.mlflow import use_credentials
        from airflow_mlops.hooks.mlflow import resolve_target
        from airflow_mlops.spec.models import MlflowSettings

        # Not validated here: the rendered URI is checked by resolve_target, which names its source.
        settings = MlflowSettings.model_construct(**{**MlflowSettings().model_dump(), **self.mlflow})
        target = resolve_target(settings, self.dag_id)
        use_credentials(target)
        return target.tracking_uri

    def execute(self, context: Any) -> dict[str, Any]:
        end_with_parent()  # a worker lost under this task must not leave its work running twice
        from airflow_mlops._core.outcome import airflow_outcome, failed
        from airflow_mlops._core.tracking_uri import redacted
        from airflow_mlops.hooks.kafka import kafka_config_from_connection
        from airflow_mlops.stream import StreamError, run_stream

        # Templated arguments are rendered by now: validate them again.
        try:
            spec = validated_spec(self.stream_args, f"{type(self).__name__} '{self.task_id}' (after rendering)",
                                  rendered=True)
        except ValueError as exc:  # the rendered values are wrong: a retry renders the same
            raise failed(str(exc)) from None
        # A poison record without a dead-letter topic, a model that scores nothing, a relative
        # tracking URI: a retry would only repeat them (_core.outcome); a lost broker is retried.
        with airflow_outcome():
            kafka_config = kafka_config_from_connection(self.kafka_conn_id)
            tracking_uri = self.resolve_tracking_uri()
            self.log.info("MLflow tracking URI: %s", redacted(tracking_uri))
            try:
                return run_stream(spec, kafka_config, tracking_uri=tracking_uri, logger=self.log)
            except StreamError as exc:
                self.log.error("%s", exc)  # the one message to act on, first (a lost broker: what was committed)
                raise
