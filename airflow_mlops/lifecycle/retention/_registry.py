"""Reading an MLflow store for retention: the client, paging, and the registry's models,
versions and aliases (which aliases a policy must not delete the versions of)."""

from __future__ import annotations

import fnmatch
from typing import Any

from airflow_mlops._core.mlflow import SERVING_ALIASES_TAG
from airflow_mlops.lifecycle.specs import SERVING_ALIASES

PAGE = 1000  # results per search request


def open_client(uri: str) -> Any:
    """A read-only MLflow client of the store at ``uri``; raises StoreNotFound for a missing store."""
    from airflow_mlops._core.mlflow import read_only_client

    return read_only_client(uri)  # a mistyped store path is an error, never a new empty store


def pages(fetch) -> list:
    """Every result of a paged search: ``fetch(page_token)`` until no token comes back."""
    out, token = [], None
    while True:
        page = fetch(token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def matches(name: str, patterns: list[str]) -> bool:
    """Whether ``name`` matches one of the shell-style ``patterns`` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class Registry:
    """Registered models, their versions and aliases, read once per plan."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.models = pages(lambda t: client.search_registered_models(max_results=PAGE, page_token=t))
        self._versions: dict[str, list] = {}

    def versions(self, name: str) -> list:
        if name not in self._versions:
            quoted = name.replace("'", "\\'")
            self._versions[name] = pages(
                lambda t: self.client.search_model_versions(f"name = '{quoted}'", max_results=PAGE, page_token=t)
            )
        return self._versions[name]

    def aliases(self, model: Any) -> dict[str, list[str]]:
        """version → aliases (from the registered model, which always carries them)."""
        out: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            out.setdefault(str(version), []).append(alias)
        return out


def guarded_aliases(model: Any, pol: Any) -> set[str]:
    """The aliases of ``model`` (a RegisteredModel) whose versions ``pol`` must not delete: the
    serving ones (``SERVING_ALIASES`` and those recorded in the model's ``SERVING_ALIASES_TAG``)
    less those the policy names in ``allow_deleting_aliases``, plus its ``protected_aliases``."""
    recorded = (getattr(model, "tags", None) or {}).get(SERVING_ALIASES_TAG, "")
    serving = set(SERVING_ALIASES) | {a.strip() for a in recorded.split(",") if a.strip()}
    return (serving - set(pol.allow_deleting_aliases)) | set(pol.protected_aliases)
