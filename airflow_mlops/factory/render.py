"""``airflow-mlops render``: a pipeline → a plain Python DAG file that builds the same DAG.

The file is written from the very arguments the factory builds the DAG with (``dag_arguments``,
``stage_calls``): the package's public operators (``StageOperator`` and its Spark and Kubernetes
kinds, ``PromotionApprovalOperator``, a custom stage's own operator), each stage spec written out as
its model's keyword arguments, the task groups, the Assets and the dependencies. The defaults that
applied (``_defaults.yaml``, resource profiles) are baked in; no YAML is read when it runs.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any

from airflow_mlops.factory._build import Plan, TaskCall, dag_arguments, group_tooltip, stage_calls
from airflow_mlops.factory._literals import Imports, Literals, Unrenderable, block_string, identifier, string
from airflow_mlops.spec.files import defaults_chain
from airflow_mlops.spec.load import LoadedPipeline

__all__ = ["Unrenderable", "render"]

# Operator arguments that most tasks share: written once, as a constant, when two or more agree.
SHARED = ("pipeline_id", "mlflow", "data_dir", "data_conn_id", "prices", "gpu_metrics", "spark", "kubernetes")
# Left out when empty: the operators' defaults.
EMPTY_DEFAULTS = ("data_conn_id", "stage_resources", "upstream_tasks", "outlets")


def render(loaded: LoadedPipeline, *, rendered_from: str | None = None) -> str:
    """The Python source of a DAG file building ``loaded``'s DAG: same dag_id, settings, Params,
    callbacks, schedule (cron, time table or Assets), task groups, tasks (operator classes and
    arguments), Assets and dependencies. ``rendered_from``: the file name the header names
    (default: the pipeline's file as loaded). Raises ``Unrenderable`` (a TypeError) for a value with no
    Python form (none that a valid pipeline builds today), and what building the DAG raises
    (call it on a pipeline ``load_dags`` accepted)."""
    return _Renderer(loaded, rendered_from or str(loaded.file)).source()


class _Renderer:
    def __init__(self, loaded: LoadedPipeline, rendered_from: str):
        self.loaded, self.rendered_from = loaded, rendered_from
        self.imports = Imports()
        self.lit = Literals(self.imports)
        self.plan = Plan(loaded)
        self.calls = {name: stage_calls(self.plan, name, stage) for name, stage in loaded.pipeline.stages.items()}
        self.constants = self._shared_constants()

    def source(self) -> str:
        dag = self._dag()
        body = self._tasks()
        header = self._header()
        constants = [f"{name} = {text}" for name, (_, text) in self.constants.items()]
        doc = f"DOC_MD = {block_string(dag['doc_md'])}"
        dag["doc_md"] = "DOC_MD"
        dag_call = self.lit.call(self.imports.name("airflow.sdk", "DAG"), [], dag, 0)
        lines = [*header, "from __future__ import annotations", "", *self.imports.lines(), *constants,
                 *([""] if constants else []), doc, "", "", f"with {dag_call} as dag:", *body]
        return "\n".join(lines).rstrip() + "\n"

    def _header(self) -> list[str]:
        p = self.loaded.pipeline
        from airflow_mlops import __version__

        defaults = [_shown(f) for f in defaults_chain(self.loaded.resolved or self.loaded.file)]
        about = " ".join((p.description or "").split())
        doc = textwrap.fill(f"{p.id}: {about}" if about else f"The {p.id} pipeline.", 100)
        lines = [_docstring(doc), "",
                 f"# Rendered by `airflow-mlops render` (airflow-mlops {__version__}) from {self.rendered_from}.",
                 *[f"# Defaults baked in from {f}." for f in defaults],
                 *([f"# Pipeline profile '{self.loaded.pipeline_profile}' baked in: this file is for that deployment."]
                   if self.loaded.pipeline_profile else []),
                 "# A plain Airflow DAG file: it builds the DAG that pipeline builds and reads no YAML when it runs.",
                 "# Rendering again overwrites it; once you edit it here, the YAML is no longer its source."]
        if not p.data_dir:
            lines.append("# The pipeline sets no data_dir: DATA_DIR is $AIRFLOW_MLOPS_HOME/data/<id> as it was where "
                         "this was rendered.")
        return [*lines, ""]

    def _dag(self) -> dict[str, str]:
        """``DAG(...)``'s keyword arguments as source; ``doc_md`` as the text itself."""
        arguments = dag_arguments(self.loaded)
        out: dict[str, str] = {}
        for key, value in arguments.items():
            if key == "doc_md":
                out[key] = value
            elif key == "schedule":
                out[key] = self._schedule(value)
            elif key in ("start_date", "end_date"):
                out[key] = self._date(key, value)
            else:
                out[key] = self.lit.expr(value, 4)
        return out

    def _date(self, key: str, value: Any) -> str:
        """A date the YAML wrote without a zone (and no ``dag.timezone``) stays naive: Airflow puts
        it in its ``[core] default_timezone`` where the file is parsed, as the factory does."""
        import datetime as dt

        settings = self.loaded.pipeline.dag
        written = getattr(settings, key)
        naive = written is not None and not settings.timezone and getattr(written, "tzinfo", None) is None
        if naive:
            value = written if isinstance(written, dt.datetime) else dt.datetime(written.year, written.month, written.day)
        return self.lit.expr(value, 4)

    def _schedule(self, value: Any) -> str:
        trigger = self.loaded.pipeline.dag.trigger
        if trigger is None:
            return self.lit.expr(value, 4)
        (asset,) = value  # the one Asset watched for Kafka messages (factory._build._schedule)
        watcher = asset.watchers[0]
        k = trigger.kafka
        kafka = self.lit.call(
            self.imports.name("airflow.providers.apache.kafka.triggers.msg_queue", "KafkaMessageQueueTrigger"), [],
            {"topics": self.lit.expr(list(k.topics)), "kafka_config_id": string(k.connection),
             "apply_function": self.lit.expr(k.apply_function), "poll_interval": self.lit.expr(k.poll_interval)}, 8)
        watched = self.lit.call(self.imports.name("airflow.sdk", "AssetWatcher"), [],
                                {"name": string(watcher.name), "trigger": kafka}, 8)
        watched_asset = self.lit.call(self.imports.name("airflow.sdk", "Asset"), [],
                                      {"name": string(asset.name), "uri": string(asset.uri),
                                       "watchers": f"[{watched}]"}, 4)
        return f"[{watched_asset}]"

    def _shared_constants(self) -> dict[str, tuple[str, str]]:
        """``NAME -> (argument, source)`` for each shared argument two or more tasks pass alike."""
        seen: dict[str, Counter] = {key: Counter() for key in SHARED}
        for calls in self.calls.values():
            for call in calls:
                for key in SHARED:
                    if key in call.arguments and not call.path:
                        seen[key][self.lit.expr(call.arguments[key])] += 1
        out = {}
        for key, counts in seen.items():
            if counts:
                text, n = counts.most_common(1)[0]
                if n >= 2 and text != "None":
                    out[key.upper()] = (key, text)
        return out

    def _argument(self, key: str, value: Any, indent: int) -> str | None:
        if key in EMPTY_DEFAULTS and value in (None, [], ()):
            return None
        text = self.lit.expr(value, indent)
        for name, (shared_key, shared_text) in self.constants.items():
            if shared_key == key and shared_text == self.lit.expr(value):
                return name
        return text

    def _task(self, call: TaskCall, indent: int) -> str:
        if call.path:  # a custom stage: its operator as the YAML named it
            module, _, attr = call.path.partition(":")
            head, _, rest = attr.partition(".")
            operator = self.imports.name(module, head) + (f".{rest}" if rest else "")
        else:
            operator = self.imports.name(_public_module(call.operator), call.operator.__name__)
        kwargs = {k: text for k, v in call.arguments.items() if (text := self._argument(k, v, indent + 4)) is not None}
        return self.lit.call(operator, [], kwargs, indent)

    def _tasks(self) -> list[str]:
        p = self.loaded.pipeline
        group_class = self.imports.name("airflow.sdk", "TaskGroup")
        # Every task written first, so that every imported name is known before variables are named.
        texts = {name: [self._task(call, 8) for call in calls] for name, calls in self.calls.items()}
        taken = {*self.constants, *self.imports.names, *(m.split(".")[0] for m in self.imports.modules), "dag"}
        lines: list[str] = []
        groups: dict[str, str] = {}
        for name, stage in p.stages.items():
            var = groups[name] = identifier(name, taken)
            lines += [""] if lines else []
            lines.append(f"    with {group_class}(group_id={string(name)}, tooltip={string(group_tooltip(p, stage))}) "
                         f"as {var}:")
            followed = {before for call in self.calls[name] for before in call.after}
            made: dict[str, str] = {}
            for call, text in zip(self.calls[name], texts[name]):
                task_id = call.arguments["task_id"]
                if task_id in followed:
                    made[task_id] = identifier(f"{name}_{task_id}", taken)
                    text = f"{made[task_id]} = {text}"
                elif call.after:
                    text = f"{' >> '.join(made[b] for b in call.after)} >> {text}"
                lines.append(f"        {text}")
        edges = [f"    {groups[dep]} >> {groups[name]}" for name, deps in self.plan.deps.items() for dep in deps]
        if edges:
            lines += ["", *edges]
        return lines


def _shown(path: Any) -> str:
    """A path relative to the current folder when it is below it (as the user typed it, mostly)."""
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _docstring(text: str) -> str:
    if '"""' in text or "\\" in text or text.endswith('"'):
        return repr(text)
    return f'"""{text}"""' if "\n" not in text else f'"""{text}\n"""'


def _public_module(operator: type) -> str:
    from airflow_mlops.factory._literals import PUBLIC_PATHS

    return PUBLIC_PATHS.get(operator.__name__, operator.__module__)
