"""Retention of objects under an object-storage root (``root: s3://bucket/pipelines``): the same
rules as for local files (``_files``), planned from one listing of the prefix and applied object by
object, each re-checked (size and modification time) just before it is deleted.

An object store has no folders: a ``unit: directory`` item is every object under one prefix at
``depth`` below the root (its age is its newest object's, its size the sum), deleted object by
object. Nothing outside the root's prefix is ever listed or deleted.
"""

from __future__ import annotations

from typing import Any

from airflow_mlops.lifecycle.paths import Matcher
from airflow_mlops.lifecycle.retention._model import Candidate, Item, PolicyPlan
from airflow_mlops.lifecycle.retention._selection import select
from airflow_mlops.lifecycle.specs import FilesPolicy


def _objects(policy: FilesPolicy) -> tuple[Any, str, dict[str, dict[str, Any]]]:
    """``(filesystem, root path, {relative key: {"size", "mtime"}})`` of every object under the
    policy's root."""
    from airflow_mlops._core.storage import open_location

    root = open_location(policy.root.rstrip("/"), policy.conn_id, "the retention policy's conn_id")
    fs, base = root.fs, str(root.path).rstrip("/")
    found = fs.find(base, detail=True) if fs.exists(base) else {}
    objects = {}
    for key, info in found.items():
        if info.get("type") == "directory":
            continue
        modified = info.get("LastModified") or info.get("last_modified") or info.get("mtime")
        mtime = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
        objects[key[len(base):].lstrip("/")] = {"size": int(info.get("size") or 0), "mtime": mtime}
    return fs, base, objects


def _listing(policy: FilesPolicy, pp: PolicyPlan) -> tuple[Any, str, dict[str, dict[str, Any]]] | None:
    """``_objects`` for planning, or None for a root with no object (an error unless ``missing_ok``)."""
    pp.root = policy.root.rstrip("/")
    fs, base, objects = _objects(policy)
    if not objects:
        if not policy.missing_ok:
            from airflow_mlops._core.errors import StageFailed

            raise StageFailed(f"retention policy '{pp.name}': nothing exists under the root {policy.root}, so nothing "
                              "was planned and nothing was deleted by any policy; correct the root, or set "
                              "missing_ok: true for a prefix that may fill later")
        pp.notes.append(f"root {policy.root} holds no object: nothing to do")
        return None
    return fs, base, objects


def plan_objects(policy: FilesPolicy, pp: PolicyPlan, now: float) -> None:
    listed = _listing(policy, pp)
    if listed is None:
        return
    _fs, _base, objects = listed
    matcher = Matcher(policy.include, policy.exclude)
    by_parent = policy.group_by == "parent"
    cands: list[Candidate] = []
    if policy.unit == "file":
        for rel, info in sorted(objects.items()):
            if not matcher.included(rel, rel.rpartition("/")[2]):
                continue
            item = Item("file", f"{pp.root}/{rel}", info["size"], info["mtime"], "", (rel, info["size"], info["mtime"]))
            cands.append(Candidate(item, rel.rpartition("/")[0] if by_parent else None))
    else:
        folders: dict[str, list[str]] = {}
        for rel in objects:
            parts = rel.split("/")
            top = "/".join(parts[:policy.depth])
            if len(parts) > policy.depth and not matcher.excluded(top, top.rpartition("/")[2]):
                folders.setdefault("/".join(parts[:policy.depth]), []).append(rel)
        for prefix, keys in sorted(folders.items()):
            if not matcher.included(prefix, prefix.rpartition("/")[2]):
                continue
            size = sum(objects[k]["size"] for k in keys)
            newest = max(objects[k]["mtime"] for k in keys)
            check = (prefix, tuple(sorted((k, objects[k]["size"], objects[k]["mtime"]) for k in keys)))
            item = Item("directory", f"{pp.root}/{prefix}", size, newest, "", check)
            cands.append(Candidate(item, prefix.rpartition("/")[0] if by_parent else None))
    pp.scanned = len(cands)
    budget = int(policy.max_total_size) if policy.max_total_size is not None else None
    chosen, guarded = select(cands, policy, now, budget)
    pp.items = [c.item for c in chosen]
    pp.protected = [c.item.id for c in guarded]
    pp.kept = pp.scanned - len(pp.items)


def apply_objects(pp: PolicyPlan, policy: FilesPolicy) -> None:
    """Delete exactly the planned objects, each only if it still has the size and modification
    time it was planned with."""
    if not pp.items:
        return
    # Listed again as it is now: objects gone since planning are skipped as vanished, never an error.
    fs, base, objects = _objects(policy)
    for item in pp.items:
        if item.kind == "directory":
            _prefix, planned = item.check
            now = tuple(sorted((k, objects[k]["size"], objects[k]["mtime"]) for k, _s, _m in planned if k in objects))
            if now != planned:
                pp.skipped.append({"item": item.id, "reason": "changed since planned"})
                continue
            fs.rm([f"{base}/{k}" for k, _s, _m in planned])
        else:
            rel, size, mtime = item.check
            if objects.get(rel) != {"size": size, "mtime": mtime}:
                reason = "vanished before deletion" if rel not in objects else "changed since planned"
                pp.skipped.append({"item": item.id, "reason": reason})
                continue
            fs.rm(f"{base}/{rel}")
        pp.deleted.append(item)
