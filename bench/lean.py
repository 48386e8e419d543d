"""Benchmark: what a claim costs at pkgsrc scale - instructions, CPU, memory, import.

On a local-path queue holding the full 29,022-record pkgsrc import (and the 279-record subset),
with the worker's cache warm, measures:

- CPU instructions (valgrind --tool=callgrind, repeatable) of one `gitqueue claim` process,
  against `python -c pass` and merely importing dulwich.client, dulwich.repo, click, filelock,
  tomllib and tomli_w on the same interpreter;
- instructions per job (claim, report; heartbeats when builds are long) inside one long-lived
  `gitqueue work` process: (instructions of 11 jobs - of 1 job) / 10;
- peak RSS of one claim process on the 29k queue;
- wall time and peak RSS of `gitqueue import` of the full 29k presolve.

    python bench/lean.py [--no-callgrind]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT.parent / "shared" / "data" / "pkgsrc-presolve.xz"
SUBSET = ROOT / "gitqueue" / "data" / "pkgsrc-subset.presolve"
BASELINE = "import dulwich.client, dulwich.repo, click, filelock, tomllib, tomli_w"


def run(args, env, check=True):
    """Run a command; return (stdout, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))}: {proc.stderr.decode().strip()}")
    return proc.stdout.decode(), time.perf_counter() - t0


def peak_rss(args, env):
    """Peak RSS (MiB) and wall seconds of one command, from wait4."""
    t0 = time.perf_counter()
    pid = os.posix_spawn(args[0], args, env, file_actions=[
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0), (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def instructions(args, env, tmp):
    out = Path(tmp) / f"cg.{time.monotonic_ns()}"
    proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"callgrind {' '.join(args)}: {proc.stderr[-400:]}")
    m = re.search(r"Collected : (\d+)", proc.stderr)
    out.unlink(missing_ok=True)
    return int(m.group(1))


def gq(*args):
    return [sys.executable, "-m", "gitqueue", *map(str, args)]


def prepare(tmp, name, graph, env):
    url = str(Path(tmp) / f"{name}.git")
    run(gq("init", url, "--name", name), env)
    rss, wall = peak_rss(gq("import", url, graph), env)
    # Build the index, then move past the narrow bootstrap chain until many jobs are ready.
    while True:
        status = json.loads(run(gq("status", "--queue", url, "--json"), env)[0])
        if status["counts"]["ready"] >= 40:
            break
        job = json.loads(run(gq("claim", "--queue", url, "--worker", "warm", "--json"), env)[0])
        run(gq("report", job["job"], "--queue", url, "--worker", "warm", "--status", "success"), env)
    return url, rss, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-callgrind", action="store_true")
    opts = ap.parse_args()
    if not FULL.exists():
        raise SystemExit(f"{FULL} is absent: this benchmark needs the full pkgsrc scan")
    have_valgrind = shutil.which("valgrind") and not opts.no_callgrind
    with tempfile.TemporaryDirectory(prefix="gq-lean-") as tmp:
        env = {**os.environ, "GITQUEUE_CACHE": str(Path(tmp) / "cache")}
        big, import_rss, import_wall = prepare(tmp, "pkgsrc-29k", FULL, env)
        small, _, _ = prepare(tmp, "subset-279", SUBSET, env)
        print(f"import of the full 29,022-record presolve: {import_wall:.1f} s, peak RSS {import_rss:.0f} MiB")
        rss = []
        for _ in range(3):
            job = json.loads(run(gq("claim", "--queue", big, "--worker", "rss", "--json"), env)[0])
            run(gq("report", job["job"], "--queue", big, "--worker", "rss", "--status", "success"), env)
            rss.append(peak_rss(gq("claim", "--queue", big, "--worker", "rss2"), env)[0])
            job = json.loads(run(gq("claim", "--queue", big, "--worker", "rss3", "--json"), env)[0])
        print(f"peak RSS of one claim process, 29k queue: {max(rss):.1f} MiB (max of 3)")
        if not have_valgrind:
            print("valgrind not available: instruction counts skipped")
            return
        base_pass = instructions([sys.executable, "-c", "pass"], env, tmp)
        base_import = instructions([sys.executable, "-c", BASELINE], env, tmp)
        print(f"python -c pass: {base_pass / 1e6:.0f} M instructions")
        print(f"python -c '{BASELINE}': {base_import / 1e6:.0f} M instructions")
        for name, url in (("subset-279", small), ("pkgsrc-29k", big)):
            claims = []
            for i in range(2):
                claims.append(instructions(gq("claim", "--queue", url, "--worker", f"cg{i}"), env, tmp))
            claim = min(claims)
            one = instructions(gq("work", "--queue", url, "--worker", "cgw1", "--max-jobs", "1", "--", "true"),
                               env, tmp)
            eleven = instructions(gq("work", "--queue", url, "--worker", "cgw2", "--max-jobs", "11", "--", "true"),
                                  env, tmp)
            print(f"{name}: gitqueue claim {claim / 1e6:.0f} M instructions = {claim / base_import:.2f} x the "
                  f"import baseline; inside gitqueue work {(eleven - one) / 10 / 1e6:.1f} M instructions per job")


if __name__ == "__main__":
    main()
