"""The one result protocol of every out-of-process run (a pod, spark-submit, a training process).

The run prints its result (references only, JSON) on one line starting with ``RESULT_MARKER`` and,
when it was given a result file, writes the same JSON there. It ends with exit code 0 on success,
``EXIT_FAILED`` when the stage judged its input and refused it (no retry can fix it: the task
fails without retrying) and ``EXIT_SKIPPED`` when the stage decided the rest of the run should not
happen; the message then goes to ``<result file>.failed`` / ``.skipped`` and to stderr after
``FAILED_PREFIX`` / ``SKIPPED_PREFIX``. Any other exit code is a crash, which Airflow may retry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULT_MARKER = "AIRFLOW_MLOPS_RESULT "
EXIT_FAILED = 3
EXIT_SKIPPED = 4
FAILED_PREFIX = "STAGE FAILED: "
SKIPPED_PREFIX = "STAGE SKIPPED: "


def result_line(result: Any) -> str:
    """The line a run prints to hand back ``result``."""
    return RESULT_MARKER + json.dumps(result)


def find_result(log_lines: Any) -> Any | None:
    """The result a run printed (the last ``RESULT_MARKER`` line of its log), else None."""
    found = None
    for line in log_lines:
        text = line.decode(errors="replace") if isinstance(line, bytes) else str(line)
        at = text.find(RESULT_MARKER)
        if at >= 0:
            found = json.loads(text[at + len(RESULT_MARKER):])
    return found


def outcome_files(result_file: str | Path) -> tuple[Path, Path]:
    """(failed, skipped): where a run leaves its message beside ``result_file``."""
    path = Path(result_file)
    return path.with_suffix(".failed"), path.with_suffix(".skipped")
