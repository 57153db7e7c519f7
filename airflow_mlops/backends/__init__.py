"""Where a stage runs. Each backend turns a stage into the task(s) of its task group; the task
whose id is ``RESULT_TASK`` returns the stage's references through XCom."""

from __future__ import annotations

import importlib
from typing import Any

AVAILABLE_BACKENDS = ("batch", "spark", "kubernetes")
RESULT_TASK = "run"


def build_stage_tasks(backend: str, **kwargs: Any) -> Any:
    return importlib.import_module(f"airflow_mlops.backends.{backend}").build(**kwargs)
