"""KafkaLagSensor: wait until a consumer group has caught up (lag below N), or until there is
something for it to consume (new records)."""

from __future__ import annotations

from typing import Any, Literal, Sequence

from airflow.sdk.bases.sensor import BaseSensorOperator

Condition = Literal["lag_below", "new_records"]


class KafkaLagSensor(BaseSensorOperator):
    """Poke a consumer group's lag on some topics: Σ over partitions of highwater − committed
    offset (a partition the group never committed counts from the start of its log).

    :param topics: a topic or a list of topics.
    :param group_id: the consumer group, e.g. a ``StreamInferenceOperator``'s group.
    :param condition: ``"lag_below"``: done when lag < ``threshold`` (default 1: fully caught up);
        ``"new_records"``: done when lag ≥ ``threshold`` (default 1: anything to consume) —
        put it in front of a ``StreamInferenceOperator`` so runs start only when there is work.
    :param threshold: N of the condition.
    :param kafka_conn_id: Airflow connection (host = bootstrap servers, extra = kafka-python settings).
    :param lag_timeout_s: longest wait for the partitions' highwater marks in one poke.

    (``mode`` stays Airflow's sensor mode, ``"poke"`` or ``"reschedule"``.) Each poke opens and
    closes its own client and keeps no state, so ``mode="reschedule"`` frees
    the worker slot between pokes. The XCom value is the measured lag (total and per partition).
    Missing topics or partitions whose highwater could not be read count as "not yet".
    """

    template_fields = ("topics", "group_id", "kafka_conn_id")
    ui_color = "#fff8e1"

    def __init__(
        self,
        *,
        topics: str | Sequence[str],
        group_id: str,
        condition: Condition = "lag_below",
        threshold: int | None = None,
        kafka_conn_id: str = "kafka_default",
        lag_timeout_s: float = 15.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        owner = f"{type(self).__name__} '{self.task_id}'"
        if condition not in ("lag_below", "new_records"):
            raise ValueError(f"{owner}: condition must be 'lag_below' or 'new_records', got {condition!r}")
        threshold = 1 if threshold is None else threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"{owner}: threshold must be a whole number ≥ 1, got {threshold!r}")
        topics = [topics] if isinstance(topics, str) else list(topics)
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise ValueError(f"{owner}: topics must be a topic name or a non-empty list of names, got {topics!r}")
        if not group_id:
            raise ValueError(f"{owner}: group_id is required")
        self.topics = topics
        self.group_id = group_id
        self.condition = condition
        self.threshold = threshold
        self.kafka_conn_id = kafka_conn_id
        self.lag_timeout_s = lag_timeout_s
        self._last: str = "no measurement yet"

    def describe_goal(self) -> str:
        if self.condition == "lag_below":
            return f"lag < {self.threshold}"
        return f"at least {self.threshold} new record(s) (lag ≥ {self.threshold})"

    def poke(self, context: Any) -> Any:
        from airflow.sdk import PokeReturnValue

        from airflow_mlops.hooks.kafka import kafka_config_from_connection
        from airflow_mlops.kafka.lag import group_lag

        lag = group_lag(kafka_config_from_connection(self.kafka_conn_id), self.group_id, self.topics,
                        timeout_s=self.lag_timeout_s)
        where = f"group '{self.group_id}' on {self.topics}"
        if lag.missing_topics:
            self._last = f"topic(s) {lag.missing_topics} do not exist"
            self.log.info("Kafka lag of %s: %s; waiting for %s", where, self._last, self.describe_goal())
            return False
        if lag.unknown_partitions:
            self._last = f"no highwater mark for {lag.unknown_partitions} within {self.lag_timeout_s} s"
            self.log.info("Kafka lag of %s: %s; waiting for %s", where, self._last, self.describe_goal())
            return False
        done = lag.total < self.threshold if self.condition == "lag_below" else lag.total >= self.threshold
        self._last = f"lag {lag.total} over {len(lag.partitions)} partition(s)"
        self.log.info("Kafka lag of %s: %s (per partition: %s); %s %s", where, self._last,
                      {p: v["lag"] for p, v in lag.partitions.items()}, "met" if done else "waiting for",
                      self.describe_goal())
        return PokeReturnValue(is_done=done, xcom_value=lag.as_dict() if done else None)

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowSensorTimeout

        try:
            return super().execute(context)
        except AirflowSensorTimeout as exc:
            raise AirflowSensorTimeout(
                f"Kafka lag of group '{self.group_id}' on {self.topics} did not reach {self.describe_goal()} within "
                f"{self.timeout:.0f} s; last measurement: {self._last}. ({exc})"
            ) from exc
