"""gc: loose objects become packs, caches shrink to the tip, and the queue keeps working throughout."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gitqueue import lease
from gitqueue.errors import RepositoryDamaged
from gitqueue.gc import GcError, gc_cache, gc_repository, measure
from gitqueue.queue import Queue

from helpers import git_log, gitqueue, job, local_commit, make_package_queue, make_queue, open_queue
from test_concurrency import check_history, random_dag, start_worker

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def fsck(path):
    proc = subprocess.run(["git", "--git-dir", str(path), "fsck", "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "missing" not in proc.stdout + proc.stderr


def build(url, tmp_path, worker, n, host="h1"):
    with open_queue(url, tmp_path, host=host) as q:
        for _ in range(n):
            got = lease.claim(q, worker)
            lease.report(q, worker, got.job, "success", duration=1)


@needs_git
def test_gc_packs_the_loose_objects_and_the_queue_still_works(tmp_path):
    jobs = [job(f"p{i}-1.0") for i in range(30)]
    url = make_queue(tmp_path, jobs)
    build(url, tmp_path, "w1", 10)
    before = measure(url)
    assert before["loose"] > 100
    log = git_log(url)

    out = gc_repository(url)

    assert out["after"]["loose"] == 0 and out["packed"] == before["loose"]
    assert out["after"]["packs"] > before["packs"]
    assert out["after"]["bytes"] < before["bytes"]
    assert git_log(url) == log
    fsck(url)
    build(url, tmp_path, "w2", 5, host="h2")  # a fresh cache, and the old one
    build(url, tmp_path, "w1", 5)
    fsck(url)
    assert gc_repository(url)["after"]["loose"] == 0


def test_gc_of_a_queue_repository_needs_git(tmp_path):
    url = make_queue(tmp_path, [job("a-1.0")], hook=False)
    loose = measure(url)["loose"]
    with pytest.raises(GcError) as e:
        gc_repository(url, git="no-such-git")
    assert str(e.value) == ("no-such-git: not found; gc of a queue repository runs git repack (install git, "
                            "which serving workers over ssh needs too)")
    # The command line, on a master whose PATH has no git.
    bare = tmp_path / "bin"
    bare.mkdir()
    proc = gitqueue("gc", url, env={"PATH": str(bare), "GITQUEUE_CACHE": str(tmp_path / "cache-cli")})
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("Error: git: not found; gc of a queue repository runs git repack (install git, "
                                   "which serving workers over ssh needs too)")
    assert measure(url)["loose"] == loose


@needs_git
def test_concurrent_claims_during_gc_stay_correct(tmp_path):
    jobs = random_dag(60, seed=7)
    url = make_queue(tmp_path, jobs)
    procs = {f"w{i}": start_worker(url, f"w{i}", tmp_path / f"cache-{i % 2}") for i in range(4)}
    runs = {"n": 0}
    stop = threading.Event()

    def keep_collecting():
        # Incremental repacks, and merging packs once three pile up, for as long as the workers run.
        while not stop.is_set():
            gc_repository(url, max_packs=3)
            runs["n"] += 1

    collector = threading.Thread(target=keep_collecting)
    collector.start()
    outputs = {}
    try:
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=240)
            assert proc.returncode == 0, out
            outputs[name] = out
    finally:
        stop.set()
        collector.join()
    assert runs["n"] >= 2
    check_history(url, jobs, outputs)
    fsck(url)


def test_gc_cache_keeps_only_the_tip_and_stays_usable(tmp_path):
    jobs = [job(f"p{i}-1.0") for i in range(40)]
    url = make_queue(tmp_path, jobs)
    remote_url = f"file://{url}"
    build(remote_url, tmp_path, "w1", 6, host="far")
    build(url, tmp_path, "w2", 6)  # commits the cache has not seen yet: its next fetch brings them
    with open_queue(remote_url, tmp_path, host="far") as q:
        lease.claim(q, "w1")
        cache_repo = os.path.join(q.cache_dir, "repo.git")
        before = measure(cache_repo)
        out = gc_cache(q, grace=0)
        tip = q.remote.repo.refs[q.remote.ref]
        # Usable at once by the process that ran gc, whose pack list named the removed packs.
        got = lease.claim(q, "w1")
        lease.report(q, "w1", got.job, "success", duration=1)
    assert out["after"]["loose"] == 0 and out["after"]["packs"] == 1
    assert out["after"]["bytes"] < before["bytes"]
    entries = subprocess.run(["git", "--git-dir", url, "ls-tree", "-r", "-t", tip.decode()],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert out["kept"] == len(entries) + 2  # + commit, root
    with open(os.path.join(cache_repo, "shallow"), "rb") as f:
        assert f.read().split() == [tip]
    fsck(cache_repo)
    # Another process with the same cache, and the command line.
    build(remote_url, tmp_path, "w3", 3, host="far")
    proc = gitqueue("gc", "--cache", "--queue", remote_url, env={"GITQUEUE_CACHE": str(tmp_path / "cache-far")})
    assert proc.returncode == 0, proc.stderr
    assert "0 loose objects, 1 packs" in proc.stdout
    build(remote_url, tmp_path, "w3", 3, host="far")
    fsck(cache_repo)
    fsck(url)


def test_gc_cache_keeps_what_it_supersedes_for_readers_of_an_older_tip(tmp_path):
    url = make_queue(tmp_path, [job(f"p{i}-1.0") for i in range(10)])
    remote_url = f"file://{url}"

    def read_lease(tip):
        """The lease files at `tip`, read as a command of the host that starts now would."""
        with open_queue(remote_url, tmp_path, host="far") as other:
            reader = other.remote.reader(tip)
            return [reader.read(path) for path, _ in reader.walk_files("leases")]

    with open_queue(remote_url, tmp_path, host="far") as q:
        got = lease.claim(q, "w1")
        old_tip, _ = q.fetch()  # what a command of the host read before gc, outside the lock
        lease.report(q, "w1", got.job, "success", duration=1)
        q.fetch()
        cache_repo = os.path.join(q.cache_dir, "repo.git")
        packs_before = measure(cache_repo)["packs"]

        out = gc_cache(q, grace=3600)
        assert out["after"]["packs"] == 1 and out["after"]["loose"] == 0
        assert out["superseded"]["files"] >= 2 * packs_before and out["removed"] == 0
        # The old tip's lease, which the new tip no longer has, is still there to read.
        leases = read_lease(old_tip)
        assert len(leases) == 1 and b"w1" in leases[0]
        # A second run within the grace period keeps it; one after it (grace 0 here) removes it.
        assert gc_cache(q, grace=3600)["removed"] == 0
        out = gc_cache(q, grace=0)
        assert out["removed"] >= 2 * packs_before and out["superseded"]["files"] == 0
        assert measure(cache_repo) == out["after"] and out["after"]["packs"] == 1
        with pytest.raises(RepositoryDamaged):
            read_lease(old_tip)  # what the grace period protected
        lease.claim(q, "w1")  # and the cache is still usable
    fsck(cache_repo)


@needs_git
def test_gc_cli_on_a_local_queue_and_its_errors(tmp_path):
    url = make_queue(tmp_path, [job("a-1.0")])
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-cli")}
    proc = gitqueue("gc", url, env=env)
    assert proc.returncode == 0, proc.stderr
    assert " -> 0 loose objects, " in proc.stdout
    proc = gitqueue("gc", url, "--cache", env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"Error: {url}: a local-path queue has no cache repository; "
                                   "gc the queue itself instead")
    proc = gitqueue("gc", str(tmp_path / "nothing"), env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"Error: {tmp_path / 'nothing'}: no such repository"


@needs_git
def test_the_cache_pack_writer_keeps_memory_bounded(tmp_path):
    # gc --cache writes its pack without git (workers have none). 4,000 objects of 16 KiB (64
    # MiB of data), streamed: a writer that held them would grow by as much.
    repo = tmp_path / "cache.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    script = (
        "import hashlib, os, resource, sys\n"
        "from gitqueue.gitstore import write_pack\n"
        "def objects():\n"
        "    for i in range(4000):\n"
        "        data = os.urandom(16384)\n"
        "        yield hashlib.sha1(b'blob %d\\0' % len(data) + data).hexdigest(), 3, data\n"
        "written = write_pack(os.path.join(sys.argv[1], 'objects', 'pack'), objects()) if sys.argv[2] == 'y' else []\n"
        "print(len(written), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )

    def run(write: bool) -> tuple[int, float]:
        out = subprocess.run([sys.executable, "-c", script, str(repo), "y" if write else "n"], capture_output=True,
                             text=True, check=True).stdout.split()
        return int(out[0]), int(out[1]) / 1024

    (written, peak), (_, idle) = run(True), run(False)  # against the same interpreter doing nothing
    assert written == 4000
    assert peak - idle < 24, f"writing 64 MiB of objects grew the process by {peak - idle:.0f} MiB"
    assert measure(str(repo))["packs"] == 1
    fsck(repo)
    count = subprocess.run(["git", "--git-dir", str(repo), "count-objects", "-v"], capture_output=True,
                           text=True, check=True).stdout
    assert "in-pack: 4000" in count


@needs_git
def test_new_queues_leave_packing_to_gitqueue_gc(tmp_path):
    # git receive-pack's automatic gc packs refs, prunes and writes bitmaps that dulwich trips over.
    url = make_queue(tmp_path, [job("a-1.0")])
    for key, value in (("receive.autogc", "false"), ("gc.auto", "0")):
        got = subprocess.run(["git", "--git-dir", url, "config", "--get", key], capture_output=True, text=True)
        assert got.stdout.strip() == value


# -- what workers leave in their cache ------------------------------------------------------------

def work(url, cache_root, worker, command, *args):
    """`gitqueue work` as `worker` of the host whose cache is `cache_root`, building with `command`."""
    env = {**os.environ, "GITQUEUE_CACHE": str(cache_root), "GITQUEUE_CONFIG": str(cache_root / "none.toml")}
    return subprocess.Popen([sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", worker,
                             "--max-wait", "0.2", *args, "--", "sh", "-c", command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_gc_cache_removes_the_builds_and_old_logs_of_jobs_no_longer_held(tmp_path):
    """A worker host (file:// queue: a cache like an ssh worker's) builds three jobs with `gitqueue
    work`. p3's lease was reclaimed from this host's w9 (a late success may still come), and w1
    builds p3 again while gc --cache runs. gc removes the three finished builds' output
    directories and, with --keep-logs 1, their logs but the newest; it keeps both of p3's until p3
    has a result; links and other names are left alone, a directory a crashed gc set aside goes."""
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job(f"p{i}-1.0", est_seconds=100 - i) for i in range(5)])
    remote_url = f"file://{url}"
    cache_root = tmp_path / "cache-far"
    package = 'mkdir -p "$GITQUEUE_OUTPUT/All" && echo "$GITQUEUE_JOB" > "$GITQUEUE_OUTPUT/All/$GITQUEUE_JOB.tgz"'
    done = work(remote_url, cache_root, "w1", f"{package}; echo built $GITQUEUE_JOB", "--max-jobs", "3")
    assert done.wait(timeout=120) == 0, done.stdout.read()
    with Queue(remote_url, str(cache_root)) as q:
        cache = Path(q.cache_dir)
        finished = set(os.listdir(cache / "build"))
        assert len(finished) == 3 and len(os.listdir(cache / "logs")) == 3
        silent = lease.claim(q, "w9").lease
        lapsed = f"p3-1.0-{silent[:8]}"
        (cache / "build" / lapsed / "All").mkdir(parents=True)
    with open_queue(url, tmp_path, host="master") as master:
        lease.reclaim(master, now=1000.0, ttl=1)
        assert [r["job"] for r in lease.reclaim(master, now=1002.0, ttl=1)] == ["p3-1.0"]
    stop = tmp_path / "stop"
    building = work(remote_url, cache_root, "w1", f"{package}; while [ ! -e {stop} ]; do sleep 0.1; done", "--once")
    while len(os.listdir(cache / "build")) < 5:
        assert building.poll() is None, building.stdout.read()
        time.sleep(0.1)
    [rebuilding] = set(os.listdir(cache / "build")) - finished - {lapsed}
    assert rebuilding.startswith("p3-1.0-")
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (cache / "build" / "p0-1.0-0badc0de").symlink_to(outside)  # a JOB-LEASE8 name, a link
    (cache / "build" / "notes").mkdir()
    crashed = cache / "build" / ".gc-p9-1.0-01234567-999" / "All"
    crashed.mkdir(parents=True)
    (crashed / "p9-1.0.tgz").write_bytes(b"x" * 1000)
    for i, name in enumerate(sorted(os.listdir(cache / "logs"))):
        os.utime(cache / "logs" / name, (1_000_000 + i, 1_000_000 + i))  # p3's the newest, then p2's

    proc = gitqueue("gc", "--cache", "--keep-logs", "1", "--queue", remote_url,
                    env={"GITQUEUE_CACHE": str(cache_root)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == ("removed 4 build directories (0.0 MB) and 2 logs (0.0 MB) of jobs "
                                           "this host no longer holds")
    assert set(os.listdir(cache / "build")) == {"notes", "p0-1.0-0badc0de", lapsed, rebuilding}
    # Each attempt's build info and phase logs (bulklog/JOB-LEASE8) go with its output directory.
    assert set(os.listdir(cache / "bulklog")) == {rebuilding}
    assert os.listdir(outside) == ["keep"]
    assert sorted(n[:6] for n in os.listdir(cache / "logs")) == ["p2-1.0", "p3-1.0"]

    # w1's build of p3 ends (uploaded, reported): p3 has a result, neither of its attempts is held.
    stop.touch()
    assert building.wait(timeout=60) == 0, building.stdout.read()
    with Queue(remote_url, str(cache_root)) as q:
        out = gc_cache(q, grace=0, keep_logs=0)
    assert out["outputs"] == {"builds": 2, "build_bytes": 7, "logs": 2, "log_bytes": out["outputs"]["log_bytes"]}
    assert sorted(os.listdir(cache / "build")) == ["notes", "p0-1.0-0badc0de"] and os.listdir(cache / "logs") == []
    assert os.listdir(cache / "bulklog") == []


def test_gc_cache_keeps_an_object_a_fetch_brought_back_while_it_waited_for_removal(tmp_path):
    """An object superseded by one gc run, dropped from the tip, then back in it: the fetch that
    brings it back finds its old file still there and writes nothing, so the next gc must not
    remove that file before it has packed what the tip needs."""
    from gitqueue.layout import record_path

    url = make_queue(tmp_path, [job(f"p{i}-1.0") for i in range(10)])
    remote_url = f"file://{url}"
    with open_queue(remote_url, tmp_path, host="far") as q:
        got = lease.claim(q, "w1")
        path = record_path("leases", got.job)
        tip, _ = q.fetch()
        held = q.remote.reader(tip).read(path)
        gc_cache(q, grace=3600)  # the lease and its trees: superseded files, and in the new pack
        local_commit(url, {path: None}, "the lease goes")
        q.fetch()
        gc_cache(q, grace=3600)  # the pack that held them is superseded too
        local_commit(url, {path: held}, "the same lease, the same trees, again")
        tip, _ = q.fetch()
        cache_repo = os.path.join(q.cache_dir, "repo.git")
    # An hour on (the list of superseded files aged by hand), in another process as cron runs
    # it: the files superseded then are due for removal.
    listed = os.path.join(cache_repo, "gitqueue-superseded")
    with open(listed) as f:
        lines = [line.split(" ", 1) for line in f]
    with open(listed, "w") as f:
        f.writelines(f"{int(since) - 3600} {name}" for since, name in lines)
    with open_queue(remote_url, tmp_path, host="far") as q:
        out = gc_cache(q, grace=60)
    assert out["removed"] > 30 and out["after"]["packs"] == 1 and out["after"]["loose"] == 0
    fsck(cache_repo)
    with open_queue(remote_url, tmp_path, host="far") as q:
        assert q.remote.reader(tip).read(path) == held
        assert lease.claim(q, "w2").job != got.job  # the cache is usable, and the lease holds
