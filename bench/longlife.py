"""Benchmark: a queue after a whole bulk build's history, before and after `gitqueue gc`.

Imports ../shared/data/pkgsrc-presolve.xz (29,022 jobs) into a local-path queue and builds it
to the end in virtual time through the library, as `gitqueue work` does: each finished job is
reported and the next one claimed in one commit (lease.settle, the spool's call), workers
heartbeat every lease_ttl/4 of virtual time while they build, results carry a log and package
descriptions. Then prints:

- loose objects, packs and the size of the repository, before and after `gitqueue gc`, the
  time and peak RSS of gc (git repack);
- the claim latency (a `gitqueue claim` + `gitqueue release` process pair, local path) on the
  freshly imported queue and at the end of the build, with and without gc, medians;
- a new worker's first claim over ssh (a throwaway sshd, tests/sshd.py) on the finished
  history, with an empty cache (its first fetch is shallow), and its cache's size;
- the same claim latency over ssh with the server's objects loose, and after gc.

    python bench/longlife.py [--results N] [--claims N] [--keep DIR]

--results stops the build after N results (default: to the end). --keep DIR keeps (and
reuses) the generated repositories there.
"""

import argparse
import heapq
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT.parent / "shared" / "data" / "pkgsrc-presolve.xz"
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

START = 1_767_225_600.0
TTL = 7200
# Sixteen workers of different speeds (slowness factors), as a volunteer pool would be.
WORKERS = {f"w{i:02d}": f for i, f in enumerate((1, 1, 1, 1, 1.5, 1.5, 1.5, 2, 2, 2, 3, 3, 4, 4, 6, 8), 1)}
PLATFORM = {"arch": "x86_64", "os_release": "5.11", "pkgsrc_branch": "trunk"}


def generate(url: str, cache: str, max_results: int | None = None, leave: int = 300, progress=print) -> dict:
    """Import the full scan into a new local-path queue at `url` and build it in virtual time.

    Claims stop after `max_results` results or when only `leave` jobs are left to build (so
    that claims can still be measured at the end); builds in progress are still reported.
    The imported queue is kept beside it as `url`.imported.
    """
    from gitqueue import lease
    from gitqueue.admin import import_jobs, init_queue
    from gitqueue.errors import NothingReady
    from gitqueue.importers import load_graph
    from gitqueue.queue import Queue

    from virtual_build import Clock, fails, seconds

    clock = Clock(START)
    with Queue(url, os.path.join(cache, "admin"), clock=clock) as q:
        init_queue(q, "pkgsrc-29k", arch="x86_64", os_release="5.11", pkgsrc_branch="trunk", lease_ttl=TTL)
        jobs = load_graph(str(FULL))
        import_jobs(q, jobs, str(FULL))
    # Failures only where nothing depends on them: a failed perl would leave half the tree
    # unbuilt, and this is about a whole build's history.
    needed = {d for j in jobs for d in j["deps"]}
    del jobs
    snapshot = url + ".imported"
    shutil.copytree(url, snapshot)
    counts = {"results": 0, "heartbeats": 0, "commits": 0, "nothing": 0}
    every = TTL / 4
    t0 = time.perf_counter()
    with Queue(url, os.path.join(cache, "workers"), clock=clock) as q:
        # (time, seq, kind, worker, job): kind "done" ends a build, "beat" is a heartbeat, "ask" a retry
        events = [(START, i, "ask", name, None) for i, name in enumerate(WORKERS)]
        heapq.heapify(events)
        seq = len(events)
        stopping = False
        while events:
            t, _, kind, name, job = heapq.heappop(events)
            clock.t = max(clock.t, t)
            if kind == "beat":
                if job is not None and job.get("alive"):
                    lease.heartbeat(q, name)
                    counts["heartbeats"] += 1
                    counts["commits"] += 1
                    seq += 1
                    heapq.heappush(events, (clock.t + every, seq, "beat", name, job))
                continue
            request = {"worker": name, "host": f"{name}.example.org", "platform": PLATFORM, "claim": True,
                       "id": os.urandom(8).hex()}
            if kind == "done":
                job["alive"] = False
                status = "failure" if fails(job["job"]) and job["job"] not in needed else "success"
                took = round(seconds(job["job"]) * WORKERS[name], 1)
                log = {"name": f"{job['job']}.log", "size": 20_000 + int(took * 37),
                       "sha256": os.urandom(32).hex()}
                packages = [{"name": f"{job['job']}.tgz", "size": 100_000 + int(took * 1_000),
                             "sha256": os.urandom(32).hex()}] if status == "success" else []
                request["report"] = {"job": job["job"], "status": status, "token": job["lease"], "duration": took,
                                     "log": log, "log_tail": "*** Error code 1\n" if status == "failure" else None,
                                     "packages": packages}
            if not stopping and counts["results"] and counts["results"] % 100 == 0:
                left = q.index.counts()
                stopping = left["ready"] + left["waiting"] <= leave
            if stopping or (max_results is not None and counts["results"] >= max_results):
                stopping = True
                request["claim"] = False
                if "report" not in request:
                    continue
            out = lease.settle(q, [request], lease.identity(name))[0]
            counts["commits"] += 1
            if "report" in request and out.result is not None:
                counts["results"] += 1
                if progress and counts["results"] % 1000 == 0:
                    progress(f"  {counts['results']} results, {counts['commits']} commits, "
                             f"{time.perf_counter() - t0:.0f} s")
            if out.claim is not None:
                got = dict(out.claim.as_dict(), alive=True)
                seq += 1
                heapq.heappush(events, (clock.t + seconds(got["job"]) * WORKERS[name], seq, "done", name, got))
                seq += 1
                heapq.heappush(events, (clock.t + every, seq, "beat", name, got))
            elif isinstance(out.claim_error, NothingReady):
                counts["nothing"] += 1
                seq += 1
                heapq.heappush(events, (clock.t + max(60.0, out.claim_error.retry_after or 0), seq, "ask", name,
                                        None))
    counts["seconds"] = round(time.perf_counter() - t0, 1)
    counts["virtual_days"] = round((clock.t - START) / 86400, 1)
    return counts


# -- measuring ----------------------------------------------------------------------------------

WRAP = """
import resource, sys
from gitqueue.cli.main import cli
try:
    cli(args=sys.argv[1:], prog_name="gitqueue")
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
# The peak of this process's own memory (VmHWM). Not ru_maxrss: Linux carries it across fork
# and exec, so it would start at this benchmark's own (large) RSS at the fork.
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    with open("/proc/self/status") as f:
        me = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"RSS {me} {kids}", file=sys.stderr)
sys.exit(code)
"""


def gq(args, env, check=True):
    """Run `gitqueue ARGS` as a new process; return (wall seconds, stdout, peak RSS MiB incl. children)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAP, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = 0.0
    for line in proc.stderr.splitlines():
        if line.startswith("RSS "):
            rss = max(int(x) for x in line.split()[1:]) / 1024
    if check and proc.returncode != 0:
        raise SystemExit(f"gitqueue {' '.join(args)}: {proc.stderr.strip()}")
    return wall, proc.stdout, rss


_names = itertools.count(1)
RUN = os.urandom(3).hex()  # worker names of this run: a kept queue remembers earlier ones


def claim_latency(url, env, n):
    """Median wall seconds of `gitqueue claim` processes (each followed by a release), warm cache."""
    walls = []
    for i in range(n + 1):
        # A new worker name each time: a release declines the job for its worker, and at the
        # start of a pkgsrc build a single job (the one without dependencies) is ready.
        worker = f"bench{RUN}-{next(_names)}"
        wall, out, _ = gq(["claim", "--queue", url, "--worker", worker, "--json"], env)
        job = json.loads(out)["job"]
        gq(["release", job, "--queue", url, "--worker", worker, "--reason", "benchmark"], env)
        if i:  # the first one builds the host's index
            walls.append(wall)
    return statistics.median(walls)


def many_cache_packs(path, far_url, cache_root, n, ssh_command=None):
    """Let a worker's cache of `far_url` fetch after each of `n` foreign commits: n packs."""
    from gitqueue import lease
    from gitqueue.queue import Queue

    with Queue(path, os.path.join(cache_root, "foreign")) as local, \
            Queue(far_url, cache_root, ssh_command=ssh_command) as far:
        for _ in range(n):
            lease.heartbeat(local, "foreign")
            lease.heartbeat(far, "cached")
        return os.path.join(far.cache_dir, "repo.git")


def commits(path):
    if shutil.which("git") is None:
        return None
    return int(subprocess.run(["git", "--git-dir", path, "rev-list", "--count", "main"], capture_output=True,
                              text=True, check=True).stdout)


def mb(n):
    return f"{n / 1e6:.1f} MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=None, help="stop the build after N results (default: the end)")
    ap.add_argument("--claims", type=int, default=15, help="claims per latency median (default 15)")
    ap.add_argument("--cache-packs", type=int, default=200, help="fetches (packs) in the worker cache test")
    ap.add_argument("--keep", metavar="DIR", help="keep (and reuse) the generated queue in DIR")
    ap.add_argument("--no-ssh", action="store_true")
    opts = ap.parse_args()
    if not FULL.exists():
        raise SystemExit(f"{FULL} is absent: this benchmark needs the full pkgsrc scan")
    from gitqueue.gc import measure

    tmp = None
    if opts.keep:
        work = Path(opts.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gq-bench-longlife-")
        work = Path(tmp.name)
    end, start = str(work / "q.git"), str(work / "q.git.imported")
    counts_file = work / "counts.json"
    if not counts_file.exists():
        for p in (end, start):
            shutil.rmtree(p, ignore_errors=True)
        print("generating the history (minutes) ...", flush=True)
        counts = generate(end, str(work / "cache-gen"), opts.results,
                          progress=lambda m: print(m, flush=True))
        counts_file.write_text(json.dumps(counts))
    counts = json.loads(counts_file.read_text())
    print(f"history: {counts['results']} results, {counts['heartbeats']} heartbeats, {commits(end)} commits, "
          f"{counts['virtual_days']} virtual days, generated in {counts['seconds']:.0f} s", flush=True)
    rows = []  # (what, figure)
    config = work / "worker.toml"  # the queue pins the platform the history's workers had
    config.write_text("".join(f'{k} = "{v}"\n' for k, v in PLATFORM.items()))
    env0 = {**os.environ, "GITQUEUE_CONFIG": str(config)}

    def env(name):
        return {**env0, "GITQUEUE_CACHE": str(work / f"cache-{name}-{time.monotonic_ns()}")}

    def size_row(label, path):
        m = measure(path)
        rows.append((label, f"{m['loose']} loose objects, {m['packs']} packs, {mb(m['bytes'])}"))
        print(f"{label}: {rows[-1][1]}", flush=True)
        return m

    for path in (start, end):  # as gitstore.init_bare configures new queues
        subprocess.run(["git", "--git-dir", path, "config", "receive.autogc", "false"], check=True)
        subprocess.run(["git", "--git-dir", path, "config", "gc.auto", "0"], check=True)
    size_row("imported queue (start)", start)
    size_row("end of the build, before gc", end)

    lat = {}
    lat["local start"] = claim_latency(start, env("ls"), opts.claims)
    lat["local end, loose"] = claim_latency(end, env("le"), opts.claims)
    print(lat, flush=True)

    server = None
    if not opts.no_ssh:
        from sshd import SshServer, sshd_available

        reason = sshd_available()
        if reason is None:
            server = SshServer(work / "sshd").start()
        else:
            print(f"note: no ssh ({reason})")

    def first_claim(label, path):
        e = {**env(label), "GITQUEUE_SSH_COMMAND": server.ssh_command}
        worker = f"new{RUN}-{next(_names)}"
        wall, out, rss = gq(["claim", "--queue", server.url(path), "--worker", worker, "--json"], e)
        job = json.loads(out)["job"]
        gq(["release", job, "--queue", server.url(path), "--worker", worker], e)
        cache = next(Path(e["GITQUEUE_CACHE"]).glob("*/repo.git"))
        shallow = (cache / "shallow").read_text().split() if (cache / "shallow").exists() else []
        m = measure(str(cache))
        rows.append((f"new worker's first claim over ssh, {label}",
                     f"{wall:.1f} s, {rss:.0f} MiB peak; cache {mb(m['bytes'])}, shallow boundary "
                     f"{len(shallow)} commit(s)"))
        print(rows[-1], flush=True)
        lat[f"ssh {label}"] = claim_latency(server.url(path), e, max(5, opts.claims // 2))

    try:
        if server is not None:
            lat_packs = measure(end)["packs"]
            first_claim("start", start)
            first_claim("end, loose", end)
            after = measure(end)
            rows.append(("ssh pushes on the server (receive.unpackLimit default 100)",
                         f"packs {lat_packs} -> {after['packs']}: small pushes are exploded into loose objects"))

        wall, out, rss = gq(["gc", end], env("gc"))
        rows.append(("gitqueue gc (git repack)", f"{wall:.1f} s, {rss:.0f} MiB peak RSS (gitqueue and git)"))
        print(rows[-1], flush=True)
        size_row("end of the build, after gc (git)", end)

        lat["local end, after gc"] = claim_latency(end, env("lg"), opts.claims)
        if server is not None:
            first_claim("end, after gc", end)

        # A worker's cache gains a pack per fetch: many of them, then gc --cache.
        far, how = ("file://" + end, "file://") if server is None else (server.url(end), "ssh")
        ssh = None if server is None else server.ssh_command
        cache_root = str(work / f"cache-packs-{time.monotonic_ns()}")
        cache = many_cache_packs(end, far, cache_root, opts.cache_packs, ssh)
        e = {**env0, "GITQUEUE_CACHE": cache_root, **({"GITQUEUE_SSH_COMMAND": ssh} if ssh else {})}
        m = size_row(f"worker cache after {opts.cache_packs} fetches", cache)
        lat[f"{how} cache with {m['packs']} packs"] = claim_latency(far, e, opts.claims)
        wall, out, rss = gq(["gc", "--cache", "--queue", far, "--json"], e)
        kept = json.loads(out)
        rows.append(("gitqueue gc --cache", f"{wall:.1f} s, {rss:.0f} MiB peak RSS; kept {kept['after']['packs']} "
                     f"pack, {mb(kept['after']['bytes'])}; {kept['superseded']['files']} files "
                     f"({mb(kept['superseded']['bytes'])}) superseded, left for the next run"))
        print(rows[-1], flush=True)
        wall, out, rss = gq(["gc", "--cache", "--grace", "0", "--queue", far], e)
        rows.append(("gitqueue gc --cache --grace 0 (removes them)", f"{wall:.1f} s, {rss:.0f} MiB peak RSS"))
        size_row("worker cache after gc --cache --grace 0", cache)
        lat[f"{how} cache after gc --cache"] = claim_latency(far, e, opts.claims)
    finally:
        if server is not None:
            server.stop()

    print(f"\n{counts['results']} results, {commits(end)} commits; sizes are of objects/ on disk")
    for what, figure in rows:
        print(f"{what:58} {figure}")
    print(f"\nclaim latency, one `gitqueue claim` process, warm cache, median of {opts.claims} (ssh: of "
          f"{max(5, opts.claims // 2)})")
    for what, sec in lat.items():
        print(f"{what:40} {sec * 1000:7.0f} ms")
    for a, b in (("local end, loose", "local start"), ("local end, after gc", "local start"),
                 ("ssh end, loose", "ssh start"), ("ssh end, after gc", "ssh start")):
        if a in lat and b in lat:
            print(f"{a} / {b}: {lat[a] / lat[b]:.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
