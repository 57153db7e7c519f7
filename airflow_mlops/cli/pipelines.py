"""The commands that read pipeline files: ``validate``, ``render``, ``schema`` and ``manifests``
(``airflow_mlops.cli`` builds the parser)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator


def cmd_validate(args: argparse.Namespace) -> int:
    """Every error of every file, then a one-line verdict; exit 1 if any file is invalid.

    The verdict is the dags-folder loader's (the same ``load_dags``): a file passes exactly when
    its DAG loads, and fails with the errors its placeholder DAG would carry. Pipelines are built
    with the deployment's pipeline profile, as Airflow builds them; ``--profile NAME`` with that
    one, ``--all-profiles`` without one and then with each profile the files have, in turn (an
    error found in several of these builds is printed once)."""
    from airflow_mlops.spec.errors import SpecIssue

    missing = [target for target in args.paths if not Path(target).exists()]
    for target in missing:
        print(f"{target}: no such file or folder", file=sys.stderr)
    present = [target for target in args.paths if target not in missing]
    with _on_sys_path(import_roots(present)):
        verdicts, checked = _verdicts(present, args)
    files = list(dict.fromkeys(path for verdict in verdicts for path in verdict.files))
    good = {loaded.file: loaded for verdict in verdicts for loaded, _ in verdict.good}
    found, warned = _issues(verdicts)
    bad_files, issues, warnings = 0, 0, 0
    for path in sorted({*files, *found}):
        errors = found.get(path, [])
        extra = warned.get(str(path), [])
        if args.strict:
            errors = sorted(errors + extra, key=lambda i: (i.mark.line, i.mark.column) if i.mark else (0, 0))
        else:
            for warning in extra:
                warnings += 1
                print(SpecIssue(warning.mark, warning.field, f"warning: {warning.message}", warning.profile))
        if errors:
            bad_files += 1
            issues += len(errors)
            for issue in errors:
                print(issue)
        elif args.verbose:
            loaded = good[path]
            built = f", profile {loaded.pipeline_profile}" if loaded.pipeline_profile and not args.all_profiles else ""
            each = f"; profiles {', '.join(loaded.pipeline_profiles)}" if args.all_profiles and loaded.pipeline_profiles else ""
            print(f"{path}: ok ({loaded.pipeline.id}, {len(loaded.pipeline.stages)} stages{built}{each})")
    total = len(files)
    warned_note = f", {warnings} warning(s)" if warnings else ""
    gone = f"; {len(missing)} of the {len(args.paths)} path(s) given do not exist" if missing else ""
    if bad_files or missing:
        print(f"{bad_files} of {total} pipeline file(s) invalid, {issues} error(s){warned_note}{gone}{checked}",
              file=sys.stderr)
        return 1
    print(f"{total} pipeline file(s) valid{warned_note}{checked}")
    return 0


def _verdicts(paths: list[str], args: argparse.Namespace) -> tuple[list, str]:
    """``load_dags`` once per pipeline profile asked for, and what was checked, for the verdict line."""
    from airflow_mlops.factory.pipelines import deployment_profile, load_dags
    from airflow_mlops.spec.load import discover, profile_names
    from airflow_mlops.spec.profiles import ActiveProfile

    if args.all_profiles:
        names = list(dict.fromkeys(name for target in paths for path in discover(target)
                                   for name in profile_names(path)))
        choices = [ActiveProfile(None)] + [ActiveProfile(name, "from --all-profiles") for name in names]
        checked = f" (without a profile and with each of {len(names)}: {', '.join(names)})" if names else ""
    elif args.profile is not None:
        choices, checked = [ActiveProfile(args.profile, "from --profile")], f" (with profile '{args.profile}')"
    else:
        choices, checked = [deployment_profile], ""
    verdicts = [load_dags(paths, serialize=True, profile=choice) for choice in choices]
    if not checked:
        used = sorted({loaded.pipeline_profile for verdict in verdicts for loaded, _ in verdict.good
                       if loaded.pipeline_profile})
        checked = f" (with profile '{used[0]}')" if len(used) == 1 else ""
    return verdicts, checked


def _issues(verdicts: list) -> tuple[dict, dict]:
    """Errors by file, and warnings by file name, each once: one found without a profile (the
    first verdict) and again with one is said once, as found first."""
    from dataclasses import replace

    found: dict[Any, dict] = {}
    warned: dict[Any, dict] = {}
    for verdict in verdicts:
        for path, error in verdict.bad.items():
            for issue in error.issues:
                found.setdefault(path, {}).setdefault(replace(issue, profile=None), issue)
        for warning in verdict.warnings:
            name = warning.mark.file if warning.mark else ""
            warned.setdefault(name, {}).setdefault(replace(warning, profile=None), warning)

    def in_order(issues: dict, file: str) -> list:  # the file's own lines first, then its defaults files'
        return sorted(issues.values(), key=lambda i: (i.mark.file != file, i.mark.file, i.mark.line, i.mark.column)
                      if i.mark else (True, "", 0, 0))

    return ({k: in_order(v, str(k)) for k, v in found.items()}, {k: in_order(v, k) for k, v in warned.items()})


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


def cmd_render(args: argparse.Namespace) -> int:
    """One pipeline file → a plain Python DAG file building the same DAG (``factory.render``).
    A file ``validate`` refuses gets the same errors (``file:line:column field: message``), exit
    1, and nothing is written."""
    from airflow_mlops.factory.pipelines import load_dags
    from airflow_mlops.factory.render import Unrenderable, render
    from airflow_mlops.spec.files import PIPELINE_SUFFIXES

    path = Path(args.pipeline)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        print(f"{path}: {what} (render takes one pipeline YAML file)", file=sys.stderr)
        return 1
    if path.name.startswith("_") or path.suffix not in PIPELINE_SUFFIXES:
        print(f"{path}: not a pipeline file (pipelines are {' or '.join(PIPELINE_SUFFIXES)} files whose name does not "
              "start with '_'; a _defaults.yaml is baked into the pipelines it applies to)", file=sys.stderr)
        return 1
    profile: dict[str, Any] = {}
    if args.profile is not None:
        from airflow_mlops.spec.profiles import ActiveProfile

        profile["profile"] = ActiveProfile(args.profile, "baked in by airflow-mlops render --profile")
    with _on_sys_path(import_roots([str(path)])):
        verdict = load_dags([path], serialize=True, **profile)  # default: the deployment's profile
        for error in verdict.bad.values():
            for issue in error.issues:
                print(issue, file=sys.stderr)
        if verdict.bad:
            print(f"{path} is invalid, {sum(len(e.issues) for e in verdict.bad.values())} error(s): nothing rendered",
                  file=sys.stderr)
            return 1
        (loaded, _), = verdict.good
        try:
            text = render(loaded, rendered_from=str(path))
            compile(text, args.output or "<rendered>", "exec")  # a renderer bug must not leave a broken DAG file
        except (Unrenderable, SyntaxError) as exc:
            print(f"{path}: cannot render it as Python: {exc}", file=sys.stderr)
            return 1
    return _emit(text, args.output, f"{args.output}: DAG '{loaded.pipeline.id}' from {path}", inputs=[path])


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
        if args.profile is not None:
            from airflow_mlops.spec.profiles import ActiveProfile

            loaded = read_pipeline(args.pipeline, profile=ActiveProfile(args.profile, "from --profile"))
        else:
            loaded = read_pipeline(args.pipeline)  # with the deployment's profile, as Airflow builds it
    except PipelineSpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    namespace, _, account = args.launcher.partition("/")
    docs = render(loaded, (namespace, account))
    if not docs:
        print(f"{args.pipeline}: no stage runs on the kubernetes backend; nothing to render", file=sys.stderr)
        return 1
    return _emit(yaml.safe_dump_all(docs, sort_keys=False), args.output, f"{len(docs)} manifests to {args.output}",
                 inputs=[Path(args.pipeline)])


def _emit(text: str, output: str | None, what: str | None, inputs: Iterable[Path] = ()) -> int:
    """Write ``text`` to the ``-o`` file (saying so), else to standard output. An output that is
    one of the command's ``inputs``, a folder, or a file that cannot be written is one line on
    standard error and exit 1; nothing is written."""
    if not output:
        sys.stdout.write(text)
        return 0
    target = Path(output)
    if any(target.resolve() == Path(i).resolve() for i in inputs):
        print(f"{output}: is the file this command reads; give another -o", file=sys.stderr)
        return 1
    try:
        target.write_text(text)
    except OSError as exc:  # a folder, a missing folder, no permission
        print(f"{output}: cannot write it ({exc.strerror or exc}); nothing written", file=sys.stderr)
        return 1
    print(f"wrote {what}")
    return 0


