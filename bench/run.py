"""Run every benchmark, one after the other, printing their figures.

    python bench/run.py            # all (about 45 minutes on a 2-core machine)
    python bench/run.py lean       # one or several by name

Benchmarks: claim_cycle (claim+report as processes, local and ssh), lean (instructions, RSS,
import), contention (many workers on one queue), transfer (a 10 MB package over ssh), view
(`gitqueue status` and `gitqueue html` on the 29k queue with a history of 4,000 results), hook
(what the pre-receive hook adds to a claim over ssh; verify's cost per commit), faults (the
fault-injection build, long version), longlife (a whole 29k build's history: sizes,
`gitqueue gc`, a new worker's first claim, claim latency).
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALL = ["claim_cycle", "lean", "contention", "transfer", "view", "hook", "faults", "longlife"]


def main():
    names = sys.argv[1:] or ALL
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}")
    failed = []
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"== {name}: not present, skipped\n", flush=True)
            continue
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(name)
        print(flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
