"""Retention benchmark: RetentionCleanupOperator's engine against ``find -mtime +N -delete``.

Builds a tree of N files (default 100 000, in 1 000 folders), half of them 2N days old and half a
day old, then copies it (``cp -a``, mtimes kept) once per measurement. For ``--repeats`` rounds,
alternating which tool goes first:

* baseline: ``find ROOT -type f -mtime +N -delete``;
* ours: ``run_retention`` with one files policy ``{root, max_age: N days}``, in-process (as in an
  Airflow worker), which scans without following symlinks, plans, then deletes each planned file
  through O_NOFOLLOW directory descriptors after re-checking it is the file it planned.

Both must delete the same files (checked). Goal: ours ≤ 1.5× find. Prints medians, the ratio, MET / NOT MET.

    python benchmarks/retention_benchmark.py                 # 100 000 files, 3 rounds
    python benchmarks/retention_benchmark.py --files 10000 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airflow_mlops.lifecycle.retention import run_retention  # noqa: E402

GOAL = 1.5


def make_tree(root: Path, files: int, days: int) -> int:
    per_dir = 100
    old = time.time() - 2 * days * 86400
    new = time.time() - 86400
    n_old = 0
    for i in range(files):
        d = root / f"d{i // per_dir // 10:03}" / f"e{i // per_dir:04}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i:06}.ckpt"
        with open(p, "wb") as f:
            f.write(b"x" * (i % 7))
        t = old if i % 2 else new
        n_old += i % 2
        os.utime(p, (t, t))
    return n_old


def count(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=30, help="N in -mtime +N / max_age")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where to build the trees; /dev/shm measures without the disk")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="retention-bench-", dir=args.workdir))
    try:
        master = work / "master"
        t = time.perf_counter()
        n_old = make_tree(master, args.files, args.days)
        print(f"tree: {args.files} files in {args.files // 100} folders under {work}, {n_old} older than {args.days} "
              f"days, built in {time.perf_counter() - t:.1f} s; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
              flush=True)
        ours, base = [], []

        def run_find(root: Path) -> float:
            os.sync()
            t = time.perf_counter()
            subprocess.run(["find", str(root), "-type", "f", "-mtime", f"+{args.days}", "-delete"], check=True)
            return time.perf_counter() - t

        def run_ours(root: Path) -> float:
            os.sync()
            t = time.perf_counter()
            summary = run_retention({"policies": [{"kind": "files", "root": str(root), "max_age": f"{args.days}d"}]})
            elapsed = time.perf_counter() - t
            assert summary["items"] == n_old and summary["skipped"] == 0, summary
            return elapsed

        for rep in range(args.repeats):
            a, b = work / f"find{rep}", work / f"ours{rep}"
            subprocess.run(["cp", "-a", str(master), str(a)], check=True)
            subprocess.run(["cp", "-a", str(master), str(b)], check=True)
            if rep % 2 == 0:
                base.append(run_find(a))
                ours.append(run_ours(b))
            else:
                ours.append(run_ours(b))
                base.append(run_find(a))
            left_a, left_b = count(a), count(b)
            assert left_a == left_b == args.files - n_old, (left_a, left_b)
            print(f"  round {rep + 1}: find {base[-1]:.3f} s, retention {ours[-1]:.3f} s ({n_old} files deleted by each)",
                  flush=True)
            shutil.rmtree(a)
            shutil.rmtree(b)
        o, b = statistics.median(ours), statistics.median(base)
        ratio = o / b
        print(f"medians of {args.repeats} round(s), {args.files} files, {n_old} deleted:")
        print(f"retention {o:8.3f} s   find -mtime +{args.days} -delete {b:8.3f} s   ratio {ratio:5.2f}x   "
              f"goal <= {GOAL:.1f}x   {'MET' if ratio <= GOAL else 'NOT MET'}")
        return 0 if ratio <= GOAL else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
