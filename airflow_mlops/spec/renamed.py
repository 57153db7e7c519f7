"""Names that changed, so that one concept has one word across the YAML and the operators. An old
name keeps working with a deprecation warning (``MlopsDeprecationWarning``) until the next major
version, pointing at the line of the user's DAG file that used it."""

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

# old value → new value, per owner and argument.
RENAMED_VALUES: dict[str, dict[str, dict[str, str]]] = {
    "GpuTrainOperator": {"backend": {"local": "batch"}},  # the worker is "batch" everywhere
}


class MlopsDeprecationWarning(FutureWarning):
    """An old name of this package's, still read. A ``FutureWarning`` (Python's category for
    deprecations meant for the people who write the code, shown by default) rather than a
    ``DeprecationWarning``, which Python's default filters hide: Airflow's DAG processor records
    the warnings a DAG file raises as that file's import warnings only when they are shown."""


def _warning_class() -> type[Warning]:
    return MlopsDeprecationWarning


def warn_deprecated(message: str) -> None:
    """Warn (``AirflowProviderDeprecationWarning`` where Airflow is installed) at the first frame
    outside this package and Airflow: the user's DAG file and line, whatever wrappers (Airflow's
    operator metaclass, pydantic validators) stand between. Airflow records it as an import
    warning of that file."""
    import os
    import sys

    skip = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),)  # airflow_mlops/
    try:
        import airflow

        skip += (os.path.dirname(os.path.abspath(airflow.__file__)),)
    except ImportError:
        pass
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(skip) and "/pydantic" not in filename and not filename.startswith("<frozen"):
            break
        frame = frame.f_back
    if frame is None:
        warnings.warn(message, _warning_class(), stacklevel=2)
        return
    warnings.warn_explicit(message, _warning_class(), frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"), registry=frame.f_globals.setdefault(
                               "__warningregistry__", {}))


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
        warn_deprecated(f"{owner}: {old} is deprecated, use {new}")
        out[new] = out.pop(old)
    return out


def pop_renamed(owner: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take ``owner``'s old names out of an operator's ``kwargs`` (so BaseOperator never sees them)
    and return them under their new names, warning for each."""
    old = {name: kwargs.pop(name) for name in RENAMED.get(owner, {}) if name in kwargs}
    return take_renamed(owner, old) if old else {}


def renamed_value(owner: str, argument: str, value: Any) -> Any:
    """``value``, or its new spelling when it is an old one (warning: ``GpuTrainOperator:
    backend='local' is deprecated, use backend='batch'``)."""
    new = RENAMED_VALUES.get(owner, {}).get(argument, {}).get(value) if isinstance(value, str) else None
    if new is None:
        return value
    warn_deprecated(f"{owner}: {argument}={value!r} is deprecated, use {argument}={new!r}")
    return new
