"""The rules every policy kind shares: which of a set of candidates a policy selects (max_age,
keep_last, min_keep, max_total_size), and which it would have selected but may not (protected)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from airflow_mlops.lifecycle.retention._model import Candidate


def select_rows(rows: list[tuple], policy: Any, cutoff: float | None, budget: int | None = None) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:  # noqa: C901
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
