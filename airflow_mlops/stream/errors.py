"""Errors that end a streaming run. Nothing of the failing batch has been committed: the next run
consumes it again."""

from __future__ import annotations


class StreamError(RuntimeError):
    """The stream cannot go on (a record failed without a dead-letter topic, the broker refused
    the predictions, a bad configuration)."""


class BatchFailed(StreamError):
    """Every record of a sizeable batch failed to score: a model or schema problem, not poison
    records (see ``StreamSpec.halt_on_failed_batch``)."""
