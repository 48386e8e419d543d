"""Benchmark: a worker on a small machine (issue 15) - memory, a slow CPU, cold starts.

On the full 29,022-job pkgsrc queue (../shared/data/pkgsrc-presolve.xz) served over ssh by a
throwaway sshd on 127.0.0.1 (tests/sshd.py; connection reuse as gitqueue sets it up), runs
`gitqueue` processes as a volunteer's machine would, under four confinements made with cgroups
(v1 if writable, else v2, else those confinements are skipped with the reason):

    none     unconfined
    64M      a 64 MiB memory cgroup (memory.limit_in_bytes, and memsw: swap cannot hide memory)
    5%       a CPU quota of 5% of one core (cfs_quota_us 5000 of period 100000)
    64M+5%   both

and prints each figure of the issue against its goal (stdout), then what every run did:

- peak RSS of the whole worker (every process gitqueue starts, ssh included; the sum of VmRSS
  over the process tree sampled every 10 ms) on a new worker's first `gitqueue claim`, and in a
  `gitqueue work` between builds (a build of `sleep 3`; the build's processes do not count);
- a new worker's first claim and three jobs inside 64 MiB without an OOM kill;
- inside 5% of one core: the first claim's wall time and each further job's overhead in
  `gitqueue work` (claim + heartbeat + report around a 0.1 s build, from the times its
  "building" lines appear);
- a cold `gitqueue status` and a cold `gitqueue claim` (empty cache directory), unconfined;
- the same first-claim figures for a worker back from a long absence: its cache was made while
  the queue was fresh, then another worker built many jobs (--absent-results, default 3,000)
  and the master ran `gitqueue gc`, as README's hourly cron does (--no-gc: not).

Every gitqueue process runs as `python -m gitqueue` with PYTHONPATH=--code (default: the
repository this script is in), the queue included (it is made by that code), so old and new
code can be measured side by side. Nothing is left behind: temporary directories, sshd, ssh
masters and cgroups are removed at the end, on errors and on Ctrl-C.

    python bench/small_machine.py [--code DIR] [--quick] [--runs N] [--confined-runs N]
        [--confinements none,64M,5%,64M+5%] [--absent-results N] [--no-gc] [--timeout S]
        [--cgroup auto|v1|v2|none]

--cgroup none (or GITQUEUE_BENCH_NO_CGROUPS=1) pretends that no cgroup is writable: the
confined figures are then skipped with that reason. About 20 minutes with the defaults on a
2-core machine and the code of issue 15's time (the 5% runs are most of it: a confined process is
stopped after --timeout seconds); --quick (one run each, no CPU quota, 1,000 absent results)
about 4.
"""

import argparse
import ctypes
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT.parent / "shared" / "data" / "pkgsrc-presolve.xz"
sys.path.insert(0, str(ROOT / "tests"))

MiB = 1024 * 1024
GOAL_CLAIM_MIB = 48  # whole worker, first claim
GOAL_WORK_MIB = 32  # whole worker, `gitqueue work` between builds
CGROUP_MEMORY = 64 * MiB
CPU_QUOTA_US, CPU_PERIOD_US = 5000, 100000  # 5% of one core
GOAL_SLOW_CLAIM_S = 120.0  # first claim inside the CPU quota
GOAL_JOB_OVERHEAD_S = 10.0  # each further job inside the CPU quota
GOAL_COLD_S = 2.0  # cold status, cold claim, unconfined
CONFINEMENTS = {"none": (None, None), "64M": (CGROUP_MEMORY, None), "5%": (None, CPU_QUOTA_US),
                "64M+5%": (CGROUP_MEMORY, CPU_QUOTA_US)}
# The build of the `gitqueue work` runs that time jobs: 0.1 s, with a heartbeat every 0.05 s so
# that each job has one (the queue allows it: --min-heartbeat-seconds 0).
QUICK_BUILD_S, QUICK_HEARTBEAT_S = 0.1, 0.05
# The build of the run that measures memory between builds.
SLOW_BUILD_S, SLOW_HEARTBEAT_S = 3.0, 1.0
BUILDING = re.compile(r"\bbuilding\b")
# A child still named as its parent is taken for a fork about to exec (its pages are its
# parent's) for this long; under a CPU quota the exec can take several periods of 100 ms.
FORK_GRACE_S = 0.5
RUN_VAR = "GQ_SMALL_MACHINE_RUN"  # marks the processes of one measured run (ssh masters detach)

T0 = time.monotonic()


def say(message):
    print(f"[{time.monotonic() - T0:7.1f} s] {message}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------------

def set_subreaper():
    """Become the child subreaper: an ssh master that detaches (ControlPersist) is adopted by this
    process, not by init, so it can be measured, stopped and reaped."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or a zombie's file
        return None


def parent_of(pid):
    data = read_bytes(f"/proc/{pid}/stat")
    if not data:
        return None
    try:
        return int(data.rsplit(b")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return None


def status_of(pid):
    """(name, VmRSS kB, VmHWM kB) of a live process; None when it is gone or a zombie."""
    data = read_bytes(f"/proc/{pid}/status")
    if not data:
        return None
    name, rss, hwm = "?", None, 0
    for line in data.split(b"\n"):
        if line.startswith(b"Name:"):
            name = line[5:].strip().decode(errors="replace")
        elif line.startswith(b"VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith(b"VmHWM:"):
            hwm = int(line.split()[1])
    return None if rss is None else (name, rss, hwm)


def pss_of(pid):
    data = read_bytes(f"/proc/{pid}/smaps_rollup")
    if data:
        m = re.search(rb"^Pss:\s+(\d+)", data, re.M)
        if m:
            return int(m.group(1))
    return 0


def kind(name):
    """A process name for the split of memory: python, ssh, ..."""
    return "python" if name.startswith("python") else name


class Tree:
    """The processes of one measured run, sampled every `interval` seconds in a thread.

    Members: the root, its descendants, and processes adopted by this one (the subreaper) during
    the run that carry the run's marker variable or are ssh clients (a detached ssh master). The
    build command of `gitqueue work` (GITQUEUE_JOB in its environment) and its descendants are
    left out. A process still named as its parent (forked, not yet exec'd: its pages are its
    parent's) counts once it has lived FORK_GRACE_S so (an ssh master forks without exec).
    """

    def __init__(self, root, marker, interval):
        self.root, self.marker, self.interval = root, marker.encode(), interval
        self.me = os.getpid()
        self.members = {root: {"name": None, "parent_name": None, "samples": 0}}
        self.ever = {root}
        self.builds, self.foreign = set(), set()
        self.hwm = {}  # pid -> (name, highest VmHWM kB seen)
        self.samples = []  # (t, rss kB, pss kB, {kind: (count, kB)})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
        self.sample()

    def _environ(self, pid):
        return (read_bytes(f"/proc/{pid}/environ") or b"").split(b"\0")

    def _is_build(self, pid):
        return any(v.startswith(b"GITQUEUE_JOB=") for v in self._environ(pid))

    def _adopted(self, pid):
        """Whether a process adopted by this one (the subreaper) is the run's: it carries the run's
        marker, or it is an ssh client (the server never starts one). An ssh master detaches with
        daemon() and then writes its title over its environment, marker included."""
        st = status_of(pid)
        return self.marker in self._environ(pid) or (st is not None and st[0] == "ssh")

    def _discover(self):
        try:
            pids = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        except OSError:
            return
        known = self.members.keys() | self.builds | self.foreign
        new = {}
        for pid in pids - known:
            ppid = parent_of(pid)
            if ppid is not None:
                new[pid] = ppid
        changed = True
        while changed and new:
            changed = False
            for pid, ppid in list(new.items()):
                if ppid in self.builds:
                    self.builds.add(pid)
                elif ppid in self.members or (ppid == self.me and self._adopted(pid)):
                    if self._is_build(pid):
                        self.builds.add(pid)
                    else:
                        parent = self.members.get(ppid)
                        self.members[pid] = {"name": None, "samples": 0,
                                             "parent_name": parent["name"] if parent else None}
                        self.ever.add(pid)
                elif ppid in new:
                    continue  # decided once its parent is
                else:
                    self.foreign.add(pid)
                del new[pid]
                changed = True
        self.foreign.update(new)  # a loop of parents cannot happen; be safe anyway

    def sample(self):
        self._discover()
        t = time.monotonic()
        rss_sum = pss_sum = 0
        split = {}
        for pid, info in list(self.members.items()):
            st = status_of(pid)
            if st is None:
                if not os.path.exists(f"/proc/{pid}"):
                    del self.members[pid]
                continue
            name, rss, hwm = st
            if name != info.get("checked") and pid != self.root:
                info["checked"] = name  # the environment as of this name (an exec may change it)
                if self._is_build(pid):
                    del self.members[pid]  # exec'd into the build command
                    self.builds.add(pid)
                    continue
            renamed = info["name"] is not None and name != info["name"]
            info["renamed"] = info.get("renamed") or renamed
            info["name"] = name
            info["samples"] += 1
            young = t - info.setdefault("first", t) < FORK_GRACE_S
            if name == info["parent_name"] and not info.get("renamed") and young:
                continue  # forked, not yet exec'd: shares its parent's pages (and its VmHWM)
            if pid in self.hwm and not renamed:  # an exec starts a new VmHWM
                hwm = max(hwm, self.hwm[pid][1])
            self.hwm[pid] = (name, hwm)
            rss_sum += rss
            pss_sum += pss_of(pid)
            count, kb = split.get(kind(name), (0, 0))
            split[kind(name)] = (count + 1, kb + rss)
        self.samples.append((t, rss_sum, pss_sum, split))

    def alive(self):
        return [pid for pid in self.ever if pid != self.root and os.path.exists(f"/proc/{pid}")
                and pid not in self.builds]

    def peak(self, since=None):
        """(rss kB, pss kB, split) at the highest RSS sample (from `since` on)."""
        best = (0, 0, {})
        for t, rss, pss, split in self.samples:
            if (since is None or t >= since) and rss > best[0]:
                best = (rss, pss, split)
        return best

    def hwm_sum(self):
        return sum(h for _, h in self.hwm.values())


def split_text(split):
    parts = sorted(split.items(), key=lambda kv: -kv[1][1])
    return " + ".join(f"{name}{'x' + str(n) if n > 1 else ''} {kb / 1024:.1f}" for name, (n, kb) in parts)


# -- cgroups ------------------------------------------------------------------------------------

def mounts():
    """[(fstype, mount point, root in the fs, super options)] of cgroup file systems."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rfields = left.split(), right.split()
                if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                    out.append((rfields[0], fields[4], fields[3], set(rfields[2].split(","))))
    except OSError:
        pass
    return out


def own_cgroups():
    """{controller or '' (v2): path} from /proc/self/cgroup."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(",") if controllers else [""]:
                    out[c] = path
    except OSError:
        pass
    return out


def on_disk(mount_point, fs_root, path):
    rel = os.path.relpath(path, fs_root) if fs_root != "/" else path.lstrip("/")
    return os.path.normpath(os.path.join(mount_point, rel))


def write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


class Group:
    """A made cgroup (one or two directories: v1 has a hierarchy per controller)."""

    def __init__(self, version, dirs):
        self.version, self.dirs, self.memory_dir = version, dirs, None

    @property
    def procs(self):
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def wrap(self, argv):
        script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        return ["sh", "-c", script, "sh", *self.procs, "--", *argv]

    def oom_kills(self):
        if self.memory_dir is None:
            return 0
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        m = re.search(r"^oom_kill (\d+)", read_text(os.path.join(self.memory_dir, name)), re.M)
        return int(m.group(1)) if m else 0

    def peak_bytes(self):
        if self.memory_dir is None:
            return None
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        text = read_text(os.path.join(self.memory_dir, name)).strip()
        return int(text) if text.isdigit() else None

    def failcnt(self):
        if self.memory_dir is None or self.version != "v1":
            return None
        text = read_text(os.path.join(self.memory_dir, "memory.failcnt")).strip()
        return int(text) if text.isdigit() else None

    def remove(self):
        """Stop what is left inside (processes of this benchmark only), then remove the groups."""
        for d in self.dirs:
            for _ in range(50):
                pids = [int(p) for p in read_text(os.path.join(d, "cgroup.procs")).split()]
                if not pids:
                    break
                kill_and_reap(pids)
                time.sleep(0.1)
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                print(f"warning: could not remove cgroup {d}", file=sys.stderr)


class Cgroups:
    """Which cgroups this process may make: v1 or v2, or the reason why neither."""

    def __init__(self, prefer="auto"):
        self.version, self.reason, self.made = None, None, []
        self.name = f"gq-small-machine-{os.getpid()}"
        if prefer == "none" or os.environ.get("GITQUEUE_BENCH_NO_CGROUPS") == "1":
            self.reason = ("cgroups disabled by " + ("--cgroup none" if prefer == "none"
                                                     else "GITQUEUE_BENCH_NO_CGROUPS=1"))
            return
        reasons = []
        for version in (("v1", "v2") if prefer == "auto" else (prefer,)):
            try:
                self.parents = getattr(self, f"_{version}_parents")()
                self.make("probe", CGROUP_MEMORY, CPU_QUOTA_US, version)
                self.remove_all()
                self.version = version
                return
            except (OSError, LookupError) as e:
                self.remove_all()
                reasons.append(f"cgroup {version}: {e}")
        self.reason = "; ".join(reasons)

    def _v1_parents(self):
        own = own_cgroups()
        parents = {}
        for controller in ("memory", "cpu"):
            mount = next((m for m in mounts() if m[0] == "cgroup" and controller in m[3]), None)
            if mount is None:
                raise LookupError(f"no {controller} hierarchy mounted")
            if controller not in own:
                raise LookupError(f"this process is in no {controller} group (/proc/self/cgroup)")
            parents[controller] = on_disk(mount[1], mount[2], own[controller])
        return parents

    def _v2_parents(self):
        mount = next((m for m in mounts() if m[0] == "cgroup2"), None)
        if mount is None or "" not in own_cgroups():
            raise LookupError("no cgroup2 file system mounted")
        parent = on_disk(mount[1], mount[2], own_cgroups()[""])
        controllers = read_text(os.path.join(parent, "cgroup.controllers")).split()
        missing = [c for c in ("memory", "cpu") if c not in controllers]
        if missing:
            raise LookupError(f"{parent} offers no {' and no '.join(missing)} controller "
                              f"(controllers: {' '.join(controllers) or 'none'})")
        enabled = read_text(os.path.join(parent, "cgroup.subtree_control")).split()
        for c in ("memory", "cpu"):
            if c not in enabled:
                write(os.path.join(parent, "cgroup.subtree_control"), f"+{c}")
        return {"memory": parent, "cpu": parent}

    def make(self, label, memory_bytes, cpu_quota_us, version=None):
        """A new group with these limits (None: not limited); removed by remove_all()."""
        name = f"{self.name}-{label.replace('%', 'pc').replace('+', '-')}"
        if (version or self.version) == "v2":
            d = os.path.join(self.parents["memory"], name)
            os.mkdir(d)
            group = Group("v2", [d])
            self.made.append(group)
            group.memory_dir = d
            if memory_bytes:
                write(os.path.join(d, "memory.max"), memory_bytes)
                if os.path.exists(os.path.join(d, "memory.swap.max")):
                    write(os.path.join(d, "memory.swap.max"), 0)
            if cpu_quota_us:
                write(os.path.join(d, "cpu.max"), f"{cpu_quota_us} {CPU_PERIOD_US}")
            return group
        group = Group("v1", [])
        self.made.append(group)
        if memory_bytes:
            d = os.path.join(self.parents["memory"], name)
            os.mkdir(d)
            group.dirs.append(d)
            group.memory_dir = d
            write(os.path.join(d, "memory.limit_in_bytes"), memory_bytes)
            if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
                write(os.path.join(d, "memory.memsw.limit_in_bytes"), memory_bytes)
        if cpu_quota_us:
            d = os.path.join(self.parents["cpu"], name)
            os.mkdir(d)
            group.dirs.append(d)
            write(os.path.join(d, "cpu.cfs_period_us"), CPU_PERIOD_US)
            write(os.path.join(d, "cpu.cfs_quota_us"), cpu_quota_us)
        return group

    def remove_all(self):
        while self.made:
            self.made.pop().remove()


# -- one measured run ---------------------------------------------------------------------------

def reap(pid):
    """Reap `pid` if it is a child of this process (adopted or not); its rusage, or None."""
    try:
        for _ in range(100):
            got, _, usage = os.wait4(pid, os.WNOHANG)
            if got:
                return usage
            time.sleep(0.02)
    except ChildProcessError:
        pass
    return None


@dataclass
class Run:
    label: str
    confinement: str
    wall: float = 0.0
    code: int | None = None
    timed_out: bool = False
    oom_kills: int = 0
    cpu: float = 0.0
    lines: list = field(default_factory=list)  # (seconds since start, stderr line)
    stdout: str = ""
    peak_kb: int = 0
    peak_pss_kb: int = 0
    peak_split: dict = field(default_factory=dict)
    hwm_kb: int = 0
    window_kb: int | None = None  # peak from the first build on (work runs)
    window_pss_kb: int = 0  # the PSS at that moment
    window_split: dict = field(default_factory=dict)
    cgroup_peak: int | None = None
    failcnt: int | None = None
    builds: list = field(default_factory=list)  # seconds since start of each "building" line

    @property
    def killed(self):
        return self.code == -signal.SIGKILL and not self.timed_out

    @property
    def oom(self):
        return self.oom_kills > 0 or (self.killed and CONFINEMENTS[self.confinement][0] is not None)

    @property
    def ok(self):
        return self.code in (0, 3) and not self.timed_out and not self.oom

    def outcome(self):
        """What happened, for the table: '5.2 s', 'OOM-killed after 156 s', ..."""
        if self.oom:
            after = f"{self.wall:.{0 if self.wall >= 10 else 1}f} s"
            return f"OOM-killed after {after}" + ("" if self.killed else f" (a child; exit {self.code})")
        if self.timed_out:
            return f"stopped unfinished after {self.wall:.0f} s"
        if self.code not in (0, 3):
            last = next((line for _, line in reversed(self.lines) if line.strip()), "")
            return f"failed (exit {self.code}): {last[:60]}"
        return f"{self.wall:.1f} s"

    def describe(self):
        out = [f"{self.label} [{self.confinement}]: {self.outcome()}, wall {self.wall:.2f} s, cpu {self.cpu:.2f} s",
               f"peak RSS {self.peak_kb / 1024:.1f} MiB ({split_text(self.peak_split) or '-'})",
               f"PSS at that moment {self.peak_pss_kb / 1024:.1f}", f"sum of VmHWM {self.hwm_kb / 1024:.1f}"]
        if self.window_kb is not None:
            out.append(f"from the first build on {self.window_kb / 1024:.1f} MiB ({split_text(self.window_split)}; "
                       f"PSS at that moment {self.window_pss_kb / 1024:.1f})")
        if self.cgroup_peak is not None:
            out.append(f"cgroup peak {self.cgroup_peak / MiB:.1f} MiB (page cache included), failcnt {self.failcnt}")
        if self.oom_kills:
            out.append(f"oom_kill {self.oom_kills}")
        return "; ".join(out)


class Runner:
    def __init__(self, env, interval, timeout):
        self.env, self.interval, self.timeout = env, interval, timeout
        self.active = None  # the Tree of the run in progress, for cleaning up on Ctrl-C
        self.runs = []

    def __call__(self, label, args, cache, confinement="none", group=None, timeout=None, extra_env=None):
        env = {**self.env, "GITQUEUE_CACHE": str(cache), **(extra_env or {})}
        token = uuid.uuid4().hex
        env[RUN_VAR] = token
        argv = [sys.executable, "-m", "gitqueue", *map(str, args)]
        if group is not None:
            argv = group.wrap(argv)
        run = Run(label, confinement)
        oom0 = group.oom_kills() if group is not None else 0
        limit = timeout or (self.timeout if confinement != "none" else None)
        say(f"{label} [{confinement}] ...")
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        tree = self.active = Tree(proc.pid, f"{RUN_VAR}={token}", self.interval).start()
        out_chunks = []
        readers = [threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True),
                   threading.Thread(target=self._read_lines, args=(proc.stderr, run, t0), daemon=True)]
        for r in readers:
            r.start()
        usage = None
        try:
            while True:
                got, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if got:
                    break
                if limit is not None and time.monotonic() - t0 > limit:
                    run.timed_out = True
                    self.kill(tree, proc.pid)
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.01)
            run.wall = time.monotonic() - t0
            proc.returncode = run.code = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:  # interrupted
                self.kill(tree, proc.pid)
                proc.wait()
            tree.stop()
            run.cpu = (usage.ru_utime + usage.ru_stime) if usage else 0.0
            # After the tree's last sample: a detached ssh master may hold the pipes open.
            run.cpu += self.stop_leftovers(tree)
            self.active = None
            for r in readers:
                r.join(timeout=5)
            proc.stdout.close()
            proc.stderr.close()
        run.stdout = b"".join(c for c in out_chunks if c).decode(errors="replace")
        rss, pss, split = tree.peak()
        run.peak_kb, run.peak_pss_kb, run.peak_split, run.hwm_kb = rss, pss, split, tree.hwm_sum()
        run.builds = [t for t, line in run.lines if BUILDING.search(line)]
        if run.builds:
            run.window_kb, run.window_pss_kb, run.window_split = tree.peak(since=t0 + run.builds[0])
        if group is not None:
            run.oom_kills = group.oom_kills() - oom0
            run.cgroup_peak, run.failcnt = group.peak_bytes(), group.failcnt()
        self.runs.append(run)
        say(f"  {run.describe()}")
        return run

    @staticmethod
    def _read_lines(stream, run, t0):
        for raw in stream:
            run.lines.append((time.monotonic() - t0, raw.decode(errors="replace").rstrip("\n")))

    @staticmethod
    def kill(tree, root):
        for pid in [root, *tree.alive()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    @staticmethod
    def stop_leftovers(tree):
        """Stop what the run left running (the detached ssh master); its CPU seconds."""
        cpu = 0.0
        left = tree.alive()
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.monotonic() + 3
        while left and time.monotonic() < deadline:
            for pid in list(left):
                try:
                    got, _, usage = os.wait4(pid, os.WNOHANG)
                    if got:
                        cpu += usage.ru_utime + usage.ru_stime
                        left.remove(pid)
                except ChildProcessError:  # not ours to reap: wait until it is gone
                    if not os.path.exists(f"/proc/{pid}"):
                        left.remove(pid)
            time.sleep(0.02)
        kill_and_reap(left)
        return cpu


def kill_and_reap(pids) -> None:
    """SIGKILL each of `pids` and reap it if it is a child."""
    for pid in list(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        reap(pid)


# -- the benchmark ------------------------------------------------------------------------------

@dataclass
class Figure:
    what: str
    measured: str
    goal: str
    verdict: str  # PASS, FAIL, SKIP or "-" (information)


def mib(kb):
    return f"{kb / 1024:.1f} MiB"


def median_of(runs, key):
    values = [key(r) for r in runs]
    return statistics.median(values), min(values), max(values)


def range_text(values_runs, fmt):
    mid, lo, hi = values_runs
    return fmt(mid) if lo == hi else f"{fmt(mid)} (median; {fmt(lo)}-{fmt(hi)})"


class Bench:
    def __init__(self, opts, code, tmp, server, cgroups):
        self.opts, self.code, self.tmp, self.server, self.cgroups = opts, code, tmp, server, cgroups
        self.path = tmp / "q.git"
        self.url = server.url(self.path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITQUEUE_") and k != "PYTHONPATH"}
        env.update(PYTHONPATH=str(code), PYTHONUNBUFFERED="1", XDG_CONFIG_HOME=str(tmp / "config"),
                   GITQUEUE_SSH_COMMAND=server.ssh_command)
        self.env = env
        self.run = Runner(env, opts.sample_ms / 1000, opts.timeout)
        self.figures = []
        self.caches = 0
        self.names = 0
        self.groups = {}

    def cache(self):
        """A new, empty cache directory: short, so that ssh's control socket fits in it."""
        self.caches += 1
        return self.tmp / f"c{self.caches}"

    def worker(self, prefix):
        self.names += 1
        return f"{prefix}{self.names}"

    def gq(self, *args, cache=None, check=True):
        env = {**self.env, "GITQUEUE_CACHE": str(cache or self.tmp / "ca")}
        proc = subprocess.run([sys.executable, "-m", "gitqueue", *map(str, args)], env=env,
                              capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise SystemExit(f"gitqueue {' '.join(map(str, args))}: {proc.stderr.strip()[-800:]}")
        return proc

    def figure(self, what, measured, goal, verdict):
        self.figures.append(Figure(what, measured, goal, verdict))

    def group(self, confinement):
        """The cgroup of a confinement (made once), or None for 'none'; raises LookupError to skip."""
        memory, cpu = CONFINEMENTS[confinement]
        if memory is None and cpu is None:
            return None
        if self.cgroups.version is None:
            raise LookupError(self.cgroups.reason)
        if confinement not in self.groups:
            self.groups[confinement] = self.cgroups.make(confinement, memory, cpu)
        return self.groups[confinement]

    # -- set-up

    def setup(self):
        t = time.monotonic()
        proc = self.gq("init", self.path, "--name", "pkgsrc-29k", "--min-heartbeat-seconds", "0", check=False)
        if proc.returncode != 0:
            say(f"init with --min-heartbeat-seconds 0 failed ({proc.stderr.strip()[-200:]}); without it: "
                "jobs will have no heartbeat")
            self.gq("init", self.path, "--name", "pkgsrc-29k")
        self.gq("import", self.path, FULL)
        say(f"queue made by the code under test: 29k jobs imported in {time.monotonic() - t:.1f} s")
        # Past the narrow bootstrap chain of pkgsrc, so that every claim below finds a job.
        for _ in range(40):
            ready = self.ready()
            if ready is None or ready >= 50:
                break
            self.gq("work", "--queue", self.path, "--worker", "warmup", "--max-jobs", "10", "--", "true")
        say(f"queue advanced: {self.ready()} jobs ready")
        # Deployed as README says: the hook installed (with the git settings it makes, among them
        # the filters a new worker's first fetch asks for) and sshd passing GIT_PROTOCOL on.
        self.gq("hooks", "install", self.path)

    def ready(self):
        import json

        proc = self.gq("status", "--queue", self.path, "--json", check=False)
        try:
            return json.loads(proc.stdout)["counts"]["ready"]
        except (ValueError, KeyError, TypeError):
            return None

    def build_history(self, n):
        """Another worker (own cache, local path: fast) builds n jobs instantly."""
        t = time.monotonic()
        self.gq("work", "--queue", self.path, "--worker", "others", "--max-jobs", n, "--", "true",
                cache=self.tmp / "co")
        say(f"another worker built {n} jobs in {time.monotonic() - t:.0f} s")
        if not self.opts.no_gc:
            # README's master packs its loose objects hourly (cron: gitqueue gc); an absence of
            # hours finds them packed, and the server then answers a fetch without first
            # compressing thousands of loose objects.
            t = time.monotonic()
            self.gq("gc", self.path)
            say(f"the master's gc (its hourly cron) took {time.monotonic() - t:.0f} s")

    # -- figures

    def claim(self, label, cache, confinement="none", group=None, timeout=None):
        return self.run(label, ["claim", "--queue", self.url, "--worker", self.worker("new"), "--json"], cache,
                        confinement, group, timeout)

    def work(self, label, cache, confinement="none", group=None, build_s=QUICK_BUILD_S,
             heartbeat_s=QUICK_HEARTBEAT_S, jobs=3):
        return self.run(label, ["work", "--queue", self.url, "--worker", self.worker("w"), "--max-jobs", jobs,
                                "--heartbeat", heartbeat_s, "--", "sleep", build_s], cache, confinement, group)

    def unconfined_new_worker(self):
        o = self.opts
        claims = [self.claim("cold claim (new worker)", self.cache()) for _ in range(o.runs)]
        statuses = [self.run("cold status", ["status", "--queue", self.url], self.cache()) for _ in range(o.runs)]
        self.figure("memory: new worker's first claim over ssh, peak RSS of all its processes",
                    range_text(median_of(claims, lambda r: r.peak_kb), mib), f"<= {GOAL_CLAIM_MIB} MiB",
                    verdict(all(r.ok for r in claims) and
                            statistics.median(r.peak_kb for r in claims) <= GOAL_CLAIM_MIB * 1024))
        self.figure("cold start: `gitqueue claim` over ssh, empty cache, unconfined",
                    self.time_text(claims), f"<= {GOAL_COLD_S:.0f} s",
                    verdict(all(r.ok for r in claims) and statistics.median(r.wall for r in claims) <= GOAL_COLD_S))
        self.figure("cold start: `gitqueue status` over ssh, empty cache, unconfined",
                    self.time_text(statuses), f"<= {GOAL_COLD_S:.0f} s",
                    verdict(all(r.ok for r in statuses) and
                            statistics.median(r.wall for r in statuses) <= GOAL_COLD_S))
        self.figure("  (information) cold status: peak RSS", range_text(median_of(statuses, lambda r: r.peak_kb),
                                                                         mib), "-", "-")
        local = self.run("cold claim, local path", ["claim", "--queue", self.path, "--worker", self.worker("new")],
                         self.cache())
        self.figure("  (information) cold claim on a local path (issue: 5.2 s, 120 MB)",
                    f"{local.outcome()}, {mib(local.peak_kb)}", "-", "-")
        cache = self.cache()
        cold = self.work("gitqueue work, new worker, 3 builds of sleep 3", cache, build_s=SLOW_BUILD_S,
                         heartbeat_s=SLOW_HEARTBEAT_S)
        warm = self.work("gitqueue work, warm cache, 3 builds of sleep 3", cache, build_s=SLOW_BUILD_S,
                         heartbeat_s=SLOW_HEARTBEAT_S)
        for r, what in ((cold, "a new worker's first `gitqueue work`"), (warm, "`gitqueue work` with a warm cache")):
            if r.window_kb is None:
                measured, good = f"no build started: {r.outcome()}", False
            else:
                # PSS beside it: the ssh master maps the same libcrypto and libc as Python, so
                # the sum of RSS counts those pages twice; the verdict stays on RSS, as asked.
                measured = f"{mib(r.window_kb)} (PSS {mib(r.window_pss_kb)})"
                good = r.ok and r.window_kb <= GOAL_WORK_MIB * 1024
            self.figure(f"memory: {what}, peak RSS from its first build on (builds excluded)", measured,
                        f"<= {GOAL_WORK_MIB} MiB", verdict(good))
        quick = self.work("gitqueue work, warm cache, 3 jobs of 0.1 s", cache)
        self.figure("  (information) per-job overhead in `gitqueue work`, unconfined", self.overhead_text(quick)[0],
                    "-", "-")

    def confined_new_worker(self, confinement):
        try:
            group = self.group(confinement)
        except (LookupError, OSError) as e:
            self.skip(f"[{confinement}] new worker", str(e))
            return
        memory, cpu = CONFINEMENTS[confinement]
        for i in range(self.opts.confined_runs):
            cache = self.cache()
            claim = self.claim("first claim (new worker)", cache, confinement, group)
            work = None
            if claim.ok:
                work = self.work("then gitqueue work, 3 jobs of 0.1 s", cache, confinement, group)
            tag = f"[{confinement}{'' if self.opts.confined_runs == 1 else f' run {i + 1}'}]"
            if memory:
                if work is None:
                    measured = f"first claim {claim.outcome()}; gitqueue work not run"
                else:
                    measured = f"first claim {claim.outcome()}, 3 jobs {work.outcome()}"
                self.figure(f"{tag} new worker: first claim and 3 jobs without an OOM kill", measured, "yes",
                            verdict(claim.ok and work is not None and work.ok and len(work.builds) >= 3))
            if cpu:
                self.figure(f"{tag} new worker: first claim's wall time", claim.outcome(),
                            f"<= {GOAL_SLOW_CLAIM_S:.0f} s", verdict(claim.ok and claim.wall <= GOAL_SLOW_CLAIM_S))
                if work is None:
                    self.figure(f"{tag} each further job's overhead in gitqueue work", "not run: no first claim",
                                f"<= {GOAL_JOB_OVERHEAD_S:.0f} s", "FAIL")
                else:
                    text, worst = self.overhead_text(work)
                    self.figure(f"{tag} each further job's overhead in gitqueue work", text,
                                f"<= {GOAL_JOB_OVERHEAD_S:.0f} s",
                                verdict(work.ok and worst is not None and worst <= GOAL_JOB_OVERHEAD_S))

    def absent(self, base, confinements):
        """A worker back from a long absence: copies of its cache `base` claim again."""
        def copy():
            dest = self.cache()
            shutil.copytree(base, dest, symlinks=True,
                            ignore=lambda d, names: [n for n in names if n.startswith("ssh-")])
            return dest

        for confinement in confinements:
            try:
                group = self.group(confinement)
            except (LookupError, OSError) as e:
                self.skip(f"[{confinement}] worker after a long absence", str(e))
                continue
            memory, cpu = CONFINEMENTS[confinement]
            n = self.opts.runs if confinement == "none" else self.opts.confined_runs
            runs = [self.claim("next claim after a long absence", copy(), confinement, group) for _ in range(n)]
            who = f"worker after a long absence ({self.opts.absent_results} results since)"
            if confinement == "none":
                self.figure(f"memory: {who}: next claim, peak RSS",
                            range_text(median_of(runs, lambda r: r.peak_kb), mib), f"<= {GOAL_CLAIM_MIB} MiB",
                            verdict(all(r.ok for r in runs) and
                                    statistics.median(r.peak_kb for r in runs) <= GOAL_CLAIM_MIB * 1024))
                self.figure(f"cold start: {who}: next claim, unconfined", self.time_text(runs),
                            f"<= {GOAL_COLD_S:.0f} s",
                            verdict(all(r.ok for r in runs) and statistics.median(r.wall for r in runs) <= GOAL_COLD_S))
                continue
            for r in runs:
                if memory:
                    self.figure(f"[{confinement}] {who}: next claim without an OOM kill", r.outcome(), "yes",
                                verdict(r.ok))
                if cpu:
                    self.figure(f"[{confinement}] {who}: next claim's wall time", r.outcome(),
                                f"<= {GOAL_SLOW_CLAIM_S:.0f} s", verdict(r.ok and r.wall <= GOAL_SLOW_CLAIM_S))

    def skip(self, what, reason):
        say(f"skipped {what}: {reason}")
        self.figure(f"{what}: skipped", reason[:90], "-", "SKIP")

    @staticmethod
    def time_text(runs):
        if not all(r.ok for r in runs):
            return "; ".join(r.outcome() for r in runs)
        return range_text(median_of(runs, lambda r: r.wall), lambda s: f"{s:.2f} s")

    @staticmethod
    def overhead_text(work):
        """('a, b s (then c s to exit)', worst of the intervals between builds) of a work run."""
        b = work.builds
        if len(b) < 2:
            return f"{len(b)} build(s) seen: {work.outcome()}", None
        gaps = [later - earlier - QUICK_BUILD_S for earlier, later in zip(b, b[1:])]
        tail = work.wall - b[-1] - QUICK_BUILD_S
        text = (f"{max(gaps):.1f} s (between builds: {', '.join(f'{g:.1f}' for g in gaps)}; "
                f"start to 1st build {b[0]:.1f}; last report and exit {tail:.1f})")
        return text, max(gaps)


def verdict(good):
    return "PASS" if good else "FAIL"


def reap_strays():
    """Stop and reap what is still a child of this process (adopted by the subreaper)."""
    me = os.getpid()
    strays = [int(n) for n in os.listdir("/proc") if n.isdigit() and parent_of(int(n)) == me]
    for pid in strays:
        if status_of(pid) is not None:  # not yet a zombie
            say(f"stopping a leftover process {pid} ({status_of(pid)[0]})")
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    for pid in strays:
        if reap(pid) is None and os.path.exists(f"/proc/{pid}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            reap(pid)


def code_version(code):
    proc = subprocess.run(["git", "-C", str(code), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return proc.stdout.strip() or "not a git checkout"


def print_table(figures, runs, header):
    print(header)
    width = max([len(f.what) for f in figures] + [20])
    mwidth = max([len(f.measured) for f in figures] + [10])
    print(f"{'figure':{width}}  {'measured':{mwidth}}  {'goal':9}  result")
    for f in figures:
        print(f"{f.what:{width}}  {f.measured:{mwidth}}  {f.goal:9}  {f.verdict}")
    print("\nruns (peak RSS: the highest sum of VmRSS over the worker's processes, sampled; PSS at that "
          "moment; sum of VmHWM: an upper bound, as if every process had peaked at once):")
    for r in runs:
        print(f"- {r.describe()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", default=str(ROOT), help="directory holding the gitqueue package to measure "
                    "(default: this repository)")
    ap.add_argument("--quick", action="store_true", help="one run each, no CPU quota, 1,000 absent results")
    ap.add_argument("--runs", type=int, help="runs of each cheap unconfined figure (median; default 3)")
    ap.add_argument("--confined-runs", type=int, default=1, help="runs of each confined figure (default 1)")
    ap.add_argument("--confinements", help="comma-separated among none,64M,5%%,64M+5%% (default all; "
                    "--quick: none,64M)")
    ap.add_argument("--absent-results", type=int, help="jobs built by others during the absence (default 3000)")
    ap.add_argument("--no-gc", action="store_true",
                    help="no `gitqueue gc` on the master during the absence (as README's hourly cron would run)")
    ap.add_argument("--timeout", type=float, default=420, help="seconds a confined process may take (default 420)")
    ap.add_argument("--cgroup", choices=("auto", "v1", "v2", "none"), default="auto",
                    help="which cgroups to use; none: skip the confinements [GITQUEUE_BENCH_NO_CGROUPS=1]")
    ap.add_argument("--sample-ms", type=float, default=10, help="memory sampling interval (default 10 ms)")
    opts = ap.parse_args()
    opts.runs = opts.runs or (1 if opts.quick else 3)
    opts.absent_results = opts.absent_results or (1000 if opts.quick else 3000)
    chosen = (opts.confinements or ("none,64M" if opts.quick else ",".join(CONFINEMENTS))).split(",")
    unknown = [c for c in chosen if c not in CONFINEMENTS]
    if unknown:
        raise SystemExit(f"unknown confinement(s) {', '.join(unknown)}; choose among {', '.join(CONFINEMENTS)}")
    code = Path(opts.code).resolve()
    if not (code / "gitqueue" / "__init__.py").exists():
        raise SystemExit(f"{code}: no gitqueue package there (--code DIR: the directory holding gitqueue/)")
    if not FULL.exists():
        raise SystemExit(f"{FULL} is absent: this benchmark needs the full pkgsrc scan")
    from sshd import SshServer, sshd_available

    reason = sshd_available()
    if reason:
        raise SystemExit(f"no sshd: {reason}")
    if not set_subreaper():
        say("warning: cannot become a child subreaper: detached ssh masters are neither measured nor stopped")
    # A TERM or HUP ends the run like Ctrl-C: the finally clauses clean up.
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda signum, frame: sys.exit(128 + signum))

    header = (f"gitqueue at {code} ({code_version(code)}), Python {sys.version.split()[0]}; 29,022-job queue over "
              f"ssh to 127.0.0.1; MiB = 2^20 bytes")
    say(header)
    cgroups = Cgroups(opts.cgroup)
    say(f"cgroups: {cgroups.version or 'none: ' + cgroups.reason}")
    tmp = Path(tempfile.mkdtemp(prefix="gqsm-", dir="/tmp"))
    server = bench = None
    started = time.monotonic()
    # `python -m gitqueue` puts the current directory first on sys.path: run from a checkout, every
    # process would run that checkout's gitqueue, not --code's.
    here = os.getcwd()
    os.chdir(tmp)
    try:
        server = SshServer(tmp / "sshd", accept_env=["GIT_PROTOCOL"]).start()
        bench = Bench(opts, code, tmp, server, cgroups)
        bench.setup()
        # The absent worker's cache: its first claim while the queue is fresh.
        absent_base = bench.cache()
        bench.claim("first claim of the worker that will be away", absent_base)
        if "none" in chosen:
            bench.unconfined_new_worker()
        # Cheap confinements first, the slow ones (CPU quota) last.
        for confinement in sorted((c for c in chosen if c != "none"), key=lambda c: CONFINEMENTS[c][1] or 0):
            bench.confined_new_worker(confinement)
        bench.build_history(opts.absent_results)
        bench.absent(absent_base, sorted(chosen, key=lambda c: (c != "none", CONFINEMENTS[c][1] or 0)))
        if "none" in chosen:
            late = bench.claim("cold claim (new worker) after the history", bench.cache())
            bench.figure(f"  (information) new worker's first claim after {opts.absent_results} results",
                         f"{late.outcome()}, {mib(late.peak_kb)}", "-", "-")
    finally:
        if bench is not None and bench.run.active is not None:
            Runner.kill(bench.run.active, bench.run.active.root)
            Runner.stop_leftovers(bench.run.active)
        if server is not None:
            server.stop()
        cgroups.remove_all()
        reap_strays()
        os.chdir(here)
        shutil.rmtree(tmp, ignore_errors=True)
        if bench is not None and bench.figures:
            print_table(bench.figures, bench.run.runs, header + f"; {time.monotonic() - started:.0f} s in all")
    say(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        say("interrupted; cleaned up")
        sys.exit(130)
