"""Retrying failures (gitqueue retry) and bounded retries of transient failures, on real queues."""

import subprocess

import pytest

from gitqueue import admin, lease, records
from gitqueue.errors import GitqueueError, LeaseLost, NothingReady
from gitqueue.layout import record_path

from helpers import git_log, gitqueue, make_queue, open_queue, pkg

CHAIN = [pkg("a-1.0"), pkg("b-2.0", ["a-1.0"]), pkg("c-3.0", ["b-2.0"]), pkg("d-1.0", ["c-3.0"]), pkg("x-1.0")]


def build(q, worker, expected, status="success", **kw):
    got = lease.claim(q, worker)
    assert got.job == expected
    return lease.report(q, worker, got.job, status, **kw)


def states(q):
    from test_update import states as checked

    return checked(q)


def read(q, kind, name):
    _, reader = q.fetch()
    return lease.read_job_record(reader, kind, name)


@pytest.fixture
def failed_chain(tmp_path):
    """a built, b failed, c and d kept from building by it, x built."""
    url = make_queue(tmp_path, CHAIN, hook=False)
    q = open_queue(url, tmp_path)
    build(q, "w1", "a-1.0")
    build(q, "w1", "b-2.0", "failure", log_tail="ld: cannot find -lz\n")
    build(q, "w1", "x-1.0")
    assert states(q) == {"a-1.0": "success", "b-2.0": "failed", "c-3.0": "indirect-failed",
                         "d-1.0": "indirect-failed", "x-1.0": "success"}
    yield url, q
    q.close()


def test_a_retried_failure_builds_again_and_unblocks_its_dependents(failed_chain):
    url, q = failed_chain
    old = read(q, "results", "b-2.0")
    out = admin.retry_jobs(q, ["b-2.0"], reason="zlib fixed on the build hosts")
    assert out == [{"job": "b-2.0", "version": "2.0", "worker": "w1", "token": old["token"], "attempts": 1}]
    assert states(q) == {"a-1.0": "success", "b-2.0": "ready", "c-3.0": "waiting", "d-1.0": "waiting",
                         "x-1.0": "success"}
    retries = read(q, "retries", "b-2.0")
    assert retries["retried"][0] | {"at": None} == {
        "action": "retry", "reason": "zlib fixed on the build hosts", "at": None, "declines": 0,
        "status": "failure", "worker": "w1", "token": old["token"], "version": "2.0"}
    build(q, "w2", "b-2.0")
    build(q, "w2", "c-3.0")
    build(q, "w2", "d-1.0")
    assert set(states(q).values()) == {"success"}
    # The history keeps the failure: the retry commit removed it, the one before holds it.
    subjects = git_log(url).splitlines()
    assert "retry b-2.0: zlib fixed on the build hosts" in subjects
    before_retry = subprocess.run(["git", "-C", url, "log", "--format=%H", "--grep=Action: retry", "main"],
                                  capture_output=True, text=True, check=True).stdout.split()[0]
    shown = subprocess.run(["git", "-C", url, "show", f"{before_retry}^:{record_path('results', 'b-2.0')}"],
                           capture_output=True, text=True, check=True).stdout
    assert records.loads("result", shown.encode(), "r")["status"] == "failure"
    assert read(q, "results", "b-2.0")["worker"] == "w2"


def test_retry_refuses_what_is_not_a_failure_and_writes_nothing(failed_chain):
    url, q = failed_chain
    tip = q.fetch()[0]
    for names, message in ((["a-1.0"], "a-1.0 has a success result: only failed jobs are retried"),
                           (["c-3.0"], "c-3.0 has no result: only failed jobs are retried"),
                           (["zz-1"], "unknown job zz-1")):
        with pytest.raises(GitqueueError) as e:
            admin.retry_jobs(q, names, reason="why not")
        assert str(e.value) == message
    with pytest.raises(GitqueueError, match="give the reason"):
        admin.retry_jobs(q, ["b-2.0"], reason=" \n")
    with pytest.raises(GitqueueError, match="nothing to retry"):
        admin.retry_jobs(q, failed=True, since="2999-01-01", reason="future")
    assert q.fetch()[0] == tip


def test_retry_failed_since(tmp_path):
    t = [1_767_225_600.0]
    url = make_queue(tmp_path, [pkg("a-1.0"), pkg("b-1.0"), pkg("c-1.0", ["a-1.0"])], hook=False)
    with open_queue(url, tmp_path, clock=lambda: t[0]) as q:
        build(q, "w1", "a-1.0", "failure")  # 2026-01-01
        t[0] += 3 * 86400
        build(q, "w1", "b-1.0", "failure")  # 2026-01-04
        out = admin.retry_jobs(q, failed=True, since="2026-01-02", reason="mirror back")
        assert [r["job"] for r in out] == ["b-1.0"]
        assert states(q)["a-1.0"] == "failed" and states(q)["b-1.0"] == "ready"
        assert [r["job"] for r in admin.retry_jobs(q, failed=True, reason="all")] == ["a-1.0"]


def test_a_reclaimed_lease_cannot_report_after_a_retry(tmp_path):
    """Fencing holds across a retry: a lease lapsed before it gives no late result after it."""
    t = [1_767_225_600.0]
    url = make_queue(tmp_path, [pkg("a-1.0")], ttl=60, hook=False)
    with open_queue(url, tmp_path, clock=lambda: t[0]) as q, \
            open_queue(url, tmp_path, host="cron", clock=lambda: t[0]) as cron:
        slow = lease.claim(q, "slow")
        lease.reclaim(cron)
        t[0] += 120
        assert lease.reclaim(cron)[0]["job"] == "a-1.0"
        build(q, "w2", "a-1.0", "failure")
        admin.retry_jobs(q, ["a-1.0"], reason="again")
        assert read(q, "retries", "a-1.0")["retried"][0]["fenced"] == [slow.lease]
        with pytest.raises(LeaseLost, match="fenced by an administrator's retry"):
            lease.report(q, "slow", "a-1.0", "success", token=slow.lease)
        assert read(q, "results", "a-1.0") is None


def test_the_retry_command(failed_chain, tmp_path):
    url, q = failed_chain
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-cli")}
    proc = gitqueue("retry", "a-1.0", "--reason", "x", "--queue", url, env=env)
    assert (proc.returncode, proc.stderr) == (1, "Error: a-1.0 has a success result: only failed jobs are retried\n")
    proc = gitqueue("retry", "--failed", "--queue", url, env=env)
    assert proc.returncode == 2 and "Missing option '--reason'" in proc.stderr
    proc = gitqueue("retry", "--failed", "--since", "someday", "--reason", "x", "--queue", url, env=env)
    assert (proc.returncode, proc.stderr) == (1, "Error: --since 'someday': expected YYYY-MM-DD or "
                                                 "YYYY-MM-DDTHH:MM:SSZ\n")
    proc = gitqueue("retry", "--failed", "--reason", "libz back", "--queue", url, env=env)
    assert (proc.returncode, proc.stdout) == (0, "retry b-2.0 (failed on w1; attempt 2 next)\n")
    proc = gitqueue("verify", url, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- transient failures ---------------------------------------------------------------------------


def transient(q, worker, job):
    got = lease.claim(q, worker)
    assert got.job == job
    return lease.report(q, worker, job, "failure", log_tail="No space left on device\n",
                        extra={"transient": True})


def test_a_transient_failure_goes_to_another_worker_and_gives_up_after_max_attempts(tmp_path):
    t = [1_767_225_600.0]
    url = make_queue(tmp_path, [pkg("a-1.0"), pkg("b-1.0", ["a-1.0"])], hook=False)
    with open_queue(url, tmp_path, clock=lambda: t[0]) as q:
        first = transient(q, "w1", "a-1.0")
        assert first | {"token": None} == {
            "job": "a-1.0", "version": "1.0", "status": "failure", "worker": "w1", "token": None,
            "transient": True, "requeued": True, "attempt": 1, "max_attempts": 3}
        assert read(q, "results", "a-1.0") is None and states(q)["a-1.0"] == "ready"
        with pytest.raises(NothingReady):  # held back from w1 for a while
            lease.claim(q, "w1")
        second = transient(q, "w2", "a-1.0")  # another worker takes it at once
        assert second["attempt"] == 2
        t[0] += 301  # w1's backoff is over
        last = transient(q, "w1", "a-1.0")
        assert (last["status"], last["transient"], last.get("requeued")) == ("failure", True, None)
        assert read(q, "results", "a-1.0")["transient"] is True
        assert states(q) == {"a-1.0": "failed", "b-1.0": "indirect-failed"}
        # A retry gives it a fresh budget of attempts.
        admin.retry_jobs(q, ["a-1.0"], reason="disk replaced")
        assert transient(q, "w3", "a-1.0")["requeued"] is True
    proc = gitqueue("verify", url, env={"GITQUEUE_CACHE": str(tmp_path / "cache-v")})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_retried_transient_report_is_told_the_job_went_back_to_the_queue(tmp_path):
    """The commit of a transient failure landed but its reply was lost: the same request again
    (the same report under the same token) gets the same answer, not "lease lost"."""
    url = make_queue(tmp_path, [pkg("a-1.0")], hook=False)
    with open_queue(url, tmp_path) as q, open_queue(url, tmp_path, host="h2") as other:
        transient(other, "w2", "a-1.0")
        got = lease.claim(q, "w1")
        request = {"worker": "w1", "report": {"job": "a-1.0", "status": "failure", "token": got.lease,
                                              "log_tail": "No space left on device\n", "transient": True}}
        [first] = lease.settle(q, [request], "w1 <w1@gitqueue>")
        assert first.report_error is None
        assert (first.result["requeued"], first.result["attempt"], first.result["token"]) == (True, 2, got.lease)
        assert read(q, "declines", "a-1.0")["declined"][-1]["token"] == got.lease
        tip = q.fetch()[0]
        [again] = lease.settle(q, [request], "w1 <w1@gitqueue>")
        assert (again.report_error, again.result) == (None, first.result)
        assert q.fetch()[0] == tip  # nothing written twice
        # So too once another worker holds the job; another report under that token is refused.
        assert lease.claim(other, "w3").job == "a-1.0"
        [late] = lease.settle(q, [request], "w1 <w1@gitqueue>")
        assert (late.report_error, late.result) == (None, first.result)
        plain = {"worker": "w1", "report": {**request["report"], "transient": False}}
        [refused] = lease.settle(q, [plain], "w1 <w1@gitqueue>")
        assert isinstance(refused.report_error, LeaseLost) and refused.result is None


def test_a_report_made_again_under_its_token_returns_what_is_recorded(tmp_path):
    """lease.report (gitqueue report) run again after a lost reply: the same outcome under the same
    token is returned as AlreadyRecorded, nothing written; another status under it is refused."""
    url = make_queue(tmp_path, [pkg("a-1.0")], hook=False)
    with open_queue(url, tmp_path) as q:
        got = lease.claim(q, "w1")
        first = lease.report(q, "w1", "a-1.0", "success", token=got.lease, duration=12.5)
        assert not isinstance(first, lease.AlreadyRecorded)
        tip = q.fetch()[0]
        again = lease.report(q, "w1", "a-1.0", "success", token=got.lease, duration=12.5)
        assert isinstance(again, lease.AlreadyRecorded) and again == first
        with pytest.raises(LeaseLost, match=f"^a-1.0: the lease of w1 under token {got.lease} already ended with a "
                                            "success; this report of a failure differs from it; nothing recorded$"):
            lease.report(q, "w1", "a-1.0", "failure", token=got.lease)
        with pytest.raises(LeaseLost, match="already has a result"):  # no token: the cache forgot the claim
            lease.report(q, "w1", "a-1.0", "success")
        assert q.fetch()[0] == tip


def test_max_attempts_is_a_queue_setting(tmp_path):
    url = str(tmp_path / "q.git")
    from gitqueue.queue import Queue

    with Queue(url, str(tmp_path / "cache-admin")) as q:
        admin.init_queue(q, "t", limits={"max_attempts": 1})
        admin.import_jobs(q, [pkg("a-1.0")], "g.jsonl")
    with open_queue(url, tmp_path) as q:
        assert transient(q, "w1", "a-1.0").get("requeued") is None
        assert read(q, "results", "a-1.0")["transient"] is True


def test_the_report_command_and_exit_75_in_work(tmp_path):
    url = make_queue(tmp_path, [pkg("a-1.0")], hook=False)
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-cli")}
    assert gitqueue("claim", "--queue", url, "--worker", "w1", env=env).returncode == 0
    proc = gitqueue("report", "a-1.0", "--status", "success", "--transient", "--queue", url, "--worker", "w1",
                    env=env)
    assert proc.returncode == 2 and "only a failure can be transient" in proc.stderr
    proc = gitqueue("report", "a-1.0", "--status", "failure", "--transient", "--queue", url, "--worker", "w1",
                    env=env)
    assert (proc.returncode, proc.stdout) == (0, "a-1.0: transient failure, attempt 1 of 3: back to the queue\n")
    for worker in ("w2", "w3"):
        proc = gitqueue("work", "--queue", url, "--worker", worker, "--max-wait", "0.2", "--once", "--", "sh", "-c",
                        "exit 75", env={"GITQUEUE_CACHE": str(tmp_path / f"cache-{worker}")}, timeout=120)
        assert "transient" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    with open_queue(url, tmp_path) as q:
        result = read(q, "results", "a-1.0")
    assert (result["status"], result["transient"], result["worker"]) == ("failure", True, "w3")


# -- through the server's hook --------------------------------------------------------------------


@pytest.mark.ssh
def test_the_hook_lets_only_admins_set_results_aside_and_counts_transient_attempts(tmp_path, sshd):


    from signed_queue import SignedQueue, push, result_record

    sq = SignedQueue(tmp_path).install_hook()
    url = sshd.url(sq.path)
    with sq.queue("k1", url, sshd.ssh_command) as q:
        got = lease.claim(q, "w1")
        lease.report(q, "w1", got.job, "failure")
        failed = got.job
        # A transient failure goes back to the queue through the hook, and w1 may not skip to the end.
        second = lease.claim(q, "w1")
        assert lease.report(q, "w1", second.job, "failure", extra={"transient": True})["requeued"] is True
    with sq.queue("k2", url, sshd.ssh_command) as q:
        third = lease.claim(q, "w2")
        assert third.job == second.job
    path, data = result_record(second.job, "w2", third.lease, "failure", transient=True)
    sha = sq.commit({path: data, record_path("leases", second.job): None}, "k2", "report")
    proc = push(sq, url, sha, sshd.ssh_command)
    assert proc.returncode != 0
    assert f"a transient failure of {second.job} marked final at attempt 2, before max_attempts (3)" in proc.stderr

    # A worker may not set a failure aside, not even naming it in retries/.
    old = records.loads("result", sq.read(record_path("results", failed)), "r")
    entry = {"action": "retry", "reason": "mine", "declines": 0, "status": "failure", "worker": "w1",
             "token": old["token"]}
    retries = records.dumps("retry", {"job": failed, "retried": [entry]})
    sha = sq.commit({record_path("results", failed): None, record_path("retries", failed): retries}, "k1")
    proc = push(sq, url, sha, sshd.ssh_command)
    assert proc.returncode != 0 and "who is not an administrator [admin]" in proc.stderr
    # Nor may anyone remove a result without naming it in retries/.
    sha = sq.commit({record_path("results", failed): None}, "alice")
    proc = push(sq, url, sha, sshd.ssh_command)
    assert proc.returncode != 0 and "a result is final" in proc.stderr
    # An administrator's retry passes, and the whole history verifies.
    with sq.queue("alice", url, sshd.ssh_command) as q:
        assert admin.retry_jobs(q, [failed], reason="fixed")[0]["job"] == failed
    with sq.queue("k1", url, sshd.ssh_command) as q:
        again = lease.claim(q, "w1")
        assert again.job == failed
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-verify"), "GITQUEUE_SSH_COMMAND": sshd.ssh_command}
    proc = gitqueue("verify", url, "--admin-key", f"{sq.keys['alice']}.pub", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_report_shows_how_many_attempts_a_package_took(failed_chain):
    from gitqueue import bulkreport

    url, q = failed_chain
    admin.retry_jobs(q, ["b-2.0"], reason="zlib fixed")
    transient(q, "w1", "b-2.0")
    build(q, "w2", "b-2.0")
    data = bulkreport.build(q)
    assert data["retried"] == [{"job": "b-2.0", "state": "success", "attempts": 3, "set_aside": 1, "transient": 1}]
    text = bulkreport.text(data)
    assert "Packages that took more than one attempt:" in text
    assert f"{'b-2.0':40} {3:8} {1:8} {1:9}  success" in text


@pytest.mark.ssh
def test_the_hook_refuses_a_new_lease_under_a_fenced_token(tmp_path, sshd):
    """An update fenced w1's lease: a result under its token is refused, so a lease under it
    (which would make such a result the live lease's) is refused too."""
    from signed_queue import JOBS, SignedQueue, lease_record, push

    sq = SignedQueue(tmp_path).install_hook()
    url = sshd.url(sq.path)
    with sq.queue("k1", url, sshd.ssh_command) as q:
        got = lease.claim(q, "w1")
    with sq.queue("alice", url, sshd.ssh_command) as q:
        bumped = [dict(j, version="2") if j["name"] == got.job else j for j in JOBS]
        assert got.job in admin.update_jobs(q, bumped, "scan2")["rebuilt"]
        assert got.lease in read(q, "retries", got.job)["retried"][-1]["fenced"]
    path, data = lease_record(got.job, "w1", got.lease)
    sha = sq.commit({path: data}, "k1", "claim again")
    proc = push(sq, url, sha, sshd.ssh_command)
    assert proc.returncode != 0
    assert (f"{path}: lease on {got.job} under token {got.lease}, which an administrator's retry or update "
            "fenced [lease]") in proc.stderr
    path, data = lease_record(got.job, "w1", "cd" * 16)  # a fresh token is fine
    assert push(sq, url, sq.commit({path: data}, "k1", "claim"), sshd.ssh_command).returncode == 0
