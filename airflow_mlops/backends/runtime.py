"""``python -m airflow_mlops.runtime``: run one stage from a JSON payload, outside Airflow.

This is what runs inside a pod or under spark-submit: the payload carries the stage spec and its
context (no YAML travels), the very same stage code runs, and the result (references only) is
written as JSON to ``--result-file`` and printed on a marker line for log-based collection.

    python -m airflow_mlops.runtime --payload <base64 JSON> [--result-file PATH]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from typing import Any

from airflow_mlops._core.result import RESULT_MARKER, result_line


def encode_payload(spec: Any, context: Any) -> str:
    payload = {"spec": spec.model_dump(mode="json"), "context": context.to_dict()}
    return base64.b64encode(json.dumps(payload).encode()).decode()


def decode_payload(text: str) -> tuple[Any, Any]:
    from pydantic import TypeAdapter

    from airflow_mlops._core.context import StageContext
    from airflow_mlops.spec.models import Stage

    payload = json.loads(base64.b64decode(text))
    return TypeAdapter(Stage).validate_python(payload["spec"]), StageContext.from_dict(payload["context"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_mlops.runtime", description=__doc__)
    parser.add_argument("--payload", required=True, help="base64-encoded JSON {spec, context}")
    parser.add_argument("--result-file", help="write the stage's result JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from airflow_mlops._core.errors import MlopsError
    from airflow_mlops._core.outcome import report_exit
    from airflow_mlops._core.result import result_problem
    from airflow_mlops.stages import StageFailed, run_stage

    spec, ctx = decode_payload(args.payload)
    try:
        result = run_stage(spec, ctx)
        problem = result_problem(result, ctx.stage_name)
        if problem:  # never printed into the pod's log nor handed to XCom
            raise StageFailed(problem)
    except MlopsError as exc:  # a refusal, a skip or a transient fault: the exit code says which (_core.outcome)
        return report_exit(exc, args.result_file)
    line = result_line(result)
    if args.result_file:
        from pathlib import Path

        Path(args.result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result_file).write_text(line[len(RESULT_MARKER):])
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
