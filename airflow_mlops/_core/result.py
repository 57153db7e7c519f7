"""The one result protocol of every out-of-process run (a pod, spark-submit, a training process).

The run prints its result (references only, JSON) on one line starting with ``RESULT_MARKER`` and,
when it was given a result file, writes the same JSON there. It ends with exit code 0 on success,
else with the code ``_core.outcome`` gives its error (a refusal, a skip or a crash); a refusal's
or a skip's message goes to ``<result file>.failed`` / ``.skipped`` and to stderr after
``FAILED_PREFIX`` / ``SKIPPED_PREFIX`` (``_core.outcome.report_exit``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULT_MARKER = "AIRFLOW_MLOPS_RESULT "
FAILED_PREFIX = "STAGE FAILED: "
SKIPPED_PREFIX = "STAGE SKIPPED: "


# A stage's result goes to XCom (the metadata DB) and to the task log: references (paths, URIs,
# run ids, versions, a few numbers), never the data. Anything larger is refused.
MAX_RESULT_BYTES = 64 * 1024
MAX_LOGGED_CHARS = 2000


def result_problem(result: Any, stage: str) -> str | None:
    """Why ``result`` (a stage's return value) cannot go to XCom, or None: over
    ``MAX_RESULT_BYTES`` as JSON, naming its largest keys."""
    size = len(json.dumps(result, default=str).encode())
    if size <= MAX_RESULT_BYTES:
        return None
    parts = sorted(((len(json.dumps(v, default=str).encode()), k) for k, v in result.items()), reverse=True) \
        if isinstance(result, dict) else []
    biggest = ", ".join(f"'{k}' {_size(n)}" for n, k in parts[:3])
    return (f"stage '{stage}' returned {_size(size)} for XCom{' (' + biggest + ')' if biggest else ''}, over the "
            f"{_size(MAX_RESULT_BYTES)} a stage result may hold: a result is references, never the data (it would "
            "go into Airflow's metadata database and the task log). Return a pandas DataFrame (the stage writes it), "
            "or write the data yourself and return its paths or URIs")


def shown(result: Any) -> str:
    """``result`` for the task log, at most ``MAX_LOGGED_CHARS`` characters: a dict as one
    ``key: value`` line per key, strings unquoted, so that a URL ends the line and the log viewer's
    link ends with it (inside a repr it took the closing ``',`` along)."""
    if isinstance(result, dict):
        text = "".join(f"\n  {k}: {v if isinstance(v, str) else repr(v)}" for k, v in result.items())
    else:
        text = repr(result)
    return text if len(text) <= MAX_LOGGED_CHARS else text[:MAX_LOGGED_CHARS] + f"… ({len(text)} characters)"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


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
