"""Rule 1: never two live leases, never two results, no commit lost, whatever the timing.

Many real worker processes race on one repository; afterwards the whole history is replayed.
"""

import os
import random
import re
import subprocess
import sys

import pytest

from gitqueue.audit import replay
from gitqueue.gitstore import LocalRemote

from helpers import git_log, job, make_queue


def random_dag(n, seed):
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        deps = rng.sample(range(i), k=min(i, rng.choice([0, 0, 1, 1, 2, 3])))
        jobs.append(job(f"p{i}-1.0", [f"p{d}-1.0" for d in deps]))
    return jobs


def start_worker(url, name, cache, extra_env=None, command=("true",), log=None):
    # network_timeout: a hung fetch or push is given up and retried instead of hanging the test.
    config = cache.parent / "worker-config.toml"
    config.write_text("network_timeout = 60\n")
    env = {**os.environ, "GITQUEUE_CACHE": str(cache), "GITQUEUE_CONFIG": str(config), **(extra_env or {})}
    # Output to a file, not a pipe: a pipe nobody reads yet would stop a chatty worker.
    out = open(log, "w") if log else subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", name, "--max-wait", "0.5",
         "--", *command],
        env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
    )
    if log:
        out.close()
    return proc


def check_history(bare_path, jobs, outputs):
    remote = LocalRemote(bare_path)
    try:
        audit = replay(remote, remote.fetch())
    finally:
        remote.close()
    assert audit.violations == []
    assert audit.results == len(jobs)
    # No commit lost: every report a worker saw succeed is in the history, by that worker.
    reported = set()
    for out in outputs.values():
        for m in re.finditer(r"^(\S+): (\S+) (success|failure) \(", out, re.M):
            reported.add((m.group(1), m.group(2)))
    assert len(reported) == len(jobs)
    in_history = set(re.findall(r"^report (\S+): success by (\S+)", git_log(bare_path, "%B"), re.M))
    assert {(w, j) for j, w in in_history} == reported
    return audit


def run_workers(url, tmp_path, hosts, per_host, extra_env=None):
    procs = {}
    for h in range(hosts):
        for p in range(per_host):
            name = f"w{h}-{p}"
            procs[name] = start_worker(url, name, tmp_path / f"cache-host{h}", extra_env,
                                       log=tmp_path / f"{name}.log")
    outputs = {}
    for name, proc in procs.items():
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            raise AssertionError(f"{name} did not finish:\n" + "\n".join(
                f"== {n}\n" + (tmp_path / f"{n}.log").read_text()[-3000:] for n in procs)) from None
        outputs[name] = (tmp_path / f"{name}.log").read_text()
        assert proc.returncode == 0, outputs[name]
    return outputs


def test_many_workers_local_path(tmp_path):
    jobs = random_dag(80, seed=1)
    url = make_queue(tmp_path, jobs)
    # Two "hosts", each with three processes sharing one cache.
    outputs = run_workers(url, tmp_path, hosts=2, per_host=3)
    audit = check_history(url, jobs, outputs)
    assert audit.claims == len(jobs)
    assert sum("queue finished" in out for out in outputs.values()) == 6


@pytest.mark.ssh
def test_many_workers_over_ssh(tmp_path, sshd):
    jobs = random_dag(40, seed=2)
    path = make_queue(tmp_path, jobs)
    env = {"GITQUEUE_SSH_COMMAND": sshd.ssh_command}
    outputs = run_workers(sshd.url(path), tmp_path, hosts=3, per_host=2, extra_env=env)
    check_history(path, jobs, outputs)


def race_for_one_job(url, tmp_path, n, env=None):
    procs = [
        subprocess.Popen([sys.executable, "-m", "gitqueue", "claim", "--queue", url, "--worker", f"w{i}"],
                         env={**os.environ, "GITQUEUE_CACHE": str(tmp_path / f"cache{i}"), **(env or {})},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    return sorted(codes)


def test_one_job_many_claimants_local(tmp_path):
    url = make_queue(tmp_path, [job("only-1")])
    assert race_for_one_job(url, tmp_path, 8) == [0] + [3] * 7
    assert git_log(url).count("claim only-1") == 1


@pytest.mark.ssh
def test_one_job_many_claimants_ssh(tmp_path, sshd):
    path = make_queue(tmp_path, [job("only-1")])
    codes = race_for_one_job(sshd.url(path), tmp_path, 6, {"GITQUEUE_SSH_COMMAND": sshd.ssh_command})
    assert codes == [0] + [3] * 5
    assert git_log(path).count("claim only-1") == 1
