"""What a worker holds while its build runs (issue 15): no pack maps, no OpenSSL, and still
heartbeats and a report; as real processes, over a real sshd."""

import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from gitqueue import lease
from gitqueue.memory import _BUILTIN_HASHES

from helpers import git_log, job, make_queue, open_queue

HAS_BUILTIN_HASHES = all(find_spec(name) for name in _BUILTIN_HASHES)
# Enough jobs that a new worker's first fetch is kept as a pack, not as loose objects.
JOBS = [job(f"p{i:03d}-1") for i in range(300)]


def snapshots_while_building(tmp_path, queue_path):
    """A build command that waits for two heartbeats of w1 during its build, then copies the
    worker's (its parent's) memory maps and open files ten times, 50 ms apart, into tmp_path."""
    return (f"n=0; while [ $(git -C {queue_path} log --format=%s main | grep -c '^heartbeat w1') -lt 2 ]; do "
            f"n=$((n+1)); [ $n -gt 400 ] && exit 1; sleep 0.05; done; "
            f"for i in 0 1 2 3 4 5 6 7 8 9; do cat /proc/$PPID/maps > {tmp_path}/maps-$i; "
            f"ls -l /proc/$PPID/fd > {tmp_path}/fds-$i; sleep 0.05; done")


@pytest.mark.ssh
def test_a_worker_holds_no_pack_and_no_libcrypto_while_it_builds(tmp_path, master_sshd):
    path = make_queue(tmp_path, JOBS, ttl=4)  # heartbeats may come every 0.2 s
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_SSH_COMMAND": master_sshd.ssh_command}
    proc = subprocess.run(
        [sys.executable, "-m", "gitqueue", "work", "--queue", master_sshd.url(path), "--worker", "w1",
         "--max-jobs", "1", "--heartbeat", "0.3", "--", "sh", "-c", snapshots_while_building(tmp_path, path)],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    built = [line for line in proc.stderr.splitlines() if " success (" in line]
    assert len(built) == 1, proc.stderr
    log = git_log(path)
    assert log.count("heartbeat w1 (1 held)") >= 2 and log.splitlines()[0].startswith("report ")
    packs = list((tmp_path / "cache").glob("*/repo.git/objects/pack/pack-*.pack"))
    assert packs, "the first fetch was kept as loose objects: the test needs a pack"
    maps = [(tmp_path / f"maps-{i}").read_text() for i in range(10)]
    fds = [(tmp_path / f"fds-{i}").read_text() for i in range(10)]
    # Between two heartbeats the cache repository is closed: its packs are neither mapped nor open.
    assert any(".pack" not in m and ".pack" not in f and ".idx" not in m + f for m, f in zip(maps, fds))
    if HAS_BUILTIN_HASHES:
        assert not any("libcrypto" in m for m in maps)


def test_a_queue_at_rest_reopens_what_it_closed(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1")], hook=False)
    with open_queue(url, tmp_path) as q:
        held = lease.claim(q, "w1")
        store = q.remote.object_store
        q.rest()
        assert q._remote is None
        # The index kept its connection (without its page cache): it still knows the claim.
        assert q.index.my_claims("w1") == {held.job: held.lease}
        assert lease.heartbeat(q, "w1").held == [held.job]
        assert q.remote.object_store is not store
        q.rest()
        lease.report(q, "w1", held.job, "success", token=held.lease)
    assert git_log(url).splitlines()[:2] == [f"report {held.job}: success by w1", "heartbeat w1 (1 held)"]


def test_builtin_hashes_leave_openssl_out_and_hash_as_git_does(tmp_path):
    if not HAS_BUILTIN_HASHES:
        pytest.skip("this CPython was built without its own hashes")
    blob = tmp_path / "blob"
    blob.write_bytes(b"name = \"a-1\"\n")
    git = subprocess.run(["git", "hash-object", str(blob)], capture_output=True, text=True, check=True).stdout.strip()
    code = ("import sys\n"
            "from gitqueue.memory import builtin_hashes\n"
            "print(builtin_hashes())\n"
            "from gitqueue.gitstore import blob_id\n"
            f"print(blob_id(open({str(blob)!r}, 'rb').read()).decode())\n"
            "print(sys.modules['_hashlib'] is None, any('libcrypto' in m for m in open('/proc/self/maps')))\n"
            "print(builtin_hashes())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", git, "True", "False", "True"]
    # Once hashlib has OpenSSL, it keeps it: the answer says so.
    late = "import hashlib\nfrom gitqueue.memory import builtin_hashes\nprint(builtin_hashes())\n"
    assert subprocess.run([sys.executable, "-c", late], capture_output=True, text=True,
                          check=True).stdout.split() == ["False"]


def test_only_the_worker_loop_takes_a_small_index_cache(tmp_path):
    code = ("import sys\n"
            "from gitqueue import memory\n"
            "from gitqueue.index import Index\n"
            "if sys.argv[1] == 'work':\n"
            "    memory.lean_worker()\n"
            "index = Index(sys.argv[2])\n"
            "print(index.db.execute('PRAGMA cache_size').fetchone()[0])\n")
    sizes = [subprocess.run([sys.executable, "-c", code, kind, str(tmp_path / f"{kind}.sqlite")], capture_output=True,
                            text=True, check=True).stdout.strip() for kind in ("claim", "work")]
    assert sizes == ["-2000", "-256"]  # SQLite's default for a claim or a report, 256 KiB for `gitqueue work`


@pytest.mark.ssh
def test_a_new_worker_gives_back_its_first_claim_before_it_prepares_the_build(tmp_path, master_sshd):
    """The first claim builds the index from the whole queue; by the time the job's build is
    prepared (before_build, the packages of its dependencies), that memory is given back."""
    path = make_queue(tmp_path, JOBS)
    config = tmp_path / "config.toml"
    config.write_text(f"before_build = 'cat /proc/$PPID/maps > {tmp_path}/maps; "
                      f"ls -l /proc/$PPID/fd > {tmp_path}/fds'\n")
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_CONFIG": str(config),
           "GITQUEUE_SSH_COMMAND": master_sshd.ssh_command}
    proc = subprocess.run(
        [sys.executable, "-m", "gitqueue", "work", "--queue", master_sshd.url(path), "--worker", "w1",
         "--max-jobs", "1", "--", "true"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "cache").glob("*/repo.git/objects/pack/pack-*.pack")), "the test needs a pack"
    maps, fds = (tmp_path / "maps").read_text(), (tmp_path / "fds").read_text()
    assert ".pack" not in maps + fds and ".idx" not in maps + fds
