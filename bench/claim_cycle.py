"""Benchmark: one claim + report cycle as two separate `gitqueue` processes, warm cache.

Measures, side by side in one run, a local-path queue and an ssh queue (a throwaway sshd on
127.0.0.1, OpenSSH connection reuse as gitqueue sets it up), each holding the full 29,022-record
pkgsrc import and the 279-record subset; and the subset as a signed queue (docs/trust.md) with
the worker's key in a file (ssh-keygen signs) and in ssh-agent. Prints medians of wall time and
CPU time (user+sys of the two processes and their children).

    python bench/claim_cycle.py [--cycles N] [--no-ssh]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT.parent / "shared" / "data" / "pkgsrc-presolve.xz"
SUBSET = ROOT / "gitqueue" / "data" / "pkgsrc-subset.presolve"
sys.path.insert(0, str(ROOT / "tests"))


def gq(args, env, check=True):
    proc = subprocess.run([sys.executable, "-m", "gitqueue", *args], env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"gitqueue {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def make_queue(workdir: Path, graph: Path, name: str) -> str:
    path = str(workdir / f"{name}.git")
    env = {**os.environ, "GITQUEUE_CACHE": str(workdir / "cache-admin")}
    gq(["init", path, "--name", name], env)
    gq(["import", path, str(graph)], env)
    return path


def make_signed_queue(workdir: Path, graph: Path, name: str):
    """A signed queue with worker 'bench' registered; returns (path, key file)."""
    keys = {}
    for who in ("admin", "bench"):
        keys[who] = workdir / f"key-{who}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys[who])], check=True)
    path = str(workdir / f"{name}.git")
    env = {**os.environ, "GITQUEUE_CACHE": str(workdir / "cache-admin"), "GITQUEUE_SIGNING_KEY": str(keys["admin"])}
    gq(["init", path, "--name", name, "--admin", f"admin={keys['admin']}.pub"], env)
    gq(["import", path, str(graph)], env)
    gq(["worker", "add", "bench", "--key", f"{keys['bench']}.pub", "--queue", path], env)
    return path, keys["bench"]


def start_agent(workdir: Path, key: Path):
    sock = str(workdir / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": sock}, check=True,
                   capture_output=True)
    return agent, sock


def cycles(url, env, n, worker="bench"):
    """Run n claim+report cycles; return (wall seconds, cpu seconds) per cycle."""
    gq(["status", "--queue", url], env)  # warm the cache and index
    walls, cpus = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), children_cpu()
        job = json.loads(gq(["claim", "--queue", url, "--worker", worker, "--json"], env).stdout)
        gq(["report", job["job"], "--queue", url, "--worker", worker, "--status", "success", "--duration", "1"], env)
        walls.append(time.perf_counter() - t0)
        cpus.append(children_cpu() - c0)
    return walls, cpus


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--no-ssh", action="store_true")
    opts = ap.parse_args()
    graphs = [("subset-279", SUBSET)]
    if FULL.exists():
        graphs.append(("pkgsrc-29k", FULL))
    else:
        print(f"note: {FULL} is absent; measuring the subset only")
    rows = []
    signing_rows = []
    with tempfile.TemporaryDirectory(prefix="gq-bench-") as tmp:
        tmp = Path(tmp)
        queues = {name: make_queue(tmp, graph, name) for name, graph in graphs}
        signed, key = make_signed_queue(tmp, SUBSET, "subset-signed")
        agent, sock = start_agent(tmp, key)
        try:
            for label, extra in (("local", {}), ("key file", {"GITQUEUE_SIGNING_KEY": str(key)}),
                                 ("agent", {"GITQUEUE_SIGNING_KEY": "agent", "SSH_AUTH_SOCK": sock})):
                url = queues["subset-279"] if label == "local" else signed
                env = {**os.environ, "GITQUEUE_CACHE": str(tmp / f"cache-sign-{label}"), **extra}
                walls, cpus = cycles(url, env, opts.cycles)
                signing_rows.append((label, statistics.median(walls), statistics.median(cpus)))
        finally:
            agent.kill()
            agent.wait()
        transports = [("local", lambda p: p, {})]
        server = None
        if not opts.no_ssh:
            from sshd import SshServer, sshd_available

            if sshd_available() is None:
                # As README deploys a master: sshd passes GIT_PROTOCOL on (protocol v2) and
                # `hooks install` allows the filters, so a new worker's cache is partial.
                from gitqueue.hook import configure

                for path in queues.values():
                    configure(path)
                server = SshServer(tmp / "sshd", accept_env=["GIT_PROTOCOL"]).start()
                transports.append(("ssh+reuse", server.url, {"GITQUEUE_SSH_COMMAND": server.ssh_command}))
            else:
                print("note: no sshd; skipping ssh")
        try:
            for tname, to_url, extra in transports:
                for qname, path in queues.items():
                    env = {**os.environ, "GITQUEUE_CACHE": str(tmp / f"cache-{tname}-{qname}"), **extra}
                    walls, cpus = cycles(to_url(path), env, opts.cycles)
                    rows.append((tname, qname, statistics.median(walls), statistics.median(cpus)))
        finally:
            if server is not None:
                server.stop()
    print(f"claim+report cycle, two processes each, median of {opts.cycles} (warm cache)")
    print(f"{'transport':10} {'queue':11} {'wall ms':>8} {'cpu ms':>8}")
    for t, q, w, c in rows:
        print(f"{t:10} {q:11} {w * 1000:8.0f} {c * 1000:8.0f}")
    print(f"\nsigned queue (subset, local path): claim+report, median of {opts.cycles}")
    print(f"{'signing':10} {'wall ms':>8} {'cpu ms':>8} {'added wall ms':>14}")
    base = signing_rows[0][1]
    for label, w, c in signing_rows:
        name = label if label != 'local' else 'unsigned'
        print(f"{name:10} {w * 1000:8.0f} {c * 1000:8.0f} {(w - base) * 1000:14.1f}")
    by = {(t, q): c for t, q, w, c in rows}
    for t in {r[0] for r in rows}:
        if (t, "pkgsrc-29k") in by:
            print(f"{t}: cpu ratio 29k / 279 = {by[(t, 'pkgsrc-29k')] / by[(t, 'subset-279')]:.2f}")


if __name__ == "__main__":
    main()
