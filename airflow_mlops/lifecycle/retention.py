"""Retention: decide what a set of policies deletes (``plan``), then delete exactly that (``apply``).

A dry run is ``plan`` alone; a real run is ``plan`` then ``apply`` of that same plan, so the dry
run lists exactly what the real run deletes. ``apply`` re-checks every item just before deleting
it and skips (and reports) anything that vanished, changed since it was planned, or became
protected in between — it never deletes an item the plan does not hold.

Files: nothing outside the policy's root is ever touched. The scan never follows a symlink (a
matching link is an item itself and is removed as a link); deletion goes through directory file
descriptors opened with ``O_NOFOLLOW`` from the root, so a folder swapped for a symlink between
plan and apply is refused rather than followed. Vanished entries and permission errors are
reported as skipped, never fatal.

MLflow: see ``retention_mlflow``. No MLflow import happens unless a policy needs it.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from airflow_mlops.lifecycle.paths import Matcher, RootFd, ScanReport, expand_path, walk_dirs, within
from airflow_mlops.lifecycle.specs import FilesPolicy, RetentionSpec

log = logging.getLogger(__name__)

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


# --- selection (shared by every kind) ---------------------------------------------------------------


@dataclass(slots=True)
class Candidate:
    item: Item
    group: Any = None
    protected: str | None = None  # why it may not be deleted


def select_rows(rows: list[tuple], policy: Any, cutoff: float | None, budget: int | None = None) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Apply a policy's rules to ``rows`` of ``(mtime, id, size, group, protected)``; ``cutoff`` is
    ``now - max_age`` in the rows' time unit. Returns ``(selected, protected-but-would-have-been-
    selected)``, each a list of ``(row index, reason)``.

    Within each group, newest first: the ``min_keep`` newest are never selected; then an item is
    selected if it is older than ``max_age`` or beyond the ``keep_last`` newest. Then, if a size
    budget is set, the oldest remaining unprotected items are selected until the rest fits.
    """
    chosen: list[tuple[int, str]] = []
    guarded: list[tuple[int, str]] = []
    keep_last, min_keep = policy.keep_last, policy.min_keep
    if keep_last is None and min_keep == 0 and budget is None:
        # Age alone needs no ordering: one pass.
        if cutoff is not None:
            for i, row in enumerate(rows):
                if row[0] < cutoff:
                    (guarded if row[4] else chosen).append((i, "max_age"))
        return chosen, guarded
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row[3]].append(i)
    floor: set[int] = set()
    for members in groups.values():
        members.sort(key=lambda i: (rows[i][0], rows[i][1]), reverse=True)
        for rank, i in enumerate(members):
            if rank < min_keep:
                floor.add(i)
                continue
            if cutoff is not None and rows[i][0] < cutoff:
                reason = "max_age"
            elif keep_last is not None and rank >= keep_last:
                reason = "keep_last"
            else:
                continue
            (guarded if rows[i][4] else chosen).append((i, reason))
    if budget is not None:
        picked = {i for i, _ in chosen}
        shielded = {i for i, _ in guarded}
        rest = [i for i in range(len(rows)) if i not in picked]
        total = sum(rows[i][2] for i in rest)
        for i in sorted(rest, key=lambda i: (rows[i][0], rows[i][1])):  # oldest first
            if total <= budget:
                break
            if i in floor:
                continue
            if rows[i][4]:
                if i not in shielded:
                    guarded.append((i, "max_total_size"))
                    shielded.add(i)
                continue
            chosen.append((i, "max_total_size"))
            total -= rows[i][2]
    return chosen, guarded


def select(cands: list[Candidate], policy: Any, now: float, budget: int | None = None) -> tuple[list[Candidate], list[Candidate]]:
    """``select_rows`` for Candidates (MLflow entities); sets each selected item's reason."""
    rows = [(c.item.mtime, c.item.id, c.item.size, c.group, c.protected) for c in cands]
    cutoff = now - policy.max_age.total_seconds() if policy.max_age is not None else None
    chosen, guarded = select_rows(rows, policy, cutoff, budget)
    for i, reason in chosen + guarded:
        cands[i].item.reason = reason
    out = sorted((cands[i] for i, _ in chosen), key=lambda c: c.item.id)
    return out, [cands[i] for i, _ in guarded]


# --- files -------------------------------------------------------------------------------------------------


def _resolve_root(policy: FilesPolicy, pp: PolicyPlan) -> str | None:
    root = os.path.realpath(expand_path(policy.root))
    pp.root = root
    if not os.path.isdir(root):
        pp.notes.append(f"root {root} does not exist or is not a folder: nothing to do")
        return None
    return root


def plan_files(policy: FilesPolicy, pp: PolicyPlan, now: float) -> None:
    root = _resolve_root(policy, pp)
    if root is None:
        return
    matcher = Matcher(policy.include, policy.exclude)
    report = ScanReport()
    by_parent = policy.group_by == "parent"
    budget = int(policy.max_total_size) if policy.max_total_size is not None else None
    if policy.unit == "file":
        rows, extra = _scan_rows(root, matcher, report, by_parent)
        cutoff = (now - policy.max_age.total_seconds()) * 1e9 if policy.max_age is not None else None
        chosen, guarded = select_rows(rows, policy, cutoff, budget)
        chosen.sort(key=lambda c: rows[c[0]][1])
        items = []
        for i, reason in chosen:
            mtime_ns, rel, size, _group, _prot = rows[i]
            ino, is_link = extra[i]
            items.append(Item("link" if is_link else "file", f"{root}/{rel}", size, mtime_ns / 1e9, reason,
                              (rel, ino, size, mtime_ns)))
        pp.items = items
        pp.protected = [f"{root}/{rows[i][1]}" for i, _ in guarded]
        pp.scanned = len(rows)
    else:
        cands: list[Candidate] = []
        for rel in _item_dirs(root, policy, matcher, report):
            measured = _measure_dir(root, rel, report)
            if measured is None:
                continue
            size, newest, ino, own_mtime = measured
            item = Item("directory", f"{root}/{rel}", size, newest / 1e9, "", (rel, ino, None, own_mtime))
            cands.append(Candidate(item, rel.rpartition("/")[0] if by_parent else None))
        pp.scanned = len(cands)
        chosen_c, guarded_c = select(cands, policy, now, budget)
        pp.items = [c.item for c in chosen_c]
        pp.protected = [c.item.id for c in guarded_c]
    pp.kept = pp.scanned - len(pp.items)
    pp.skipped = [{"item": f"{root}/{s.rel}" if s.rel != "." else root, "reason": s.reason} for s in report.skipped]


def _scan_rows(root: str, matcher: Matcher, report: ScanReport, by_parent: bool) -> tuple[list[tuple], list[tuple]]:
    """Every regular file and symlink the patterns include, as selection rows
    ``(mtime_ns, rel, size, group, None)`` plus ``(inode, is_link)`` beside them. Flat on purpose:
    this loop runs once per file (one lstat each, nothing followed)."""
    rows: list[tuple] = []
    extra: list[tuple] = []
    everything = matcher.everything
    S_IFMT, S_IFREG, S_IFLNK = 0o170000, stat.S_IFREG, stat.S_IFLNK
    for rel, path, entries in walk_dirs(root, matcher, report):
        if rel and not within(root, path):  # cannot happen without following links; refuse anyway
            report.skip(rel, "its folder resolves outside the root")
            continue
        prefix = rel + "/" if rel else ""
        group = rel if by_parent else None
        for de in entries:
            name = de.name
            if not everything and not matcher.included(prefix + name, name):
                continue
            try:
                st = de.stat(follow_symlinks=False)
            except OSError as exc:
                report.skip(prefix + name, exc)
                continue
            kind = st.st_mode & S_IFMT
            if kind == S_IFREG or kind == S_IFLNK:
                rows.append((st.st_mtime_ns, prefix + name, st.st_size, group, None))
                extra.append((st.st_ino, kind == S_IFLNK))
    return rows, extra


def _item_dirs(root: str, policy: FilesPolicy, matcher: Matcher, report: ScanReport) -> list[str]:
    found: list[str] = []

    def on_dir(rel: str, depth: int) -> bool:
        if depth == policy.depth:
            if matcher.included(rel, rel.rpartition("/")[2]):
                found.append(rel)
            return False  # an item folder is measured separately, not walked here
        return True

    for _ in walk_dirs(root, Matcher(["*"], policy.exclude), report, max_depth=policy.depth, on_dir=on_dir):
        pass
    return found


def _measure_dir(root: str, rel: str, report: ScanReport) -> tuple[int, int, int, int] | None:
    """(total bytes, newest mtime_ns of the files inside — the folder's own if it holds none —,
    inode, its own mtime_ns). Folder mtimes inside are ignored: copying or restoring a tree
    refreshes them without the content being new."""
    path = os.path.join(root, rel)
    try:
        st = os.lstat(path)
    except OSError as exc:
        report.skip(rel, exc)
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    size, newest = 0, None
    for sub_rel, _sub_path, entries in walk_dirs(path, Matcher(["*"]), report):
        for de in entries:
            try:
                s = de.stat(follow_symlinks=False)
            except OSError as exc:
                report.skip(f"{rel}/{sub_rel}/{de.name}" if sub_rel else f"{rel}/{de.name}", exc)
                continue
            size += s.st_size
            newest = s.st_mtime_ns if newest is None else max(newest, s.st_mtime_ns)
    return size, st.st_mtime_ns if newest is None else newest, st.st_ino, st.st_mtime_ns


def apply_files(pp: PolicyPlan) -> None:
    if not pp.items or pp.root is None:
        return
    if os.path.realpath(pp.root) != pp.root:
        pp.skipped.extend({"item": i.id, "reason": "the root changed since planning"} for i in pp.items)
        return
    skipped, deleted = pp.skipped, pp.deleted
    S_ISDIR = stat.S_ISDIR
    with RootFd(pp.root) as rf:
        current, fd = None, None
        for item in pp.items:  # sorted by path: one directory descriptor per folder
            rel, ino, size, mtime_ns = item.check
            parent, _, name = rel.rpartition("/")
            try:
                if parent != current:
                    current, fd = None, rf.dir_fd(parent)
                    current = parent
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if item.kind == "directory":
                    if not S_ISDIR(st.st_mode) or st.st_ino != ino or st.st_mtime_ns != mtime_ns:
                        skipped.append({"item": item.id, "reason": "changed since planned"})
                        continue
                    rf.rmtree(rel)
                    current = None  # rmtree may close cached descriptors
                else:
                    if st.st_ino != ino or st.st_mtime_ns != mtime_ns or st.st_size != size or S_ISDIR(st.st_mode):
                        skipped.append({"item": item.id, "reason": "changed since planned"})
                        continue
                    os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                skipped.append({"item": item.id, "reason": "vanished before deletion"})
                continue
            except PermissionError:
                skipped.append({"item": item.id, "reason": "permission denied"})
                continue
            except OSError as exc:  # ELOOP / ENOTDIR: a folder on the way became a symlink
                skipped.append({"item": item.id, "reason": f"not deleted, its path changed ({exc.strerror or exc})"})
                continue
            deleted.append(item)


# --- entry points ------------------------------------------------------------------------------------------


def _name(policy: Any) -> str:
    if policy.name:
        return policy.name
    if policy.kind == "files":
        return policy.root
    if policy.kind == "mlflow_runs":
        return "runs of " + ", ".join(policy.experiments)
    return "versions of " + ", ".join(policy.models)


def plan(spec: RetentionSpec | dict, *, now: float | None = None, tracking_uri: str | None = None) -> Plan:
    """What the policies would delete, right now. Nothing is changed."""
    spec = spec if isinstance(spec, RetentionSpec) else RetentionSpec.model_validate(spec)
    now = time.time() if now is None else now
    plans = [PolicyPlan(i, _name(p), p.kind) for i, p in enumerate(spec.policies)]
    mlflow_ones = [(pp, pol) for pp, pol in zip(plans, spec.policies) if pol.kind != "files"]
    for pp, pol in zip(plans, spec.policies):
        if pol.kind == "files":
            plan_files(pol, pp, now)
    if mlflow_ones:
        from airflow_mlops.lifecycle import retention_mlflow

        retention_mlflow.plan(mlflow_ones, _tracking_uri(spec, tracking_uri), now)
    return Plan(spec, plans, now)


def apply(p: Plan, *, tracking_uri: str | None = None) -> Plan:
    """Delete exactly the planned items (re-checked one by one); fills each policy's ``deleted``."""
    if p.applied:
        raise RuntimeError("this plan has already been applied")
    mlflow_ones = []
    for pp, pol in zip(p.policies, p.spec.policies):
        if pol.kind == "files":
            apply_files(pp)
        else:
            mlflow_ones.append((pp, pol))
    if mlflow_ones:
        from airflow_mlops.lifecycle import retention_mlflow

        retention_mlflow.apply(mlflow_ones, _tracking_uri(p.spec, tracking_uri))
    p.applied = True
    return p


def run_retention(spec: RetentionSpec | dict, *, tracking_uri: str | None = None, logger: logging.Logger | None = None) -> dict[str, Any]:
    """Plan, apply unless ``dry_run``, log what happened and return the summary."""
    spec = spec if isinstance(spec, RetentionSpec) else RetentionSpec.model_validate(spec)
    logger = logger or log
    p = plan(spec, tracking_uri=tracking_uri)
    verb = "would delete" if spec.dry_run else "deleting"
    for pp in p.policies:
        logger.info("Policy '%s' (%s): %d candidates, %s %d items (%s)", pp.name, pp.kind, pp.scanned, verb,
                    len(pp.items), human_bytes(pp.bytes))
        for item in pp.items[:1000]:
            logger.info("  %s %s (%s, %s)", verb, item.id, item.reason, human_bytes(item.size))
        if len(pp.items) > 1000:
            logger.info("  … and %d more", len(pp.items) - 1000)
    if not spec.dry_run:
        apply(p, tracking_uri=tracking_uri)
    summary = p.summary()
    for pp in p.policies:
        for s in pp.skipped[:100]:
            logger.warning("  skipped %s: %s", s["item"], s["reason"])
        for note in pp.notes:
            logger.info("  %s", note)
    logger.info("Retention %s: %d items, %s%s; %d skipped", "dry run" if spec.dry_run else "done",
                summary["items"], human_bytes(summary["bytes"]), " would be freed" if spec.dry_run else " freed",
                summary["skipped"])
    return summary


def _tracking_uri(spec: RetentionSpec, given: str | None) -> str:
    from airflow_mlops.hooks.mlflow import checked_tracking_uri, resolve_target

    if given:
        return checked_tracking_uri(given, "the tracking_uri argument")
    return resolve_target(spec.mlflow, "retention").tracking_uri


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def as_dicts(items: Iterable[Item]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(i).items() if k not in ("check", "uri")} for i in items]
