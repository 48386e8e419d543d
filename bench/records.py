"""Benchmark: reading queue records - tomllib against records.loads, side by side in one run.

Writes real-looking records with records.dumps, as the worker and the import write them, for
the 1,669 packages of tests/data/pkgsrc-bulk-large.jsonl.xz:

- N results of a stand-in build (the long absence of bench/small_machine.py reads 3,000 such):
  job, version, status, worker, token, times, the log and the platform;
- one result per package as a pkgsrc build writes it: a success also names its package and
  the packages of its direct dependencies it installed; one in ten is a failure with the phase
  logs, the failed phase and a log tail of several lines (so escapes: tomllib reads those);
- the job records of the same packages (dependency arrays).

Then, in interleaved rounds, times reading each set whole with

- tomllib.loads alone (parsing only, no schema check);
- records.loads as it was before the fast path (tomllib.loads, then _check);
- records.loads now (the fast path for plain TOML, else tomllib; the compiled schema check);

and prints the medians and their ratios.

    python bench/records.py [-n 3000] [--rounds 9]
"""

import argparse
import json
import lzma
import random
import statistics
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gitqueue import records  # noqa: E402
from gitqueue.schema import SCHEMAS  # noqa: E402

GRAPH = ROOT / "tests" / "data" / "pkgsrc-bulk-large.jsonl.xz"
PHASES = ["pre-clean", "depends", "checksum", "configure", "build", "install", "package"]


def sha(rng):
    return f"{rng.getrandbits(256):064x}"


def stand_in(rng, job):
    """A result as a stand-in build reports it (the example of bench/README.md)."""
    token = f"{rng.getrandbits(128):032x}"
    return {"job": job["name"], "version": job["version"], "status": "success", "worker": f"bulk-{rng.randrange(8)}",
            "token": token, "finished_at": stamp(rng), "duration": round(rng.uniform(0, 1), 3),
            "log": {"name": f"{job['name']}-{token[:8]}.log", "size": 0, "sha256": sha(rng)},
            "platform": {"arch": "x86_64", "os_release": "debian-12"}}


def pkgsrc(rng, job, by_name):
    """A result as a pkgsrc build reports it."""
    token = f"{rng.getrandbits(128):032x}"
    failed = rng.random() < 0.1
    rec = {"job": job["name"], "version": job["version"], "status": "failure" if failed else "success",
           "worker": f"bulk-{rng.randrange(8)}", "token": token, "finished_at": stamp(rng),
           "duration": round(rng.uniform(0.5, 3000), 3),
           "log": {"name": f"{job['name']}-{token[:8]}.log", "size": rng.randrange(1, 10**7), "sha256": sha(rng)},
           "platform": {"arch": "x86_64", "os_release": "debian-12", "pkgsrc_branch": "pkgsrc-2026Q4"}}
    if failed:
        phase = rng.choice(PHASES[3:6])
        rec["failed_phase"] = phase
        rec["log_tail"] = (f"===> Building for {job['name']}\ncc -O2 -c main.c\nmain.c:12: error: 'x' undeclared\n"
                           "*** Error code 1\n\nStop.\n")
        done = PHASES[:PHASES.index(phase) + 1]
        rec["phase_logs"] = [{"name": f"{p}.log", "size": rng.randrange(10, 10**6), "sha256": sha(rng)} for p in done]
    else:
        rec["packages"] = [{"name": f"{job['name']}.tgz", "size": rng.randrange(10**3, 10**8), "sha256": sha(rng)}]
    installed = [d for d in job["deps"] if d in by_name]
    if installed:
        rec["installed"] = [{"name": f"{d}.tgz", "sha256": sha(rng)} for d in installed]
    return rec


def stamp(rng):
    day, hour, minute, second = rng.randrange(1, 29), rng.randrange(24), rng.randrange(60), rng.randrange(60)
    return f"2026-12-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


def job_record(job):
    return {"name": job["name"], "version": job["version"], "pkgpath": job["pkgpath"], "deps": job["deps"],
            "est_seconds": job["est_seconds"], "weight": 1 + len(job["deps"]),
            "maintainer": "pkgsrc-users@NetBSD.org", "categories": job["pkgpath"].split("/")[0]}


def corpus(n):
    """{name of the set: [(kind, bytes)]}"""
    with lzma.open(GRAPH, "rt") as f:
        jobs = [json.loads(line) for line in f]
    by_name = {j["name"]: j for j in jobs}
    rng = random.Random(20261203)
    results = [("result", records.dumps("result", pkgsrc(rng, j, by_name))) for j in jobs]
    successes = [r for r in results if b'status = "success"' in r[1]]
    return {
        f"{n:,} results of a stand-in build": [("result", records.dumps("result", stand_in(rng, jobs[i % len(jobs)])))
                                               for i in range(n)],
        f"{len(results):,} results of a pkgsrc build": results,
        f"{len(successes):,} of them successes": successes,
        f"{len(results) - len(successes):,} of them failures": [r for r in results if r not in successes],
        f"{len(jobs):,} job records": [("job", records.dumps("job", job_record(j))) for j in jobs],
    }


def old_loads(kind, data, where):
    rec = tomllib.loads(data.decode("utf-8"))
    records._check(rec, SCHEMAS[kind], where)
    return rec


WAYS = {
    "tomllib.loads": lambda kind, data, where: tomllib.loads(data.decode("utf-8")),
    "records.loads before": old_loads,
    "records.loads now": records.loads,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3000, help="result records (default 3000)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    sets = corpus(args.n)
    for name, recs in sets.items():
        fast = sum(records._plain(data.decode()) is not None for _, data in recs)
        for kind, data in recs:  # every way reads every record alike
            assert records.loads(kind, data, "x") == old_loads(kind, data, "x")
        print(f"{name}: {sum(len(d) for _, d in recs) / len(recs):,.0f} bytes each, {fast:,} read by the fast path")
    times: dict = {(s, w): [] for s in sets for w in WAYS}
    for _ in range(args.rounds):
        for s, recs in sets.items():
            for w, fn in WAYS.items():
                t0 = time.perf_counter()
                for kind, data in recs:
                    fn(kind, data, "x")
                times[s, w].append(time.perf_counter() - t0)
    print(f"\nmedian of {args.rounds} rounds, ms for the whole set (µs per record):\n")
    print(f"| records | {' | '.join(WAYS)} | before / now | tomllib / now |")
    print(f"| --- |{' ---: |' * (len(WAYS) + 2)}")
    for s, recs in sets.items():
        med = {w: statistics.median(times[s, w]) for w in WAYS}
        cells = " | ".join(f"{med[w] * 1e3:.1f} ({med[w] / len(recs) * 1e6:.0f})" for w in WAYS)
        now = med["records.loads now"]
        print(f"| {s.strip()} | {cells} | {med['records.loads before'] / now:.1f} | {med['tomllib.loads'] / now:.1f} |")


if __name__ == "__main__":
    main()
