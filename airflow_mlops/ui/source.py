"""The "Pipeline YAML" tab of a DAG: the pipeline file it was built from, the ``_defaults.yaml``
files that applied to it and the pipeline profile it was built with, each setting they gave
marked with the file and line it came from; for a broken pipeline's placeholder DAG, the file
with each failing line marked and the errors beside it.

Which files: only those named in the record the factory put into the DAG's ``doc_md``
(``factory.source_record``), read from the serialized DAG in the metadata database; nothing a
request names is ever read. The files themselves are read from the api-server's disk when it has
them (the DAG's docs hold a copy of a healthy pipeline's own YAML as parsed, shown when the file
is not there); what it does not have, the tab says so. Values under an ``env`` key, and of keys
named like passwords, secrets or tokens, are shown as ``••••``; ``$VAR`` is shown as written,
never expanded.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import Any

from airflow_mlops.factory import source_record
from airflow_mlops.spec.files import DEFAULTS_FILE

REDACTED = "••••"
MAX_FILE_BYTES = 1_000_000
MAX_VALUE = 120
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey)", re.IGNORECASE)
# A secret-like key inside a flow mapping (``params: {api_token: x}``) or an inline ``env: {...}``.
_INLINE_SECRET = re.compile(r"([{,]\s*[\w.-]*(?:password|passwd|secret|token|api_key|apikey)[\w.-]*\s*:\s*)"
                            r"(?!••••)[^,}\]#]+", re.IGNORECASE)
_KEY_LINE = re.compile(r"^(\s*)(-\s+)?([^\s#:][^:#]*?|\"[^\"]*\"|'[^']*'):(\s+|$)(.*)$")

STYLE = """
.mlops table.yaml{border-collapse:collapse;font-family:monospace;font-size:12px;margin:4px 0 16px;width:auto}
.mlops table.yaml td{border:none;padding:0 8px;white-space:pre;vertical-align:top}
.mlops table.yaml td.ln{color:var(--mlops-muted);text-align:right;user-select:none;border-right:1px solid var(--mlops-border)}
.mlops table.yaml tr.failing td{background:var(--mlops-error-bg)}.mlops table.yaml tr.failing td.ln{color:#c62828;font-weight:600}
.mlops table.yaml td.why{white-space:pre-wrap;color:#c62828;font-family:inherit;max-width:640px}
.mlops .file-note{font-size:12px}
"""


def serialized_doc(dag_id: str) -> tuple[bool, str | None]:
    """(the DAG is known, its ``doc_md``) from the latest serialized DAG in the metadata database."""
    from airflow.models.serialized_dag import SerializedDagModel

    row = SerializedDagModel.get(dag_id)
    if row is None:
        return False, None
    return True, ((row.data or {}).get("dag") or {}).get("doc_md")


def describe(dag_id: str, doc_md: str | None) -> dict[str, Any]:
    """The tab's facts as a plain dict (the JSON API returns it as it is)."""
    record = source_record.read(doc_md)
    if record is None:
        return {"dag_id": dag_id, "recorded": False, "invalid": False, "profile": None, "files": [], "errors": [],
                "settings": [], "message": f"DAG {dag_id} records no pipeline file: it was not built from a pipeline "
                                           "YAML by airflow-mlops, or was last parsed by a version that did not record "
                                           "it (it will be after its next parse)"}
    errors = record.get("errors") or []
    pipeline = record["file"]
    files = [_file(pipeline, "pipeline", errors, docs_copy=_docs_yaml(doc_md))]
    files += [_file(d, "defaults", errors) for d in reversed(record.get("defaults") or [])]  # nearest first
    return {"dag_id": dag_id, "recorded": True, "invalid": bool(errors), "profile": record.get("profile"),
            "profile_origin": record.get("profile_origin") or "",
            "files": files, "errors": errors, "message": None,
            "settings": _settings(pipeline["path"], record) if _verified(files, record) else []}


def _verified(files: list[dict], record: dict) -> bool:
    """The settings are merged again from the files on disk: only when each was shown from there
    (the text it was parsed from) and the defaults that apply on this disk are those recorded."""
    from airflow_mlops.spec.files import defaults_chain

    if record.get("errors") or any(f["shown_from"] != "disk" for f in files):
        return False
    try:
        chain = [str(p) for p in defaults_chain(Path(record["file"]["path"]))]
    except OSError:
        return False
    return chain == [d["path"] for d in record.get("defaults") or []]


def _docs_yaml(doc_md: str | None) -> str | None:
    """The pipeline's own YAML that the factory's DAG docs carry (``factory._build._docs``)."""
    match = re.search(r"^```yaml\n(.*?)\n```$", doc_md or "", re.MULTILINE | re.DOTALL)
    return match.group(1) if match else None


def _read(path: Path, role: str, sha: str | None) -> tuple[str | None, str | None]:
    """(the file's text, else why not). Only a YAML file (a defaults file by its name) whose text
    is the very text the DAG was parsed from (its hash in the record): a record is in the DAG's
    docs, which a DAG written in Python could fake, so it names no other file to show."""
    if path.suffix not in (".yaml", ".yml") or (role == "defaults" and path.name != DEFAULTS_FILE):
        return None, f"{path} is not a pipeline or defaults file: not shown"
    if sha is None:
        return None, f"{path} could not be read when the DAG was parsed: nothing to show"
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None, f"{path} is larger than {MAX_FILE_BYTES // 1_000_000} MB: not shown"
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return None, (f"{path} cannot be read on the api-server ({why}): the api-server does not share the dags "
                      "folder with the DAG processor, or the file was removed")
    if source_record.digest(text) != sha:
        return None, (f"{path} has changed since the DAG was parsed: the tab shows a file only as the DAG was "
                      "parsed from it (the next parse picks the change up)")
    return text, None


def _file(entry: dict, role: str, errors: list[dict], docs_copy: str | None = None) -> dict[str, Any]:
    path = Path(entry["path"])
    text, problem = _read(path, role, entry.get("sha"))
    shown_from = "disk" if text is not None else None
    if text is None and docs_copy is not None and source_record.digest(docs_copy) == entry.get("sha"):
        text, shown_from = docs_copy, "the DAG's docs (the YAML as parsed)"
    failing: dict[int, list[str]] = {}
    for e in errors:
        if e.get("file") == str(path):
            failing.setdefault(int(e.get("line") or 1), []).append(_error_text(e))
    lines = _redacted(text.splitlines()) if text is not None else []
    if lines:
        for n in [n for n in failing if n > len(lines)]:  # at the end of the file
            failing.setdefault(len(lines), []).extend(failing.pop(n))
    return {"path": str(path), "role": role, "available": text is not None, "shown_from": shown_from,
            "problem": problem,
            "lines": [{"number": n, "text": line, "errors": failing.get(n, [])} for n, line in enumerate(lines, 1)],
            "errors_without_text": [m for ms in failing.values() for m in ms] if text is None else []}


def _error_text(error: dict) -> str:
    return f"{error['field']}: {error['message']}" if error.get("field") else str(error.get("message", ""))


def _redacted(lines: list[str]) -> list[str]:
    """The lines with the values under an ``env`` key, and of secret-like keys, as ``••••``."""
    out, env_indent = [], None
    for line in lines:
        match = _KEY_LINE.match(line)
        indent = len(line) - len(line.lstrip()) if line.strip() else None
        if env_indent is not None and indent is not None and indent <= env_indent and not line.lstrip().startswith("#"):
            env_indent = None
        if match:
            key, value = match.group(3).strip("'\""), match.group(5)
            if env_indent is not None or _SECRET_KEY.search(key) or key == "env":
                if key == "env" and not value.strip():
                    env_indent = len(match.group(1))
                elif value.strip() and not value.lstrip().startswith("#"):
                    line = line[: match.start(5)] + REDACTED
        elif env_indent is not None and line.strip() and not line.lstrip().startswith("#"):
            line = line[: len(line) - len(line.lstrip())] + REDACTED
        out.append(_INLINE_SECRET.sub(lambda m: m.group(1) + REDACTED, line))
    return out


def _settings(pipeline: str, record: dict) -> list[dict[str, Any]]:
    """Each setting the defaults files or the profile gave the DAG, with the file and line it came
    from (merged from the files on disk, as ``spec.load.read_pipeline`` merges them)."""
    from airflow_mlops.spec.load import merged_source

    try:
        merged, written = merged_source(pipeline, record.get("profile"))
    except Exception:  # noqa: BLE001 - the files' own sections say what cannot be read
        return []
    rows = []
    for path, value in _leaves(merged.data, ()):
        if path[:1] == ("profiles",):
            continue
        mark = merged.value_marks.get(path) or merged.key_marks.get(path)
        if mark is None or (mark[0] == pipeline and tuple(mark) not in written):
            continue
        secret = any(str(p) == "env" or _SECRET_KEY.search(str(p)) for p in path)
        shown = REDACTED if secret else _short(value)
        rows.append({"key": ".".join(str(p) for p in path), "value": shown, "file": mark[0], "line": mark[1],
                     "from": f"profile {record['profile']}" if tuple(mark) in written else "defaults"})
    return rows


def _leaves(data: Any, path: tuple):
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _leaves(value, path + (key,))
    else:
        yield path, data


def _short(value: Any) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def page_body(info: dict[str, Any]) -> str:
    """The tab's HTML (inside ``ui.pages.page``)."""
    parts = [f"<style>{STYLE}</style>"]
    if not info["recorded"]:
        return parts[0] + f'<p class="note">{escape(info["message"])}</p>'
    if info["invalid"]:
        parts.append(f'<div class="error" role="alert">This pipeline does not load: {len(info["errors"])} error(s), '
                     "each marked at its line below. Fix them and the DAG comes back on the next parse.</div>")
    if info["profile"]:
        # Recorded by the parse that built the DAG; one parsed by an older version says where it may be from.
        origin = info.get("profile_origin") or "the deployment's: $AIRFLOW_MLOPS_PROFILE, else the Airflow Variable " \
                                               "mlops_profile"
        parts.append(f'<p class="note">Built with the pipeline profile <b>{escape(info["profile"])}</b> '
                     f"({escape(origin)}).</p>")
    if info["settings"]:
        rows = "".join(f'<tr><td><code>{escape(s["key"])}</code></td><td><code>{escape(s["value"])}</code></td>'
                       f'<td>{escape(s["from"])}: <code>{escape(s["file"])}:{s["line"]}</code></td></tr>'
                       for s in info["settings"])
        parts.append('<h2>Settings from the defaults and the profile</h2><table class="settings"><tr><th>setting</th>'
                     f"<th>value</th><th>from</th></tr>{rows}</table>")
    for f in info["files"]:
        parts.append(_file_html(f))
    return "".join(parts)


def _file_html(f: dict[str, Any]) -> str:
    title = "Pipeline file" if f["role"] == "pipeline" else "Defaults file (applied; the nearest wins)"
    head = f'<h2 data-role="{f["role"]}">{title}: <code>{escape(f["path"])}</code></h2>'
    notes = ""
    if f["problem"]:
        notes += f'<p class="note file-note" role="status">{escape(f["problem"])}</p>'
    if f["available"] and f["shown_from"] != "disk":
        notes += f'<p class="note file-note">Shown from {escape(f["shown_from"])}.</p>'
    if not f["available"]:
        missing = "".join(f"<li>{escape(m)}</li>" for m in f["errors_without_text"])
        return head + notes + (f'<ul class="error">{missing}</ul>' if missing else "")
    rows = []
    for line in f["lines"]:
        failing = ' class="failing"' if line["errors"] else ""
        why = f'<td class="why">{escape(" · ".join(line["errors"]))}</td>' if line["errors"] else "<td></td>"
        rows.append(f'<tr{failing} data-line="{line["number"]}"><td class="ln">{line["number"]}</td>'
                    f'<td>{escape(line["text"])}</td>{why}</tr>')
    return head + notes + f'<table class="yaml">{"".join(rows)}</table>'
