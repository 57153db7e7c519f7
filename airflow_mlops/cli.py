"""``airflow-mlops``: validate pipeline files in CI, export the JSON Schema for editors, render
Kubernetes namespace manifests, move a champion alias back, print a DAG run's cost by stage."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator


def cmd_validate(args: argparse.Namespace) -> int:
    """Every error of every file, then a one-line verdict; exit 1 if any file is invalid.

    The verdict is the dags-folder loader's (the same ``load_dags``): a file passes exactly when
    its DAG loads, and fails with the errors its placeholder DAG would carry."""
    from airflow_mlops.factory.pipelines import load_dags
    from airflow_mlops.spec.errors import SpecIssue

    missing = [target for target in args.paths if not Path(target).exists()]
    for target in missing:
        print(f"{target}: no such file or folder", file=sys.stderr)
    present = [target for target in args.paths if target not in missing]
    with _on_sys_path(import_roots(present)):
        verdict = load_dags(present, serialize=True)
    warned: dict[str, list[SpecIssue]] = {}
    for warning in verdict.warnings:
        warned.setdefault(warning.mark.file if warning.mark else "", []).append(warning)
    bad_files, issues, warnings = 0, 0, 0
    for path in sorted({*verdict.files, *verdict.bad}):
        errors = list(verdict.bad[path].issues) if path in verdict.bad else []
        extra = warned.get(str(path), [])
        if args.strict:
            errors = sorted(errors + extra, key=lambda i: (i.mark.line, i.mark.column) if i.mark else (0, 0))
        else:
            for warning in extra:
                warnings += 1
                print(SpecIssue(warning.mark, warning.field, f"warning: {warning.message}"))
        if errors:
            bad_files += 1
            issues += len(errors)
            for issue in errors:
                print(issue)
        elif args.verbose:
            loaded = next(lp for lp, _ in verdict.good if lp.file == path)
            print(f"{path}: ok ({loaded.pipeline.id}, {len(loaded.pipeline.stages)} stages)")
    total = len(verdict.files)
    warned_note = f", {warnings} warning(s)" if warnings else ""
    gone = f"; {len(missing)} of the {len(args.paths)} path(s) given do not exist" if missing else ""
    if bad_files or missing:
        print(f"{bad_files} of {total} pipeline file(s) invalid, {issues} error(s){warned_note}{gone}", file=sys.stderr)
        return 1
    print(f"{total} pipeline file(s) valid{warned_note}")
    return 0


def import_roots(targets: list[str]) -> list[str]:
    """The folders Airflow would have on ``sys.path`` when it parses these files: the configured
    dags folder for a target inside it, else the target folder itself (or a file's folder), and
    the plugins folder. Callbacks and custom operators in modules beside the pipelines then import
    in ``validate`` as they do in Airflow."""
    from airflow.configuration import conf

    dags = Path(conf.get("core", "dags_folder", fallback="") or "/nonexistent").resolve()
    plugins = conf.get("core", "plugins_folder", fallback=None)
    roots: list[str] = []
    for target in targets:
        path = Path(target).resolve()
        folder = path if path.is_dir() else path.parent
        root = dags if folder == dags or dags in folder.parents else folder
        if str(root) not in roots:
            roots.append(str(root))
    if plugins and Path(plugins).is_dir() and str(Path(plugins).resolve()) not in roots:
        roots.append(str(Path(plugins).resolve()))
    return roots


@contextlib.contextmanager
def _on_sys_path(folders: list[str]) -> Iterator[None]:
    """``folders`` in front of ``sys.path`` for the block (the ones already there are left)."""
    added = [f for f in folders if f not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            if folder in sys.path:
                sys.path.remove(folder)


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


def cmd_schema(args: argparse.Namespace) -> int:
    from airflow_mlops.spec.models import Pipeline

    schema = Pipeline.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "airflow-mlops pipeline"
    _add_operator_args(schema)
    return _emit(json.dumps(schema, indent=2) + "\n", args.output, args.output)


def _add_operator_args(schema: dict) -> None:
    """A custom stage's ``args`` for the package's own operators and sensors, described in the
    schema too: by their spec (BackupOperator, RestoreOperator, RetentionCleanupOperator,
    StreamInferenceOperator, GpuTrainOperator), so an editor flags ``keep_lst`` in a retention
    policy where it is written, or by their ``__init__`` signature (SparkFeatureOperator and the
    sensors), for completion, hover docs and value types. Each is known by both paths users write
    (its module, and the package root). The top level of ``args`` stays open (Airflow's own
    arguments, ``retries``..., go there too), and a typed argument also takes a Jinja template."""
    from pydantic.json_schema import models_json_schema

    from airflow_mlops.lifecycle.specs import BackupSpec, RestoreSpec, RetentionSpec
    from airflow_mlops.spec.gpu_train import GpuTrainSpec
    from airflow_mlops.spec.stream import StreamSpec

    by_spec = {
        "BackupOperator": ("airflow_mlops.operators.backup", BackupSpec),
        "RestoreOperator": ("airflow_mlops.operators.backup", RestoreSpec),
        "RetentionCleanupOperator": ("airflow_mlops.operators.retention", RetentionSpec),
        "StreamInferenceOperator": ("airflow_mlops.operators.stream", StreamSpec),
        "GpuTrainOperator": ("airflow_mlops.operators.gpu_train", GpuTrainSpec),
    }
    by_signature = {name: (module, _signature_model(module, name)) for name, module in (
        ("SparkFeatureOperator", "airflow_mlops.operators.spark"),
        ("GpuAvailableSensor", "airflow_mlops.sensors.gpu"),
        ("KafkaLagSensor", "airflow_mlops.sensors.kafka"),
    )}
    operators = {**by_spec, **by_signature}
    _, top = models_json_schema([(model, "validation") for _, model in operators.values()],
                                ref_template="#/$defs/{model}")
    defs = schema.setdefault("$defs", {})
    defs.update({k: v for k, v in top.get("$defs", {}).items() if k not in defs})
    template = {"type": "string", "pattern": r"\{\{.*\}\}", "description": "A Jinja template, rendered at run time."}
    rules = []
    for name, (module, model) in operators.items():
        args = dict(defs.pop(model.__name__) if name in by_signature else defs[model.__name__])
        args.pop("additionalProperties", None)
        args["title"] = f"{name} args"
        if name in by_signature:
            args["properties"] = {k: {"anyOf": [v, template]} for k, v in args["properties"].items()}
            args.pop("required", None)  # validate names a missing one, with the operator's own words
        defs[f"{name}Args"] = args
        rules.append({"if": {"properties": {"operator": {"enum": [f"{module}:{name}", f"airflow_mlops:{name}"]}},
                             "required": ["operator"]},
                      "then": {"properties": {"args": {"$ref": f"#/$defs/{name}Args"}}}})
    defs["CustomStage"]["allOf"] = rules


def _signature_model(module: str, name: str) -> type:
    """A pydantic model of the operator's own ``__init__`` keyword arguments (types as annotated)."""
    import importlib
    import inspect
    import typing

    from pydantic import ConfigDict, create_model

    cls = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    fields = {arg: (hints.get(arg, typing.Any), ... if p.default is p.empty else p.default)
              for arg, p in list(inspect.signature(cls.__init__).parameters.items())[1:]
              if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return create_model(f"{name}Signature", __config__=ConfigDict(arbitrary_types_allowed=True), **fields)


def cmd_manifests(args: argparse.Namespace) -> int:
    import yaml

    from airflow_mlops.backends.kubernetes.manifests import render
    from airflow_mlops.factory.pipelines import read_pipeline
    from airflow_mlops.spec.errors import PipelineSpecError

    try:
        loaded = read_pipeline(args.pipeline)
    except PipelineSpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    namespace, _, account = args.launcher.partition("/")
    docs = render(loaded, (namespace, account))
    if not docs:
        print(f"{args.pipeline}: no stage runs on the kubernetes backend; nothing to render", file=sys.stderr)
        return 1
    return _emit(yaml.safe_dump_all(docs, sort_keys=False), args.output, f"{len(docs)} manifests to {args.output}")


def _emit(text: str, output: str | None, what: str | None) -> int:
    """Write ``text`` to the ``-o`` file (saying so), else to standard output."""
    if output:
        Path(output).write_text(text)
        print(f"wrote {what}")
    else:
        sys.stdout.write(text)
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
        client = read_only_client(target.tracking_uri)
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


def build_parser() -> argparse.ArgumentParser:
    from airflow_mlops._core.tracking_uri import argument as tracking_uri_argument

    parser = argparse.ArgumentParser(prog="airflow-mlops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check pipeline YAML files (or folders); exit 1 on any error")
    p.add_argument("paths", nargs="+")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the valid files")
    p.add_argument("--strict", action="store_true",
                   help="warnings are errors: e.g. schedule_on_assets naming an asset no pipeline given produces")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("info", help="the versions, and which extras are installed (and how to add the others)")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("schema", help="print the pipeline JSON Schema (for editor completion)")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("manifests", help="render the Kubernetes namespace manifests a pipeline needs")
    p.add_argument("pipeline", help="a pipeline YAML file")
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


if __name__ == "__main__":
    sys.exit(main())
