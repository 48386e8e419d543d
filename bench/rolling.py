"""Benchmark: a rolling build. The 29k pkgsrc queue is built (instantly), then a new scan that
bumps 500 packages spread over the graph is applied with `gitqueue import --update`.

The build goes through the protocol (lease.settle: many workers' reports and claims per
commit, as a host's spool settles them), so that `gitqueue verify` can judge the whole history.
The update runs as its own process; its wall time and peak RSS are printed, with the number of
jobs it marked for rebuilding (read back from the tree: jobs without a result that had one)
next to the number computed here from the old graph alone, and a worker's claim time before and
after the update. The first claim after the update decides against the tree with the worker's
index as it was; the command after it (here the release of the claimed job) brings the index over
the update, and its time is printed too. The master is packed after the build, as README's hourly
`gitqueue gc` keeps it.

    python bench/rolling.py [--graph FILE] [--bumps 500] [--workers 100] [--verify]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT.parent / "shared" / "data" / "pkgsrc-presolve.xz"
sys.path.insert(0, str(ROOT))

LEFT_UNBUILT = 50  # jobs left ready before the update, so that a claim can be timed before it


def buildable(jobs):
    """Names of the jobs that can succeed: not prefailed, nothing prefailed below them."""
    by_name = {j["name"]: j for j in jobs}
    ok: dict[str, bool] = {}

    def can(name):
        stack = [name]
        while stack:
            n = stack[-1]
            if n in ok:
                stack.pop()
                continue
            pending = [d for d in by_name[n]["deps"] if d not in ok]
            if pending:
                stack.extend(pending)
                continue
            ok[n] = not by_name[n].get("prefailed") and all(ok[d] for d in by_name[n]["deps"])
            stack.pop()
        return ok[name]

    return {j["name"] for j in jobs if can(j["name"])}


def build(url, cache, workers, stop_at):
    """Build every buildable job through settle, `workers` at a time, until `stop_at` remain."""
    from gitqueue import lease
    from gitqueue.errors import NothingReady, QueueFinished
    from gitqueue.queue import Queue

    held: dict[str, lease.Claim] = {}
    done = 0
    with Queue(url, cache) as q:
        while True:
            q.sync()
            counts = q.index.counts()
            ready = counts["ready"] + counts["waiting"]
            if ready <= stop_at and not held:
                return done
            requests = []
            budget = ready - stop_at  # claims this round may make and still leave stop_at unbuilt
            for i in range(workers):
                w = f"w{i}"
                req: dict = {"worker": w, "claim": budget > 0}
                budget -= 1
                if w in held:
                    req["report"] = {"job": held[w].job, "status": "success", "token": held[w].lease,
                                     "duration": 1.0}
                if req.get("report") or req["claim"]:
                    requests.append(req)
            if not requests:
                return done
            outcomes = lease.settle(q, requests, lease.identity("bench"))
            progress = False
            for req, out in zip(requests, outcomes, strict=True):
                w = req["worker"]
                if out.result is not None:
                    held.pop(w, None)
                    done += 1
                    progress = True
                if out.claim is not None:
                    held[w] = out.claim
                    progress = True
                elif out.claim_error is not None and not isinstance(out.claim_error, (NothingReady, QueueFinished)):
                    raise out.claim_error
            if not progress:
                return done


def bumped_scan(jobs, n):
    """The scan with `n` packages spread over the graph at a new version (so a new PKGNAME)."""
    names = sorted(j["name"] for j in jobs if j["name"].endswith("-" + j["version"]) and not j.get("prefailed"))
    step = max(1, len(names) // n)
    chosen = names[::step][:n]
    rename = {}
    for name in chosen:
        rename[name] = name + ".1"
    out = []
    for j in jobs:
        j = dict(j, deps=[rename.get(d, d) for d in j["deps"]])
        if j["name"] in rename:
            j["name"] = rename[j["name"]]
            j["version"] = j["version"] + ".1"
        out.append(j)
    return out, chosen


def expected_rebuilds(jobs, bumped, built):
    """Jobs of the old graph that must build again: every job that depends, directly or not, on a
    bumped one, and had been built (a plain breadth-first walk over the reverse edges)."""
    up: dict[str, list[str]] = {}
    for j in jobs:
        for d in j["deps"]:
            up.setdefault(d, []).append(j["name"])
    seen = set()
    frontier = list(bumped)
    while frontier:
        nxt = []
        for n in frontier:
            for u in up.get(n, ()):
                if u not in seen:
                    seen.add(u)
                    nxt.append(u)
        frontier = nxt
    return seen - set(bumped), {n for n in seen - set(bumped) if n in built}


def timed_claim(url, cache, worker):
    """(seconds of a claim, seconds of the release of its job just after it)."""
    from gitqueue import lease
    from gitqueue.queue import Queue

    with Queue(url, cache) as q:
        t0 = time.perf_counter()
        got = lease.claim(q, worker)
        t1 = time.perf_counter()
        lease.release(q, worker, got.job, decline=False)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", default=str(FULL))
    ap.add_argument("--bumps", type=int, default=500)
    # Reports and claims of this many workers per commit: 100 (a report and a claim each) keep a commit under the 64 KB
    # that the hook and verify allow (rules.MAX_COMMIT_BYTES); 120 do not.
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--verify", action="store_true", help="also run gitqueue verify on the whole history")
    opts = ap.parse_args()

    from gitqueue.admin import import_jobs, init_queue
    from gitqueue.importers import load_graph
    from gitqueue.queue import Queue

    jobs = load_graph(opts.graph)
    with tempfile.TemporaryDirectory(prefix="gq-rolling-") as tmp:
        tmp = Path(tmp)
        url = str(tmp / "q.git")
        t0 = time.perf_counter()
        with Queue(url, str(tmp / "cache-admin")) as q:
            init_queue(q, "rolling", lease_ttl=86400, limits={"max_leases": 1})
            import_jobs(q, jobs, opts.graph)
        print(f"import: {len(jobs)} jobs in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        done = build(url, str(tmp / "cache-build"), opts.workers, LEFT_UNBUILT)
        print(f"instant build: {done} jobs built in {time.perf_counter() - t0:.1f} s, {LEFT_UNBUILT} left ready")
        # README's master packs its loose objects hourly (cron: gitqueue gc); a build of weeks
        # meets the update packed, and so do the worker's reads of the local-path queue.
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gitqueue", "gc", url], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)})
        print(f"gc of the master (its hourly cron): {time.perf_counter() - t0:.1f} s")

        worker_cache = str(tmp / "cache-worker")
        timed_claim(url, worker_cache, "probe")  # the worker's index, made once
        before, before_release = (min(t) for t in zip(*(timed_claim(url, worker_cache, "probe") for _ in range(5))))

        with Queue(url, str(tmp / "cache-count")) as q:
            q.sync()
            built = {name for _, name, _, _, _, state, _ in q.index.states() if state == "success"}
        scan, bumped = bumped_scan(jobs, opts.bumps)
        all_up, must_rebuild = expected_rebuilds(jobs, bumped, built)
        scan_file = tmp / "scan2.jsonl"
        with open(scan_file, "w") as f:
            for j in scan:
                f.write(json.dumps(j) + "\n")

        env = {**os.environ, "GITQUEUE_CACHE": str(tmp / "cache-admin"),
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        t0 = time.perf_counter()
        # The checked records, as `import --update` has them after parsing the scan (the JSONL
        # importer takes fewer keys than pbulk's scan gives): the update itself in its own process.
        code = ("import json, sys; from gitqueue.admin import update_jobs;"
                "from gitqueue.importers import check_graph; from gitqueue.queue import Queue;"
                "jobs = check_graph([json.loads(l) for l in open(sys.argv[2])], 'scan');"
                "q = Queue(sys.argv[1], sys.argv[3]); out = update_jobs(q, jobs, 'scan2'); q.close();"
                "print(json.dumps(out))")
        proc = subprocess.run([sys.executable, "-c", code, url, str(scan_file), str(tmp / "cache-admin")],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"import --update: {proc.stderr.strip()}")
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        done = json.loads(proc.stdout)
        with Queue(url, str(tmp / "cache-count")) as q:
            q.sync()
            after = {name: state for _, name, _, _, _, state, _ in q.index.states()}
        unbuilt_now = {n for n in built if after.get(n) not in ("success", None)}
        first, first_release = timed_claim(url, worker_cache, "probe")
        warm = min(timed_claim(url, worker_cache, "probe")[0] for _ in range(5))
        print(f"update: {opts.bumps} packages bumped; wall {wall:.1f} s, peak RSS {rss:.0f} MB")
        print(f"  plan: {len(done['added'])} added, {len(done['retired'])} retired, {len(done['rebuilt'])} rebuilt, "
              f"{len(done['set_aside'])} results set aside, {len(done['kept'])} kept")
        print(f"  built jobs no longer built (from the tree): {len(unbuilt_now)}; expected (reverse walk of the "
              f"old graph): {len(must_rebuild)}; same set: {unbuilt_now == must_rebuild}")
        print(f"  dependents of the bumped packages in the old graph: {len(all_up)}")
        print(f"claim on a warm worker: before the update {before * 1000:.0f} ms; first after it "
              f"{first * 1000:.0f} ms; then {warm * 1000:.0f} ms")
        # The first claim after an update leaves the index where it was (Index.defer_graph): the
        # command after it brings the index over the update.
        print(f"  release after the claim: before the update {before_release * 1000:.0f} ms; after the first "
              f"claim after it {first_release * 1000:.0f} ms (the index follows the update's graph.tsv)")
        if opts.verify:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "gitqueue", "verify", url], env=env, capture_output=True,
                                  text=True)
            print(f"verify: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s; "
                  f"{proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()}")


if __name__ == "__main__":
    main()
