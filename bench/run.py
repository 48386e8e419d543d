"""Run every benchmark, one after the other, printing their figures.

    python bench/run.py            # all (about 65 minutes on a 2-core machine)
    python bench/run.py lean       # one or several by name
    sudo python bench/run.py debian_farm   # only when named: see ASKED_ONLY

Benchmarks: claim_cycle (claim+report as processes, local and ssh), lean (instructions, RSS,
import), contention (many workers on one queue), transfer (a 10 MB package over ssh), view
(`gitqueue status` and `gitqueue html` on the 29k queue with a history of 4,000 results), hook
(what the pre-receive hook adds to a claim over ssh; verify's cost per commit), faults (the
fault-injection build, long version), longlife (a whole 29k build's history: sizes,
`gitqueue gc`, a new worker's first claim, claim latency), small_machine (a worker confined by
cgroups to 64 MiB and 5% of one core: memory, first claim, job overhead, cold starts; about 20
minutes; the confinements are skipped without writable cgroups), records (reading records: tomllib
against records.loads; about a minute), debian_farm (only when named: real
Debian source packages built by three volunteer accounts through sshd, forced commands and the
hook; needs root and Debian's mirror).
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALL = ["claim_cycle", "lean", "contention", "transfer", "view", "hook", "faults", "longlife", "small_machine",
       "records"]
# Run only when named: {name: why not by default}.
ASKED_ONLY = {"debian_farm": "needs root (it creates accounts, installs packages with apt and changes the apt "
                             "sources) and the network to Debian's mirror; about 30 minutes"}


def main():
    names = sys.argv[1:] or ALL
    unknown = [n for n in names if n not in ALL and n not in ASKED_ONLY]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join([*ALL, *ASKED_ONLY])}")
    if not sys.argv[1:]:
        for name, why in ASKED_ONLY.items():
            print(f"== {name}: skipped unless named (python bench/run.py {name}): {why}\n", flush=True)
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
