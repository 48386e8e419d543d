"""Benchmark: `gitqueue status` and `gitqueue html` on the full 29,022-package pkgsrc queue.

Imports ../shared/data/pkgsrc-presolve.xz, runs a virtual build (bench/virtual_build.py) of a
few thousand packages through the real protocol with eight workers, then times each command
as a new process: the first run with an empty cache (history read from the first commit) and
the following runs (only new commits read). Prints medians.

    python bench/view.py [--results N] [--runs N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT.parent / "shared" / "data" / "pkgsrc-presolve.xz"
sys.path.insert(0, str(ROOT / "bench"))

WORKERS = {f"w{i}": f for i, f in enumerate((1.0, 1.0, 1.5, 1.5, 2.0, 3.0, 4.0, 6.0), 1)}


def timed(args, env):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gitqueue", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gitqueue {' '.join(args)}: {proc.stderr.strip()}")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=4000, help="results in the history (default 4000)")
    ap.add_argument("--runs", type=int, default=5)
    opts = ap.parse_args()
    if not FULL.exists():
        raise SystemExit(f"{FULL} is absent: this benchmark needs the full pkgsrc scan")
    from gitqueue.admin import import_jobs, init_queue
    from gitqueue.importers import load_graph
    from gitqueue.queue import Queue

    from virtual_build import Clock, run

    with tempfile.TemporaryDirectory(prefix="gq-bench-view-") as tmp:
        url = os.path.join(tmp, "pkgsrc.git")
        clock = Clock(1_767_225_600.0)
        t0 = time.perf_counter()
        with Queue(url, os.path.join(tmp, "cache-admin"), clock=clock) as q:
            init_queue(q, "pkgsrc-29k", arch="x86_64", os_release="5.11", pkgsrc_branch="trunk", lease_ttl=7200)
            import_jobs(q, load_graph(str(FULL)), str(FULL))
        print(f"imported 29k jobs in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        with Queue(url, os.path.join(tmp, "cache-builders"), clock=clock) as q:
            n = run(q, clock, WORKERS, max_results=opts.results,
                    progress=lambda k: print(f"  {k} results ...", flush=True))
        print(f"virtual build: {n} results in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for name, args in (("status", ["status", "--queue", url]),
                           ("html", ["html", os.path.join(tmp, "site"), "--queue", url])):
            env = {**os.environ, "GITQUEUE_CACHE": os.path.join(tmp, f"cache-{name}")}
            cold = timed(args, env)
            warm = [timed(args, env) for _ in range(opts.runs)]
            rows.append((name, cold, statistics.median(warm)))
        size = os.path.getsize(os.path.join(tmp, "site", "index.html"))
    print(f"\n29,022 jobs, {n} results in the history; wall seconds, one process each")
    print(f"{'command':8} {'first run':>10} {'median of ' + str(opts.runs):>13}")
    for name, cold, warm in rows:
        print(f"{name:8} {cold:10.2f} {warm:13.2f}")
    print(f"index.html: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
