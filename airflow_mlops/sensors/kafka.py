"""KafkaLagSensor: wait until a consumer group has caught up (lag below N), or until there is
something for it to consume (new records)."""

from __future__ import annotations

import time
from typing import Any, Sequence

from airflow.sdk.bases.sensor import BaseSensorOperator

from airflow_mlops._core.errors import ArgumentsError
from airflow_mlops._core.extras import require
from airflow_mlops.kafka.lag import Condition, check_lag
from airflow_mlops.sensors import seconds


class KafkaLagSensor(BaseSensorOperator):
    """Poke a consumer group's lag on some topics: Σ over partitions of highwater − committed
    offset (a partition the group never committed counts from the start of its log).

    :param topics: a topic or a list of topics.
    :param group_id: the consumer group, e.g. a ``StreamInferenceOperator``'s group.
    :param condition: ``"lag_below"``: done when lag < ``threshold`` (default 1: fully caught up);
        ``"new_records"``: done when lag ≥ ``threshold`` (default 1: anything to consume) —
        put it in front of a ``StreamInferenceOperator`` so runs start only when there is work.
    :param threshold: N of the condition.
    :param kafka_conn_id: Airflow connection: a ``kafka`` one of Airflow's Kafka provider (librdkafka
        settings in the extra) or an ``mlops_kafka`` one (host = bootstrap servers).
    :param lag_timeout: longest wait in seconds for the brokers' answer and for the partitions'
        highwater marks in one poke (``lag_timeout_s`` is its deprecated name). Brokers that do not
        answer within it fail the poke with a retryable ``DependencyFailed`` ("Kafka broker (...)
        did not answer ..."), so Airflow's retries apply.
    :param deferrable: wait in the triggerer (``KafkaLagTrigger``), which measures every
        ``poke_interval`` without holding a worker slot; it reads the connection there.

    (``mode`` stays Airflow's sensor mode, ``"poke"`` or ``"reschedule"``.) Each poke opens and
    closes its own client and keeps no state, so ``mode="reschedule"`` frees
    the worker slot between pokes. The XCom value is the measured lag (total and per partition).
    Partitions whose highwater could not be read count as "not yet". A topic that does not exist
    fails the task at once, without retries, with a did-you-mean over the brokers' topics — unless
    ``wait_for_missing_topics=True`` (a topic its producer creates later), which counts it as
    "not yet".
    """

    template_fields = ("topics", "group_id", "kafka_conn_id")
    ui_color = "#fff8e1"
    accepted_kwargs = ("lag_timeout_s",)  # the deprecated name of lag_timeout

    def __init__(
        self,
        *,
        topics: str | Sequence[str],
        group_id: str,
        condition: Condition = "lag_below",
        threshold: int | None = None,
        kafka_conn_id: str = "kafka_default",
        lag_timeout: float = 15.0,
        deferrable: bool = False,
        wait_for_missing_topics: bool = False,
        **kwargs: Any,
    ) -> None:
        from airflow_mlops.spec.renamed import pop_renamed

        lag_timeout = pop_renamed("KafkaLagSensor", kwargs).get("lag_timeout", lag_timeout)
        super().__init__(**kwargs)
        require("apache-kafka", f"{type(self).__name__}(task_id={self.task_id!r})")
        owner = f"{type(self).__name__} '{self.task_id}'"
        if condition not in ("lag_below", "new_records"):
            raise ArgumentsError.one(owner, "condition",
                                     f"condition must be 'lag_below' or 'new_records', got {condition!r}")
        threshold = 1 if threshold is None else threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ArgumentsError.one(owner, "threshold", f"threshold must be a whole number ≥ 1, got {threshold!r}")
        topics = [topics] if isinstance(topics, str) else list(topics)
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise ArgumentsError.one(owner, "topics",
                                     f"topics must be a topic name or a non-empty list of names, got {topics!r}")
        if not group_id:
            raise ArgumentsError.one(owner, "group_id", "group_id is required")
        self.topics = topics
        self.group_id = group_id
        self.condition = condition
        self.threshold = threshold
        self.kafka_conn_id = kafka_conn_id
        self.lag_timeout = lag_timeout
        self.deferrable = deferrable
        self.wait_for_missing_topics = wait_for_missing_topics
        self._last: str = "no measurement yet"

    def describe_goal(self) -> str:
        if self.condition == "lag_below":
            return f"lag < {self.threshold}"
        return f"at least {self.threshold} new record(s) (lag ≥ {self.threshold})"

    def poke(self, context: Any) -> Any:
        from airflow.sdk import PokeReturnValue

        from airflow_mlops.hooks.kafka import kafka_config_from_connection

        check = check_lag(kafka_config_from_connection(self.kafka_conn_id), self.group_id, self.topics,
                          self.condition, self.threshold, self.lag_timeout, self.wait_for_missing_topics)
        if check.missing:
            from airflow_mlops._core.outcome import failed

            raise failed(check.missing)
        self._last = check.measured
        self.log.info("Kafka lag of group '%s' on %s: %s; %s %s", self.group_id, self.topics, check.measured,
                      "met" if check.done else "waiting for", self.describe_goal())
        return PokeReturnValue(is_done=check.done, xcom_value=check.lag)

    def execute(self, context: Any) -> Any:
        from airflow_mlops._core.compat import AirflowSensorTimeout
        from airflow_mlops._core.outcome import timed_out

        if self.deferrable:
            from airflow_mlops.sensors.triggers import KafkaLagTrigger

            self.defer(trigger=KafkaLagTrigger(
                kafka_conn_id=self.kafka_conn_id, group_id=self.group_id, topics=self.topics, condition=self.condition,
                threshold=self.threshold, lag_timeout_s=self.lag_timeout, poll_interval=seconds(self.poke_interval),
                deadline=time.time() + seconds(self.timeout), wait_for_missing_topics=self.wait_for_missing_topics),
                method_name="execute_complete")
        try:
            return super().execute(context)
        except AirflowSensorTimeout as exc:
            raise timed_out(f"{self._timeout_message(self._last)} ({exc})") from exc

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        from airflow_mlops._core.compat import AirflowException
        from airflow_mlops._core.outcome import failed, timed_out

        event = event or {}
        if event.get("status") == "missing":
            raise failed(event.get("message", "a topic does not exist"))
        if event.get("status") == "success":
            self.log.info("Kafka lag of group '%s' on %s: %s; met %s", self.group_id, self.topics,
                          event.get("measured"), self.describe_goal())
            return event.get("lag")
        if event.get("status") == "timeout":
            raise timed_out(self._timeout_message(event.get("measured", "")))
        raise AirflowException(f"waiting for the Kafka lag of group '{self.group_id}' failed in the triggerer: "
                               f"{event.get('message', event)}")

    def _timeout_message(self, last: str) -> str:
        return (f"Kafka lag of group '{self.group_id}' on {self.topics} did not reach {self.describe_goal()} within "
                f"{seconds(self.timeout):.0f} s; last measurement: {last or 'none'}")
