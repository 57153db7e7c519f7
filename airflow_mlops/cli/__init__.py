"""``airflow-mlops``: validate pipeline files in CI, render one as a plain Python DAG file, export
the JSON Schema for editors, render Kubernetes namespace manifests, move a champion alias back, print a DAG run's cost by stage."""

from __future__ import annotations

import argparse

from airflow_mlops.cli.pipelines import cmd_manifests, cmd_render, cmd_schema, cmd_validate, import_roots
from airflow_mlops.cli.tracking import cmd_cost, cmd_info, cmd_rollback, format_cost_report

__all__ = ["build_parser", "format_cost_report", "import_roots", "main"]


def build_parser() -> argparse.ArgumentParser:
    from airflow_mlops._core.tracking_uri import argument as tracking_uri_argument

    parser = argparse.ArgumentParser(prog="airflow-mlops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check pipeline YAML files (or folders); exit 1 on any error")
    p.add_argument("paths", nargs="+")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the valid files")
    p.add_argument("--strict", action="store_true",
                   help="warnings are errors: e.g. schedule_on_assets naming an asset no pipeline given produces")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--profile", metavar="NAME", help="build each pipeline with this pipeline profile (default: "
                       "the deployment's, $AIRFLOW_MLOPS_PROFILE or the Airflow Variable mlops_profile)")
    which.add_argument("--all-profiles", action="store_true",
                       help="build each pipeline without a profile, then with each profile the files define")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("render", help="write a plain Python DAG file that builds the same DAG as a pipeline YAML")
    p.add_argument("pipeline", help="a pipeline YAML file")
    p.add_argument("--profile", metavar="NAME", help="with this pipeline profile baked in (default: the deployment's, "
                   "$AIRFLOW_MLOPS_PROFILE or the Airflow Variable mlops_profile)")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("info", help="the versions, and which extras are installed (and how to add the others)")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("schema", help="print the pipeline JSON Schema (for editor completion)")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("manifests", help="render the Kubernetes namespace manifests a pipeline needs")
    p.add_argument("pipeline", help="a pipeline YAML file")
    p.add_argument("--profile", metavar="NAME", help="with this pipeline profile (default: the deployment's)")
    p.add_argument("--launcher", default="airflow/airflow-worker",
                   help="NAMESPACE/SERVICE_ACCOUNT of the Airflow worker that launches the pods (default: %(default)s)")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_manifests)
    p = sub.add_parser("rollback", help="move a registered model's champion alias back to the previous champion")
    p.add_argument("model", help="registered model name")
    p.add_argument("--tracking-uri", type=tracking_uri_argument,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)")
    p.add_argument("--alias", default="champion")
    p.add_argument("--previous-alias", default="previous-champion")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("cost", help="one DAG run's cost by stage (GPU-, CPU-, memory GiB-hours x prices), from MLflow")
    p.add_argument("run_id", help="the Airflow DAG run id (e.g. manual__2026-01-01T00:00:00+00:00)")
    p.add_argument("--dag", dest="dag_id", help="only this DAG's tasks (run ids can repeat across DAGs)")
    p.add_argument("--tracking-uri", type=tracking_uri_argument,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                   "SQLite store under $AIRFLOW_MLOPS_HOME)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(func=cmd_cost)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)

