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

from airflow_mlops._core.result import (
    EXIT_FAILED,
    EXIT_SKIPPED,
    FAILED_PREFIX,
    RESULT_MARKER,
    SKIPPED_PREFIX,
    outcome_files,
    result_line,
)


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

    from airflow_mlops._core.errors import DependencyFailed
    from airflow_mlops._core.result import result_problem
    from airflow_mlops.stages import StageFailed, StageSkipped, run_stage

    spec, ctx = decode_payload(args.payload)
    try:
        result = run_stage(spec, ctx)
        problem = result_problem(result, ctx.stage_name)
        if problem:  # never printed into the pod's log nor handed to XCom
            raise StageFailed(problem)
    except DependencyFailed as exc:
        if exc.retryable:  # a crash for the launcher: Airflow may retry (the message was logged first)
            print(str(exc), file=sys.stderr)
            return 1
        print(f"{FAILED_PREFIX}{exc}", file=sys.stderr)
        if args.result_file:
            outcome_files(args.result_file)[0].write_text(str(exc))
        return EXIT_FAILED
    except StageFailed as exc:
        print(f"{FAILED_PREFIX}{exc}", file=sys.stderr)
        if args.result_file:  # the launcher reads this to fail the task with the stage's message
            outcome_files(args.result_file)[0].write_text(str(exc))
        return EXIT_FAILED  # distinct from crashes (1): the stage judged its input and refused it
    except StageSkipped as exc:
        print(f"{SKIPPED_PREFIX}{exc}", file=sys.stderr)
        if args.result_file:
            outcome_files(args.result_file)[1].write_text(str(exc))
        return EXIT_SKIPPED
    line = result_line(result)
    if args.result_file:
        from pathlib import Path

        Path(args.result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result_file).write_text(line[len(RESULT_MARKER):])
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
