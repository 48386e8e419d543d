"""The worker loop as a real process: signals, lost leases, the build environment."""

import os
import signal
import socket
import subprocess
import sys
import time

from gitqueue import lease
from gitqueue.audit import replay

from helpers import git_log, job, make_queue, open_queue


def wait_for(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def work(url, tmp_path, name, script, *extra, env=None):
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / f"cache-{name}"), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", name, *extra, "--",
         "sh", "-c", script],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_sigterm_stops_the_build_and_gives_the_job_back(tmp_path):
    url = make_queue(tmp_path, [job("gmake-4.4.1", pkgpath="devel/gmake")])
    started = tmp_path / "started"
    proc = work(url, tmp_path, "w1", f"echo $GITQUEUE_PKGPATH > {started}; sleep 60; touch {tmp_path}/done")
    wait_for(started)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert started.read_text() == "devel/gmake\n"
    assert not (tmp_path / "done").exists()
    assert git_log(url).splitlines()[0] == "release gmake-4.4.1 (devel/gmake) by w1: worker stopped by signal 15"
    # Stopping is not declining: the same worker may take it again.
    with open_queue(url, tmp_path, host="again") as q:
        assert lease.claim(q, "w1").job == "gmake-4.4.1"


def test_a_reclaimed_lease_stops_the_build(tmp_path):
    url = make_queue(tmp_path, [job("slow-1")], ttl=1)
    started = tmp_path / "started"
    proc = work(url, tmp_path, "w1", f"touch {started}; sleep 30; touch {tmp_path}/finished", "--heartbeat", "0.3",
                "--max-wait", "0.5")
    wait_for(started)
    # The worker's machine freezes (or its network goes): no heartbeats.
    proc.send_signal(signal.SIGSTOP)
    try:
        with open_queue(url, tmp_path, host="cron") as cron, open_queue(url, tmp_path, host="h2") as other:
            lease.reclaim(cron)
            time.sleep(1.3)
            assert [r["job"] for r in lease.reclaim(cron)] == ["slow-1"]
            token = lease.claim(other, "w2").lease
            proc.send_signal(signal.SIGCONT)
            # The old holder hears of it at its next heartbeat, kills its build, and never reports.
            deadline = time.monotonic() + 20
            while not git_log(url).startswith("heartbeat w1 (0 held)") and time.monotonic() < deadline:
                time.sleep(0.05)
            lease.report(other, "w2", "slow-1", "success", token=token)
    finally:
        proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "lease on slow-1 was reclaimed; stopping its build" in out
    assert "queue finished" in out
    assert not (tmp_path / "finished").exists()
    log = git_log(url)
    assert "report slow-1: success by w2" in log and "by w1" not in log.split("reclaim")[0]
    with open_queue(url, tmp_path, host="audit") as q:
        audit = replay(q.remote, q.remote.fetch())
    assert audit.violations == [] and audit.results == 1 and audit.reclaims == 1


def test_build_log_and_environment(tmp_path):
    url = make_queue(tmp_path, [job("py311-foo-1.0", version="1.0", pkgpath="devel/py-foo",
                                    multi_version={"PYTHON_VERSION_REQD": "311"})])
    proc = work(url, tmp_path, "w1",
                'echo "$GITQUEUE_JOB $GITQUEUE_VERSION $GITQUEUE_PKGPATH $PYTHON_VERSION_REQD"; exit 2', "--once")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    trailers = git_log(url, "%(trailers:key=Gitqueue-Status,valueonly)").split()
    assert trailers[0] == "failure"
    with open_queue(url, tmp_path, host="reader") as q:
        tip, reader = q.fetch()
        from gitqueue import records
        from gitqueue.layout import record_path
        result = records.loads("result", reader.read(record_path("results", "py311-foo-1.0")), "r")
    assert result["log_tail"] == "py311-foo-1.0 1.0 devel/py-foo 311\n"
    assert result["log"]["size"] == len(result["log_tail"])


def test_version_skew_gives_the_job_back_and_pins_are_checked(tmp_path):
    url = make_queue(tmp_path, [job("gmake-4.4.1", pkgpath="devel/gmake", version="4.4.1"),
                                job("py311-foo-1.0", pkgpath="devel/py-foo",
                                    multi_version={"PYTHON_VERSION_REQD": "311"})])
    tree = tmp_path / "pkgsrc"
    for d in ("devel/gmake", "devel/py-foo"):
        (tree / d).mkdir(parents=True)
    # A stand-in for 'bmake show-var VARNAME=PKGNAME': this tree has gmake 4.3.
    show = tmp_path / "show-pkgname"
    show.write_text('#!/bin/sh\ncase "$PWD" in\n  */devel/gmake) echo gmake-4.3 ;;\n'
                    '  *) echo "py${PYTHON_VERSION_REQD}-foo-1.0" ;;\nesac\n')
    show.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'pkgsrc_dir = "{tree}"\npkgname_command = "{show}"\n')
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_CONFIG": str(config)}
    proc = subprocess.run([sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", "w1",
                           "--max-wait", "0.2", "--max-jobs", "1", "--", "true"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    log = git_log(url)
    assert "release gmake-4.4.1 (devel/gmake) by w1: sorry, my pkgsrc has gmake-4.3, not gmake-4.4.1 (yet)" in log
    assert "report py311-foo-1.0 (devel/py-foo): success by w1" in log
    # The platform is recorded; a queue pinned to another architecture is refused with the reason.
    pinned = tmp_path / "pinned.git"
    from gitqueue.admin import init_queue
    from gitqueue.queue import Queue
    with Queue(str(pinned), str(tmp_path / "cache-admin")) as q:
        init_queue(q, "pinned", arch="m68k", pkgsrc_branch="pkgsrc-2026Q4")
    proc = subprocess.run([sys.executable, "-m", "gitqueue", "claim", "--queue", str(pinned), "--worker", "w1"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: this worker does not meet the queue's pins: arch is {os.uname().machine}, the "
                           "queue needs m68k; pkgsrc_branch is unknown, the queue needs pkgsrc-2026Q4 (set them in "
                           "the worker's config file if detection is wrong)\n")


def test_log_names_fit_the_rule_for_log_names():
    from gitqueue.layout import is_log_name
    from gitqueue.worker import log_name

    token = "0123456789abcdef" * 2
    assert log_name("gmake-4.4.1", token) == "gmake-4.4.1-01234567.log"
    assert log_name("gmake-4.4.1") == "gmake-4.4.1.log"
    long = "p" + "x" * 199  # the longest job name
    assert is_log_name(log_name(long, token)) and log_name(long, token).endswith("x-01234567.log")
    assert is_log_name(log_name(long)) and not is_log_name(f"{long}-{token[:8]}.log")


def test_a_worker_in_trouble_stops_instead_of_churning(tmp_path):
    """Dependencies that cannot be fetched (the package a result names is missing from the tree):
    the worker says why each time, declines a job it gave back twice for that, and after three
    give-backs in a row for its own trouble stops with one Error line, instead of claiming and
    releasing forever."""
    from helpers import make_package_queue

    tree = tmp_path / "packages"
    (tree / "All").mkdir(parents=True)
    url = make_package_queue(tmp_path, str(tree), [job("a-1"), job("b-1", ["a-1"]), job("c-1", ["a-1"])])
    with open_queue(url, tmp_path, host="other") as q:
        lease.claim(q, "builder")
        lease.report(q, "builder", "a-1", "success", packages=[{"name": "a-1.tgz", "size": 3, "sha256": "0" * 64}])
    config = tmp_path / "config.toml"
    config.write_text("transfer_attempts = 1\n")
    proc = work(url, tmp_path, "w1", "true", "--max-wait", "0.2", env={"GITQUEUE_CONFIG": str(config)})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    lines = out.splitlines()
    gave_back = [ln for ln in lines if ln.startswith("w1: gave back ")]
    assert len(gave_back) == 3, out
    assert all(": cannot fetch the packages of a-1: " in ln for ln in gave_back), out
    assert lines[-1].startswith("Error: w1 gave back 3 jobs in a row because of trouble on this worker, not in the "
                                "jobs; stopping. The last: cannot fetch the packages of a-1: "), out
    releases = [s for s in git_log(url).splitlines() if s.startswith("release ")]
    assert len(releases) == 3
    # A job given back twice for the same cause is declined: not offered to w1 again.
    declined = [ln for ln in gave_back if ln.endswith("; declined (not offered to this worker again)")]
    assert declined and all(ln.split(":")[1].split()[-1] in ("b-1", "c-1") for ln in declined)


def test_a_broken_pkgsrc_tree_stops_the_worker_instead_of_declining_every_job(tmp_path):
    """A tree that cannot answer (bmake missing or failing) is the worker's trouble, not the jobs':
    after three give-backs it stops, rather than go through (and decline) the whole queue."""
    url = make_queue(tmp_path, [job(f"p{i}-1.0", pkgpath=f"devel/p{i}") for i in range(5)])
    tree = tmp_path / "pkgsrc"
    for i in range(5):
        (tree / f"devel/p{i}").mkdir(parents=True)
    broken = tmp_path / "show-pkgname"
    broken.write_text("#!/bin/sh\necho 'bmake: no such file or directory' >&2\nexit 1\n")
    broken.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'pkgsrc_dir = "{tree}"\npkgname_command = "{broken}"\n')
    proc = work(url, tmp_path, "w1", "true", "--max-wait", "0.2", env={"GITQUEUE_CONFIG": str(config)})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert out.splitlines()[-1].startswith("Error: w1 gave back 3 jobs in a row because of trouble on this "
                                           "worker, not in the jobs; stopping. The last: cannot ask my pkgsrc for "
                                           "the PKGNAME of devel/p"), out
    assert len([s for s in git_log(url).splitlines() if s.startswith("release ")]) == 3


def test_a_worker_started_again_gives_back_the_build_it_lost(tmp_path):
    """A crash, then `gitqueue work` again within the TTL: its heartbeats must not keep the dead build's lease."""
    url = make_queue(tmp_path, [job("slow-1"), job("other-1")], ttl=3600)
    started = tmp_path / "started"
    first = work(url, tmp_path, "w1", f'echo "$GITQUEUE_JOB" >> {started}; sleep 60')
    wait_for(started)
    lost = started.read_text().strip()
    # The machine crashes: the worker and its build die at once, nothing is given back.
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    subprocess.run(["pkill", "-KILL", "-f", f"echo \"$GITQUEUE_JOB\" >> {started}"], check=False)
    again = work(url, tmp_path, "w1", "true")
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    host = socket.gethostname()
    assert f"w1: gave back {lost}: its build on {host} was lost: the gitqueue work process building it stopped" in out
    log = git_log(url)
    assert f"release {lost} by w1: its build on {host} was lost" in log
    # Given back, not declined: the same worker built it, and the queue finished.
    assert f"report {lost} by w1: success" in log or f"{lost} success" in out, out
    assert "queue finished" in out
    assert not os.listdir(tmp_path / "cache-w1" / os.listdir(tmp_path / "cache-w1")[0] / "running")


def test_a_worker_beside_a_live_one_leaves_its_lease_alone(tmp_path):
    """Two processes of one worker on one host: the second must not take the first's build for lost."""
    url = make_queue(tmp_path, [job("slow-1"), job("next-1", deps=["slow-1"])], ttl=3600)
    started = tmp_path / "started"
    first = work(url, tmp_path, "w1", f"touch {started}; sleep 8")
    wait_for(started)
    second = work(url, tmp_path, "w1", "true", "--max-wait", "0.5")
    try:
        out_first, _ = first.communicate(timeout=60)
        out_second, _ = second.communicate(timeout=60)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
    assert first.returncode == 0 and second.returncode == 0, out_first + out_second
    assert "gave back" not in out_first + out_second
    assert "release" not in git_log(url)
    assert "w1: slow-1 success" in out_first
