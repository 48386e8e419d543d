"""A damaged cache is rebuilt from the remote; a damaged queue or a full disk is one clear error."""

import glob
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import git_log, gitqueue, job, make_package_queue, make_queue


@pytest.fixture
def remote_queue(tmp_path):
    """A queue reached through a cache (file://), and a worker's environment with its own cache."""
    # More objects than gitstore.UNPACK_LIMIT: the first fetch is kept as a pack.
    path = make_queue(tmp_path, [job(f"p{i}-1.0") for i in range(120)])
    env = {"GITQUEUE_CACHE": str(tmp_path / "wcache")}
    first = gitqueue("claim", "--queue", f"file://{path}", "--worker", "w1", env=env, check=True)
    assert first.returncode == 0
    return path, env, tmp_path / "wcache"


def cache_files(cache, pattern):
    return glob.glob(str(cache / "*" / "repo.git" / "objects" / pattern))


@pytest.mark.parametrize("damage", ["truncate the pack", "delete the pack", "garble a loose object"])
def test_a_damaged_cache_is_rebuilt_from_the_remote(remote_queue, damage):
    path, env, cache = remote_queue
    # Make sure the cache holds loose objects too: a claim writes its commit's objects.
    gitqueue("claim", "--queue", f"file://{path}", "--worker", "w2", env=env, check=True)
    if damage == "truncate the pack":
        for pack in cache_files(cache, "pack/*.pack"):
            with open(pack, "r+b") as f:
                f.truncate(100)
    elif damage == "delete the pack":
        for name in cache_files(cache, "pack/*"):
            os.unlink(name)
    else:
        loose = [p for p in cache_files(cache, "??/*")]
        assert loose
        for name in loose:
            os.chmod(name, 0o644)
            with open(name, "wb") as f:
                f.write(b"not zlib at all")
    before = git_log(path)
    proc = gitqueue("claim", "--queue", f"file://{path}", "--worker", "w3", env=env)
    assert proc.returncode == 0, proc.stderr
    notices = [line for line in proc.stderr.splitlines() if line.startswith("gitqueue: ")]
    assert len(notices) == 1 and notices[0].endswith(f"the cache was rebuilt from file://{path}"), proc.stderr
    assert git_log(path).count("claim ") == before.count("claim ") + 1
    # ... and the rebuilt cache keeps working.
    again = gitqueue("claim", "--queue", f"file://{path}", "--worker", "w4", env=env)
    assert again.returncode == 0 and again.stderr == ""


def test_a_damaged_queue_repository_is_one_error_naming_fsck(tmp_path):
    path = make_queue(tmp_path, [job("a-1.0"), job("b-1.0")])
    for name in glob.glob(os.path.join(path, "objects", "??", "*")):
        os.unlink(name)
    for name in glob.glob(os.path.join(path, "objects", "pack", "*")):
        os.unlink(name)
    proc = gitqueue("claim", "--queue", path, "--worker", "w1", env={"GITQUEUE_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: object ") and "git fsck" in lines[0]


def _limit_file_size():
    # A full disk, as far as this process can tell: writes past 64 KiB fail (EFBIG) instead of
    # killing it with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_full_disk_during_the_first_fetch_is_one_error_and_nothing_is_lost(tmp_path):
    path = make_queue(tmp_path, [job(f"p{i}-1.0", pkgpath=f"devel/p{i}") for i in range(1500)])
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "wcache")}
    before = git_log(path)
    proc = subprocess.run([sys.executable, "-m", "gitqueue", "claim", "--queue", f"file://{path}", "--worker", "w1"],
                          env=env, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "File too large" in lines[0], proc.stderr
    assert git_log(path) == before  # nothing was claimed
    # With room again, the same cache works.
    again = subprocess.run([sys.executable, "-m", "gitqueue", "claim", "--queue", f"file://{path}", "--worker", "w1"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


def hung_ssh(tmp_path):
    """An ssh that connects and says nothing, and the environment of a worker using it (2 s deadline)."""
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text("#!/bin/sh\nexec sleep 300\n")
    fake_ssh.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text("network_timeout = 2\n")
    env = {"GITQUEUE_CONFIG": str(config), "GITQUEUE_CACHE": str(tmp_path / "c"), "GITQUEUE_SSH_COMMAND": str(fake_ssh)}
    return fake_ssh, env


def test_a_connection_that_hangs_is_abandoned_after_the_network_timeout(tmp_path):
    """ssh that connects and then says nothing (a stuck server, a NAT box that dropped the state)."""
    fake_ssh, env = hung_ssh(tmp_path)
    proc = gitqueue("claim", "--queue", "ssh://127.0.0.1/srv/q.git", "--worker", "w1", env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: ssh://127.0.0.1/srv/q.git: fetch: no answer for 2 s; gave up"
    left = subprocess.run(["pgrep", "-f", f"{fake_ssh}"], capture_output=True, text=True).stdout.split()
    assert left == [], "the hung ssh process was killed"


def test_verify_of_a_server_that_hangs_gives_up_after_the_network_timeout(tmp_path):
    """verify fetches the whole history: ssh connects, then the server says nothing."""
    fake_ssh, env = hung_ssh(tmp_path)
    started = time.monotonic()
    proc = gitqueue("verify", "ssh://127.0.0.1/srv/q.git", env=env, timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: ssh://127.0.0.1/srv/q.git: fetch history: no answer for 2 s; gave up"
    left = subprocess.run(["pgrep", "-f", f"{fake_ssh}"], capture_output=True, text=True).stdout.split()
    assert left == [], "the hung ssh process was killed"


def test_the_history_of_a_server_that_accepts_and_never_answers_is_given_up(tmp_path):
    """status and html read the timeline, a fetch of every commit: a git:// server whose socket
    accepts the connection (the kernel's backlog) and never answers must not hang them."""
    from gitqueue import timeline
    from gitqueue.errors import RemoteError
    from gitqueue.queue import Queue

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"git://127.0.0.1:{server.getsockname()[1]}/q.git"
        with Queue(url, str(tmp_path / "c"), network_timeout=1.5) as q:
            started = time.monotonic()
            with pytest.raises(RemoteError) as e:
                timeline.load(q)
    assert time.monotonic() - started < 10
    assert str(e.value) == f"{url}: fetch commits: no answer for 1.5 s; gave up"


def test_a_lock_file_left_in_the_cache_by_a_killed_worker_is_cleared(remote_queue):
    """Found by the fault harness: a worker SIGKILLed while moving its cache's ref left
    refs/heads/main.lock behind, and every later process on that host died on it."""
    path, env, cache = remote_queue
    for name in ("refs/heads/main.lock", "shallow.lock"):
        for repo in glob.glob(str(cache / "*" / "repo.git")):
            with open(os.path.join(repo, name), "w") as f:
                f.write("0" * 40 + "\n")
    # A new commit on the remote, so that the cache's ref must move.
    other = gitqueue("claim", "--queue", path, "--worker", "w9", env={"GITQUEUE_CACHE": str(cache.parent / "o")})
    assert other.returncode == 0, other.stderr
    proc = gitqueue("claim", "--queue", f"file://{path}", "--worker", "w2", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not glob.glob(str(cache / "*" / "repo.git" / "refs" / "heads" / "main.lock"))


def test_a_full_disk_during_upload_is_one_error_and_the_lease_stays(tmp_path):
    # The package tree's disk is full: rsync's receiver cannot write past 32 KiB (a wrapper
    # first on the PATH sets the limit, then runs the real rsync).
    tree = tmp_path / "packages"
    url = make_package_queue(tmp_path, str(tree), [job("gmake-4.4.1", pkgpath="devel/gmake")])
    config = tmp_path / "worker.toml"
    config.write_text("transfer_attempts = 2\ntransfer_backoff = 0.1\n")
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-w"), "GITQUEUE_CONFIG": str(config)}
    claim = gitqueue("claim", "--queue", url, "--worker", "w1", env=env)
    assert claim.returncode == 0, claim.stderr
    token = claim.stdout.split("\t")[2].strip()
    package = tmp_path / "gmake-4.4.1.tgz"
    package.write_bytes(os.urandom(200_000))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rsync").write_text(f"#!/bin/sh\ntrap '' XFSZ\nulimit -f 64\nexec {shutil.which('rsync')} \"$@\"\n")
    (bin_dir / "rsync").chmod(0o755)
    before = git_log(url)
    full = {**env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    rep = gitqueue("report", "gmake-4.4.1", "--queue", url, "--worker", "w1", "--status", "success",
                   "--package", str(package), env=full)
    assert rep.returncode == 1
    lines = rep.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: upload to ") and "after 2 attempts" in lines[0], rep.stderr
    assert git_log(url) == before  # no result names a package that is not there
    incoming = tree / "incoming" / token
    assert not (incoming / package.name).exists()  # no partial file under the package's name
    # The lease is still the worker's: with room again, the same report goes through.
    rep = gitqueue("report", "gmake-4.4.1", "--queue", url, "--worker", "w1", "--status", "success",
                   "--package", str(package), env=env)
    assert rep.returncode == 0, rep.stderr
    assert (incoming / package.name).read_bytes() == package.read_bytes()
