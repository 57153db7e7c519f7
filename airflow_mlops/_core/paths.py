"""Paths and environment: where the package keeps its data, ``~``/``$VAR`` expansion, import
strings, the folders a task's own code is imported from."""

from __future__ import annotations

import importlib
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


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


def dags_folder() -> tuple[str, ...]:
    """Airflow's configured dags folder, as ``code_paths`` roots."""
    from airflow.configuration import conf

    folder = conf.get("core", "dags_folder", fallback=None)
    return (folder,) if folder else ()
