"""Backup benchmark: airflow-mlops BackupOperator's engine against ``rsync -a`` on the same tree.

Generates N files (default 10 000, ~1 GB in total, sizes spread around the mean, every file's
content unique so nothing is deduplicated away), all with mtimes an hour old (a tree at rest).
Then, for ``--repeats`` rounds, alternating which tool goes first:

* full: ``rsync -a src/ fresh-dir/`` against ``run_backup`` into a fresh repository;
* incremental: 1 % of the files rewritten (new content, same size, new mtime), then
  ``rsync -a src/ the-rsync-copy/`` against ``run_backup`` into the repository of the full run.

Both run with a warm page cache; ``sync`` runs (untimed) before each measurement so one tool's
dirty pages are not flushed on the other's clock. Neither fsyncs the data (rsync never does; the
backup fsyncs only its manifest). Our backup is timed in-process, as it runs inside an Airflow
worker; rsync's time includes its process start-up (a few ms). Our extra work: a SHA-256 of every
copied file and a manifest with a checksum per file.

Goals: full ≤ 1.3× rsync, incremental ≤ 1.0× rsync. Prints medians and ratios, MET / NOT MET.

    python benchmarks/backup_benchmark.py                    # 10 000 files, 1 GiB, 5 rounds
    python benchmarks/backup_benchmark.py --workdir /dev/shm --delete-each-round   # without the disk
    python benchmarks/backup_benchmark.py --files 1000 --total-mb 100 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airflow_mlops.lifecycle.backup import run_backup  # noqa: E402

GOAL_FULL, GOAL_INCREMENTAL = 1.3, 1.0


def make_tree(root: Path, files: int, total_bytes: int, seed: int = 1) -> list[Path]:
    rng = random.Random(seed)
    pool = os.urandom(8 << 20)
    mean = total_bytes / files
    # Sizes from a gamma distribution (shape 2) scaled to the requested total.
    raw = [rng.gammavariate(2.0, mean / 2.0) for _ in range(files)]
    scale = total_bytes / sum(raw)
    paths = []
    old = time.time() - 3600
    for i, r in enumerate(raw):
        size = max(32, int(r * scale))
        p = root / f"group{i % 20:02}" / f"sub{(i // 20) % 5}" / f"file{i:06}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        _write(p, pool, rng, size, i)
        os.utime(p, (old, old))
        paths.append(p)
    return paths


def _write(p: Path, pool: bytes, rng: random.Random, size: int, tag: int) -> None:
    header = f"{tag}:{rng.random()}\n".encode()
    body_len = max(0, size - len(header))
    out = bytearray(header)
    while body_len > 0:
        start = rng.randrange(0, len(pool) - 4096)
        take = min(body_len, len(pool) - start)
        out += pool[start:start + take]
        body_len -= take
    p.write_bytes(bytes(out))


def timed(fn) -> float:
    os.sync()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rsync(src: Path, dst: Path) -> None:
    subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--total-mb", type=int, default=1024)
    ap.add_argument("--changed-pct", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--workdir", default=None, help="where to build the trees (default: a temp folder); "
                    "/dev/shm measures without the disk")
    ap.add_argument("--delete-each-round", action="store_true",
                    help="delete each round's copies after it (saves space; on disks with online discard "
                         "the deletion may slow the next round)")
    args = ap.parse_args()
    if not shutil.which("rsync"):
        print("rsync is not installed (apt-get install -y rsync)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="backup-bench-", dir=args.workdir))
    try:
        src = work / "src"
        t = time.perf_counter()
        paths = make_tree(src, args.files, args.total_mb << 20)
        total = sum(p.stat().st_size for p in paths)
        print(f"tree: {len(paths)} files, {total / 2**20:.0f} MiB in {work}, generated in "
              f"{time.perf_counter() - t:.1f} s; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        rng = random.Random(7)
        pool = os.urandom(8 << 20)
        n_changed = max(1, round(len(paths) * args.changed_pct / 100))
        full_r, full_b, inc_r, inc_b = [], [], [], []
        for rep in range(args.repeats):
            rdst, bdst = work / f"rsync{rep}", work / f"repo{rep}"
            summary: dict = {}

            def ours() -> float:
                summary.clear()
                return timed(lambda: summary.update(run_backup({
                    "target": str(bdst), "workers": args.workers, "sources": [{"name": "data", "path": str(src)}]})))

            def theirs() -> float:
                return timed(lambda: rsync(src, rdst))

            # Alternate who goes first; trees of earlier rounds are kept until the end, so no
            # deletion (and its discard work) runs in the background of a measurement.
            if rep % 2 == 0:
                full_r.append(theirs())
                full_b.append(ours())
            else:
                full_b.append(ours())
                full_r.append(theirs())
            assert summary["copied_files"] == len(paths), summary
            # 1 % of the files rewritten: new content, same size, new mtime.
            for p in rng.sample(paths, n_changed):
                _write(p, pool, rng, p.stat().st_size, rng.randrange(10**9))
            if rep % 2 == 0:
                inc_r.append(theirs())
                inc_b.append(ours())
            else:
                inc_b.append(ours())
                inc_r.append(theirs())
            assert summary["copied_files"] == n_changed, summary
            print(f"  round {rep + 1}: full rsync {full_r[-1]:.2f} s, backup {full_b[-1]:.2f} s | "
                  f"incremental ({n_changed} files changed) rsync {inc_r[-1]:.3f} s, backup {inc_b[-1]:.3f} s",
                  flush=True)
            if args.delete_each_round:
                shutil.rmtree(rdst)
                shutil.rmtree(bdst)

        def report(label: str, ours: list[float], base: list[float], goal: float) -> bool:
            o, b = statistics.median(ours), statistics.median(base)
            ratio = o / b
            met = ratio <= goal
            print(f"{label:<12} backup {o:8.3f} s   rsync -a {b:8.3f} s   ratio {ratio:5.2f}x   "
                  f"goal <= {goal:.1f}x   {'MET' if met else 'NOT MET'}")
            return met

        print(f"medians of {args.repeats} round(s), {len(paths)} files, {total / 2**20:.0f} MiB, "
              f"{args.changed_pct:g} % changed:")
        ok = report("full", full_b, full_r, GOAL_FULL)
        ok &= report("incremental", inc_b, inc_r, GOAL_INCREMENTAL)
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
