"""The commands that read MLflow and the installation: ``rollback``, ``cost`` and ``info``
(``airflow_mlops.cli`` builds the parser)."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_info(args: argparse.Namespace) -> int:
    """The package's and Airflow's versions, and each extra: installed or what to run."""
    from importlib.metadata import version

    from airflow_mlops._core import extras

    print(f"airflow-mlops {version('airflow-mlops')} on Apache Airflow {version('apache-airflow')}")
    for name, extra in extras.EXTRAS.items():
        missing = extras.missing_modules(name)
        state = "installed" if not missing else f"not installed ({extras.install_command(name)})"
        print(f"  [{name}] {state}: {extra.for_}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Move the champion alias back to the previous champion."""
    from airflow_mlops._core.errors import StageFailed
    from airflow_mlops._core.mlflow import read_only_client, registered_model
    from airflow_mlops.hooks.mlflow import resolve_target
    from airflow_mlops.spec.models import MlflowSettings
    from airflow_mlops.stages.validate import rollback

    try:
        target = resolve_target(MlflowSettings(tracking_uri=args.tracking_uri), args.model)
        client = read_only_client(target.tracking_uri, target.credentials)
        registered_model(client, args.model, target.tracking_uri)
        before, after = rollback(client, args.model, args.alias, args.previous_alias)
    except (StageFailed, ValueError) as exc:  # ValueError: a tracking URI that breaks the rule
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.model}: '{args.alias}' moved from version {before} back to version {after} "
          f"('{args.previous_alias}' now points at {before})")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    """One DAG run's cost by stage, from MLflow: a table, or JSON rows with ``--json``. Exit 0;
    1 when no task of the run recorded a cost or the store is missing; 2 for a tracking URI that
    breaks the rule (``_core.tracking_uri``)."""
    from dataclasses import asdict

    from airflow_mlops._core.mlflow import StoreNotFound
    from airflow_mlops.telemetry.cost import report

    try:
        rows = report(args.run_id, tracking_uri=args.tracking_uri, dag_id=args.dag_id)
    except StoreNotFound as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:  # a tracking URI (e.g. from $MLFLOW_TRACKING_URI) that breaks the rule
        print(exc, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(format_cost_report(rows, args.run_id))
    return 0 if rows else 1


def format_cost_report(rows: list, run_id: str) -> str:
    """``telemetry.cost.report()``'s rows (StageCost) as a table with a TOTAL line; amounts to 4 decimals."""
    if not rows:
        return f"no task of DAG run '{run_id}' recorded a cost in MLflow"
    header = ("stage", "tries", "GPU-h", "CPU-h", "GiB-h", "GPU", "CPU", "memory", "total")
    table = [header] + [
        (r.stage, str(r.runs), f"{r.gpu_hours:.4f}", f"{r.cpu_hours:.4f}", f"{r.memory_gib_hours:.4f}",
         f"{r.gpu:.4f}", f"{r.cpu:.4f}", f"{r.memory:.4f}", f"{r.total:.4f}")
        for r in rows
    ]
    total = [sum(getattr(r, k) for r in rows) for k in ("gpu_hours", "cpu_hours", "memory_gib_hours", "gpu", "cpu", "memory", "total")]
    table.append(("TOTAL", str(sum(r.runs for r in rows)), *(f"{v:.4f}" for v in total)))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"cost of DAG run '{run_id}' by stage"]
    for i, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0 or i == len(table) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


