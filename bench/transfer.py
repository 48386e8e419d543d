"""Benchmark: moving one 10 MiB package (random, incompressible bytes) with gitqueue.transfer.

Uploads it into incoming/<token>/ (a fresh token each time, so every upload is a full one) and
downloads it from All/ (into a fresh directory each time): over ssh to a throwaway sshd on
127.0.0.1 (tests/sshd.py), the same with ssh connection reuse (ControlMaster), and to a
local-path tree for comparison. Also times an upload of a file that is already there (rsync's
quick check skips it; only the check runs). Prints medians of wall time and of the bytes rsync
reports on the wire (its ``Total bytes sent + received``: the rsync stream inside ssh, without
ssh's own framing). Run it with

    python bench/transfer.py [--runs N] [--size-mb M] [--no-ssh]
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gitqueue.transfer import TransferStats, download, upload  # noqa: E402


def measure(fn, runs):
    """Run fn(i, stats) runs times; return medians (wall s, bytes on wire, verify s)."""
    walls, wire, verify = [], [], []
    for i in range(runs):
        stats = TransferStats()
        t0 = time.perf_counter()
        fn(i, stats)
        walls.append(time.perf_counter() - t0)
        wire.append(stats.bytes_on_wire)
        verify.append(sum(r["seconds"] for r in stats.runs if r["purpose"] == "verify"))
    return statistics.median(walls), statistics.median(wire), statistics.median(verify)


def bench_tree(name, tree, root: Path, rsh, package: Path, runs, work: Path):
    size = package.stat().st_size
    rows = []
    got = upload([str(package)], tree, "warmup", rsh=rsh)  # also creates the tree
    (root / "All").mkdir(exist_ok=True)
    os.replace(root / "incoming" / "warmup" / package.name, root / "All" / package.name)

    def up(i, stats):
        upload([str(package)], tree, f"{name}-{i}", rsh=rsh, stats=stats)

    def again(i, stats):
        upload([str(package)], tree, f"{name}-0", rsh=rsh, stats=stats)

    def down(i, stats):
        download(got, tree, str(work / f"dl-{name}-{i}"), rsh=rsh, stats=stats)

    for op, fn in (("upload", up), ("upload, already there", again), ("download", down)):
        wall, wire, verify = measure(fn, runs)
        rows.append((name, op, wall, verify, wire, size))
    if name == "reuse":
        rows.append((name, "publish (on the master)", publish_time(root, package, runs), 0.0, 0, size))
    return rows


def publish_time(root: Path, package: Path, runs: int) -> float:
    """Median seconds for `gitqueue publish` to move the uploaded package of run i into All/ and
    write pkg_summary.gz and SHA512 (the tree is local to the master, as publish runs there)."""
    from gitqueue.publish import Snapshot, publish
    from gitqueue.transfer import describe

    desc = describe(str(package))
    job = {"name": "bench-1.0", "version": "1.0", "deps": [], "pkgpath": "bench/bench"}
    walls = []
    for i in range(runs):
        for leftover in (root / "All" / package.name, root / ".publish-cache.json"):
            leftover.unlink(missing_ok=True)
        token = f"{i:032x}"  # publish takes only lease tokens; the bytes are those uploaded above
        (root / "incoming" / token).mkdir(parents=True, exist_ok=True)
        os.link(root / "incoming" / f"reuse-{i}" / package.name, root / "incoming" / token / package.name)
        result = {"job": "bench-1.0", "status": "success", "worker": "w", "token": token, "packages": [desc]}
        t0 = time.perf_counter()
        out = publish(str(root), Snapshot(entries=[(job, result)]))
        walls.append(time.perf_counter() - t0)
        assert out["published"] == [package.name], out
    return statistics.median(walls)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mb", type=float, default=10.0)
    ap.add_argument("--no-ssh", action="store_true")
    opts = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gq-bench-transfer-") as tmp:
        tmp = Path(tmp)
        package = tmp / "bench-1.0.tgz"
        package.write_bytes(os.urandom(int(opts.size_mb * 1024 * 1024)))
        root = tmp / "local-tree"
        rows += bench_tree("local", str(root), root, None, package, opts.runs, tmp)
        if not opts.no_ssh:
            from sshd import SshServer, sshd_available

            reason = sshd_available()
            if reason is None:
                with SshServer(tmp / "sshd") as server:
                    root = tmp / "ssh-tree"
                    tree = f"{server.user}@{server.host}:{root}"
                    rows += bench_tree("ssh", tree, root, server.rsync_rsh, package, opts.runs, tmp)
                    # OpenSSH connection reuse, as the gitqueue CLI sets it up for git: the
                    # check after an upload no longer pays for a second login.
                    reuse = f"{server.rsync_rsh} -o ControlMaster=auto -o ControlPath={tmp}/ssh-%C -o ControlPersist=60"
                    root = tmp / "reuse-tree"
                    tree = f"{server.user}@{server.host}:{root}"
                    try:
                        rows += bench_tree("reuse", tree, root, reuse, package, opts.runs, tmp)
                    finally:  # end the shared connection now rather than ControlPersist seconds later
                        subprocess.run([*shlex.split(reuse), "-O", "exit", f"{server.user}@{server.host}"],
                                       stdin=subprocess.DEVNULL, capture_output=True)
            else:
                print(f"note: no sshd ({reason}); skipping ssh")
    size = rows[0][5]
    print(f"{size:,d}-byte incompressible package, median of {opts.runs}")
    print(f"{'tree':6} {'operation':22} {'wall ms':>8} {'check ms':>9} {'MB/s':>7} {'bytes on wire':>14} {'/ size':>7}")
    for name, op, wall, verify, wire, size in rows:
        rate = f"{size / wall / 1e6:7.1f}" if "already" not in op else f"{'-':>7}"
        print(f"{name:6} {op:22} {wall * 1000:8.0f} {verify * 1000:9.0f} {rate} {wire:14,d} {wire / size:7.3f}")
    print("check ms: the rsync --checksum --dry-run pass after an upload over ssh (part of wall ms);"
          " a local tree is checked by sha256 instead")
    print("ssh: a new ssh login per rsync run; reuse: the same with ssh ControlMaster (one login, then shared)")


if __name__ == "__main__":
    main()
