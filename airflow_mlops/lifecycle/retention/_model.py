"""What a retention plan holds: the items each policy deletes, and the summary of a run.

Shapes: an ``Item`` is one thing to delete (a file, link or folder by absolute path, or an MLflow
entity by URI); a ``PolicyPlan`` is one policy's items, protected ids, notes and skipped entries
(``{item, reason}``); a ``Plan`` is every policy's, plus whether it has been applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_mlops.lifecycle.specs import RetentionSpec

LISTED = 200  # items listed in the summary (XCom); the rest are counted


@dataclass(slots=True)
class Item:
    """One thing a policy deletes."""

    kind: str  # file | link | directory | mlflow_run | logged_model | model_version
    id: str  # absolute path, 'runs:/<id>', 'models:/<name>/<version>', 'logged-models:/<id>'
    size: int  # bytes (files and folders; 0 for MLflow entities)
    mtime: float  # seconds since the epoch: file mtime, run end, version creation
    reason: str  # max_age | keep_last | max_total_size
    check: tuple = ()  # what apply re-verifies before deleting (files: rel path, inode, size, mtime_ns)
    uri: str | None = None  # MLflow entities: their artifact location


@dataclass
class PolicyPlan:
    index: int
    name: str
    kind: str
    scanned: int = 0  # candidates considered (after include/exclude)
    kept: int = 0
    items: list[Item] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)  # would have been selected, but protected
    aliased: list[str] = field(default_factory=list)  # selected although an alias points at it (allowed)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {item, reason}
    notes: list[str] = field(default_factory=list)
    root: str | None = None  # files: the resolved root
    # Filled by apply:
    deleted: list[Item] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.items)


@dataclass
class Plan:
    spec: RetentionSpec
    policies: list[PolicyPlan]
    now: float
    applied: bool = False

    @property
    def items(self) -> list[Item]:
        return [i for p in self.policies for i in p.items]

    @property
    def deleted(self) -> list[Item]:
        return [i for p in self.policies for i in p.deleted]

    def summary(self) -> dict[str, Any]:
        """JSON-able: counts and bytes per policy and in total, the first items by id, skipped ones."""
        dry = not self.applied
        done = self.items if dry else self.deleted
        policies = []
        for p in self.policies:
            these = p.items if dry else p.deleted
            entry: dict[str, Any] = {
                "name": p.name, "kind": p.kind, "scanned": p.scanned,
                "planned_items": len(p.items), "planned_bytes": p.bytes,
                "items": len(these), "bytes": sum(i.size for i in these),
                "protected": p.protected[:LISTED], "skipped": p.skipped[:LISTED], "skipped_count": len(p.skipped),
            }
            if p.aliased:
                entry["aliased"] = p.aliased
            if p.root:
                entry["root"] = p.root
            if p.notes:
                entry["notes"] = p.notes
            policies.append(entry)
        ids = [i.id for i in done]
        return {
            "dry_run": dry,
            "items": len(done),
            "bytes": sum(i.size for i in done),
            "planned_items": len(self.items),
            "skipped": sum(len(p.skipped) for p in self.policies),
            "deleted": ids[:LISTED],
            "deleted_truncated": max(0, len(ids) - LISTED),
            "policies": policies,
        }


@dataclass(slots=True)
class Candidate:
    """An item a policy may select; ``group`` ranks it among its peers (same parent folder,
    experiment or model), ``protected`` says why it may not be deleted (None: it may)."""

    item: Item
    group: Any = None
    protected: str | None = None
