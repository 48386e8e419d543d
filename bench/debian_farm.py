"""A real farm on one machine: Debian source packages built by three volunteer accounts over ssh.

    sudo python3 bench/debian_farm.py [--root DIR] [--keep] [--nocheck] [--ttl 60]

Needs root on Debian or Ubuntu with apt, and the network to the distribution's mirror. It sets
up what README.md ("A real deployment in five minutes", the worker set-up) and docs/trust.md
describe, on this one machine, and runs a bulk build through it:

1. **apt.** Enables `deb-src` (adds it to `Types:` of /etc/apt/sources.list.d/debian.sources or
   ubuntu.sources, or a `deb-src` line per `deb` line of sources.list in
   sources.list.d/gitqueue-deb-src.list, and says so), runs `apt-get update`, installs
   openssh-server, rsync, git, dpkg-dev, fakeroot and build-essential (devscripts is not needed:
   `apt-get source` and `dpkg-buildpackage` come with apt and dpkg-dev).
2. **The packages.** From CANDIDATES, small source packages with real Build-Depends edges among
   them, it keeps those whose newest version's source the mirror serves (`apt-get source
   --download-only` of each, newest first: a mirror may list a version it does not have), and
   makes the graph from their `apt-cache showsrc` records: a job `SOURCE-VERSION` per source
   package (the version without its epoch, as .deb file names have it), its deps the chosen
   packages that build a binary package named in its Build-Depends (-Arch, -Indep; arch
   restrictions and build profiles honoured). It refuses to go on with fewer than three chains
   of three packages. Then `apt-get build-dep -y` of each, as root, up front: the volunteers'
   accounts cannot install packages. So **the chain's edges order the builds and move the
   dependencies' .debs through the package tree (each build checks they arrived and logs their
   names), while the build itself uses the Build-Depends installed on the machine** from the
   archive (the same versions, but not the bytes the farm built).
3. **The master.** A system account `gq-demo-bulk` owns `srv/queue.git` and `srv/packages`
   under a temporary root (`--root DIR` to choose). The queue is signed: administrators `alice`
   (her key stays with root, as on her own machine) and `cron` (its key in the account's
   ~/.ssh, for reclaim); `gitqueue init` with `--packages-url ssh://gq-demo-bulk@127.0.0.1:PORT/
   ...`, `gitqueue import`, `gitqueue worker add` for each volunteer, `gitqueue hooks install`,
   and the account's authorized_keys from `gitqueue serve --print-authorized-keys`. A private
   sshd on 127.0.0.1 and a free high port (its own host key, config and pid file; `ExposeAuthInfo
   yes`, so `serve` checks the key; `AuthorizedKeysFile` one file per account, readable by it)
   lets only that account in. Three volunteer accounts `gq-demo-vol1..3` each make their own key,
   put the master's host key in ~/.ssh/known_hosts as README says, write
   ~/.config/gitqueue/config.toml and run `gitqueue work` as themselves (`runuser`).
   The accounts run /usr/bin/python3 with a copy of this checkout's gitqueue and its
   dependencies in a world-readable directory, as tests/farm.py does: the interpreter that runs
   this script may live where other accounts cannot read (/root), and a copy of the very code
   under test needs no wheel build and no virtual environment per run.
4. **The build command** (`gitqueue work -- /usr/bin/python3 .../debian_farm.py --build-step`):
   in a fresh directory, `apt-get source SOURCE=VERSION` (as the volunteer: it downloads and
   unpacks), `dpkg-buildpackage -us -uc -b` with fakeroot (DEB_BUILD_OPTIONS noautodbgsym; and
   nocheck for the packages in NOCHECK, whose test suites alone would take longer than the rest
   of the farm, or for all with --nocheck), then copies the .deb files into $GITQUEUE_OUTPUT.
   dpkg-buildpackage chooses its own parallelism (make -j2 here). Before that it
   checks that each dependency's .debs are in $GITQUEUE_PACKAGES/All (gitqueue work fetched them
   through the forced command) and logs their names beside the version installed from the
   archive.
   The queue allows the file names `*_{version}_*.deb` (`gitqueue init --package-file`): any
   binary package at the job's version. The binary names of a source package (libbsd0,
   libbsd-dev for libbsd) are not derived from its name, so no `{base}` pattern covers them all
   (libonig builds libonig5; nftables python3-nftables), and package_files cannot list a job's
   own binary names (the `Binary:` field of its .dsc): that tighter rule is not expressible. The
   version still binds a file name to its job, unless two jobs share a version: the script
   refuses such a set, since either's worker could then take the other's file names in All/.
   Neither rule binds the contents: publish reads no .deb control data, so a package named
   libbsd0_0.11.7-2_amd64.deb may say it is anything (docs/trust.md: a package is as
   trustworthy as its builder).
5. **A crash.** Once a long build has run for a while (--crash-after), its worker's machine
   "crashes": SIGKILL to the worker's process group and to every other process of that account
   (its build's own session, its ssh master). The lease is reclaimed after the lease TTL (--ttl,
   60 s; reclaim runs every 3 s), another worker takes the job, and the crashed machine comes
   back (the worker is started again) once that has happened. With --restart-now it comes back
   at once instead, within the TTL: the new `gitqueue work` finds the lock file of the build
   its predecessor lost (CACHE/running/TOKEN, its flock gone with the killed process) and gives
   that lease back before it claims, so the job goes on without waiting for the TTL.
   Publish runs every 10 s. Reclaim and publish run as the master's account, as its cron would.
6. **The end.** `gitqueue publish`, `gitqueue html OUTDIR`, `gitqueue verify --admin-key
   alice.pub --packages TREE` and `gitqueue status`, as the master's account; every job must
   have a success (a failure's log is shown with `gitqueue log JOB`), All/pkg_summary.gz and
   All/SHA512 must list exactly the published .debs, with their checksums, and verify must
   pass.
7. **Figures.** Time per phase, packages and .debs, claim and release round trips over ssh by a
   fourth registered account (`gq-demo-probe`: it claims each ready job once before the workers
   start and gives it back, so the history shows its releases, and the job is not offered to it
   again) and heartbeat round trips by it during the build (median of N), bytes moved (what
   landed in All/ and logs/; the dependencies' .debs the workers fetched; the sources the builds
   downloaded; the queue repository at the start and the end), commits per action, reclaims, and
   the wall time.
8. **Cleanup.** Stops the workers, the probe's and workers' ssh masters and sshd, and removes the
   temporary root unless --keep. The accounts stay (with their ~/.ssh and
   ~/.config/gitqueue, rewritten by the next run); `userdel -r NAME` removes one.

Exit 0 when every check passed, 1 otherwise (the figures are printed either way).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
PYTHON = "/usr/bin/python3"
LIBRARIES = ("gitqueue", "dulwich", "click", "filelock", "tomli_w")
PREFIX = "gq-demo-"
BULK = PREFIX + "bulk"
VOLUNTEERS = ("vol1", "vol2", "vol3")  # worker names; accounts gq-demo-vol1..3
PROBE = "probe"  # the account that measures round trips
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("openssh-server", "openssh-client", "rsync", "git", "dpkg-dev", "fakeroot", "build-essential")

# Source packages (bookworm), in chains by their Build-Depends, with the seconds apt-get source
# and dpkg-buildpackage took for each on a 2-core machine, two builds at a time (the estimates
# order the build by its critical path). What the mirror does not serve is left out, and then
# so are packages left without an edge (a mirror may list a version whose files it lacks: here
# netcat-openbsd, minisign, libmnl, libnftnl and nftables, and the security updates of jq and
# libzstd, so libsodium went too).
CANDIDATES = {
    # libmd -> libbsd -> {libedit, signify-openbsd, rdate, mtree-netbsd, netcat-openbsd}
    "libmd": 45, "libbsd": 65, "libedit": 80, "signify-openbsd": 10, "rdate": 20, "mtree-netbsd": 20,
    "netcat-openbsd": 20,
    # libonig -> jq -> jose; jansson -> jose, jansson -> jshon
    "libonig": 60, "jq": 45, "jansson": 60, "jose": 100, "jshon": 10,
    # lz4 -> libzstd -> squashfs-tools; lz4, lzo2 -> squashfs-tools
    "lz4": 20, "libzstd": 260, "lzo2": 85, "squashfs-tools": 20,
    # libevent -> tmux; libutempter -> tmux
    "libevent": 90, "libutempter": 5, "tmux": 60,
    # libsodium -> minisign
    "libsodium": 160, "minisign": 15,
}
# Built without their test suites (DEB_BUILD_OPTIONS=nocheck and the nocheck build profile), and why.
NOCHECK = {
    "jq": "its test suite runs under valgrind: 13 minutes here, as long as the rest of the farm's builds",
    "lz4": "its tests ran for more than 8 minutes here (stopped), 20 s without",
    "libzstd": "4 minutes without its tests here, the longest build already; its suite is larger than lz4's",
}
MIN_CHAINS = 3  # chains of three packages (two edges) at least


def say(text: str = "") -> None:
    print(text, flush=True)


def run(argv, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run([str(a) for a in argv], **kw)
    if check and proc.returncode != 0:
        raise SystemExit(f"{shlex.join(map(str, argv))} exited {proc.returncode}:\n"
                         f"{(proc.stderr or '')[-3000:]}{(proc.stdout or '')[-2000:]}")
    return proc


# -- apt --------------------------------------------------------------------------------------------


def check_platform() -> None:
    if os.geteuid() != 0:
        raise SystemExit("debian_farm.py needs root: it creates accounts, installs packages and runs sshd")
    ids = set()
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key in ("ID", "ID_LIKE"):
                ids.update(value.strip('"').split())
        break
    if not ids & {"debian", "ubuntu"} or shutil.which("apt-get") is None:
        raise SystemExit("debian_farm.py needs Debian or Ubuntu with apt-get")
    for tool in ("useradd", "usermod", "runuser"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    if not os.access(PYTHON, os.X_OK):
        raise SystemExit(f"{PYTHON} not found")


def enable_deb_src() -> list[str]:
    """Add deb-src where the system's sources lack it; return what was changed."""
    changed = []
    parts = Path("/etc/apt/sources.list.d")
    for name in ("debian.sources", "ubuntu.sources"):
        path = parts / name
        if not path.exists():
            continue
        text = path.read_text()
        stanzas = text.split("\n\n")
        out = []
        for stanza in stanzas:
            lines = stanza.split("\n")
            for i, line in enumerate(lines):
                if line.startswith("Types:"):
                    types = line[len("Types:"):].split()
                    if "deb" in types and "deb-src" not in types:
                        lines[i] = "Types: " + " ".join(types + ["deb-src"])
            out.append("\n".join(lines))
        new = "\n\n".join(out)
        if new != text:
            shutil.copy2(path, f"{path}.gitqueue-bak")
            path.write_text(new)
            changed.append(f"added deb-src to Types: in {path} (the old file is {path}.gitqueue-bak)")
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        lines = legacy.read_text().splitlines()
        if not any(line.strip().startswith("deb-src") for line in lines):
            src = [re.sub(r"^\s*deb\s", "deb-src ", line) for line in lines if re.match(r"^\s*deb\s", line)]
            if src:
                target = parts / "gitqueue-deb-src.list"
                target.write_text("\n".join(src) + "\n")
                changed.append(f"wrote {target}: a deb-src line for each deb line of {legacy}")
    return changed


def apt_env() -> dict:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


# -- choosing the packages --------------------------------------------------------------------------


def showsrc(names) -> dict[str, list[dict]]:
    """{source: [record, ...]} from `apt-cache showsrc --only-source`."""
    proc = run(["apt-cache", "showsrc", "--only-source", *names], check=False)
    out: dict[str, list[dict]] = {}
    for chunk in re.split(r"\n\s*\n", proc.stdout):
        record, key = {}, None
        for line in chunk.splitlines():
            if line.startswith((" ", "\t")) and key:
                record[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                record[key] = value.strip()
        if record.get("Package") in names:
            out.setdefault(record["Package"], []).append(record)
    return out


def compare_versions(a: str, b: str) -> int:
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    return -1 if lt else 1


def file_version(version: str) -> str:
    """The version as .deb file names have it: without the epoch."""
    return version.split(":", 1)[1] if ":" in version else version


def relation_names(record: dict, arch: str, profiles: set[str]) -> set[str]:
    """Package names in a source record's Build-Depends fields that apply on `arch` with
    `profiles` active (every alternative of an `a | b` counts)."""
    names = set()
    text = ", ".join(record.get(k, "") for k in ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep"))
    for relation in text.split(","):
        for alternative in relation.split("|"):
            alternative = alternative.strip()
            m = re.match(r"([a-z0-9][a-z0-9.+-]*)(?::[a-z0-9-]+)?", alternative)
            if not m:
                continue
            archs = re.search(r"\[([^]]*)\]", alternative)
            if archs and not _arch_applies(archs.group(1).split(), arch):
                continue
            groups = re.findall(r"<([^>]*)>", alternative)
            if groups and not any(all((t[1:] not in profiles) if t.startswith("!") else (t in profiles)
                                      for t in g.split()) for g in groups):
                continue
            names.add(m.group(1))
    return names


def _arch_applies(tokens: list[str], arch: str) -> bool:
    def hit(token):
        return token in (arch, "any", "linux-any", f"linux-{arch}", f"any-{arch}")

    negated = [t[1:] for t in tokens if t.startswith("!")]
    if negated:
        return not any(hit(t) for t in negated)
    return any(hit(t) for t in tokens)


def probe_sources(names: list[str], records: dict[str, list[dict]], where: Path) -> tuple[dict, dict, list[str]]:
    """Pick, per source, the newest version whose files the mirror serves.

    Returns ({source: record}, {source: bytes downloaded}, [lines about what was left out]).
    """
    chosen, sizes, notes = {}, {}, []
    for source in names:
        versions = sorted(records.get(source, []), key=functools.cmp_to_key(
            lambda a, b: compare_versions(a["Version"], b["Version"])), reverse=True)
        if not versions:
            notes.append(f"{source}: no source package of that name in the apt sources")
            continue
        failed = []
        for record in versions:
            if record["Version"] in failed:
                continue
            d = where / f"{source}-{len(failed)}"
            d.mkdir()
            proc = run(["apt-get", "source", "-qq", "--download-only", "--only-source",
                        f"{source}={record['Version']}"], check=False, cwd=d)
            if proc.returncode == 0:
                chosen[source] = record
                sizes[source] = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
                break
            failed.append(record["Version"])
            errors = [line for line in proc.stderr.splitlines() if line.startswith("E:")]
            reason = (errors[0][3:].strip() if errors else f"exit {proc.returncode}")[:160]
            notes.append(f"{source} {record['Version']}: the mirror does not serve it ({reason})")
    return chosen, sizes, notes


def make_graph(chosen: dict[str, dict], nocheck: bool) -> tuple[list[dict], dict]:
    """The JSONL jobs and the build step's table {job: {source, version, file_version, binaries,
    nocheck}}; `nocheck` for every package, else for those in NOCHECK."""
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    binaries = {s: [b.strip() for b in r.get("Binary", "").split(",") if b.strip()] for s, r in chosen.items()}
    job_of = {s: f"{s}-{file_version(r['Version'])}" for s, r in chosen.items()}
    versions = {}
    for s, r in chosen.items():
        versions.setdefault(file_version(r["Version"]), []).append(s)
    shared = {v: ss for v, ss in versions.items() if len(ss) > 1}
    if shared:
        raise SystemExit("two chosen packages share a version, so the package file rule *_{version}_*.deb would let "
                         "either's worker take the other's file names: "
                         + "; ".join(f"{v}: {', '.join(ss)}" for v, ss in shared.items()))
    jobs, table = [], {}
    for s, r in chosen.items():
        profiles = {"nocheck"} if nocheck or s in NOCHECK else set()
        needs = relation_names(r, arch, profiles)
        deps = sorted(job_of[o] for o in chosen if o != s and needs & set(binaries[o]))
        section = (r.get("Section") or "misc").split("/")[-1]
        section = re.sub(r"[^A-Za-z0-9._+-]", "-", section) or "misc"
        jobs.append({"name": job_of[s], "version": file_version(r["Version"]), "deps": deps,
                     "pkgpath": f"{section}/{s}", "est_seconds": CANDIDATES.get(s, 60)})
        table[job_of[s]] = {"source": s, "version": r["Version"], "file_version": file_version(r["Version"]),
                            "binaries": binaries[s], "nocheck": bool(profiles)}
    return jobs, table


def drop_unconnected(jobs: list[dict]) -> tuple[list[dict], list[str]]:
    """Leave out the jobs with no edge to the others (a package whose dependents the mirror
    lacks tests nothing the farm is for, and takes build time)."""
    needed = {d for j in jobs for d in j["deps"]}
    keep = [j for j in jobs if j["deps"] or j["name"] in needed]
    return keep, [j["name"] for j in jobs if j not in keep]


def components(jobs: list[dict]) -> list[set[str]]:
    """The jobs grouped by the edges between them, either way."""
    group = {j["name"]: {j["name"]} for j in jobs}
    for j in jobs:
        for d in j["deps"]:
            if group[d] is not group[j["name"]]:
                merged = group[d] | group[j["name"]]
                for n in merged:
                    group[n] = merged
    return list({id(g): g for g in group.values()}.values())


def chains(jobs: list[dict]) -> list[list[str]]:
    """One longest dependency chain ending at each job that nothing else needs."""
    deps = {j["name"]: j["deps"] for j in jobs}
    needed = {d for j in jobs for d in j["deps"]}

    @functools.lru_cache(None)
    def longest(name):
        best = []
        for d in deps[name]:
            path = longest(d)
            if len(path) > len(best):
                best = path
        return best + [name]

    return sorted((longest(n) for n in deps if n not in needed), key=len, reverse=True)


# -- accounts, sshd ----------------------------------------------------------------------------------


def ensure_account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "--system", "--create-home", "--shell", "/bin/sh", name])
        # sshd refuses keys for a locked account ("!" in the password field); "*" is no password.
        run(["usermod", "-p", "*", name])
        return pwd.getpwnam(name)


def processes_of(uid: int) -> list[int]:
    """The live processes (not zombies) whose real user is `uid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                out.append(int(entry))
        except (OSError, ValueError, KeyError):
            continue
    return out


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc."""
    kids: dict[int, list[int]] = {}
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


def kill_pids(pids) -> int:
    n = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            n += 1
        except ProcessLookupError:
            pass
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """A private sshd on 127.0.0.1: its own host key, config, pid file and log; one
    authorized_keys file per account; only the master's account may log in."""

    def __init__(self, directory: Path, account: str):
        self.dir = directory
        self.dir.mkdir(mode=0o755)
        self.host_key = self.dir / "ssh_host_ed25519_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gq-demo-master", "-f", self.host_key])
        self.account = account
        self.port = 0
        self.proc = None

    def authorized_keys(self, user: str) -> Path:
        return self.dir / f"authorized_keys.{user}"

    def known_hosts_line(self) -> str:
        key = Path(f"{self.host_key}.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for _ in range(3):
            self.port = free_port()
            config = self.dir / "sshd_config"
            config.write_text("\n".join([
                "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {self.host_key}",
                f"AuthorizedKeysFile {self.dir}/authorized_keys.%u", f"AllowUsers {self.account}",
                "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "PermitRootLogin no", "UsePAM no", "ExposeAuthInfo yes",
                # StrictModes checks every directory above the keys file, and /tmp is world-writable.
                "StrictModes no",
                f"PidFile {self.dir}/sshd.pid", "LogLevel VERBOSE", "PrintMotd no", "X11Forwarding no",
                "AllowTcpForwarding no", "UseDNS no", "MaxStartups 100:30:200", "MaxSessions 100", ""]))
            run(["/usr/sbin/sshd", "-t", "-f", config])
            log = self.dir / "sshd.log"
            self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(log)],
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                        s.settimeout(1)
                        if s.recv(4).startswith(b"SSH-"):
                            return
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise SystemExit(f"sshd did not start; see {self.dir}/sshd.log")

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = children_of(self.proc.pid)  # the sessions still open
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        kill_pids(pids)
        self.proc = None


# -- the farm ----------------------------------------------------------------------------------------


class Farm:
    def __init__(self, opts):
        self.opts = opts
        self.t0 = time.monotonic()
        self.phases: dict[str, float] = {}
        self.figures: dict[str, object] = {}
        self.problems: list[str] = []
        self.workers: dict[str, dict] = {}
        self.sshd = None
        if opts.root:
            self.root = Path(opts.root).resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            if any(self.root.iterdir()):
                raise SystemExit(f"--root {self.root} is not empty")
        else:
            self.root = Path(tempfile.mkdtemp(prefix="gq-debian-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.lib = self.root / "lib"
        self.srv = self.root / "srv"
        self.repo = self.srv / "queue.git"
        self.tree = self.srv / "packages"
        self.admin = self.root / "admin"  # alice's machine: root only
        self.pub = self.root / "pub"  # public keys anyone may read
        self.html = self.srv / "html"  # the report, where a web server would serve it
        self.logs = self.root / "logs"

    # -- running things as the accounts

    def account(self, name: str) -> pwd.struct_passwd:
        return pwd.getpwnam(name)

    def as_user(self, user: str, argv, env: dict | None = None, **kw):
        home = self.account(user).pw_dir
        base = {"HOME": home, "USER": user, "LOGNAME": user, "PATH": PATH, "LANG": "C.UTF-8"}
        return ["runuser", "-u", user, "--", "env", "-i", *[f"{k}={v}" for k, v in {**base, **(env or {})}.items()],
                *map(str, argv)]

    def gq_argv(self, user: str, *args, env: dict | None = None):
        return self.as_user(user, [PYTHON, "-m", "gitqueue", *args], {"PYTHONPATH": self.lib, **(env or {})})

    def as_bulk(self, *args, check=True, signing=False):
        """`gitqueue ARGS` as the master's account (as its cron would), with its own cache."""
        extra = ["--signing-key", f"{self.account(BULK).pw_dir}/.ssh/reclaim-admin"] if signing else []
        return run(self.gq_argv(BULK, *extra, *args, env={"GITQUEUE_CACHE": self.srv / "cache"}), check=check)

    def as_admin(self, *args):
        """`gitqueue ARGS` as alice, an administrator with a shell on the master (as root here)."""
        env = {**os.environ, "PYTHONPATH": str(self.lib), "GITQUEUE_CACHE": str(self.admin / "cache"),
               "GITQUEUE_SIGNING_KEY": str(self.admin / "alice")}
        env.pop("GITQUEUE_CONFIG", None)
        proc = run([PYTHON, "-m", "gitqueue", *args], env=env)
        run(["chown", "-R", f"{BULK}:{BULK}", self.srv])  # what root wrote goes back to the account
        return proc

    def phase(self, name: str, started: float) -> None:
        self.phases[name] = time.monotonic() - started
        say(f"== {name}: {self.phases[name]:.1f} s")

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.t0:6.0f} s]"

    # -- 1. apt

    def setup_apt(self) -> None:
        t = time.monotonic()
        say("== apt: deb-src, apt-get update, the tools")
        for line in enable_deb_src():
            say(f"   {line}")
        run(["apt-get", "update", "-q"], env=apt_env())
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *TOOLS], env=apt_env())
        self.phase("apt: update and tools", t)

    # -- 2. packages

    def choose(self) -> None:
        t = time.monotonic()
        say("== packages: which sources the mirror serves, the graph")
        names = self.opts.packages.split(",") if self.opts.packages else list(CANDIDATES)
        records = showsrc(names)
        with tempfile.TemporaryDirectory(prefix="gq-debian-probe-") as tmp:
            self.chosen, sizes, notes = probe_sources(names, records, Path(tmp))
        for note in notes:
            say(f"   left out: {note}")
        self.figures["source check bytes"] = sum(sizes.values())
        jobs, self.table = make_graph(self.chosen, self.opts.nocheck)
        self.jobs, alone = drop_unconnected(jobs)
        for name in alone:
            say(f"   left out: {name}: no edge to the other packages the mirror serves")
            source = self.table.pop(name)["source"]
            del self.chosen[source]
        found = [c for c in chains(self.jobs) if len(c) >= 3]
        for c in chains(self.jobs):
            say(f"   chain: {' -> '.join(c)}")
        groups = [g for g in components(self.jobs) if any(set(c) <= g for c in found)]
        say(f"   {len(self.jobs)} jobs, {sum(len(j['deps']) for j in self.jobs)} edges; "
            f"{len(groups)} groups of packages with a chain of three")
        if len(groups) < MIN_CHAINS and not self.opts.packages:
            raise SystemExit(f"only {len(groups)} separate chains of three packages among what the mirror serves; "
                             f"{MIN_CHAINS} are needed")
        self.figures["chains"] = [" -> ".join(c) for c in found]
        self.phase("packages: source check and graph", t)
        t = time.monotonic()
        say(f"== build-deps: apt-get build-dep of {len(self.chosen)} source packages")
        for _job, info in self.table.items():
            run(["apt-get", "build-dep", "-y", "-q", "--only-source", f"{info['source']}={info['version']}"],
                env={**apt_env(), **({"DEB_BUILD_PROFILES": "nocheck"} if info["nocheck"] else {})})
        for source, why in NOCHECK.items():
            if source in self.chosen and not self.opts.nocheck:
                say(f"   {source} is built with nocheck: {why}")
        self.phase("build-deps", t)

    # -- 3. the master and the volunteers

    def setup_master(self) -> None:
        t = time.monotonic()
        say(f"== master: accounts, queue, hook, sshd, volunteers (root {self.root})")
        self._copy_libraries()
        for d in (self.admin,):
            d.mkdir(mode=0o700)
        self.pub.mkdir(mode=0o755)
        self.logs.mkdir(mode=0o755)
        bulk = ensure_account(BULK)
        self.accounts = {w: ensure_account(PREFIX + w) for w in (*VOLUNTEERS, PROBE)}
        self.srv.mkdir(mode=0o755)
        shutil.chown(self.srv, BULK, BULK)
        run(self.as_user(BULK, ["mkdir", "-p", self.tree, self.srv / "cache", self.html]))
        # The queue as README's deployment makes it (git's receive settings first).
        run(self.as_user(BULK, ["git", "init", "-q", "--bare", "--initial-branch=main", self.repo]))
        for key, value in (("receive.denyNonFastForwards", "true"), ("receive.denyDeletes", "true"),
                           ("receive.autogc", "false")):
            run(self.as_user(BULK, ["git", "-C", self.repo, "config", key, value]))
        # Keys: alice's stays with root; cron's reclaim key lives in the account's ~/.ssh.
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", self.admin / "alice"])
        shutil.copy(self.admin / "alice.pub", self.pub / "alice.pub")
        ssh_dir = Path(bulk.pw_dir) / ".ssh"
        run(self.as_user(BULK, ["mkdir", "-p", "-m", "700", ssh_dir]))
        run(self.as_user(BULK, ["rm", "-f", ssh_dir / "reclaim-admin", ssh_dir / "reclaim-admin.pub"]))
        run(self.as_user(BULK, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cron-reclaim",
                                "-f", ssh_dir / "reclaim-admin"]))
        shutil.copy(ssh_dir / "reclaim-admin.pub", self.pub / "cron.pub")
        os.chmod(self.pub / "cron.pub", 0o644)
        # Each volunteer makes its own key (the probe too).
        for worker, acct in self.accounts.items():
            home = Path(acct.pw_dir)
            run(self.as_user(acct.pw_name, ["mkdir", "-p", "-m", "700", home / ".ssh", home / ".config/gitqueue"]))
            run(self.as_user(acct.pw_name, ["rm", "-f", home / ".ssh/id_ed25519", home / ".ssh/id_ed25519.pub"]))
            run(self.as_user(acct.pw_name, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", worker,
                                            "-f", home / ".ssh/id_ed25519"]))
            shutil.copy(home / ".ssh/id_ed25519.pub", self.pub / f"{worker}.pub")
            os.chmod(self.pub / f"{worker}.pub", 0o644)
        self.sshd = Sshd(self.root / "sshd", BULK)
        self.sshd.start()
        self.url = f"ssh://{BULK}@127.0.0.1:{self.sshd.port}{self.repo}"
        packages_url = f"ssh://{BULK}@127.0.0.1:{self.sshd.port}{self.tree}"
        graph = self.root / "graph.jsonl"
        graph.write_text("".join(json.dumps(j) + "\n" for j in self.jobs))
        (self.lib / "debian.json").write_text(json.dumps(self.table, indent=1))
        os.chmod(self.lib / "debian.json", 0o644)
        fields = (line.partition("=") for line in Path("/etc/os-release").read_text().splitlines())
        os_release = "{ID}-{VERSION_ID}".format(**{k: v.strip('"') for k, _, v in fields})
        self.as_admin("init", self.repo, "--name", f"{os_release}-{os.uname().machine}", "--arch", os.uname().machine,
                      "--os-release", os_release, "--lease-ttl", self.opts.ttl, "--packages-url", packages_url,
                      "--admin", f"alice={self.pub / 'alice.pub'}", "--admin", f"cron={self.pub / 'cron.pub'}",
                      "--package-file", "*_{version}_*.deb")
        say("   " + self.as_admin("import", self.repo, graph).stdout.strip())
        for worker in (*VOLUNTEERS, PROBE):
            self.as_admin("worker", "add", worker, "--key", self.pub / f"{worker}.pub", "--queue", self.repo,
                          "--owner", f"{PREFIX}{worker}", "--arch", os.uname().machine)
        say("   " + self.as_bulk("hooks", "install", self.repo).stdout.strip())
        lines = self.as_bulk("serve", "--print-authorized-keys", "--repo", self.repo, "--packages", self.tree,
                             "--command", f"env PYTHONPATH={self.lib} {PYTHON} -m gitqueue").stdout
        keys = self.sshd.authorized_keys(BULK)
        keys.write_text(lines)
        os.chown(keys, bulk.pw_uid, bulk.pw_gid)
        os.chmod(keys, 0o600)
        say(f"   authorized_keys of {BULK}: {len(lines.splitlines())} forced commands, e.g.")
        say("     " + lines.splitlines()[0][:150] + " ...")
        known = self.sshd.known_hosts_line()
        for worker, acct in self.accounts.items():
            home = Path(acct.pw_dir)
            cache = self.root / "vols" / worker
            cache.parent.mkdir(mode=0o755, exist_ok=True)
            cache.mkdir(mode=0o700)
            shutil.chown(cache, acct.pw_uid, acct.pw_gid)
            config = (f'queue = "{self.url}"\nworker = "{worker}"\nhost = "{worker}-box"\n'
                      f'signing_key = "{home}/.ssh/id_ed25519"\ncache_dir = "{cache}/cache"\n')
            for path, text in ((home / ".ssh/known_hosts", known), (home / ".config/gitqueue/config.toml", config)):
                run(self.as_user(acct.pw_name, ["sh", "-c", 'cat > "$1"', "sh", path]), input=text, stdin=None)
        self.figures["repo bytes at start"] = du(self.repo)
        self.phase("master and volunteers set up", t)

    def _copy_libraries(self) -> None:
        self.lib.mkdir()
        for name in LIBRARIES:
            if name == "gitqueue":  # this checkout's, installed or not
                source = CHECKOUT / "gitqueue"
            else:
                source = Path(__import__(name).__file__)
                source = source.parent if source.name == "__init__.py" else source
            target = self.lib / source.name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target)
        shutil.copy2(__file__, self.lib / "debian_farm.py")
        # Compiled once here: the accounts cannot write __pycache__ into this directory, and
        # without .pyc files every gitqueue process (worker, serve, hook) compiled each module.
        run([PYTHON, "-m", "compileall", "-q", self.lib])
        run(["chmod", "-R", "a+rX", self.lib])

    # -- 4. round trips over ssh

    def timed(self, argv) -> tuple[float, subprocess.CompletedProcess]:
        t = time.monotonic()
        proc = run(argv, check=False)
        return time.monotonic() - t, proc

    def probe_claims(self) -> None:
        """Claim each ready job once and give it back, as the probe account: round trips of a
        claim and of a release (which ends a lease with a commit, as a report does)."""
        t = time.monotonic()
        say("== round trips: claim and release over ssh, as the probe account")
        claims, releases = [], []
        user = PREFIX + PROBE
        while len(claims) < self.opts.samples:
            seconds, proc = self.timed(self.gq_argv(user, "claim", "--json"))
            if proc.returncode == 3:
                break  # every ready job was claimed once (and declined) by the probe
            if proc.returncode != 0:
                self.problems.append(f"probe claim exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
                break
            job = json.loads(proc.stdout)["job"]
            claims.append(seconds)
            seconds, proc = self.timed(self.gq_argv(user, "release", job, "--reason",
                                                    "latency probe: claimed to time it, given back"))
            if proc.returncode != 0:
                self.problems.append(f"probe release exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
                break
            releases.append(seconds)
        self.figures["claim"] = claims
        self.figures["release"] = releases
        say(f"   {len(claims)} claims, {len(releases)} releases")
        self.heartbeats: list[float] = []
        self.phase("round trips before the build", t)

    def probe_heartbeat(self, into: list | None = None) -> None:
        seconds, proc = self.timed(self.gq_argv(PREFIX + PROBE, "heartbeat"))
        if proc.returncode == 0:
            (self.heartbeats if into is None else into).append(seconds)
        else:
            self.problems.append(f"probe heartbeat exited {proc.returncode}: {proc.stderr.strip()[-300:]}")

    # -- 5. the build

    def start_worker(self, worker: str) -> None:
        acct = self.accounts[worker]
        build_root = self.root / "vols" / worker / "build"
        command = [PYTHON, self.lib / "debian_farm.py", "--build-step", build_root]
        argv = self.gq_argv(acct.pw_name, "work", "--max-wait", "5", "--", *command)
        run(self.as_user(acct.pw_name, ["mkdir", "-p", build_root]))
        log_path = self.logs / f"{worker}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        w = self.workers.setdefault(worker, {"offset": 0, "building": None, "starts": 0})
        w["proc"] = proc
        w["starts"] += 1

    def crash(self, worker: str) -> int:
        """Kill the worker's process group and every other process of its account."""
        w = self.workers[worker]
        uid = self.accounts[worker].pw_uid
        killed = {w["proc"].pid, *children_of(w["proc"].pid), *processes_of(uid)}
        try:
            os.killpg(w["proc"].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(10):
            pids = processes_of(uid)
            if not pids:
                break
            kill_pids(pids)
            killed.update(pids)
            time.sleep(0.2)
        w["proc"].wait()
        return len(killed)

    def read_logs(self) -> list[tuple[str, str]]:
        lines = []
        for worker, w in self.workers.items():
            path = self.logs / f"{worker}.log"
            with open(path, "rb") as f:
                f.seek(w["offset"])
                data = f.read()
            end = data.rfind(b"\n") + 1
            w["offset"] += end
            for raw in data[:end].decode("utf-8", "replace").splitlines():
                lines.append((worker, raw))
                m = re.match(rf"{re.escape(worker)}: building (\S+)", raw)
                if m:
                    w["building"] = (m.group(1), time.monotonic())
                elif re.match(rf"{re.escape(worker)}: (\S+) (success|failure) ", raw) or "gave back" in raw:
                    w["building"] = None
                k = getattr(self, "kill", None)
                if k and "given_back" not in k and raw.startswith(f"{worker}: gave back {k['job']}: its build"):
                    k["given_back"] = time.monotonic()  # by the crashed worker, started again
        return lines

    def build(self) -> None:
        t = time.monotonic()
        say(f"== build: {len(VOLUNTEERS)} workers, reclaim every 3 s (ttl {self.opts.ttl} s), publish every 10 s")
        for worker in VOLUNTEERS:
            self.start_worker(worker)
        est = {j["name"]: j["est_seconds"] for j in self.jobs}
        last = {"reclaim": 0.0, "publish": 0.0, "heartbeat": 0.0}
        self.kill = None
        self.reclaims: list[dict] = []
        self.publish_runs = 0
        restarts = 0
        while True:
            now = time.monotonic()
            if now - t > self.opts.timeout:
                self.problems.append(f"the build did not finish in {self.opts.timeout} s")
                break
            for _worker, line in self.read_logs():
                say(f"{self.stamp()} {line}")
            if now - last["reclaim"] >= 3:
                last["reclaim"] = now
                proc = self.as_bulk("reclaim", "--queue", self.repo, "--json", signing=True, check=False)
                if proc.returncode == 0:
                    for r in json.loads(proc.stdout or "[]"):
                        self.reclaims.append(r)
                        say(f"{self.stamp()} ! reclaimed {r['job']} from {r['worker']} (silent {r['silent_for']} s)")
                else:
                    say(f"{self.stamp()} ! reclaim failed: {proc.stderr.strip()[-300:]}")
            if now - last["publish"] >= 10:
                last["publish"] = now
                self.publish(quiet=True)
            if now - last["heartbeat"] >= 10:
                last["heartbeat"] = now
                self.probe_heartbeat()
            self.maybe_crash(est)
            for worker, w in self.workers.items():
                code = w["proc"].poll()
                if code not in (None, 0) and not (self.kill and self.kill["worker"] == worker
                                                   and not self.kill.get("restarted")):
                    restarts += 1
                    say(f"{self.stamp()} ! {worker} exited {code}; started again (as cron would)")
                    self.problems.append(f"{worker} exited {code} during the build")
                    self.start_worker(worker)
            if all(w["proc"].poll() == 0 for w in self.workers.values()) and (
                    self.kill is None or self.kill.get("restarted")):
                break
            time.sleep(1)
        for _worker, line in self.read_logs():
            say(f"{self.stamp()} {line}")
        self.figures["worker restarts after errors"] = restarts
        self.phase("build", t)

    def maybe_crash(self, est: dict) -> None:
        now = time.monotonic()
        if self.kill is None:
            for worker, w in self.workers.items():
                b = w["building"]
                if b and est.get(b[0], 0) >= 60 and now - b[1] >= self.opts.crash_after:
                    killed = self.crash(worker)
                    self.kill = {"worker": worker, "job": b[0], "at": now, "built_for": now - b[1]}
                    w["building"] = None
                    say(f"{self.stamp()} ! CRASH: {worker}'s machine, {now - b[1]:.0f} s into building {b[0]}: "
                        f"SIGKILL to {killed} processes (worker, build, ssh)")
                    return
            return
        k = self.kill
        if "reclaimed" not in k and "given_back" not in k:
            if any(r["job"] == k["job"] and r["worker"] == k["worker"] for r in self.reclaims):
                k["reclaimed"] = now
        elif "taken_by" not in k:
            for worker, w in self.workers.items():
                if ((worker != k["worker"] or "given_back" in k) and w["building"]
                        and w["building"][0] == k["job"]):
                    k["taken_by"], k["taken"] = worker, now
        if not k.get("restarted") and (self.opts.restart_now or "taken_by" in k
                                       or ("reclaimed" in k and now - k["reclaimed"] > 300)):
            say(f"{self.stamp()} ! {k['worker']}'s machine is back: its worker starts again")
            self.start_worker(k["worker"])
            k["restarted"] = now

    # -- 6. the end

    def publish(self, quiet=False) -> dict | None:
        proc = self.as_bulk("publish", "--queue", self.repo, "--tree", self.tree, "--json", check=False)
        self.publish_runs += 1
        if proc.returncode != 0:
            say(f"{self.stamp()} ! publish exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
            self.problems.append(f"publish exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
            return None
        out = json.loads(proc.stdout)
        if out["published"] and quiet:
            say(f"{self.stamp()} published {len(out['published'])}: {' '.join(out['published'])[:300]}")
        return out

    def finish(self) -> None:
        t = time.monotonic()
        self.idle_heartbeats: list[float] = []
        for _ in range(self.opts.samples):
            time.sleep(self.opts.ttl / 20 + 1)  # more than min_heartbeat_seconds (ttl / 20) apart
            self.probe_heartbeat(self.idle_heartbeats)
        self.phase("heartbeats on the idle machine", t)
        say("== the end: publish, html, verify, status (as the master's account)")
        t = time.monotonic()
        out = self.publish()
        if out is not None:
            say(f"   publish: published {len(out['published'])} now, {out['indexed']} packages indexed; "
                f"uploads removed {out['removed']}, abandoned {out['abandoned']}")
            for key in ("mismatch", "conflict", "invalid", "unproven", "unlisted"):
                for item in out.get(key, []):
                    self.problems.append(f"publish {key}: {item}")
        self.phases["publish"] = time.monotonic() - t
        t = time.monotonic()
        proc = self.as_bulk("html", self.html, "--queue", self.repo, "--logs", self.tree / "logs", check=False)
        self.phases["html"] = time.monotonic() - t
        if proc.returncode != 0:
            self.problems.append(f"html exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        else:
            say(f"   html: {self.html}/index.html, {du(self.html)} bytes")
        t = time.monotonic()
        proc = self.as_bulk("verify", self.repo, "--admin-key", self.pub / "alice.pub", "--packages", self.tree,
                            check=False)
        self.phases["verify"] = time.monotonic() - t
        say("   verify: " + proc.stdout.strip().replace("\n", "\n           "))
        if proc.returncode != 0:
            self.problems.append(f"verify exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        t = time.monotonic()
        proc = self.as_bulk("status", "--queue", self.repo, check=False)
        self.phases["status"] = time.monotonic() - t
        say("   status:\n     " + proc.stdout.rstrip().replace("\n", "\n     "))
        self.check_results()
        self.check_indexes()

    def tip_records(self) -> dict[str, dict]:
        """{kind: {job: record}} at the tip of the queue, read as the account's files are."""
        from dulwich.repo import Repo

        out: dict[str, dict] = {}
        with Repo(str(self.repo)) as repo:
            tip = repo.refs[b"refs/heads/main"]
            tree = repo[repo[tip].tree]
            for kind in ("jobs", "results", "leases", "lapsed", "declines"):
                out[kind] = {}
                if kind.encode() not in tree:
                    continue
                for shard in repo[tree[kind.encode()][1]].items():
                    for entry in repo[shard.sha].items():
                        out[kind][entry.path.decode()[:-5]] = tomllib.loads(repo[entry.sha].data.decode())
        return out

    def history(self) -> dict[str, int]:
        """Actions in the history ({action: count}) and the number of commits."""
        from dulwich.repo import Repo

        counts: dict[str, int] = {}
        with Repo(str(self.repo)) as repo:
            if b"refs/heads/main" not in repo.refs:
                return counts
            for entry in repo.get_walker(include=[repo.refs[b"refs/heads/main"]]):
                counts["commits"] = counts.get("commits", 0) + 1
                for m in re.finditer(rb"^Gitqueue-Action: (\S+)", entry.commit.message, re.M):
                    key = m.group(1).decode()
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def check_results(self) -> None:
        records = self.tip_records()
        self.results = records["results"]
        missing = [j["name"] for j in self.jobs if j["name"] not in self.results]
        failed = [n for n, r in self.results.items() if r["status"] != "success"]
        for name in missing:
            self.problems.append(f"{name} has no result")
        for name in failed:
            self.problems.append(f"{name} failed")
            proc = self.as_bulk("log", name, "--tree", self.tree, "--tail", "40", "--queue", self.repo, check=False)
            shown = (proc.stdout or proc.stderr).rstrip().replace("\n", "\n     ")
            say(f"   gitqueue log {name} --tail 40:\n     " + shown)
        if records["leases"]:
            self.problems.append(f"leases left: {', '.join(records['leases'])}")
        say(f"   results: {len(self.results) - len(failed)} success, {len(failed)} failure, {len(missing)} missing")

    def check_indexes(self) -> None:
        all_dir = self.tree / "All"
        debs = sorted(p.name for p in all_dir.glob("*.deb"))
        named = sorted(p["name"] for r in self.results.values() if r["status"] == "success"
                       for p in r.get("packages", []))
        self.debs = debs
        if debs != named:
            self.problems.append(f"All/ holds {len(debs)} .debs, the results name {len(named)}: "
                                 f"{sorted(set(debs) ^ set(named))[:10]}")
        summary = gzip.decompress((all_dir / "pkg_summary.gz").read_bytes()).decode()
        listed = sorted(re.findall(r"^FILE_NAME=(.*)$", summary, re.M))
        if listed != debs:
            self.problems.append(f"pkg_summary.gz lists {len(listed)} files, All/ holds {len(debs)} .debs")
        digests = dict(re.findall(r"^SHA512 \(All/(.*)\) = ([0-9a-f]+)$", (all_dir / "SHA512").read_text(), re.M))
        wrong = [n for n in debs if digests.get(n) != hashlib.sha512((all_dir / n).read_bytes()).hexdigest()]
        if wrong or sorted(set(digests) - {"pkg_summary.gz"}) != debs:
            self.problems.append(f"SHA512 does not list every .deb with its digest: {wrong[:5]}")
        say(f"   indexes: pkg_summary.gz lists {len(listed)} files, SHA512 {len(digests)} "
            f"(the {len(debs)} .debs in All/ and pkg_summary.gz)")

    # -- 7. figures

    def report(self) -> None:
        f = self.figures
        say("\n== figures")
        wall = time.monotonic() - self.t0
        for name, seconds in self.phases.items():
            say(f"   {name:40} {seconds:8.1f} s")
        say(f"   {'wall time overall':40} {wall:8.1f} s")
        say(f"   packages: {len(self.jobs)} source packages, {len(getattr(self, 'debs', []))} .debs in All/")
        for c in f.get("chains", []):
            say(f"     chain {c}")
        if getattr(self, "results", None):
            say("   builds (duration as the worker measured it: apt-get source + dpkg-buildpackage, on 2 cores"
                " shared by 3 builds):")
            for j in sorted(self.jobs, key=lambda j: self.results.get(j["name"], {}).get("finished_at", "")):
                r = self.results.get(j["name"])
                if r is None:
                    continue
                size = sum(p["size"] for p in r.get("packages", []))
                say(f"     {j['name']:32} {r['status']:8} {r.get('worker', ''):6} {r.get('duration', 0):7.1f} s "
                    f"{len(r.get('packages', [])):2} .debs {size:>10,} bytes{'  (late)' if r.get('late') else ''}")
        for what in ("claim", "release"):
            ms = [s * 1000 for s in f.get(what, [])]
            if ms:
                say(f"   {what} round trip over ssh (probe, before the build; first {ms[0]:.0f} ms): median "
                    f"{statistics.median(ms):.0f} ms of {len(ms)}, min {min(ms):.0f}, max {max(ms):.0f}")
        for what, attr in (("during the build", "heartbeats"), ("after it, machine idle", "idle_heartbeats")):
            hb = [s * 1000 for s in getattr(self, attr, [])]
            if hb:
                say(f"   heartbeat round trip over ssh (probe, {what}): median {statistics.median(hb):.0f} ms "
                    f"of {len(hb)}, min {min(hb):.0f}, max {max(hb):.0f}")
        k = getattr(self, "kill", None)
        if k:
            say(f"   crash: {k['worker']} killed {k['built_for']:.0f} s into {k['job']}; reclaimed "
                + (f"{k['reclaimed'] - k['at']:.0f} s later" if "reclaimed" in k else "never")
                + (f"; given back by {k['worker']}, started again, {k['given_back'] - k['at']:.0f} s after the crash"
                   if "given_back" in k else "")
                + (f", taken by {k['taken_by']} {k['taken'] - k['at']:.0f} s after the crash"
                   if "taken_by" in k else "")
                + (f"; {k['worker']} back {k['restarted'] - k['at']:.0f} s after" if k.get("restarted") else ""))
        say(f"   reclaims: {len(getattr(self, 'reclaims', []))}; publish runs: {getattr(self, 'publish_runs', 0)}")
        tree = self.tree
        debs = sum(p.stat().st_size for p in (tree / "All").glob("*.deb")) if (tree / "All").exists() else 0
        logs = du(tree / "logs")
        incoming = du(tree / "incoming")
        say(f"   uploaded over rsync+ssh and published: .debs in All/ {debs:,} bytes, logs/ {logs:,} bytes "
            f"(left in incoming/: {incoming:,})")
        fetched = {w: sum(du(d) for d in (self.root / "vols" / w / "cache").glob("*/packages")) for w in VOLUNTEERS}
        say(f"   dependencies' .debs fetched by the workers: {sum(fetched.values()):,} bytes "
            f"({', '.join(f'{w} {n:,}' for w, n in fetched.items())})")
        sources = 0
        for w in VOLUNTEERS:
            for d in (self.root / "vols" / w / "build").glob("*/"):
                sources += sum(p.stat().st_size for p in d.iterdir()
                               if p.is_file() and re.search(r"\.(dsc|tar\.\w+)$", p.name))
        say(f"   sources downloaded by the builds (apt-get source): {sources:,} bytes; by the source check: "
            f"{f.get('source check bytes', 0):,}")
        if self.repo.exists():
            counts = self.history()
            say(f"   queue repository: {f.get('repo bytes at start', 0):,} bytes after import, {du(self.repo):,} "
                f"at the end; {counts.get('commits', 0)} commits: "
                + ", ".join(f"{a} {n}" for a, n in sorted(counts.items()) if a != "commits"))
        if self.problems:
            say("\n== problems")
            for p in self.problems:
                say(f"   {p}")
        else:
            say("\n== every check passed")

    # -- 8. cleanup

    def cleanup(self) -> None:
        for _worker, w in self.workers.items():
            if w["proc"].poll() is None:
                try:
                    os.killpg(w["proc"].pid, signal.SIGTERM)
                    w["proc"].wait(30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        # ssh masters (ControlPersist) and builds left behind, of the accounts this run drove
        for acct in getattr(self, "accounts", {}).values():
            kill_pids(processes_of(acct.pw_uid))
        if self.sshd is not None:
            self.sshd.stop()
        try:
            bulk = pwd.getpwnam(BULK)
            kill_pids(processes_of(bulk.pw_uid))
        except KeyError:
            pass
        if self.opts.keep:
            say(f"kept {self.root} (the queue, the package tree, html/, the workers' logs in logs/)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        say(f"accounts {BULK}, {', '.join(PREFIX + w for w in (*VOLUNTEERS, PROBE))} stay, with their ~/.ssh and "
            f"~/.config/gitqueue (userdel -r NAME removes one)")


def du(path: Path) -> int:
    total = 0
    for d, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(d, n)).st_size
            except OSError:
                pass
    return total


# -- the build step, run by `gitqueue work` as a volunteer ------------------------------------------


def build_step(build_root: str) -> int:
    """Build $GITQUEUE_JOB: check the dependencies' .debs, apt-get source, dpkg-buildpackage,
    copy the .debs into $GITQUEUE_OUTPUT. Prints its steps (the build log)."""
    job = os.environ["GITQUEUE_JOB"]
    table = json.loads((Path(__file__).parent / "debian.json").read_text())
    info = table[job]
    nocheck = info["nocheck"]
    all_dir = Path(os.environ["GITQUEUE_PACKAGES"]) / "All"
    have = sorted(p.name for p in all_dir.glob("*.deb")) if all_dir.is_dir() else []
    for dep in os.environ.get("GITQUEUE_DEPS", "").split():
        d = table[dep]
        mine = [n for n in have if n.split("_")[0] in d["binaries"] and n.split("_")[1:2] == [d["file_version"]]]
        if not mine:
            print(f"gq-debian: no .deb of {dep} in {all_dir}: gitqueue work did not fetch them", flush=True)
            return 1
        print(f"gq-debian: {dep}'s .debs arrived in $GITQUEUE_PACKAGES/All: {' '.join(mine)}", flush=True)
        for name in sorted({n.split("_")[0] for n in mine}):
            q = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True)
            print(f"gq-debian:   {name}: installed from the archive: "
                  f"{q.stdout.strip() if q.returncode == 0 else 'no'}", flush=True)
    os.makedirs(build_root, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"{job}.", dir=build_root)
    t = time.monotonic()
    print(f"gq-debian: apt-get source {info['source']}={info['version']} in {work}", flush=True)
    code = subprocess.call(["apt-get", "source", "-q", "--only-source", f"{info['source']}={info['version']}"],
                           cwd=work, stdin=subprocess.DEVNULL)
    fetched = sum(p.stat().st_size for p in Path(work).iterdir() if p.is_file())
    print(f"gq-debian: source: {fetched} bytes in {time.monotonic() - t:.1f} s (exit {code})", flush=True)
    if code != 0:
        return code
    dirs = [p for p in Path(work).iterdir() if p.is_dir()]
    if len(dirs) != 1:
        print(f"gq-debian: expected one unpacked source directory in {work}, found {len(dirs)}", flush=True)
        return 1
    options = ["noautodbgsym"] + (["nocheck"] if nocheck else [])
    env = {**os.environ, "DEB_BUILD_OPTIONS": " ".join(options)}
    if nocheck:
        env["DEB_BUILD_PROFILES"] = "nocheck"
    t = time.monotonic()
    print(f"gq-debian: DEB_BUILD_OPTIONS='{env['DEB_BUILD_OPTIONS']}' dpkg-buildpackage -us -uc -b -rfakeroot",
          flush=True)
    code = subprocess.call(["dpkg-buildpackage", "-us", "-uc", "-b", "-rfakeroot"], cwd=dirs[0], env=env,
                           stdin=subprocess.DEVNULL)
    print(f"gq-debian: dpkg-buildpackage exit {code} after {time.monotonic() - t:.1f} s", flush=True)
    if code != 0:
        return code
    debs = sorted(Path(work).glob("*.deb"))
    for deb in debs:
        shutil.copy2(deb, os.environ["GITQUEUE_OUTPUT"])
        print(f"gq-debian: output {deb.name} {deb.stat().st_size} bytes", flush=True)
    if not debs:
        print("gq-debian: dpkg-buildpackage made no .deb", flush=True)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="where the farm lives (default: a new directory in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the root (queue, tree, html, logs) at the end")
    ap.add_argument("--nocheck", action="store_true", help="build with DEB_BUILD_OPTIONS=nocheck")
    ap.add_argument("--packages", metavar="SRC,SRC...",
                    help="build these source packages instead of the chains chosen here (no chain required)")
    ap.add_argument("--ttl", type=int, default=60, help="the queue's lease TTL in seconds (default 60)")
    ap.add_argument("--crash-after", type=float, default=25,
                    help="seconds into a long build (60 s or more estimated) before its machine crashes")
    ap.add_argument("--restart-now", action="store_true",
                    help="start the crashed worker again at once, not once another worker has its job (it then "
                         "gives back the lease of the build it lost: see the docstring)")
    ap.add_argument("--samples", type=int, default=9, help="claim/release round trips to time (at most the ready jobs)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds the build may take")
    ap.add_argument("--build-step", metavar="BUILD_ROOT", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.build_step:
        return build_step(opts.build_step)
    check_platform()

    def interrupted(signum, frame):
        raise SystemExit(f"interrupted by {signal.Signals(signum).name}")

    # The accounts' processes and the private sshd outlive this script unless cleanup runs.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    farm = Farm(opts)
    try:
        farm.setup_apt()
        farm.choose()
        farm.setup_master()
        farm.probe_claims()
        farm.build()
        farm.finish()
    except SystemExit as e:
        if e.code not in (None, 0):
            farm.problems.append(str(e.code))
    except Exception:
        import traceback

        traceback.print_exc()
        farm.problems.append("an unexpected error: the traceback is above")
    finally:
        try:
            farm.report()
        finally:
            farm.cleanup()
    return 1 if farm.problems else 0


if __name__ == "__main__":
    sys.exit(main())
