"""Python source for the values a pipeline's DAG is built from: the literals ``airflow-mlops
render`` writes. Each value becomes an expression that builds an equal value; the imports it needs
are collected on the way, so the rendered module names every class it uses."""

from __future__ import annotations

import datetime as dt
import keyword
import re
from typing import Any

from pydantic import BaseModel

WIDTH = 100  # a value whose one-line form is longer is written one item per line

# Where the rendered file imports the package's classes from: their documented public paths.
PUBLIC_PATHS = {
    "StageOperator": "airflow_mlops.operators.stage",
    "SparkStageOperator": "airflow_mlops.operators.stage",
    "KubernetesStageOperator": "airflow_mlops.operators.stage",
    "KubernetesModelServerOperator": "airflow_mlops.operators.stage",
    "PromotionApprovalOperator": "airflow_mlops.operators.approval",
    "PriceTable": "airflow_mlops.spec.prices",
    "GpuMetricsSettings": "airflow_mlops.spec.prices",
}


class Unrenderable(TypeError):
    """A value with no Python literal form here (``airflow-mlops render`` names the setting)."""


class Imports:
    """The names a rendered module imports: ``from module import name`` (aliased on a clash) and
    ``import module`` for callbacks, which are referred to by their dotted path."""

    def __init__(self) -> None:
        self.names: dict[str, tuple[str, str]] = {}  # local name -> (module, attribute)
        self.modules: set[str] = set()

    def name(self, module: str, attr: str) -> str:
        """The local name of ``module.attr`` in the rendered file."""
        for local, source in self.names.items():
            if source == (module, attr):
                return local
        local, n = attr, 2
        while local in self.names or local in RESERVED:
            local, n = f"{attr}_{n}", n + 1
        self.names[local] = (module, attr)
        return local

    def module(self, module: str) -> str:
        self.modules.add(module)
        return module

    def lines(self) -> list[str]:
        """The import block, sorted as ruff's isort rule wants it (stdlib, third party, first party)."""
        groups: dict[int, list[str]] = {0: [], 1: [], 2: []}
        by_module: dict[str, list[str]] = {}
        for local, (module, attr) in self.names.items():
            by_module.setdefault(module, []).append(attr if local == attr else f"{attr} as {local}")
        statements = [(m, f"import {m}") for m in self.modules]
        statements += [(m, _from_import(m, sorted(n, key=_isort_key))) for m, n in by_module.items()]
        for module, line in sorted(statements, key=lambda s: (s[1].startswith("from "), s[0].lower())):
            groups[_section(module)].append(line)
        out: list[str] = []
        for section in (0, 1, 2):
            if groups[section]:
                out += [*groups[section], ""]
        return out


def _from_import(module: str, names: list[str]) -> str:
    """``from module import a, b``, one name a line in parentheses when longer than ruff's 120."""
    line = f"from {module} import {', '.join(names)}"
    if len(line) <= 120:
        return line
    return f"from {module} import (\n" + "".join(f"    {name},\n" for name in names) + ")"


RESERVED = {"dag", "datetime", "pendulum", "DOC_MD"}
_STDLIB = {"datetime", "os", "pathlib", "logging", "json", "typing"}


def _section(module: str) -> int:
    top = module.split(".")[0]
    return 0 if top in _STDLIB else 2 if top == "airflow_mlops" else 1


def _isort_key(name: str) -> tuple:
    # isort's force-sort-within-sections off, case-sensitive: constants, classes, then functions
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def string(value: str) -> str:
    """A str literal, in double quotes where that needs no escape."""
    text = repr(value)
    if text.startswith("'") and '"' not in value:
        text = '"' + text[1:-1].replace("\\'", "'") + '"'
    return text


def long_string(value: str, indent: int) -> str:
    """A long str as adjacent literals in parentheses, one line each, split after spaces."""
    chunks, line = [], ""
    for word in re.split(r"(?<= )", value):
        if line and len(string(line + word)) + indent + 4 > WIDTH:
            chunks.append(line)
            line = ""
        line += word
    chunks.append(line)
    if len(chunks) == 1:
        return string(value)
    return "(\n" + "".join(f"{' ' * (indent + 4)}{string(chunk)}\n" for chunk in chunks) + " " * indent + ")"


def block_string(value: str) -> str:
    """A triple-quoted literal for long text (docs), when it can be written so unchanged."""
    unsafe = '"""' in value or "\\" in value or value.endswith('"')
    if unsafe or any(not c.isprintable() and c != "\n" for c in value):
        return string(value)
    return '"""' + value + '"""'


def identifier(name: str, taken: set[str]) -> str:
    """A Python variable name for ``name`` (a stage or task id), unique among ``taken``."""
    base = re.sub(r"\W", "_", name) or "_"
    if base[0].isdigit():
        base = f"_{base}"
    if keyword.iskeyword(base) or base in RESERVED:
        base = f"{base}_"
    out, n = base, 2
    while out in taken:
        out, n = f"{base}_{n}", n + 1
    taken.add(out)
    return out


class Literals:
    """``expr(value)``: the Python expression for a value, its imports added to ``imports``."""

    def __init__(self, imports: Imports):
        self.imports = imports

    def expr(self, value: Any, indent: int = 0) -> str:  # noqa: C901 - one branch per kind of value
        if value is None or isinstance(value, (bool, int, float)):
            return repr(value)
        if isinstance(value, str):
            return long_string(value, indent) if len(value) + indent > WIDTH else string(value)
        if isinstance(value, BaseModel):
            return self.model(value, indent)
        if isinstance(value, dict):
            return self.wrap("{", [f"{self.expr(k)}: {self.expr(v, indent + 4)}" for k, v in value.items()], "}", indent)
        if isinstance(value, list):
            return self.wrap("[", [self.expr(v, indent + 4) for v in value], "]", indent)
        if isinstance(value, tuple):
            items = [self.expr(v, indent + 4) for v in value]
            return self.wrap("(", items, ",)" if len(items) == 1 else ")", indent)
        if isinstance(value, dt.timedelta):
            return self.timedelta(value)
        if isinstance(value, dt.datetime):
            return self.datetime(value)
        if isinstance(value, dt.date):
            return f"{self.imports.module('datetime')}.date({value.year}, {value.month}, {value.day})"
        if callable(value) and getattr(value, "__module__", None) and "<" not in getattr(value, "__qualname__", "<"):
            return f"{self.imports.module(value.__module__)}.{value.__qualname__}"
        return self.airflow_object(value, indent)

    def wrap(self, open_: str, items: list[str], close: str, indent: int) -> str:
        """``open_ items close`` on one line when it fits, else one item per line."""
        one = open_ + ", ".join(items) + close
        if len(one) + indent <= WIDTH and "\n" not in one:
            return one
        pad = " " * (indent + 4)
        close_pad = " " * indent
        return open_ + "\n" + "".join(f"{pad}{item},\n" for item in items) + close_pad + close.lstrip(",")

    def call(self, function: str, args: list[str], kwargs: dict[str, str], indent: int) -> str:
        return self.wrap(f"{function}(", [*args, *(f"{k}={v}" for k, v in kwargs.items())], ")", indent)

    def model(self, value: BaseModel, indent: int) -> str:
        """``Cls(field=value, ...)`` with the fields that were set (a stage's ``kind`` is its class):
        the model validates them again into an equal model, with the same fields set."""
        cls = type(value)
        module = PUBLIC_PATHS.get(cls.__name__) or _spec_models_path(cls)
        fields = value.model_dump(exclude_unset=True, mode="python")
        fields = {k: v for k, v in fields.items() if k != "kind"}
        if any(not k.isidentifier() or keyword.iskeyword(k) for k in fields):
            return f"{self.imports.name(module, cls.__name__)}.model_validate({self.expr(fields, indent)})"
        return self.call(self.imports.name(module, cls.__name__), [],
                         {k: self.expr(v, indent + 4) for k, v in fields.items()}, indent)

    def timedelta(self, value: dt.timedelta) -> str:
        seconds = value.total_seconds()
        td = f"{self.imports.module('datetime')}.timedelta"
        for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
            if seconds and seconds % size == 0:
                return f"{td}({unit}={int(seconds // size)})"
        return f"{td}(seconds={int(seconds) if seconds == int(seconds) else seconds})"

    def datetime(self, value: dt.datetime) -> str:
        parts = [value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond]
        while len(parts) > 3 and parts[-1] == 0:
            parts.pop()
        numbers = ", ".join(map(str, parts))
        if value.tzinfo is None:
            return f"{self.imports.module('datetime')}.datetime({numbers})"
        name = getattr(value.tzinfo, "name", None)
        pendulum = self.imports.module("pendulum")
        if name and "/" in name or name == "UTC":
            return f"{pendulum}.datetime({numbers}, tz={string(name)})"
        offset = value.utcoffset()
        return f"{pendulum}.datetime({numbers}, tz={pendulum}.fixed_timezone({int(offset.total_seconds())}))"

    def airflow_object(self, value: Any, indent: int) -> str:
        kind = type(value).__name__
        sdk = "airflow.sdk"
        if kind == "Asset":
            kwargs = {"name": string(value.name), "uri": string(value.uri)}
            if getattr(value, "group", "asset") != "asset":
                kwargs["group"] = string(value.group)
            return self.call(self.imports.name(sdk, "Asset"), [], kwargs, indent)
        if kind in ("AssetNameRef", "AssetUriRef"):
            field = "name" if kind == "AssetNameRef" else "uri"
            return f"{self.imports.name(sdk, 'Asset')}.ref({field}={string(getattr(value, field))})"
        if kind == "Param":
            args = [] if type(value.value).__name__ == "ArgNotSet" else [self.expr(value.value, indent + 4)]
            kwargs = {"description": self.expr(value.description)} if value.description is not None else {}
            kwargs.update({k: self.expr(v, indent + 4) for k, v in value.schema.items()})
            return self.call(self.imports.name(sdk, "Param"), args, kwargs, indent)
        if kind == "CronTriggerTimetable":
            from airflow_mlops._core.compat import cron_trigger_timetable

            module = "airflow.sdk" if cron_trigger_timetable().__module__.startswith("airflow.sdk") else \
                "airflow.timetables.trigger"
            expression = getattr(value, "expression", None) or value._expression  # the SDK's, or 3.1's
            zone = getattr(value, "timezone", None) or value._timezone
            zone = getattr(zone, "name", None) or str(zone)
            return f"{self.imports.name(module, kind)}({string(expression)}, timezone={string(zone)})"
        raise Unrenderable(f"no Python form for a {type(value).__module__}.{kind}: {value!r}")


def _spec_models_path(cls: type) -> str:
    """``airflow_mlops.spec.models`` (the documented import path) when it has the class, else its module."""
    from airflow_mlops.spec import models

    return "airflow_mlops.spec.models" if getattr(models, cls.__name__, None) is cls else cls.__module__
