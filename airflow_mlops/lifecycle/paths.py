"""Filesystem helpers shared by retention and backup: path expansion, include/exclude patterns, a
tree scan that never follows symlinks and tolerates files vanishing or being unreadable, and
deletion through directory file descriptors so nothing outside a root is ever touched."""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterator

from airflow_mlops._core.paths import expand_env


def expand_path(value: str) -> str:
    """``~`` and ``$VAR``/``${VAR}`` expanded (``_core.paths.expand_env``: the rule the stages'
    paths follow too), then made absolute and normalised (not resolved)."""
    s = expand_env(value[len("file://"):] if value.startswith("file://") else value)
    if not os.path.isabs(s):
        raise ValueError(f"path {value!r} is not absolute once expanded ({s!r})")
    s = os.path.normpath(s)
    if s == "/":
        raise ValueError(f"refusing the filesystem root as a lifecycle path ({value!r})")
    return s


class Matcher:
    """Include/exclude shell patterns. A pattern without '/' matches an entry's name at any depth;
    one with '/' matches its path relative to the root (where ``*`` may cross folders)."""

    def __init__(self, include: list[str], exclude: list[str] = ()) -> None:
        self._inc_name, self._inc_path = self._compile(include)
        self._exc_name, self._exc_path = self._compile(exclude)
        self.everything = list(include) in (["*"], ["**"]) and not exclude

    @staticmethod
    def _compile(patterns) -> tuple[re.Pattern | None, re.Pattern | None]:
        names = [fnmatch.translate(p) for p in patterns if "/" not in p.strip("/")]
        paths = [fnmatch.translate(p.strip("/")) for p in patterns if "/" in p.strip("/")]
        join = lambda parts: re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None  # noqa: E731
        return join(names), join(paths)

    def excluded(self, rel: str, name: str) -> bool:
        return bool((self._exc_name and self._exc_name.match(name)) or (self._exc_path and self._exc_path.match(rel)))

    def included(self, rel: str, name: str) -> bool:
        if self.everything:
            return True
        hit = (self._inc_name and self._inc_name.match(name)) or (self._inc_path and self._inc_path.match(rel))
        return bool(hit) and not self.excluded(rel, name)


@dataclass
class Skipped:
    rel: str
    reason: str


@dataclass
class ScanReport:
    """Entries that could not be taken into account, and why (vanished, permission denied…)."""

    skipped: list[Skipped] = field(default_factory=list)

    def skip(self, rel: str, exc: BaseException | str) -> None:
        if isinstance(exc, FileNotFoundError):
            reason = "vanished during the scan"
        elif isinstance(exc, PermissionError):
            reason = "permission denied"
        elif isinstance(exc, BaseException):
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = exc
        self.skipped.append(Skipped(rel or ".", reason))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def walk_dirs(root: str, matcher: Matcher, report: ScanReport, *, max_depth: int | None = None,  # noqa: C901
              on_dir: Callable[[str, int], bool] | None = None) -> Iterator[tuple[str, str, list[os.DirEntry]]]:
    """Yield ``(rel_dir, abs_dir, non-directory entries)`` for every folder under ``root``,
    top-down, never entering a symlinked folder. Folders an exclude pattern matches are pruned.
    ``on_dir(rel, depth)`` returning False prunes a folder too (it is then not entered).

    Each folder is opened with ``O_NOFOLLOW`` (one swapped for a symlink since it was listed is
    refused) and listed through that descriptor, so ``entry.stat()`` is an ``fstatat`` relative to
    it: cheaper than a stat of the full path, and immune to a parent being swapped meanwhile. The
    entries are only valid until the caller asks for the next folder, and their ``.path`` is the
    bare name: build absolute paths from ``abs_dir``.
    """
    stack: list[tuple[str, str, int]] = [("", root, 0)]
    while stack:
        rel, path, depth = stack.pop()
        try:
            fd = os.open(path, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError) as exc:
            if not rel:
                raise  # the root itself missing is the caller's business
            report.skip(rel, FileNotFoundError() if isinstance(exc, NotADirectoryError) else exc)
            continue
        except OSError as exc:  # PermissionError, ELOOP (became a symlink), EIO…
            if not rel:
                raise
            report.skip(rel, exc)
            continue
        subdirs: list[tuple[str, str, int]] = []
        try:
            files: list[os.DirEntry] = []
            try:
                with os.scandir(fd) as it:
                    for de in it:
                        name = de.name
                        try:
                            is_dir = de.is_dir(follow_symlinks=False)
                        except OSError as exc:
                            report.skip(f"{rel}/{name}" if rel else name, exc)
                            continue
                        if is_dir:
                            r = f"{rel}/{name}" if rel else name
                            if matcher.excluded(r, name):
                                continue
                            if max_depth is not None and depth + 1 > max_depth:
                                continue
                            if on_dir is not None and not on_dir(r, depth + 1):
                                continue
                            subdirs.append((r, f"{path}/{name}", depth + 1))
                        else:
                            files.append(de)
            except OSError as exc:  # e.g. EIO in the middle of a listing
                report.skip(rel, exc)
                continue
            yield rel, path, files
        finally:
            os.close(fd)
        stack.extend(reversed(subdirs))


def within(root: str, path: str) -> bool:
    """Whether ``path``'s real location is ``root`` or below it (``root`` already resolved)."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip("/") + "/")


class RootFd:
    """Deletes under one root through directory file descriptors, opening every folder on the way
    with ``O_NOFOLLOW``: a folder swapped for a symlink after the scan makes the open fail
    (ELOOP/ENOTDIR) instead of leading outside the root."""

    _FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

    def __init__(self, root: str, max_open: int = 128) -> None:
        self.root = root
        self.fd = os.open(root, self._FLAGS)
        self._fds: dict[str, int] = {}
        self._max_open = max_open

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self.fd)

    def __enter__(self) -> "RootFd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def dir_fd(self, rel_dir: str) -> int:
        if not rel_dir:
            return self.fd
        fd = self._fds.get(rel_dir)
        if fd is not None:
            return fd
        parent, _, name = rel_dir.rpartition("/")
        pfd = self.dir_fd(parent)
        if name in ("", ".", ".."):
            raise OSError(errno.EINVAL, f"bad path component in {rel_dir!r}")
        fd = os.open(name, self._FLAGS, dir_fd=pfd)
        if len(self._fds) >= self._max_open:
            # Never close an ancestor still needed: drop those not on this path.
            for key in [k for k in self._fds if not rel_dir.startswith(k + "/")]:
                os.close(self._fds.pop(key))
        self._fds[rel_dir] = fd
        return fd

    def lstat(self, rel: str) -> os.stat_result:
        parent, _, name = rel.rpartition("/")
        return os.stat(name, dir_fd=self.dir_fd(parent), follow_symlinks=False)

    def unlink(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        os.unlink(name, dir_fd=self.dir_fd(parent))

    def rmtree(self, rel: str) -> None:
        """Remove a folder and everything in it; symlinks inside are removed as links."""
        import shutil

        parent, _, name = rel.rpartition("/")
        pfd = self.dir_fd(parent)
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "no longer a folder", rel)
        # Drop cached descriptors inside the tree being removed.
        for key in [k for k in self._fds if k == rel or k.startswith(rel + "/")]:
            os.close(self._fds.pop(key))
        shutil.rmtree(name, dir_fd=pfd)
