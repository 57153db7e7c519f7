"""``python -m airflow_mlops.stream``: one bounded streaming-inference run from a shell or a pod.

    python -m airflow_mlops.stream --bootstrap-servers 127.0.0.1:9092 \\
        --spec '{"topics": "events", "output_topic": "scores", "group_id": "scorer",
                 "model_uri": "models:/churn@champion", "dead_letter_topic": "events.dlq"}' \\
        --tracking-uri sqlite:////srv/mlflow/mlflow.db

``--spec`` and ``--kafka-config`` take JSON or ``@file.json``. Security settings belong in
``--kafka-config`` or ``$AIRFLOW_MLOPS_KAFKA_CONFIG`` (JSON), never in the spec. The summary is
printed as one JSON line on stdout.

Exit codes: 0 done; 1 a failure a rerun may fix (the Kafka broker lost: the message says what was
committed; a rerun resumes from there); ``EXIT_FAILED`` (3, see ``airflow_mlops._core.outcome``) a
failure no rerun fixes (a missing topic, a poison record without dead-letter topic, bad settings),
its message after ``STAGE FAILED:`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any


def _json_arg(text: str) -> Any:
    if text.startswith("@"):
        with open(text[1:]) as fh:
            return json.load(fh)
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    from airflow_mlops._core.tracking_uri import argument as tracking_uri_argument

    parser = argparse.ArgumentParser(prog="python -m airflow_mlops.stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=_json_arg, help="StreamSpec as JSON or @file")
    parser.add_argument("--bootstrap-servers", help="overrides bootstrap_servers of the Kafka config")
    parser.add_argument("--kafka-config", type=_json_arg, default=None,
                        help="Kafka client settings (kafka-python or librdkafka names) as JSON or @file "
                        "(default: $AIRFLOW_MLOPS_KAFKA_CONFIG)")
    parser.add_argument("--tracking-uri", default=None, type=tracking_uri_argument,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the SQLite store under "
                        "$AIRFLOW_MLOPS_HOME)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from airflow_mlops._core.errors import MlopsError, StageFailed
    from airflow_mlops._core.outcome import report_exit
    from airflow_mlops.stream import run_stream

    config = args.kafka_config
    if config is None:
        config = json.loads(os.environ.get("AIRFLOW_MLOPS_KAFKA_CONFIG", "{}"))
    if args.bootstrap_servers:
        config["bootstrap_servers"] = args.bootstrap_servers
    try:
        summary = run_stream(args.spec, config, tracking_uri=args.tracking_uri)
    except (MlopsError, ValueError) as exc:  # a StreamError, a relative $MLFLOW_TRACKING_URI, bad settings
        # One message, no traceback. Exit EXIT_FAILED when a rerun cannot help (a missing topic,
        # poison records without a dead-letter topic, bad settings); 1 when it may (a lost broker).
        return report_exit(exc if isinstance(exc, MlopsError) else StageFailed(str(exc)))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
