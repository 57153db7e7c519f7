"""Names that changed, so that one concept has one word across the YAML and the operators. An old
name keeps working with a deprecation warning (Airflow's ``AirflowProviderDeprecationWarning``
when Airflow is installed, else ``DeprecationWarning``) until the next major version."""

from __future__ import annotations

import warnings
from typing import Any

# old name → new name, per owner (an operator class or a spec model).
_STREAM = {"input_topic": "topics", "max_seconds": "max_duration", "idle_timeout_s": "idle_timeout",
           "progress_interval_s": "progress_interval"}
RENAMED: dict[str, dict[str, str]] = {
    "GpuTrainOperator": {"sample_interval_s": "sample_interval"},
    "StreamSpec": _STREAM,
    "StreamInferenceOperator": _STREAM,
    # StreamInferenceOperator's mlflow_conn_id= and tracking_uri= moved into mlflow={...} (operators/stream.py).
    "KafkaLagSensor": {"lag_timeout_s": "lag_timeout"},
}


def _warning_class() -> type[Warning]:
    try:
        from airflow.exceptions import AirflowProviderDeprecationWarning

        return AirflowProviderDeprecationWarning
    except ImportError:  # a pod or a spark-submit driver without Airflow
        return DeprecationWarning


def take_renamed(owner: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (keyword arguments or a spec's raw data) with each old name moved to its new one,
    warning once per use. Giving both names is a TypeError naming them."""
    names = RENAMED.get(owner, {})
    if not names or not any(old in given for old in names):
        return given
    out = dict(given)
    for old, new in names.items():
        if old not in out:
            continue
        if new in out:
            raise TypeError(f"{owner}: give {new}= only ({old}= is its old name)")
        warnings.warn(f"{owner}: {old} is deprecated, use {new}", _warning_class(), stacklevel=3)
        out[new] = out.pop(old)
    return out


def pop_renamed(owner: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take ``owner``'s old names out of an operator's ``kwargs`` (so BaseOperator never sees them)
    and return them under their new names, warning for each."""
    old = {name: kwargs.pop(name) for name in RENAMED.get(owner, {}) if name in kwargs}
    return take_renamed(owner, old) if old else {}
