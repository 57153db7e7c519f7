"""Telling people what retention plans and did: the log lines of a run, byte counts for humans,
items as plain dicts. (The JSON summary a run returns is ``Plan.summary`` in ``model``.)"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Iterable

from airflow_mlops._core.units import human_bytes
from airflow_mlops.lifecycle.retention._model import Item, Plan

LOGGED = 1000  # items logged one by one per policy; the rest are counted


def as_dicts(items: Iterable[Item]) -> list[dict[str, Any]]:
    """Each item as ``{kind, id, size, mtime, reason}`` (JSON-able)."""
    return [{k: v for k, v in asdict(i).items() if k not in ("check", "uri")} for i in items]


def log_plan(p: Plan, dry_run: bool, logger: logging.Logger) -> None:
    """One line per policy, then one per planned item (the first ``LOGGED``)."""
    verb = "would delete" if dry_run else "deleting"
    for pp in p.policies:
        logger.info("Policy '%s' (%s): %d candidates, %s %d items (%s)", pp.name, pp.kind, pp.scanned, verb,
                    len(pp.items), human_bytes(pp.bytes))
        for item in pp.items[:LOGGED]:
            logger.info("  %s %s (%s, %s)", verb, item.id, item.reason, human_bytes(item.size))
        if len(pp.items) > LOGGED:
            logger.info("  … and %d more", len(pp.items) - LOGGED)


def log_outcome(p: Plan, summary: dict[str, Any], logger: logging.Logger) -> None:
    """The skipped items (first 100 per policy), the notes, and a closing total from ``summary``."""
    dry_run = summary["dry_run"]
    for pp in p.policies:
        for s in pp.skipped[:100]:
            logger.warning("  skipped %s: %s", s["item"], s["reason"])
        for note in pp.notes:
            logger.info("  %s", note)
    logger.info("Retention %s: %d items, %s%s; %d skipped", "dry run" if dry_run else "done",
                summary["items"], human_bytes(summary["bytes"]), " would be freed" if dry_run else " freed",
                summary["skipped"])
