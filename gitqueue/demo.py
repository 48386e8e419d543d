"""`gitqueue demo`: a local bulk build of 279 real pkgsrc packages with stand-in builds.

It creates a bare queue, imports the dependency closure of gmake, perl5, python311, firefox,
gtk3, icu, parrot and clisp, starts a few `gitqueue work` processes (each with its own cache, as
if on its own machine), kills one of them mid-build, reclaims its lease from "cron", and shows
progress until the build is finished.
"""

import os
import signal
import subprocess
import sys
import time

from .errors import GitqueueError

DEMO_GRAPH = os.path.join(os.path.dirname(__file__), "data", "pkgsrc-subset.presolve")
LEASE_TTL = 4
# The stand-in build: sleeps a time derived from the package name; a few packages fail as
# they really do on slow ports.
STAND_IN = r"""
import hashlib, os, sys, time
job = os.environ["GITQUEUE_JOB"]
speed = float(os.environ.get("GITQUEUE_DEMO_SPEED", "1"))
h = int(hashlib.sha256(job.encode()).hexdigest()[:8], 16)
seconds = (0.1 + (h % 1000) / 1000 * 0.7) * speed
print(f"=> Building {job} in {os.environ['GITQUEUE_PKGPATH']} (stand-in, {seconds:.2f} s)")
time.sleep(seconds)
if job.startswith(("clisp-", "parrot-")):
    print("*** Error code 1: stand-in failure")
    sys.exit(1)
print(f"=> Creating binary package {job}.tgz")
"""


def _gitqueue(*args):
    return [sys.executable, "-m", "gitqueue", *args]


def run_demo(directory: str, workers: int = 4, speed: float = 1.0, out=print) -> int:
    """Run the demonstration; return an exit status."""
    from .admin import import_jobs, init_queue
    from .importers import load_graph
    from .lease import reclaim
    from .queue import Queue
    from .summary import status

    directory = os.path.abspath(directory)
    url = os.path.join(directory, "queue.git")
    if os.path.exists(url):
        raise GitqueueError(f"{url} exists already; give another directory or remove it")
    os.makedirs(directory, exist_ok=True)
    queue = Queue(url, os.path.join(directory, "cache-operator"))
    init_queue(queue, "demo", arch=os.uname().machine, lease_ttl=LEASE_TTL)
    jobs = load_graph(DEMO_GRAPH, "presolve")
    counts = import_jobs(queue, jobs, DEMO_GRAPH)
    out(f"queue {url}: {counts['jobs']} jobs, {counts['edges']} dependencies, {counts['prefailed']} prefailed")
    build = os.path.join(directory, "stand-in-build.py")
    with open(build, "w") as f:
        f.write(STAND_IN)

    procs = {}
    logs = {}

    def start(i):
        name = f"demo-{i}"
        env = dict(os.environ, GITQUEUE_CACHE=os.path.join(directory, f"cache-{name}"),
                   GITQUEUE_DEMO_SPEED=str(speed), PYTHONUNBUFFERED="1")
        logs[name] = open(os.path.join(directory, f"{name}.log"), "ab")
        procs[name] = subprocess.Popen(
            _gitqueue("work", "--queue", url, "--worker", name, "--heartbeat", "1", "--max-wait", "2",
                      "--", sys.executable, build),
            env=env, stdout=logs[name], stderr=subprocess.STDOUT,
        )

    for i in range(1, workers + 1):
        start(i)
    out(f"started {workers} workers (logs in {directory}/demo-N.log); lease TTL {LEASE_TTL} s")
    t0 = time.monotonic()
    killed = False
    last_reclaim = 0.0
    try:
        while any(p.poll() is None for p in procs.values()):
            time.sleep(1)
            elapsed = time.monotonic() - t0
            if not killed and elapsed > 8 and workers > 1:
                procs["demo-1"].send_signal(signal.SIGKILL)
                killed = True
                out("  ! killed demo-1 mid-build (as if its machine crashed); reclaim will free its job")
            if elapsed - last_reclaim >= 2:
                last_reclaim = elapsed
                for r in reclaim(queue, operator="demo-cron"):
                    out(f"  ! reclaimed {r['job']} from {r['worker']} (silent {r['silent_for']} s)")
            s = status(queue)
            c = s["counts"]
            bar = "#" * int(30 * s["progress"])
            out(f"[{bar:30}] {s['done']:3}/{s['total']}  ready {c['ready']:3}  building {c['leased']}  "
                f"ok {c['success']:3}  failed {c['failed']}  indirect {c['indirect-failed']}  "
                f"prefailed {c['prefailed'] + c['indirect-prefailed']}  {elapsed:5.0f} s")
            if killed and procs["demo-1"].poll() is not None and s["finished"]:
                break
    except KeyboardInterrupt:
        out("interrupted: stopping workers (they release their jobs)")
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    for log in logs.values():
        log.close()
    s = status(queue)
    queue.close()
    out("")
    out(f"finished in {time.monotonic() - t0:.0f} s: " + ", ".join(f"{k} {v}" for k, v in s["counts"].items() if v))
    out(f"history:  git -C {url} log --oneline | head")
    out(f"facts:    git -C {url} log --format='%s%n%(trailers)' --grep='Status: failure'")
    out(f"status:   gitqueue status --queue {url}")
    return 0 if s["finished"] else 1

