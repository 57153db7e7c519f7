"""Errors that end a streaming run. Nothing of the failing batch has been committed: the next run
consumes it again."""

from __future__ import annotations

from airflow_mlops._core.errors import DependencyFailed, MlopsError


class StreamError(MlopsError, RuntimeError):
    """The stream cannot go on. ``retryable`` says whether running it again could help (what that
    means for a task and an exit code: ``_core.outcome``)."""


class RecordFailed(StreamError):
    """A record failed to decode or score and there is no dead-letter topic to divert it to."""

    retryable = False


class BatchFailed(StreamError):
    """Every record of a sizeable batch failed to score: a model or schema problem, not poison
    records (see ``StreamSpec.halt_on_failed_batch``)."""

    retryable = False


class DeliveryFailed(StreamError):
    """The broker did not acknowledge some predictions or dead letters of a batch."""


class MissingTopic(StreamError):
    """A topic the run reads or writes does not exist (a typo, most often): nothing was consumed.
    Running again cannot help until the topic is created or the name fixed."""

    retryable = False


class BrokerLost(DependencyFailed, StreamError):
    """The Kafka brokers did not answer within ``StreamSpec.broker_timeout`` (unreachable at the
    start, or lost mid-stream). Retryable: a rerun resumes from the committed offsets. The message
    (``DependencyFailed``'s shape) says what was consumed, produced and committed before the loss."""
