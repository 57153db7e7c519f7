"""Kubernetes object names and label values, made in one place for every object the package
creates or renders (stage pods, GPU training pods, model-server Deployments/Services/autoscalers,
``airflow-mlops manifests``).

The API server refuses a label value longer than 63 characters or not alphanumeric at both ends
(``[-_.A-Za-z0-9]`` inside), and an object name that is not a DNS-1123 label (a Service's must
also start with a letter). Pipeline ids may be long and hold ``_`` and ``.``, stage names may end
in ``_``: cutting them at 63 characters can end a value in ``_``, and two ids that differ only
past the cut would share a name. So a value that had to change gets a short hash of the
original, which keeps different originals apart.

Airflow's cncf-kubernetes provider has ``make_safe_label_value`` (the same idea for labels), but
for a value with no alphanumeric character it returns ``-<hash>``, which the API server refuses,
and it imports the Kubernetes client; ``add_unique_suffix`` appends a *random* suffix, while a
Deployment must keep its name from one run to the next. Pure ``re``/``hashlib``: cheap to import.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL_VALUE = 63
MAX_NAME = 63
# KubernetesPodOperator cuts a pod name to 54 characters before adding its random "-xxxxxxxx".
MAX_POD_NAME = 54
LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HASH = 8


def _digest(original: str) -> str:
    return hashlib.sha256(original.encode()).hexdigest()[:_HASH]


def _with_digest(core: str, original: str, max_len: int) -> str:
    """``core`` cut to leave room for ``-<hash of original>``, alphanumeric at both ends."""
    core = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", core[: max_len - _HASH - 1])
    return f"{core}-{_digest(original)}" if core else _digest(original)


def label_value(value: str) -> str:
    """``value`` itself when it is a valid label value; else its valid characters (others
    become ``-``), cut and trimmed to alphanumeric ends, plus a hash of ``value``."""
    value = str(value)
    if len(value) <= MAX_LABEL_VALUE and LABEL_VALUE.match(value):
        return value
    return _with_digest(re.sub(r"[^-A-Za-z0-9_.]+", "-", value), value, MAX_LABEL_VALUE)


def object_name(*parts: str, max_len: int = MAX_NAME) -> str:
    """A DNS-1035 name from ``parts`` joined by ``-``: lower case, ``[-a-z0-9]``, starting with a
    letter (``mlops-`` is put in front of a leading digit); cut to ``max_len`` with a hash of the
    original when it is longer, so that names which differ only past the cut stay apart."""
    raw = "-".join(str(p) for p in parts if p)
    core = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-") or "mlops"
    if not core[0].isalpha():
        core = f"mlops-{core}"
    if len(core) <= max_len:
        return core
    return _with_digest(core, raw, max_len)


def pod_labels(pipeline_id: str, stage_name: str | None = None) -> dict[str, str]:
    """The labels that mark a pipeline's pods; the NetworkPolicy of ``airflow-mlops manifests``
    selects them by the pipeline's, so both come from here."""
    labels = {"airflow-mlops/pipeline": label_value(pipeline_id)}
    if stage_name is not None:
        labels["airflow-mlops/stage"] = label_value(stage_name)
    return labels


def label_problem(key: str, value: str) -> str | None:
    """Why ``key: value`` cannot be a Kubernetes label (written by hand in a YAML), or None."""
    prefix, slash, name = str(key).rpartition("/")
    if not (_LABEL_NAME.match(name) and len(name) <= 63) or (slash and not (
            len(prefix) <= 253 and _DNS_SUBDOMAIN.match(prefix))):
        return (f"label key {key!r} is not valid: an optional DNS prefix and '/', then at most 63 characters of "
                "letters, digits, '-', '_' or '.', alphanumeric at both ends")
    if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or not LABEL_VALUE.match(value):
        return (f"label value {value!r} of {key!r} is not valid: at most 63 characters of letters, digits, '-', '_' "
                f"or '.', alphanumeric at both ends (e.g. {label_value(str(value))!r})")
    return None


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def name_problem(value: str, what: str, *, label: bool = False) -> str | None:
    """Why the API server would refuse ``value`` as the name of ``what`` (a namespace: a DNS-1123
    label, ``label=True``; a Secret, ServiceAccount...: a DNS-1123 subdomain), or None. The
    suggestion is the value lower-cased with other characters as ``-``."""
    value = str(value)
    if label:
        if len(value) <= 63 and _DNS_LABEL.match(value):
            return None
        rule = "at most 63 characters of lower-case letters, digits and '-', alphanumeric at both ends"
    else:
        if len(value) <= 253 and _DNS_SUBDOMAIN.match(value):
            return None
        rule = "at most 253 characters of lower-case letters, digits, '-' and '.', alphanumeric at both ends"
    fixed = re.sub(r"[^a-z0-9.-]+" if not label else r"[^a-z0-9-]+", "-", value.lower()).strip("-.")
    return f"{value!r} is not a valid {what} name for Kubernetes: {rule}" + (f" (e.g. {fixed!r})" if fixed else "")


def safe_run_key(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or "run"


def dag_id_part(text: str) -> str:
    """``text`` with every character a DAG id cannot hold replaced by ``_``."""
    return re.sub(r"[^0-9A-Za-z_.-]", "_", text)


def group_id(text: str) -> str:
    """A task group id like ``text``: runs of other characters (spaces, dots) as one ``_``."""
    return re.sub(r"[^\w-]+", "_", str(text)).strip("_") or "stage"
