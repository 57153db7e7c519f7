"""Read YAML into plain data while remembering where each key and value came from.

PyYAML's ``safe_load`` forgets positions and silently keeps the last of two duplicate keys; we
compose the node graph instead (with the C parser when available, since DAG files are re-parsed
every 30 s) and build the data ourselves, so every error can name ``file:line:column``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from airflow_mlops._core.errors import format_path
from airflow_mlops.spec.errors import Mark, PipelineSpecError, SpecIssue

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path = tuple[Any, ...]
# Where a value or key was written: (file, line, column), 1-based. A plain tuple (a Mark is made
# from it only when asked for): every file records one or two per value, on every parse.
Position = tuple[str, int, int]


@dataclass
class Source:
    """Data of one YAML document plus the position of every value (and mapping key) in it."""

    data: Any
    text: str = ""
    value_marks: dict[Path, Position] = field(default_factory=dict)
    key_marks: dict[Path, Position] = field(default_factory=dict)

    def mark_of(self, path: Path, *, key: bool = False) -> Mark | None:
        """The mark of ``path`` or, failing that, of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            marks = (self.key_marks, self.value_marks) if key else (self.value_marks, self.key_marks)
            for table in marks:
                if path in table:
                    return Mark(*table[path])
            if not path:
                return None
            path = path[:-1]


def _mark(file: str, node: yaml.Node) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


# One file must not stall the DAG processor (and with it every pipeline of the folder, when
# Airflow's DAG-file timeout fires): aliases may stand for at most this many values in a file.
MAX_ALIAS_VALUES = 10_000
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
# Scalars whose constructor is a plain function of the node: called directly, without
# construct_object's bookkeeping (which only matters for collections and unknown tags).
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float"))


def load_source(file: str, text: str) -> Source:  # noqa: C901
    """Parse ``text`` (read from ``file``) into a :class:`Source`; raise on syntax or duplicate keys.

    YAML merge keys follow the spec: keys written in a mapping win over merged ones, and of
    several merge sources (``<<: [*a, *b]``) the earlier wins. A key written twice in one mapping
    is an error. Merged values keep the position where they were written."""
    if "&" in text:  # no anchor, no alias
        _check_alias_expansion(file, text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(file, mark.line + 1, mark.column + 1) if mark else Mark(file, 1, 1)
        problem = exc.problem or "invalid YAML"
        if problem == "found undefined alias" and mark is not None:  # PyYAML drops the name: it is in the text
            import re

            line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
            name = re.match(r"\*([^\s,\[\]{}]+)", line[mark.column:])
            if name:
                problem = f"found undefined alias '{name.group(1)}' (no anchor &{name.group(1)} is defined before it)"
        if exc.context and exc.context_mark:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise PipelineSpecError([SpecIssue(where, "", f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise PipelineSpecError([SpecIssue(Mark(file, 1, 1), "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()

    src = Source(data=None, text=text)
    value_marks, key_marks = src.value_marks, src.key_marks
    constructors = loader.yaml_constructors
    issues: dict[SpecIssue, None] = {}  # ordered, and a merge source's problem is reported once

    def scalar(n: yaml.ScalarNode) -> Any:
        tag = n.tag
        if tag == _STR_TAG:
            return n.value
        if tag in _PLAIN_TAGS:
            return constructors[tag](loader, n)
        return loader.construct_object(n, deep=True)

    def problem(n: yaml.Node, path: Path, message: str) -> None:
        issues[SpecIssue(_mark(file, n), format_path(path), message)] = None

    def items(n: yaml.MappingNode, path: Path) -> dict[Any, tuple[yaml.Node, yaml.Node]]:
        """The mapping's keys → (key node, value node), merge keys resolved."""
        written: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        sources: list[yaml.MappingNode] = []
        merge_key: yaml.Node | None = None
        for key_node, value_node in n.value:
            if key_node.tag == _MERGE_TAG:
                if merge_key is not None:
                    first = _mark(file, merge_key).line
                    problem(key_node, path + ("<<",), f"duplicate key '<<' (first defined at line {first})")
                    continue
                merge_key = key_node
                subs = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for sub in subs:
                    if isinstance(sub, yaml.MappingNode):
                        sources.append(sub)
                    else:
                        problem(sub, path + ("<<",), "a merge key '<<' takes a mapping or a list of mappings")
                continue
            if isinstance(key_node, yaml.ScalarNode):
                key = scalar(key_node)
            else:
                key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                problem(key_node, path, f"a mapping key must be a plain value, got a {type(key).__name__}")
                continue
            if key in written:
                first = _mark(file, written[key][0])
                problem(key_node, path + (key,), f"duplicate key '{key}' (first defined at line {first.line})")
                continue
            written[key] = (key_node, value_node)
        out: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        # PyYAML's order: merged keys first; of the sources, the earlier wins; written keys win over all.
        for source in reversed(sources):
            out.update(items(source, path))
        out.update(written)
        return out

    def build(n: yaml.Node, path: Path) -> Any:
        start = n.start_mark
        value_marks[path] = (file, start.line + 1, start.column + 1)
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key, (key_node, value_node) in items(n, path).items():
                here = path + (key,)
                start = key_node.start_mark
                key_marks[here] = (file, start.line + 1, start.column + 1)
                out[key] = build(value_node, here)
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(n.value)]
        return scalar(n)

    if node is not None:
        try:
            src.data = build(node, ())
        except RecursionError:
            raise PipelineSpecError([SpecIssue(Mark(file, 1, 1), "", "the YAML is nested too deeply")]) from None
    if issues:
        raise PipelineSpecError(list(issues))
    return src


def _check_alias_expansion(file: str, text: str) -> None:  # noqa: C901
    """Refuse, at the alias that crosses it, a document whose aliases stand for more than
    ``MAX_ALIAS_VALUES`` values ("billion laughs"): sizes are added up over the parser's events,
    without building anything."""
    sizes: dict[str, int] = {}  # anchor → values its node stands for, aliases expanded
    open_frames: list[list[Any]] = []  # [anchor, size] of each collection being read
    expanded = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                if any(frame[0] == event.anchor for frame in open_frames):
                    raise _alias_error(file, event, f"alias *{event.anchor} is inside its own anchor: "
                                                    "that value would be infinitely deep")
                size = sizes.get(event.anchor, 1)  # an undefined alias is reported by the composer
                expanded += size
                if expanded > MAX_ALIAS_VALUES:
                    raise _alias_error(file, event, f"aliases in this file stand for more than {MAX_ALIAS_VALUES:,} "
                                                    f"values (*{event.anchor} alone for {size:,}); write the values out "
                                                    "or use fewer nested aliases")
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                open_frames.append([event.anchor, 1])
                continue
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, size = open_frames.pop()
                if anchor is not None:
                    sizes[anchor] = size
            elif isinstance(event, yaml.ScalarEvent):
                size = 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            else:
                continue
            if open_frames:
                open_frames[-1][1] += size
    except yaml.YAMLError:
        return  # the composer reports syntax errors with their position


def _alias_error(file: str, event: yaml.Event, message: str) -> PipelineSpecError:
    where = Mark(file, event.start_mark.line + 1, event.start_mark.column + 1)
    return PipelineSpecError([SpecIssue(where, "", message)])


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
