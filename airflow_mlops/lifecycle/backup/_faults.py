"""A backup target failing under a backup or a restore, told one way: ``DependencyFailed`` naming
the target, what was running, which snapshots are still good, what to do and whether a retry can
help.

Retry decision: an unreachable or erroring target (I/O error, connection refused, timed out, a
remote store's 5xx) may pass on retry; a full or read-only target, refused credentials, a damaged
manifest and a missing snapshot will not (a person has to act first).
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from airflow_mlops._core.errors import DependencyFailed
from airflow_mlops._core.units import human_bytes
from airflow_mlops.lifecycle.backup._manifest import BackupError
from airflow_mlops.lifecycle.backup._targets import TIMEOUT_ENV, Target, TargetIOError, request_bound_s

WHAT = "backup target"
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM}


def _root_error(exc: BaseException) -> BaseException:
    return exc.error if isinstance(exc, TargetIOError) else exc


def kind_of(exc: BaseException) -> str:
    """``full``, ``read-only``, ``denied``, ``missing``, ``timed out`` or ``unreachable`` (anything
    else: an I/O error, a lost connection, a remote store's own error)."""
    err = _root_error(exc)
    code = getattr(err, "errno", None)
    if code in _FULL:
        return "full"
    if code == errno.EROFS:
        return "read-only"
    if isinstance(err, PermissionError) or code in _DENIED:
        return "denied"
    if isinstance(err, FileNotFoundError) or code == errno.ENOENT:
        return "missing"
    if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__ or code == errno.ETIMEDOUT:
        return "timed out"
    return "unreachable"


def _how(exc: BaseException) -> str:
    """How an unreachable or slow target failed, in a few words."""
    err = _root_error(exc)
    if kind_of(exc) == "timed out":
        return f"timed out (within ${TIMEOUT_ENV}={request_bound_s():g} s per request)"
    return f"failed ({type(err).__name__}: {err})"


def good_snapshots(target: Target, set_name: str, *, skip: str | None = None) -> tuple[list[str], list[str]]:
    """(snapshots of the set whose manifest reads and verifies, newest last; those whose manifest
    is damaged). ``skip``: a snapshot left out of both. Never raises (an unreadable target: both empty)."""
    good: list[str] = []
    damaged: list[str] = []
    try:
        snaps = target.snapshots(set_name)
    except Exception:  # noqa: BLE001 - this only describes what is kept
        return good, damaged
    for snap in snaps:
        if snap == skip:
            continue
        try:
            target.read_manifest(set_name, snap)
        except Exception:  # noqa: BLE001
            damaged.append(snap)
        else:
            good.append(snap)
    return good, damaged


def kept_snapshots(target: Target, set_name: str, *, skip: str | None = None, check_objects: bool = False) -> str:
    """The ``kept:`` line: which snapshots of the set are intact, and the newest good one
    (with ``check_objects``, also that every object it needs is present)."""
    good, damaged = good_snapshots(target, set_name, skip=skip)
    if not good:
        text = f"no intact snapshot of set '{set_name}' at this target"
        return text + (f" (damaged manifests: {', '.join(damaged)})" if damaged else "")
    newest = good[-1]
    text = f"{len(good)} intact snapshot(s) of set '{set_name}'; the newest good one is {newest}"
    if check_objects:
        try:
            needed = target.read_manifest(set_name, newest).digests()
            absent = sum(1 for d in needed if not target.has(d))
        except Exception:  # noqa: BLE001
            absent = -1
        if absent == 0:
            text += f" (manifest sealed and all {len(needed)} stored object(s) present: restorable)"
        elif absent > 0:
            text += f" ({absent} of its stored objects are missing: run verify_snapshot on it)"
    if damaged:
        text += f"; damaged manifests: {', '.join(damaged)}"
    return text


def backup_failed(exc: BaseException, target: Target, set_name: str, *, snapshot: str, path: str | None,
                  needed_bytes: int, needed_files: int, free_bytes: int | None, removed: str) -> DependencyFailed:
    """The error of a backup whose target failed while storing ``path`` for ``snapshot``.
    ``needed_*``: what this snapshot had to store (new or changed files: an upper bound, stored
    content is shared); ``free_bytes``: free space on the target when the backup began (local
    targets); ``removed``: what became of the objects this run stored."""
    kind = kind_of(exc)
    err = _root_error(exc)
    during = f"backup of set '{set_name}' (snapshot {snapshot}" + (f", writing {path})" if path else ")")
    kept = (f"no snapshot {snapshot} was published; " + kept_snapshots(target, set_name)
            + f". {removed}")
    if kind == "full":
        free = f"; {human_bytes(free_bytes)} was free when it began" if free_bytes is not None else ""
        failure = (f"ran out of space ({errno.errorcode.get(getattr(err, 'errno', 0), 'ENOSPC')}): this snapshot "
                   f"needed up to {human_bytes(needed_bytes)} for {needed_files} new or changed file(s){free}")
        action = ("free space on the target (or lower keep_last so older snapshots are pruned), then rerun: "
                  "the next backup stores only what is not stored yet")
        return DependencyFailed(WHAT, address=target.uri, failure=failure, during=during, kept=kept,
                                action=action, retryable=False)
    if kind in ("read-only", "denied"):
        failure = "is read-only" if kind == "read-only" else "refused the write (permission denied)"
        action = ("make the target writable (remount it read-write, fix its permissions or the bucket's "
                  "credentials) or point the backup at another target, then rerun")
        return DependencyFailed(WHAT, address=target.uri, failure=f"{failure}: {err}", during=during, kept=kept,
                                action=action, retryable=False)
    if kind == "missing":
        return DependencyFailed(WHAT, address=target.uri, failure=f"vanished while it was written: {err}",
                                during=during, kept=kept, retryable=False,
                                action="check that the target is mounted / the bucket exists, then rerun")
    return DependencyFailed(WHAT, address=target.uri, failure=_how(exc), during=during,
                            kept=kept, retryable=True,
                            action="check that the target is reachable; Airflow's retry takes a new snapshot")


def read_failed(exc: BaseException, target: Target, set_name: str, during: str) -> DependencyFailed:
    """The error of a restore or verify that could not read the target (not a damaged manifest)."""
    kind = kind_of(exc)
    err = _root_error(exc)
    if kind == "denied":
        return DependencyFailed(WHAT, address=target.uri, failure=f"refused the read (permission denied): {err}",
                                during=during, retryable=False,
                                action="fix the target's permissions or credentials, then rerun")
    if kind == "missing":
        return DependencyFailed(WHAT, address=target.uri, failure=f"has vanished: {err}", during=during,
                                retryable=False, action="check that the target is mounted / the bucket exists")
    return DependencyFailed(WHAT, address=target.uri, failure=_how(exc),
                            during=during, retryable=True, kept="nothing at the target was changed by the restore",
                            action="check that the target is reachable; Airflow's retry restores again")


def no_snapshot(target: Target, set_name: str, snapshot: str | None, during: str, exists: bool) -> DependencyFailed:
    """A restore of a snapshot whose manifest (its metadata) is not there, or of a set with none."""
    if not exists:
        return DependencyFailed(WHAT, address=target.uri, failure="does not exist", during=during, retryable=False,
                                action="check the target path or URL (is the volume mounted, the bucket right?)")
    good, _damaged = good_snapshots(target, set_name)
    if snapshot is None:
        failure = f"holds no snapshot of set '{set_name}'"
    else:
        failure = (f"has no manifest for snapshot {set_name}/{snapshot}: its metadata is missing, so it cannot be "
                   "restored")
    action = (f"restore another snapshot (snapshot='{good[-1]}' is the newest good one)" if good
              else "take a backup first, or check the target and the set name")
    return DependencyFailed(WHAT, address=target.uri, failure=failure, during=during,
                            kept=kept_snapshots(target, set_name, check_objects=bool(good)),
                            action=action, retryable=False)


def damaged_manifest(exc: BackupError, target: Target, set_name: str, snapshot: str, during: str) -> DependencyFailed:
    """A restore or verify of a snapshot whose manifest is damaged."""
    reason = getattr(exc, "reason", str(exc))
    good, _damaged = good_snapshots(target, set_name, skip=snapshot)
    action = (f"restore the newest good snapshot instead (snapshot='{good[-1]}'); "
              f"snapshot {snapshot} cannot be trusted: delete its manifest once it is no longer needed"
              if good else f"no other snapshot of set '{set_name}' is intact: take a new backup")
    return DependencyFailed(WHAT, address=target.uri,
                            failure=f"holds a damaged manifest for snapshot {set_name}/{snapshot} ({reason})",
                            during=during, kept=kept_snapshots(target, set_name, skip=snapshot, check_objects=True),
                            action=action, retryable=False)


def report(exc: DependencyFailed, logger: logging.Logger | Any) -> DependencyFailed:
    """Log the message (first in the task log, before any traceback) and hand the error back."""
    logger.error("%s", exc)
    return exc
