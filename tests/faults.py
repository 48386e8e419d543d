"""Fault injection: a real build over ssh while a seeded harness kills, cuts and skews things.

Used by tests/test_faults.py (a short run) and bench/faults.py (a longer one). Workers are
`gitqueue work` processes over ssh to a throwaway sshd on 127.0.0.1, with a stand-in build that
makes a real package tarball, uploads it with rsync and downloads its dependencies' packages. At
random moments drawn from the printed seed the harness:

- SIGKILLs a worker (building, pushing or uploading: whatever it is doing) and restarts it;
- cuts a worker's ssh connections (SIGKILLs its ssh and rsync children, master included);
- freezes a worker (SIGSTOP) for longer than the lease TTL, so its lease is reclaimed and it
  comes back to report late;
- runs `gitqueue reclaim` with a short TTL, and `gitqueue publish` on the master;
- runs `gitqueue gc` on the master (with git and without, in turn) and `gitqueue gc --cache`
  on the hosts' caches, with a grace of one second, while the workers push and read;
- gives some workers clocks hours off (GITQUEUE_CLOCK_OFFSET).

The queue has the server's pre-receive hook installed. At the end it checks every promise
(with `gitqueue verify` among others) and returns the figures.
"""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from gitqueue import records
from gitqueue.admin import import_jobs, init_queue
from gitqueue.audit import replay
from gitqueue.gitstore import LocalRemote, TreeReader
from gitqueue.importers import check_graph, load_graph
from gitqueue.layout import record_path

SUBSET = Path(__file__).resolve().parents[1] / "gitqueue" / "data" / "pkgsrc-subset.presolve"

STAND_IN = """#!/bin/sh
# A build: needs its dependencies' packages, takes a while, makes one package; a few fail.
set -e
for dep in $GITQUEUE_DEPS; do
    test -f "$GITQUEUE_PACKAGES/All/$dep.tgz" || { echo "missing $dep.tgz"; exit 1; }
done
sleep "0.$(printf '%s' "$GITQUEUE_JOB" | cksum | cut -c1-1)"
case "$GITQUEUE_JOB" in clisp-*|parrot-*) echo "*** Error code 1"; exit 1;; esac
work=$(mktemp -d)
cd "$work"
{ echo "@name $GITQUEUE_JOB"; for dep in $GITQUEUE_DEPS; do echo "@pkgdep $dep"; done; } > +CONTENTS
echo "stand-in for $GITQUEUE_PKGPATH" > +COMMENT
echo "A package built under fault injection." > +DESC
printf 'PKGPATH=%s\\n' "$GITQUEUE_PKGPATH" > +BUILD_INFO
head -c 20000 /dev/urandom > payload
mkdir -p "$GITQUEUE_OUTPUT/All"
tar -czf "$GITQUEUE_OUTPUT/All/$GITQUEUE_JOB.tgz" +CONTENTS +COMMENT +DESC +BUILD_INFO payload
rm -rf "$work"
"""


def _gq(*args):
    return [sys.executable, "-m", "gitqueue", *map(str, args)]


def _children(pid):
    """Every descendant of `pid` (from /proc)."""
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class Harness:
    def __init__(self, workdir: Path, sshd, seed: int, jobs: int = 279, hosts: int = 3, per_host: int = 2,
                 ttl: int = 4, skewed_hosts: int = 1, out=print):
        self.dir = Path(workdir)
        self.sshd = sshd
        self.rng = random.Random(seed)
        self.seed = seed
        self.ttl = ttl
        self.out = out
        self.queue_path = self.dir / "q.git"
        self.tree = self.dir / "packages"
        self.tree.mkdir(parents=True, exist_ok=True)
        self.url = sshd.url(str(self.queue_path))
        graph = check_graph(load_graph(str(SUBSET)), "presolve")[:jobs]
        self.jobs = {j["name"]: j for j in graph}
        admin = self.dir / "cache-admin"
        from gitqueue.queue import Queue

        with Queue(str(self.queue_path), str(admin)) as q:
            init_queue(q, "faults", lease_ttl=ttl,
                       packages_url=f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{self.tree}")
            import_jobs(q, graph, "faults.presolve")
        # The server's rules apply to every push, as on a real master.
        subprocess.run(_gq("hooks", "install", self.queue_path), check=True, capture_output=True)
        self.build = self.dir / "build.sh"
        self.build.write_text(STAND_IN)
        self.build.chmod(0o755)
        self.config = self.dir / "worker.toml"
        self.config.write_text(f'rsync_rsh = "{sshd.ssh_command}"\ntransfer_attempts = 4\ntransfer_backoff = 0.2\n'
                               'network_timeout = 30\n')
        self.workers = {}
        for h in range(hosts):
            for p in range(per_host):
                name = f"w{h}-{p}"
                offset = (3 * 3600 if h % 2 else -3 * 3600) if h < skewed_hosts else 0
                self.workers[name] = {"host": h, "offset": offset, "proc": None, "log": self.dir / f"{name}.log"}
        self.figures = {"seed": seed, "jobs": len(self.jobs), "workers": len(self.workers), "workers killed": 0,
                        "connections cut": 0, "workers frozen": 0, "reclaim runs": 0, "publish runs": 0,
                        "gc runs": 0, "cache gc runs": 0}
        self.gc_errors = []
        self.gc_procs = {}  # figure -> the gc process of that kind still running
        self.frozen = {}  # name -> when to wake it

    def env(self, name):
        w = self.workers[name]
        env = {**os.environ, "GITQUEUE_CACHE": str(self.dir / f"cache-host{w['host']}"),
               "GITQUEUE_CONFIG": str(self.config), "GITQUEUE_SSH_COMMAND": self.sshd.ssh_command}
        if w["offset"]:
            env["GITQUEUE_CLOCK_OFFSET"] = str(w["offset"])
        return env

    def start(self, name):
        w = self.workers[name]
        log = open(w["log"], "ab")
        w["proc"] = subprocess.Popen(
            _gq("work", "--queue", self.url, "--worker", name, "--max-wait", "1", "--heartbeat", "1",
                "--", str(self.build)),
            env=self.env(name), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _pick_running(self):
        """A worker that runs and is not frozen, drawn from the seed; None if there is none."""
        alive = [n for n, w in self.workers.items()
                 if w["proc"] and w["proc"].poll() is None and n not in self.frozen]
        return self.rng.choice(alive) if alive else None

    def kill_worker(self):
        name = self._pick_running()
        if name is None:
            return
        proc = self.workers[name]["proc"]
        os.killpg(proc.pid, signal.SIGKILL)  # the worker, its build, its ssh and rsync
        proc.wait()
        self.figures["workers killed"] += 1
        self.start(name)

    def freeze(self):
        name = self._pick_running()
        if name is None:
            return
        os.killpg(self.workers[name]["proc"].pid, signal.SIGSTOP)
        self.frozen[name] = time.monotonic() + self.ttl * 2 + 1
        self.figures["workers frozen"] += 1

    def thaw(self, everyone=False):
        for name, when in list(self.frozen.items()):
            if everyone or time.monotonic() >= when:
                try:
                    os.killpg(self.workers[name]["proc"].pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                del self.frozen[name]

    def cut_connections(self):
        alive = [n for n, w in self.workers.items() if w["proc"] and w["proc"].poll() is None]
        if not alive:
            return
        name = self.rng.choice(alive)
        cut = [pid for pid in _children(self.workers[name]["proc"].pid) if _comm(pid) in ("ssh", "rsync")]
        for pid in cut:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # ssh masters are daemons of their own: cut the host's shared connection too.
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _comm(int(entry)) == "ssh":
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        cmd = f.read()
                except OSError:
                    continue
                if b"[mux]" in cmd or b"ControlPersist" in cmd and str(self.sshd.port).encode() in cmd:
                    try:
                        os.kill(int(entry), signal.SIGKILL)
                        cut.append(int(entry))
                    except ProcessLookupError:
                        pass
        self.figures["connections cut"] += bool(cut)

    def reclaim(self):
        subprocess.run(_gq("reclaim", "--queue", str(self.queue_path), "--ttl", self.ttl),
                       env={**os.environ, "GITQUEUE_CACHE": str(self.dir / "cache-cron")}, capture_output=True)
        self.figures["reclaim runs"] += 1

    def publish(self):
        subprocess.run(_gq("publish", "--queue", str(self.queue_path), "--tree", self.tree),
                       env={**os.environ, "GITQUEUE_CACHE": str(self.dir / "cache-master")}, capture_output=True)
        self.figures["publish runs"] += 1

    def gc(self):
        """Pack the master (git repack) and trim one host's cache.

        In the background: gc --cache waits for the host's lock, which a frozen worker may hold
        until the harness thaws it. One run of each kind at a time.
        """
        self.collect_gc()
        host = self.rng.choice(sorted({w["host"] for w in self.workers.values()}))
        runs = {
            "gc runs": (_gq("gc", self.queue_path), self.dir / "cache-master"),
            "cache gc runs": (_gq("gc", "--cache", "--grace", "1", "--queue", self.url),
                              self.dir / f"cache-host{host}"),
        }
        for figure, (argv, cache) in runs.items():
            if figure not in self.gc_procs:
                self.gc_procs[figure] = subprocess.Popen(
                    argv,
                    env={**os.environ, "GITQUEUE_CACHE": str(cache), "GITQUEUE_SSH_COMMAND": self.sshd.ssh_command},
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                self.figures[figure] += 1

    def collect_gc(self, wait=False):
        """Note the outcome of gc runs that have ended (with `wait`, of all of them)."""
        for figure, proc in list(self.gc_procs.items()):
            if wait or proc.poll() is not None:
                _, err = proc.communicate(timeout=300 if wait else None)
                if proc.returncode != 0:
                    self.gc_errors.append(err.strip()[-300:])
                del self.gc_procs[figure]

    def run(self, deadline: float, fault_every: float = 1.0, faults_for: float | None = None):
        """Build until every worker says the queue is finished; inject faults for `faults_for` s."""
        for name in self.workers:
            self.start(name)
        t0 = time.monotonic()
        last_reclaim = last_publish = last_gc = t0
        while True:
            now = time.monotonic()
            if now - t0 > deadline:
                raise AssertionError(f"seed {self.seed}: the build did not finish in {deadline} s\n"
                                     + self.diagnose())
            # Past faults_for, go on only until each kind of fault has struck once (a loaded
            # machine runs fewer rounds, and a cut finds no connection open between two fetches).
            unmet = not (self.figures["workers killed"] and self.figures["connections cut"])
            faulting = faults_for is None or now - t0 < faults_for or (unmet and now - t0 < 3 * faults_for)
            self.thaw(everyone=not faulting)
            if faulting:
                action = self.rng.random()
                if action < 0.4:
                    self.kill_worker()
                elif action < 0.75:
                    self.cut_connections()
                elif action < 0.85:
                    self.freeze()
            if now - last_reclaim > 2:
                self.reclaim()
                last_reclaim = now
            if now - last_publish > 5:
                self.publish()
                last_publish = now
            if now - last_gc > 4:
                self.gc()
                last_gc = now
            for name, w in self.workers.items():
                code = w["proc"].poll()
                if code not in (None, 0):
                    self.start(name)  # a worker that exits with an error is restarted too
            if all(w["proc"].poll() == 0 for w in self.workers.values()):
                break
            time.sleep(fault_every * (0.5 + self.rng.random()) if faulting else 0.5)
        self.figures["seconds"] = round(time.monotonic() - t0, 1)
        self.collect_gc(wait=True)
        self.publish()
        return self.check()

    def diagnose(self) -> str:
        """What each worker is doing: its process tree, and the last lines of its log."""
        lines = []
        for name, w in self.workers.items():
            proc = w["proc"]
            state = "exited" if proc.poll() is not None else "running"
            lines.append(f"== {name} ({state} {proc.returncode}) pid {proc.pid}")
            for pid in [proc.pid] + _children(proc.pid):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:160]
                    with open(f"/proc/{pid}/wchan") as f:
                        wchan = f.read()
                except OSError:
                    continue
                lines.append(f"   {pid} [{wchan}] {cmd}")
            lines += ["   | " + line for line in w["log"].read_text(errors="replace").splitlines()[-6:]]
        return "\n".join(lines)

    def check(self):
        """Check every promise; return the figures (raises AssertionError on a broken promise)."""
        remote = LocalRemote(str(self.queue_path))
        try:
            tip = remote.fetch()
            audit = replay(remote, tip)
            reader = TreeReader(remote.object_store, remote.commit(tip).tree)
            results = {}
            for name in self.jobs:
                data = reader.read(record_path("results", name))
                if data is not None:
                    results[name] = records.load_at("result", data, record_path("results", name))
                assert reader.read(record_path("leases", name)) is None, f"{name} is still leased"
        finally:
            remote.close()
        assert audit.violations == [], audit.violations[:5]
        # Every job has its final state: built or failed by a worker, or stuck behind a failure.
        failed = {n for n, r in results.items() if r["status"] == "failure"}
        blocked = set()
        for name, job in self.jobs.items():  # build order: dependencies first
            if any(d in failed or d in blocked for d in job["deps"]):
                blocked.add(name)
        lost = [n for n in self.jobs if n not in results and n not in blocked]
        extra = [n for n in results if n in blocked]
        assert not lost and not extra, (lost[:5], extra[:5])
        # Every success names the package its build made (nothing, gc --cache included, took the
        # build's output from under its upload) and is published with the checksum the result names.
        empty = [n for n, r in results.items() if r["status"] == "success" and not r.get("packages")]
        assert not empty, empty[:5]
        unpublished = []
        for rec in results.values():
            for pkg in rec.get("packages", []):
                path = self.tree / "All" / pkg["name"]
                if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != pkg["sha256"]:
                    unpublished.append(pkg["name"])
        assert not unpublished, unpublished[:5]
        # ... and anyone can check all of it from the history alone.
        proc = subprocess.run(_gq("verify", self.queue_path, "--packages", self.tree),
                              env={**os.environ, "GITQUEUE_CACHE": str(self.dir / "cache-verify")},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # No worker's cache is left unusable.
        for h in {w["host"] for w in self.workers.values()}:
            env = {**os.environ, "GITQUEUE_CACHE": str(self.dir / f"cache-host{h}"),
                   "GITQUEUE_SSH_COMMAND": self.sshd.ssh_command}
            proc = subprocess.run(_gq("status", "--queue", self.url), env=env, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        logs = "\n".join(w["log"].read_text(errors="replace") for w in self.workers.values())
        self.figures.update({
            # fenced: a worker that came back after its lease was reclaimed stopped its build or
            # had its report refused, and recorded nothing
            "stale workers fenced": logs.count("was reclaimed; stopping its build") + logs.count("nothing recorded"),
            "commits": audit.commits, "claims": audit.claims, "results": audit.results,
            "successes": len(results) - len(failed), "failures": len(failed), "indirect": len(blocked),
            "leases reclaimed": audit.reclaims, "late reports kept": audit.late,
            "duplicate results": audit.results - len(results), "lost jobs": len(lost),
            # a worker that met a missing object took its cache for damaged and fetched it anew
            "caches rebuilt": logs.count("the cache was rebuilt"),
        })
        assert self.gc_errors == [], self.gc_errors[:3]
        return self.figures

    def stop(self):
        self.thaw(everyone=True)
        for proc in self.gc_procs.values():
            proc.kill()
            proc.communicate()
        for w in self.workers.values():
            if w["proc"] and w["proc"].poll() is None:
                os.killpg(w["proc"].pid, signal.SIGKILL)
                w["proc"].wait()
