"""What a stage gets to run: its spec, where to write, where MLflow is, what upstream produced.

Everything here is plain data, so the same stage code runs in the Airflow worker, on Spark or in a
pod (the pod receives this context as JSON through ``python -m airflow_mlops.runtime``).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator


class StageFailed(Exception):
    """A stage failed for a reason a retry cannot fix (a metric below its threshold, bad data)."""


class StageSkipped(Exception):
    """The stage decided the rest of this run should not happen (a challenger that lost)."""


@dataclass
class MlflowTarget:
    tracking_uri: str
    experiment: str
    registered_model: str
    artifact_location: str | None = None
    ui_url: str | None = None  # for links to runs; see gpu.job.ui_base


@dataclass
class StageContext:
    pipeline_id: str
    stage_name: str
    run_key: str  # the Airflow run id, made safe for paths
    data_dir: str  # absolute root for this pipeline's data
    mlflow: MlflowTarget
    # Results of the stages this one (transitively) depends on, nearest first.
    upstream: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # Airflow ids, recorded on MLflow runs
    backend: str = "batch"
    # Embedded Spark session settings ({"master", "conf"}); None under spark-submit, where the
    # cluster's own configuration applies.
    spark: dict[str, Any] | None = None
    # What the stage holds ({cpu, memory, gpu} as in the YAML) and the pipeline's price table:
    # a training stage records its cost from them.
    resources: dict[str, Any] | None = None
    prices: dict[str, float] | None = None
    gpu_metrics: dict[str, Any] | None = None  # sample interval, Prometheus port / Pushgateway

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"airflow_mlops.stages.{self.stage_name}")

    def output_dir(self, override: str | None = None) -> Path:
        """``override`` if the spec names an output, else ``<data_dir>/<stage>/<run key>``."""
        path = Path(override) if override else Path(self.data_dir) / self.stage_name / self.run_key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def find(self, key: str, *, required: bool = True) -> Any:
        """The nearest upstream stage's value for ``key`` (e.g. ``model_uri``, ``test_path``)."""
        for _name, result in self.upstream:
            if key in result:
                return result[key]
        if required:
            have = ", ".join(sorted({k for _, r in self.upstream for k in r})) or "nothing"
            raise StageFailed(
                f"stage '{self.stage_name}' needs '{key}' from an upstream stage, but upstream stages gave: {have}"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageContext":
        data = dict(data)
        data["mlflow"] = MlflowTarget(**data["mlflow"])
        data["upstream"] = [tuple(item) for item in data.get("upstream", [])]
        return cls(**data)


def safe_run_key(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or "run"


def mlops_home() -> Path:
    """``$AIRFLOW_MLOPS_HOME``, else ``$AIRFLOW_HOME/mlops``, else ``~/airflow/mlops``."""
    if os.environ.get("AIRFLOW_MLOPS_HOME"):
        return Path(os.environ["AIRFLOW_MLOPS_HOME"]).resolve()
    return Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")).resolve() / "mlops"


_VAR = re.compile(r"\$(\w+|\{[^}]*\})")
_URI_PREFIXES = ("file://", "sqlite:///")


def expand_env(value: str) -> str:
    """``~`` (at the start of the path) and ``$VAR``/``${VAR}`` expanded, in the environment of the
    process that calls it: the worker's, when a task runs. A ``file://`` or ``sqlite:///`` prefix is
    kept and the path after it expanded. ``AIRFLOW_MLOPS_HOME`` and ``AIRFLOW_HOME`` fall back to
    their documented defaults when unset; any other unset variable is an error naming it, never a
    literal ``$NAME`` folder."""
    prefix = next((p for p in _URI_PREFIXES if value.startswith(p)), "")
    s = value[len(prefix):]
    if s.startswith("~"):
        s = os.path.expanduser(s)
    if "$" not in s:
        return prefix + s
    env = dict(os.environ)
    env.setdefault("AIRFLOW_MLOPS_HOME", str(mlops_home()))
    env.setdefault("AIRFLOW_HOME", str(Path("~/airflow").expanduser()))

    def sub(m: re.Match) -> str:
        name = m.group(1).strip("{}")
        if name not in env:
            raise ValueError(f"environment variable ${name} in path {value!r} is not set")
        return env[name]

    return prefix + _VAR.sub(sub, s)


def needs_expanding(value: Any) -> bool:
    """Whether ``expand_env`` would change ``value`` (a ``~`` or a ``$``)."""
    if not isinstance(value, str):
        return False
    s = next((value[len(p):] for p in _URI_PREFIXES if value.startswith(p)), value)
    return s.startswith("~") or "$" in s


def import_string(path: str) -> Any:
    """``'package.module:attr.sub'`` → the object."""
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def code_paths(dag_file: str | None, roots: tuple[str, ...] = ()) -> list[str]:
    """Folders a task's own code is imported from: the DAG file's folder, then each of ``roots``
    (the configured dags folder) and ``sys.path`` entries (the DAG bundle Airflow put on the path)
    that holds it. A training process or pod gets these on its ``PYTHONPATH``, so it sees the
    code the DAG sees."""
    import sys

    if not dag_file:
        return []
    folder = os.path.dirname(os.path.abspath(dag_file))
    out = [folder]
    for entry in (*roots, *sys.path):
        root = os.path.abspath(entry) if entry else ""
        if root and root != folder and folder.startswith(root.rstrip(os.sep) + os.sep) and root not in out:
            out.append(root)
    return out


def module_findable(module: str, extra_paths: list[str]) -> bool:
    """Whether ``module`` can be imported with ``extra_paths`` in front of ``sys.path``. Only the
    module is located (its parent packages are imported, as Python must), never run."""
    import importlib.util
    import sys

    saved = list(sys.path)
    sys.path[:0] = [p for p in extra_paths if p not in sys.path]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
    finally:
        sys.path[:] = saved


@contextmanager
def environ_kept(*names: str) -> Iterator[None]:
    """Put these environment variables back as they were (set or unset) when the block ends."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
