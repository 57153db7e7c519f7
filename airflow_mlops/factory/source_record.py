"""Which files a pipeline's DAG was built from, recorded in the DAG itself for the Airflow UI.

The UI plugin's "Pipeline YAML" tab runs in the api-server, which reads DAGs serialized in the
metadata database and may not share the dags folder. Airflow serializes a fixed set of DAG
attributes (``fileloc`` is overwritten with the loader's ``.py`` file by the DAG processor), and
``doc_md`` is one of them: the factory's docs already carry the pipeline's own YAML, so the record
goes there too, as one invisible Markdown line (a link reference definition, which no Markdown
renderer shows)::

    [airflow-mlops-source]: <{"file": "/dags/churn.yaml", "defaults": [...], ...}>

It holds paths, short hashes, the active profile and, for a broken pipeline's placeholder, its
errors at their positions: a few hundred bytes, never the text of a file. The tab reads the files
themselves from disk (``ui.source``), and only the files named here.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

LABEL = "airflow-mlops-source"
VERSION = 1
MAX_ERRORS = 50
MAX_MESSAGE = 600
_LINE = re.compile(rf"^\[{LABEL}\]: <(.*)>$", re.MULTILINE)


def digest(text: str) -> str:
    """A short hash of a file's text (trailing whitespace aside: the DAG's docs keep the pipeline's
    YAML without it): the tab says when a file changed after the DAG was parsed."""
    return hashlib.sha256(text.rstrip().encode()).hexdigest()[:16]


def _file(path: Path, text: str | None) -> dict[str, Any]:
    return {"path": str(path), "sha": digest(text) if text is not None else None}


def record(pipeline: Path, text: str | None, defaults: Iterable[tuple[Path, str | None]], *,
           profile: str | None = None, profile_origin: str = "", errors: Iterable[Any] = ()) -> str:
    """The Markdown line for the DAG's ``doc_md``. ``defaults``: (path, text) of each
    ``_defaults.yaml`` that applied, root first; ``profile_origin``: who chose ``profile``
    (``ActiveProfile.origin``); ``errors``: the placeholder's ``SpecIssue``s."""
    data = {
        "v": VERSION,
        "file": _file(pipeline, text),
        "defaults": [_file(path, body) for path, body in defaults],
        "profile": profile,
        "profile_origin": profile_origin,
        "errors": [{"file": str(Path(i.mark.file).resolve()) if i.mark else str(pipeline), "line": i.mark.line if i.mark else 1,
                    "column": i.mark.column if i.mark else 1, "field": i.field,
                    "message": _message(i)[:MAX_MESSAGE]}
                   for i in list(errors)[:MAX_ERRORS]],
    }
    # No '<', '>' or line break in the destination: JSON's own escapes keep it one valid line.
    body = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")
    return f"[{LABEL}]: <{body}>"


def _message(issue: Any) -> str:
    return issue.message if getattr(issue, "profile", None) is None else \
        f"{issue.message} (with profile '{issue.profile}')"


def read(doc_md: str | None) -> dict[str, Any] | None:
    """The record in a DAG's ``doc_md``, or None (a DAG not built by this factory, or by a version
    before the record existed)."""
    match = _LINE.search(doc_md or "")
    if not match:
        return None
    try:
        data = json.loads(match.group(1))
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("v") == VERSION else None
