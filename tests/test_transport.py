"""Rule 5 and transports: ssh with a real sshd, cut connections, unreachable remotes, dead lock holders."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gitqueue import lease
from gitqueue.audit import replay
from gitqueue.errors import QueueNotFound
from gitqueue.hook import install

from helpers import REPO, git_log, gitqueue, job, make_queue, open_queue

JOBS = [job("a-1"), job("b-1", ["a-1"]), job("c-1")]


def fsck(path):
    subprocess.run(["git", "-C", path, "fsck", "--strict"], check=True, capture_output=True)


@pytest.mark.ssh
def test_claim_and_report_over_ssh(tmp_path, sshd):
    path = make_queue(tmp_path, JOBS)
    with open_queue(sshd.url(path), tmp_path, ssh_command=sshd.ssh_command) as q:
        got = lease.claim(q, "w1")
        lease.report(q, "w1", got.job, "success", duration=1.5)
    # A second host with a fresh (shallow) cache sees the new state.
    with open_queue(sshd.url(path), tmp_path, host="h2", ssh_command=sshd.ssh_command) as q:
        second = lease.claim(q, "w2")
        assert os.path.exists(os.path.join(q.cache_dir, "repo.git", "shallow"))  # its first fetch was
        assert second.job != got.job
        assert q.remote.fetch() == subprocess.run(["git", "-C", path, "rev-parse", "main"], capture_output=True,
                                                  text=True).stdout.strip().encode()
    fsck(path)
    assert git_log(path).splitlines()[1] == f"report {got.job}: success by w1 in 2 s"


@pytest.mark.ssh
def test_a_cache_directory_with_spaces_works_over_ssh(tmp_path, sshd):
    # ssh's connection-sharing socket lives in the cache directory when the path is short and
    # plain; a path with a space must not reach ssh's -o ControlPath unquoted.
    path = make_queue(tmp_path, JOBS)
    env = {"GITQUEUE_CACHE": "/tmp/gq c", "GITQUEUE_SSH_COMMAND": sshd.ssh_command}
    try:
        proc = gitqueue("claim", "--queue", sshd.url(path), "--worker", "w1", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "claim" in git_log(path).splitlines()[0]
    finally:
        import shutil
        shutil.rmtree("/tmp/gq c", ignore_errors=True)


@pytest.mark.ssh
def test_push_cut_halfway_corrupts_nothing(tmp_path, sshd):
    path = make_queue(tmp_path, JOBS)
    # An ssh that lets only the first 300 bytes of a push through, as a dropped connection would.
    cut = tmp_path / "cut-ssh"
    cut.write_text(textwrap.dedent("""\
        #!/bin/sh
        case "$*" in
          *git-receive-pack*) head -c 300 | exec ssh "$@" ;;
          *) exec ssh "$@" ;;
        esac
        """))
    cut.chmod(0o755)
    before = git_log(path)
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_SSH_REUSE": "0",
           "GITQUEUE_SSH_COMMAND": f"{cut} {sshd.ssh_command[4:]}"}
    proc = gitqueue("claim", "--queue", sshd.url(path), "--worker", "w1", env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "push failed" in lines[0], proc.stderr
    assert git_log(path) == before
    fsck(path)
    # The same cache works once the connection is good again.
    env["GITQUEUE_SSH_COMMAND"] = sshd.ssh_command
    proc = gitqueue("claim", "--queue", sshd.url(path), "--worker", "w1", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    fsck(path)


def test_unreachable_remotes_fail_in_one_line(tmp_path):
    for url in (str(tmp_path / "missing.git"), "ssh://127.0.0.1:1/nowhere.git", "git://127.0.0.1:1/nowhere.git"):
        proc = gitqueue("claim", "--queue", url, "--worker", "w1",
                        env={"GITQUEUE_CACHE": str(tmp_path / "c"), "GITQUEUE_SSH_COMMAND": "ssh -o BatchMode=yes"})
        assert proc.returncode == 1, (url, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and url.split("://")[-1].split("/")[0] in lines[0]


def test_a_killed_lock_holder_leaves_the_cache_usable(tmp_path):
    url = make_queue(tmp_path, JOBS)
    cache = tmp_path / "cache"
    with open_queue(url, tmp_path) as q:
        lease.claim(q, "w1")
        lock_path = os.path.join(q.cache_dir, "lock")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import filelock, time; l = filelock.FileLock({lock_path!r}); l.acquire(); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with open_queue(url, tmp_path) as q:
        assert lease.claim(q, "w1").job in {"c-1", "a-1"}
        audit = replay(q.remote, q.remote.fetch())
    assert audit.violations == [] and audit.claims == 2
    del cache


def test_a_stale_ref_lock_is_taken_away(tmp_path):
    """A process killed while it moved the branch left refs/heads/main.lock: the next writer takes
    it away (it is older than any update takes) instead of every writer stopping on it."""
    url = make_queue(tmp_path, JOBS)
    lock = os.path.join(url, "refs", "heads", "main.lock")
    with open(lock, "w"):
        pass
    os.utime(lock, (time.time() - 31, time.time() - 31))
    with open_queue(url, tmp_path) as q:
        assert lease.claim(q, "w1").job
    assert not os.path.exists(lock)


def test_not_a_queue(tmp_path):
    empty = tmp_path / "empty.git"
    subprocess.run(["git", "init", "--bare", "-q", str(empty)], check=True)
    with open_queue(str(empty), tmp_path) as q:
        with pytest.raises(QueueNotFound, match="no queue on branch main"):
            lease.claim(q, "w1")


@pytest.mark.ssh
def test_init_and_import_over_ssh_into_an_empty_bare_repository(tmp_path, sshd):
    path = str(tmp_path / "remote.git")
    subprocess.run(["git", "init", "--bare", "-q", path], check=True)
    install(path, sys.executable, package_dir=str(REPO))  # the first push (init) passes the hook too
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_SSH_COMMAND": sshd.ssh_command}
    url = sshd.url(path)
    graph = tmp_path / "g.jsonl"
    graph.write_text('{"name": "a-1", "version": "1", "deps": []}\n{"name": "b-1", "version": "1", "deps": ["a-1"]}\n')
    assert gitqueue("init", url, "--name", "remote", "--lease-ttl", "60", env=env).returncode == 0
    assert gitqueue("init", url, env=env).stderr.startswith("Error: ")
    proc = gitqueue("import", url, graph, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = gitqueue("claim", "--queue", url, "--worker", "w1", env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("a-1\t"), proc.stderr
    assert git_log(path).splitlines() == ["claim a-1 by w1", "import 2 jobs from g.jsonl", "init queue remote"]
    fsck(path)


def test_git_daemon_transport(tmp_path):
    import socket
    import time

    path = make_queue(tmp_path / "srv", JOBS) if (tmp_path / "srv").mkdir() is None else None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}", "--export-all",
         "--enable=receive-pack", f"--base-path={tmp_path / 'srv'}", str(tmp_path / "srv")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "git daemon did not start"
                time.sleep(0.05)
        url = f"git://127.0.0.1:{port}/q.git"
        with open_queue(url, tmp_path) as q:
            got = lease.claim(q, "w1")
            lease.report(q, "w1", got.job, "success")
            assert lease.claim(q, "w1").job != got.job
    finally:
        daemon.terminate()
        daemon.wait()
    fsck(path)
    assert len(git_log(path).splitlines()) == 5
