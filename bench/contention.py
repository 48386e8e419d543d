"""Benchmark: throughput and rejected pushes of many `gitqueue work` processes on one queue.

N long-lived worker processes (1, 2, 4, 8, 16) with an instant build command (`true`) build a
wide synthetic graph on one local-path queue until it is finished. Two set-ups side by side:
every process with its own cache (as on N machines sharing a file system) and all processes
sharing one cache (N processes on one host, the default). Prints jobs completed per second
(claim + report) and the share of pushes rejected.

    python bench/contention.py [--jobs 800] [--workers 1,2,4,8,16]
"""

import argparse
import json
import os
import random
import re
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def graph(n, seed=7):
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        deps = rng.sample(range(max(0, i - 200), i), k=min(i, rng.choice([0, 1, 1, 2])))
        lines.append(json.dumps({"name": f"p{i}-1.0", "version": "1.0", "deps": [f"p{d}-1.0" for d in deps]}))
    return "\n".join(lines) + "\n"


def run(tmp: Path, n_jobs: int, workers: int, shared_cache: bool):
    url = str(tmp / f"q-{workers}-{shared_cache}.git")
    admin = {**os.environ, "GITQUEUE_CACHE": str(tmp / "cache-admin")}
    g = tmp / "graph.jsonl"
    g.write_text(graph(n_jobs))
    for args in (["init", url], ["import", url, str(g)]):
        subprocess.run([sys.executable, "-m", "gitqueue", *args], env=admin, check=True, capture_output=True)
    procs = []
    for i in range(workers):
        cache = tmp / ("cache-shared" if shared_cache else f"cache-{workers}-{i}")
        env = {**os.environ, "GITQUEUE_CACHE": str(cache)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", f"w{i}", "--max-wait", "0.2",
             "--", "true"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    # Time each reported job as its line arrives; the rate between the 10th and 90th percentile
    # of completions leaves out process start-up and the tail where few jobs are ready.
    done_at = []
    tails = {p.stderr.fileno(): b"" for p in procs}
    finals = []
    sel = selectors.DefaultSelector()
    for p in procs:
        sel.register(p.stderr, selectors.EVENT_READ)
    while tails:
        for key, _ in sel.select(timeout=600):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                finals.append(tails.pop(key.fd).decode())
                continue
            now = time.perf_counter()
            data = tails[key.fd] + chunk
            *lines, tails[key.fd] = data.split(b"\n")
            for line in lines:
                if line.endswith(b" s)") and (b" success (" in line or b" failure (" in line):
                    done_at.append(now)
                elif b"queue finished" in line:
                    finals.append(line.decode())
    pushes = rejected = built = 0
    for p in procs:
        p.wait(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"a worker failed: {finals}")
    for text in finals:
        m = re.search(r"\((\d+) jobs built here; (\d+) pushes, (\d+) rejected\)", text)
        if m:
            built += int(m.group(1))
            pushes += int(m.group(2))
            rejected += int(m.group(3))
    assert built == n_jobs == len(done_at), (built, n_jobs, len(done_at))
    done_at.sort()
    lo, hi = done_at[len(done_at) // 10], done_at[len(done_at) * 9 // 10]
    rate = (len(done_at) * 9 // 10 - len(done_at) // 10) / (hi - lo)
    return rate, rejected / pushes if pushes else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=800)
    ap.add_argument("--workers", default="1,2,4,8,16")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each set-up; medians are printed")
    opts = ap.parse_args()
    counts = [int(x) for x in opts.workers.split(",")]
    print(f"{opts.jobs} jobs, instant builds, one local-path queue; jobs/s between the 10th and 90th "
          f"percentile of completions; median of {opts.repeat} runs, set-ups interleaved")
    results = {}
    with tempfile.TemporaryDirectory(prefix="gq-contention-") as tmp:
        for rep in range(opts.repeat):
            for n in counts:
                for shared in (True, False):
                    work = Path(tmp) / f"r{rep}"
                    work.mkdir(exist_ok=True)
                    results.setdefault((n, shared), []).append(run(work, opts.jobs, n, shared_cache=shared))
    print(f"{'workers':>7} {'shared cache jobs/s':>20} {'rejected':>9} {'own caches jobs/s':>18} {'rejected':>9}")
    for n in counts:
        row = []
        for shared in (True, False):
            runs = results[(n, shared)]
            row.append((statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)))
        print(f"{n:7} {row[0][0]:20.1f} {row[0][1]:9.1%} {row[1][0]:18.1f} {row[1][1]:9.1%}")
    base = {s: statistics.median(r[0] for r in results[(2, s)]) for s in (True, False) if (2, s) in results}
    for s, label in ((True, "shared cache"), (False, "own caches")):
        if (8, s) in results and s in base:
            print(f"{label}: 8 workers / 2 workers = {statistics.median(r[0] for r in results[(8, s)]) / base[s]:.2f}")


if __name__ == "__main__":
    main()
