"""Retention of files and folders under a root: plan by one lstat per entry, apply through
directory file descriptors.

Nothing outside the policy's root is ever touched. The scan never follows a symlink (a matching
link is an item itself and is removed as a link); deletion goes through directory file descriptors
opened with ``O_NOFOLLOW`` from the root, so a folder swapped for a symlink between plan and apply
is refused rather than followed. Vanished entries and permission errors are reported as skipped,
never fatal.
"""

from __future__ import annotations

import os
import stat

from airflow_mlops.lifecycle.paths import Matcher, RootFd, ScanReport, expand_path, walk_dirs, within
from airflow_mlops.lifecycle.retention._model import Candidate, Item, PolicyPlan
from airflow_mlops.lifecycle.retention._selection import select, select_rows
from airflow_mlops.lifecycle.specs import FilesPolicy


def _resolve_root(policy: FilesPolicy, pp: PolicyPlan) -> str | None:
    root = os.path.realpath(expand_path(policy.root))
    pp.root = root
    if not os.path.isdir(root):
        if not policy.missing_ok:  # a typo'd root would otherwise delete nothing, and nobody would know
            from airflow_mlops._core.errors import StageFailed

            what = "is not a folder" if os.path.lexists(root) else "does not exist"
            raise StageFailed(f"retention policy '{pp.name}': the root {root} {what}, so nothing was planned and "
                              "nothing was deleted by any policy; correct the root, or set missing_ok: true for a "
                              "folder that may appear later")
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


def apply_files(pp: PolicyPlan) -> None:  # noqa: C901
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
