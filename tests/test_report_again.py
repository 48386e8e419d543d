"""`gitqueue report` run again after its reply was lost, against a master deployed as README says:
the worker's key runs `gitqueue serve` as its forced command, the hook judges the push, rrsync
takes the upload. The first run's push lands and the connection drops before git's answer
comes back; the same command again is told its outcome is recorded, and writes nothing."""

import json
import os
import subprocess
import sys

import pytest

from gitqueue.lease import read_job_record
from gitqueue.queue import Queue

from helpers import job

pytestmark = pytest.mark.ssh


# An ssh that, while the file LOSE exists (it removes it), loses the master's answer to a push:
# it passes on git-receive-pack's ref advertisement, lets the push through, throws away what the
# master says after it (the report of the ref update) and fails as a dropped connection does.
LOSE_REPLY = """\
import os, shlex, subprocess, sys
REAL, LOSE = {real!r}, {lose!r}
args = sys.argv[1:]
if not any("git-receive-pack" in a for a in args) or not os.path.exists(LOSE):
    os.execvp(shlex.split(REAL)[0], shlex.split(REAL) + args)
os.unlink(LOSE)
proc = subprocess.Popen(shlex.split(REAL) + args, stdout=subprocess.PIPE)
out = sys.stdout.buffer
while True:  # pkt-lines up to the flush-pkt that ends the advertisement
    size = proc.stdout.read(4)
    out.write(size)
    n = int(size or b"0", 16)
    out.write(proc.stdout.read(max(n - 4, 0)))
    out.flush()
    if n == 0:
        break
proc.stdout.read()  # the master's answer, lost
proc.wait()
print("Connection to master closed by remote host.", file=sys.stderr)
sys.exit(255)
"""


@pytest.fixture
def farm(make_farm):
    return make_farm([job("a-1"), job("t-1")])


def cli(farm, key, worker, cache, *args, ssh=None):
    env = {**os.environ, **farm.worker_env(key, cache), "GITQUEUE_WORKER": worker}
    if ssh:
        env["GITQUEUE_SSH_COMMAND"] = ssh
    return subprocess.run([sys.executable, "-m", "gitqueue", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_report_run_again_after_a_lost_reply_is_told_it_is_recorded(farm, tmp_path):
    cache = tmp_path / "cache-w1"
    lose = tmp_path / "lose"
    ssh = tmp_path / "ssh-losing-replies"
    ssh.write_text(f"#!{sys.executable}\n" + LOSE_REPLY.format(real=farm.ssh_command("k1"), lose=str(lose)))
    ssh.chmod(0o755)

    def w1(*args, **kw):
        return cli(farm, "k1", "w1", cache, *args, ssh=str(ssh), **kw)

    claims = {}
    for _ in range(2):
        proc = w1("claim", "--json")
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        claims[got["job"]] = got["lease"]
    assert sorted(claims) == ["a-1", "t-1"]
    token = claims["a-1"]
    package = tmp_path / "a-1.tgz"
    package.write_bytes(b"a package" * 100)
    log = tmp_path / "build.log"
    log.write_text("built a-1\n")
    report = ("report", "a-1", "--status", "success", "--package", package, "--log", log)

    # The push lands, the answer is lost: the command fails, yet the master has the result.
    lose.touch()
    proc = w1(*report)
    assert not lose.exists()
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("Error: ") and "push failed" in proc.stderr, proc.stderr
    recorded = _read(farm, "results", "a-1")
    assert (recorded["status"], recorded["worker"], recorded["token"]) == ("success", "w1", token)
    tip, tree = farm.tip(), farm.files()
    assert tree[f"incoming/{token}/a-1.tgz"] == package.read_bytes()

    # The same command again (the token is the one this host's cache remembers from the claim):
    # told it is recorded, exit 0; nothing pushed, nothing uploaded.
    proc = w1(*report)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout == "a-1: success (already recorded by an earlier run of this report; nothing written)\n"
    assert (farm.tip(), farm.files()) == (tip, tree)
    # So too with the token given (the cache forgot the claim once the report went through), in JSON.
    proc = w1(*report, "--lease", token, "--json")
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(recorded))
    assert (farm.tip(), farm.files()) == (tip, tree)

    # Another outcome under the same lease is refused, in one line; as are another token's and
    # another worker's report.
    refusals = [
        (w1("report", "a-1", "--status", "failure", "--lease", token),
         f"Error: a-1: the lease of w1 under token {token} already ended with a success; this report of a "
         "failure differs from it; nothing recorded\n"),
        (w1("report", "a-1", "--status", "success", "--lease", claims["t-1"]),
         "Error: a-1 already has a result (success by w1); nothing recorded\n"),
        (cli(farm, "k2", "w2", tmp_path / "cache-w2", "report", "a-1", "--status", "success", "--lease", token),
         "Error: a-1 already has a result (success by w1); nothing recorded\n"),
    ]
    for proc, expected in refusals:
        assert (proc.returncode, proc.stderr) == (5, expected)
    assert (farm.tip(), farm.files()) == (tip, tree)

    # A transient failure whose reply was lost went back to the queue under its token: the same
    # report again is told so; a success under that token is refused.
    transient = ("report", "t-1", "--status", "failure", "--transient")
    lose.touch()
    proc = w1(*transient)
    assert proc.returncode == 1 and "push failed" in proc.stderr, proc.stderr
    entry = _read(farm, "declines", "t-1")["declined"][-1]
    assert (entry["worker"], entry["token"], entry["transient"]) == ("w1", claims["t-1"], True)
    assert _read(farm, "leases", "t-1") is None
    tip = farm.tip()
    proc = w1(*transient)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout == ("t-1: transient failure, attempt 1 of 3: back to the queue (already recorded by an "
                           "earlier run of this report; nothing written)\n")
    proc = w1("report", "t-1", "--status", "success", "--lease", claims["t-1"])
    assert (proc.returncode, proc.stderr) == (5, f"Error: t-1: the lease of w1 under token {claims['t-1']} already "
                                                 "ended with a transient failure (back to the queue); this report "
                                                 "of a success differs from it; nothing recorded\n")
    assert farm.tip() == tip


def _read(farm, kind, name):
    with Queue(str(farm.repo), str(farm.keys_dir / "cache-read")) as q:
        _, reader = q.fetch()
        return read_job_record(reader, kind, name)
