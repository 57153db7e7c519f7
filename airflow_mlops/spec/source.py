"""Read YAML into plain data while remembering where each key and value came from.

PyYAML's ``safe_load`` forgets positions and silently keeps the last of two duplicate keys; we
compose the node graph instead (with the C parser when available, since DAG files are re-parsed
every 30 s) and build the data ourselves, so every error can name ``file:line:column``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from airflow_mlops.spec.errors import Mark, PipelineSpecError, SpecIssue, format_path

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path = tuple[Any, ...]


@dataclass
class Source:
    """Data of one YAML document plus the position of every value (and mapping key) in it."""

    data: Any
    text: str = ""
    value_marks: dict[Path, Mark] = field(default_factory=dict)
    key_marks: dict[Path, Mark] = field(default_factory=dict)

    def mark_of(self, path: Path, *, key: bool = False) -> Mark | None:
        """The mark of ``path`` or, failing that, of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            marks = (self.key_marks, self.value_marks) if key else (self.value_marks, self.key_marks)
            for table in marks:
                if path in table:
                    return table[path]
            if not path:
                return None
            path = path[:-1]


def _mark(file: str, node: yaml.Node) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


def load_source(file: str, text: str) -> Source:
    """Parse ``text`` (read from ``file``) into a :class:`Source`; raise on syntax or duplicate keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(file, mark.line + 1, mark.column + 1) if mark else Mark(file, 1, 1)
        problem = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise PipelineSpecError([SpecIssue(where, "", f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise PipelineSpecError([SpecIssue(Mark(file, 1, 1), "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()

    src = Source(data=None, text=text)
    issues: list[SpecIssue] = []

    def build(n: yaml.Node, path: Path) -> Any:
        src.value_marks[path] = _mark(file, n)
        if isinstance(n, yaml.MappingNode):
            loader.flatten_mapping(n)  # YAML merge keys (<<)
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = loader.construct_object(key_node, deep=True)
                if key in out:
                    first = src.key_marks[path + (key,)]
                    issues.append(
                        SpecIssue(
                            _mark(file, key_node),
                            format_path(path + (key,)),
                            f"duplicate key '{key}' (first defined at line {first.line})",
                        )
                    )
                    continue
                src.key_marks[path + (key,)] = _mark(file, key_node)
                out[key] = build(value_node, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(n.value)]
        return loader.construct_object(n, deep=True)

    if node is not None:
        src.data = build(node, ())
    if issues:
        raise PipelineSpecError(issues)
    return src


def merge_sources(base: Source, override: Source) -> Source:
    """Deep-merge mappings (``override`` wins; lists and scalars are replaced whole)."""

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a[k], v) if k in a else v
            return out
        return b

    return Source(
        data=merge(base.data, override.data),
        text=override.text,
        value_marks={**base.value_marks, **override.value_marks},
        key_marks={**base.key_marks, **override.key_marks},
    )
