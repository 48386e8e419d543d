"""Benchmark: what signing and verifying one commit costs, and what the verifier's imports cost.

With throwaway ed25519, ecdsa (P-256) and rsa (3072) keys and a real ssh-agent on a private
socket, prints the median wall time over N iterations (default 50) of:

- sign via key file: `ssh-keygen -Y sign` (one process per signature);
- sign via agent: one connection to ssh-agent, the envelope built here;
- verify via ssh-keygen: temporary allowed-signers file + `ssh-keygen -Y verify`;
- verify via cryptography: the in-process fast path (if cryptography is installed);
- parse only: the pure-Python strict envelope check that both verify paths start with;

then the import cost of `gitqueue.signing` and of the cryptography modules the fast path loads,
as `python -X importtime` cumulative time (median of 5 fresh processes) and, with valgrind,
instructions of `python -c "import ..."` minus `python -c pass`.

    python bench/signing.py [-n 50] [--no-callgrind]
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gitqueue.signing import Signer, cryptography_available, parse_signature, verify  # noqa: E402

KEYS = {"ed25519": ["-t", "ed25519"], "ecdsa": ["-t", "ecdsa", "-b", "256"], "rsa": ["-t", "rsa", "-b", "3072"]}
CRYPTO_IMPORT = ("import cryptography.exceptions, cryptography.hazmat.primitives.hashes, "
                 "cryptography.hazmat.primitives.asymmetric.ec, cryptography.hazmat.primitives.asymmetric.ed25519, "
                 "cryptography.hazmat.primitives.asymmetric.rsa, cryptography.hazmat.primitives.asymmetric.padding, "
                 "cryptography.hazmat.primitives.asymmetric.utils")
# A realistic payload: a claim commit, without its signature.
PAYLOAD = (b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nparent 3f1b9d2f0c5e4a7b8c9d0e1f2a3b4c5d6e7f8091\n"
           b"author vax-1 <vax-1@gitqueue> 1700000000 +0000\ncommitter vax-1 <vax-1@gitqueue> 1700000000 +0000\n"
           b"encoding UTF-8\n\nclaim www/firefox\n")


def median_ms(fn, n):
    fn()  # warm: first-call imports and caches are start-up cost, measured separately below
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def start_agent(directory):
    sock = os.path.join(directory, "agent.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("ssh-agent did not start")
        time.sleep(0.02)
    return proc, sock


def _env(pycache):
    # Byte-compiled once into a private cache, as an installed package would be: otherwise each
    # fresh process recompiles gitqueue/*.py and that dwarfs the import itself.
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _top_level(statement, env):
    """{module: cumulative us} of the top-level imports one fresh `python -X importtime -c` makes."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], env=env, capture_output=True,
                         text=True, check=True).stderr
    found = {}
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)  # no indent: top level
        if m:
            found[m.group(2)] = int(m.group(1))
    return found


def importtime_ms(base, statement, env, runs=5):
    """Median cumulative import time (ms) of the modules `statement` adds after `base`, in one process."""
    already = set(_top_level(base, env))
    totals = []
    for _ in range(runs):
        after = _top_level(f"{base}; {statement}", env)
        totals.append(sum(us for module, us in after.items() if module not in already) / 1000)
    return statistics.median(totals)


def instructions(statement, env):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c",
                               statement], env=env, capture_output=True, text=True)
        m = re.search(r"Collected : (\d+)", proc.stderr)
        return int(m.group(1)) if m else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="iterations per measurement")
    parser.add_argument("--no-callgrind", action="store_true", help="skip the valgrind instruction counts")
    args = parser.parse_args()

    ssh_version = subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()
    print(f"python {sys.version.split()[0]}, {ssh_version}, "
          f"cryptography {'installed' if cryptography_available() else 'NOT installed'}; median of {args.n}, ms")
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as tmp:
        agent, sock = start_agent(tmp)
        try:
            env = dict(os.environ, SSH_AUTH_SOCK=sock)
            rows = []
            for kind, opts in KEYS.items():
                path = os.path.join(tmp, f"id_{kind}")
                subprocess.run(["ssh-keygen", "-q", *opts, "-N", "", "-f", path], check=True)
                subprocess.run(["ssh-add", "-q", path], env=env, check=True, capture_output=True)
                by_file = Signer.from_key_file(path)
                by_agent = Signer.from_agent(by_file.public_key, socket_path=sock)
                sig = by_file.sign(PAYLOAD)
                allowed = {"vax-1": [by_file.public_key]}
                row = {
                    "sign key file (ssh-keygen)": median_ms(lambda: by_file.sign(PAYLOAD), args.n),
                    "sign agent": median_ms(lambda: by_agent.sign(PAYLOAD), args.n),
                    "verify ssh-keygen": median_ms(lambda: verify(PAYLOAD, sig, allowed, backend="ssh-keygen"), args.n),
                }
                if cryptography_available():
                    row["verify cryptography"] = median_ms(
                        lambda: verify(PAYLOAD, sig, allowed, backend="cryptography"), args.n)
                row["parse only"] = median_ms(lambda: parse_signature(sig), args.n)
                rows.append((kind, row))
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=10)

    names = list(rows[0][1])
    width = max(len(n) for n in names)
    print(f"{'':{width}}  " + "  ".join(f"{kind:>8}" for kind, _ in rows))
    for name in names:
        print(f"{name:{width}}  " + "  ".join(f"{row.get(name, float('nan')):8.2f}" for _, row in rows))

    # What a worker has loaded anyway before it signs a claim (a remote queue: dulwich.client).
    worker = "import dulwich.repo, dulwich.client, gitqueue.gitstore, gitqueue.layout"
    imports = [
        ("gitqueue.signing, fresh interpreter", "pass", "import gitqueue.signing"),
        ("gitqueue.signing, after a worker's imports", worker, "import gitqueue.signing"),
        ("subprocess+tempfile, fresh (ssh-keygen)", "pass", "import subprocess, tempfile"),
        ("subprocess+tempfile, after a worker's", worker, "import subprocess, tempfile"),
        ("socket, after a worker's (agent)", worker, "import socket"),
    ]
    if cryptography_available():
        imports.append(("cryptography fast path, fresh", "pass", CRYPTO_IMPORT))
        imports.append(("cryptography fast path, after a worker's", worker, CRYPTO_IMPORT))
    with tempfile.TemporaryDirectory(prefix="bench-pycache-") as pycache:
        env = _env(pycache)
        subprocess.run([sys.executable, "-c", f"{worker}; import gitqueue.signing; {CRYPTO_IMPORT}"], env=env)
        print("\nimport cost added (python -X importtime cumulative, median of 5 processes):")
        for label, base, statement in imports:
            print(f"  {label:45} {importtime_ms(base, statement, env):7.2f} ms")
        if not args.no_callgrind and shutil.which("valgrind"):
            print("\ninstructions added (callgrind, python -c BASE; STATEMENT minus python -c BASE):")
            for label, base, statement in imports:
                before = instructions(base, env)
                after = instructions(f"{base}; {statement}", env)
                if before is not None and after is not None:
                    print(f"  {label:45} {(after - before) / 1e6:7.2f} M")

if __name__ == "__main__":
    main()
