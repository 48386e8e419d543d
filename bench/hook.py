"""Benchmark: what the pre-receive hook adds to a claim over ssh, and what verify costs per commit.

- `gitqueue claim` processes over ssh (throwaway sshd on 127.0.0.1, connection reuse as gitqueue
  sets it up) on three copies of the 279-job subset: unsigned, signed (key file, ssh-keygen
  signs), signed with the hook installed; claims interleaved; median wall and CPU time of each
  (CPU: the client processes, not the server's).
- The hook alone: the installed hooks/pre-receive run as git runs it, on the last claim commit
  (wall and CPU time of the process).
- `gitqueue verify`'s replay (audit.replay, in process) of a signed history of N claim+report
  pairs, per commit; and of the same history as an unsigned queue (the rules without signatures).

    python bench/hook.py [--claims N] [--history N]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from claim_cycle import SUBSET, children_cpu, gq, make_queue, make_signed_queue, start_agent  # noqa: E402


def claims_over_ssh(tmp, server, n):
    """Median wall ms of `gitqueue claim`: unsigned, signed, signed with the hook (interleaved)."""
    from gitqueue.hook import install

    queues = {}
    for label in ("unsigned", "signed", "signed+hook"):
        work = tmp / label.replace("+", "-")
        work.mkdir()
        if label == "unsigned":
            path, extra = make_queue(work, SUBSET, "q"), {}
        else:
            path, key = make_signed_queue(work, SUBSET, "q")
            extra = {"GITQUEUE_SIGNING_KEY": str(key)}
        if label.endswith("hook"):
            install(path, sys.executable, package_dir=str(ROOT))
        env = {**os.environ, "GITQUEUE_CACHE": str(work / "cache"), "GITQUEUE_SSH_COMMAND": server.ssh_command,
               **extra}
        url = server.url(path)
        gq(["status", "--queue", url], env)  # warm the cache and the ssh master connection
        queues[label] = (url, env, path)
    walls = {label: [] for label in queues}
    cpus = {label: [] for label in queues}
    for _ in range(n):
        for label, (url, env, _) in queues.items():
            t0, c0 = time.perf_counter(), children_cpu()
            job = json.loads(gq(["claim", "--queue", url, "--worker", "bench", "--json"], env).stdout)["job"]
            walls[label].append(time.perf_counter() - t0)
            cpus[label].append(children_cpu() - c0)
            # (untimed) so that the next claim finds a ready job
            gq(["report", job, "--queue", url, "--worker", "bench", "--status", "success"], env)
    return ({label: (statistics.median(walls[label]), statistics.median(cpus[label])) for label in queues},
            queues["signed+hook"][2])


def hook_alone(path, n):
    """Median wall and CPU ms of the installed hook checking the last commit, as git runs it."""
    head = subprocess.run(["git", "-C", path, "rev-parse", "main", "main~1"], capture_output=True, text=True,
                          check=True).stdout.split()
    stdin = f"{head[1]} {head[0]} refs/heads/main\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GIT_DIR"] = "."
    walls, cpus = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), children_cpu()
        proc = subprocess.run([os.path.join(path, "hooks", "pre-receive")], input=stdin, text=True, cwd=path,
                              env=env, capture_output=True)
        walls.append(time.perf_counter() - t0)
        cpus.append(children_cpu() - c0)
        if proc.returncode != 0:
            raise SystemExit(f"the hook refused a good commit: {proc.stderr}")
    return statistics.median(walls), statistics.median(cpus)


def replay_cost(tmp, pairs):
    """(commits, ms per commit) of audit.replay on a signed and on an unsigned history."""
    from gitqueue import lease, registry
    from gitqueue.admin import import_jobs, init_queue
    from gitqueue.audit import replay
    from gitqueue.gitstore import LocalRemote
    from gitqueue.queue import Queue
    from gitqueue.signing import Signer

    jobs = [{"name": f"p{i}-1", "version": "1", "deps": []} for i in range(pairs)]
    key = tmp / "replay-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    agent, sock = start_agent(tmp, key)
    out = {}
    try:
        signer = Signer.from_agent(socket_path=sock)
        for label, sign in (("signed", signer), ("unsigned", None)):
            path = str(tmp / f"replay-{label}.git")
            with Queue(path, str(tmp / f"cache-replay-{label}"), signer=sign) as q:
                admins = [{"name": "admin", "key": signer.public_key}] if sign else None
                init_queue(q, "replay", admins=admins)
                import_jobs(q, jobs, "g.jsonl")
                if sign:
                    registry.add_worker(q, "w1", signer.public_key)
                for _ in range(pairs):
                    got = lease.claim(q, "w1")
                    lease.report(q, "w1", got.job, "success", duration=1)
            remote = LocalRemote(path)
            tip = remote.fetch()
            t0 = time.perf_counter()
            audit = replay(remote, tip)
            took = time.perf_counter() - t0
            remote.close()
            if audit.violations:
                raise SystemExit(f"replay found violations: {audit.violations[0]}")
            out[label] = (audit.commits, took / audit.commits * 1000)
    finally:
        agent.kill()
        agent.wait()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--claims", type=int, default=15)
    ap.add_argument("--history", type=int, default=500, help="claim+report pairs in the replayed history")
    opts = ap.parse_args()
    from gitqueue.signing import cryptography_available

    from sshd import SshServer, sshd_available

    with tempfile.TemporaryDirectory(prefix="gq-bench-hook-") as tmp:
        tmp = Path(tmp)
        if sshd_available() is None:
            server = SshServer(tmp / "sshd").start()
            try:
                claims, hooked = claims_over_ssh(tmp, server, opts.claims)
            finally:
                server.stop()
            alone = hook_alone(hooked, opts.claims)
            print(f"gitqueue claim over ssh (signed 279-job queue, connection reuse), median of {opts.claims}")
            print(f"{'':12} {'wall ms':>8} {'cpu ms':>8}")
            for label, (w, c) in claims.items():
                print(f"{label:12} {w * 1000:8.0f} {c * 1000:8.0f}")
            signing = (claims["signed"][0] - claims["unsigned"][0]) * 1000
            hook = (claims["signed+hook"][0] - claims["signed"][0]) * 1000
            print(f"added per claim: signing {signing:.0f} ms wall, the hook {hook:.0f} ms wall")
            print(f"the hook alone (one process checking one claim commit): {alone[0] * 1000:.0f} ms wall, "
                  f"{alone[1] * 1000:.0f} ms cpu")
        else:
            print("note: no sshd; skipping the claims over ssh")
        costs = replay_cost(tmp, opts.history)
        backend = "cryptography" if cryptography_available() else "ssh-keygen"
        print(f"\nverify (audit.replay in process, signatures via {backend})")
        for label, (commits, ms) in costs.items():
            print(f"{label:10} {commits} commits: {ms:.2f} ms per commit")
        print(json.dumps({"claims": claims if sshd_available() is None else None, "replay": costs}))


if __name__ == "__main__":
    main()
