"""Before a streaming run consumes anything: every topic it names must exist.

A consumer that subscribes to a mistyped topic (``transaction`` for ``transactions``) gets the
broker to auto-create it, scores nothing, and the run "succeeds". So the input topics are looked
up first, in one metadata request that creates nothing; the consumer never creates a topic
(``allow_auto_create_topics=False``). The output and dead-letter topics must exist too, unless
``auto_create_output_topics`` leaves a missing one to the broker's auto-creation — and then the
broker must actually create it, or the run fails before consuming.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow_mlops.spec.stream import StreamSpec
from airflow_mlops.stream.errors import MissingTopic


def missing_outputs(spec: StreamSpec, topic_names: Callable[[float], set[str]], log: logging.Logger,
                    timeout_s: float | None = None) -> list[str]:
    """Check the topics (``topic_names(timeout_s)`` lists what the brokers have; default timeout:
    ``spec.broker_timeout``); return the output/dead-letter topics that are missing but may be
    auto-created (``auto_create_output_topics``). Raises ``MissingTopic`` otherwise, and the
    engine's ``BrokerUnreachable`` when the brokers do not answer."""
    from airflow_mlops.kafka.topics import missing_topic_message
    from airflow_mlops.stream._clients import BrokerUnreachable

    timeout_s = spec.broker_timeout if timeout_s is None else timeout_s
    try:
        known = topic_names(timeout_s)
    except BrokerUnreachable:
        raise
    except Exception as exc:  # unreachable brokers (kafka-python's errors): a retry may help
        raise BrokerUnreachable(f"could not list the brokers' topics within {timeout_s:.0f} s: "
                                f"{type(exc).__name__}: {exc}") from exc
    problems = [missing_topic_message("input", t, known, "create it or fix the name (a consumer never creates "
                                      "a topic: it would read nothing from it)")
                for t in spec.input_topics if t not in known]
    outputs = [("output", spec.output_topic)] + ([("dead-letter", spec.dead_letter_topic)]
                                                   if spec.dead_letter_topic else [])
    absent = [(role, t) for role, t in outputs if t not in known]
    if not spec.auto_create_output_topics:
        problems += [missing_topic_message(role, t, known, "create it, fix the name, or set "
                                           "auto_create_output_topics to let the broker create it")
                     for role, t in absent]
    if problems:
        raise MissingTopic("; ".join(problems) + ". Nothing was consumed.")
    for role, t in absent:
        log.warning("The %s topic '%s' does not exist; asking the broker to create it (auto_create_output_topics)",
                    role, t)
    return [t for _, t in absent]


def create_by_producing(producer: Any, topics: list[str]) -> None:
    """Have the broker auto-create ``topics`` through the producer's metadata request (what a
    send would do), within the producer's ``max_block_ms``; a broker that does not auto-create
    fails the run here, before anything is consumed."""
    from kafka.errors import KafkaTimeoutError

    for topic in topics:
        try:
            partitions = producer.partitions_for(topic)
        except KafkaTimeoutError as exc:
            raise MissingTopic(
                f"topic '{topic}' does not exist and the broker did not create it within "
                f"{producer.config['max_block_ms'] / 1000:.0f} s (auto.create.topics.enable is false there?); "
                "create it. Nothing was consumed.") from exc
        if not partitions:
            raise MissingTopic(f"topic '{topic}' does not exist and the broker did not create it; create it. "
                               "Nothing was consumed.")
