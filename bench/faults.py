"""Fault injection, the long run: the whole 279-package subset over ssh while workers are killed.

The harness is tests/faults.py (tests/test_faults.py runs a short version in CI). Each run
prints its seed and figures: workers killed, connections cut, leases reclaimed, late reports
kept, duplicate results (must be 0), lost jobs (must be 0). A broken promise stops the run
with the seed, so it can be replayed.

    python bench/faults.py [--runs 3] [--seed S] [--workers-per-host 3] [--faults-for 90]
"""

import argparse
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main():
    from faults import Harness
    from sshd import SshServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, help="first seed (default: random)")
    ap.add_argument("--jobs", type=int, default=279)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--workers-per-host", type=int, default=3)
    ap.add_argument("--faults-for", type=float, default=90, help="seconds of fault injection per run")
    opts = ap.parse_args()
    seed = opts.seed if opts.seed is not None else random.randrange(10**6)
    totals = {}
    for run in range(opts.runs):
        with tempfile.TemporaryDirectory(prefix="gq-faults-") as tmp:
            server = SshServer(Path(tmp) / "sshd").start()
            harness = Harness(Path(tmp) / "work", server, seed + run, jobs=opts.jobs, hosts=opts.hosts,
                              per_host=opts.workers_per_host, ttl=4)
            try:
                figures = harness.run(deadline=1200, fault_every=1.0, faults_for=opts.faults_for)
            finally:
                harness.stop()
                server.stop()
        print(" ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
        for key, value in figures.items():
            if key != "seed" and isinstance(value, (int, float)):
                totals[key] = totals.get(key, 0) + value
    print(f"totals over {opts.runs} runs: " + ", ".join(f"{k} {v:g}" for k, v in totals.items()))


if __name__ == "__main__":
    main()
