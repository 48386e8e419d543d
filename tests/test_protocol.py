"""The protocol against real bare repositories: claim, report, release, heartbeat, reclaim."""

import pytest

from gitqueue import lease
from gitqueue.audit import replay
from gitqueue.errors import LeaseLost, NothingReady, QueueFinished, UnknownJob
from gitqueue.summary import status

from helpers import git_log, job, make_queue, open_queue

CHAIN = [job("a-1"), job("b-1", ["a-1"]), job("c-1", ["b-1"]), job("d-1", ["a-1"])]


def test_claims_follow_dependency_order(tmp_path):
    url = make_queue(tmp_path, CHAIN)
    with open_queue(url, tmp_path) as q:
        got = lease.claim(q, "w1")
        assert got.job == "a-1" and len(got.lease) == 32
        with pytest.raises(NothingReady):
            lease.claim(q, "w2")
        lease.report(q, "w1", "a-1", "success")
        second = {lease.claim(q, "w1").job, lease.claim(q, "w2").job}
        assert second == {"b-1", "d-1"}
        s = status(q)
        assert s["counts"]["leased"] == 2 and s["counts"]["waiting"] == 1 and s["counts"]["success"] == 1
        assert {x["worker"] for x in s["leases"]} == {"w1", "w2"}


def test_failure_makes_dependents_indirect_failed_and_finishes(tmp_path):
    url = make_queue(tmp_path, CHAIN)
    with open_queue(url, tmp_path) as q:
        lease.claim(q, "w1")
        lease.report(q, "w1", "a-1", "failure", log_tail="boom")
        with pytest.raises(QueueFinished):
            lease.claim(q, "w1")
        s = status(q)
        assert s["counts"]["failed"] == 1 and s["counts"]["indirect-failed"] == 3
        assert s["finished"] and s["done"] == 4


def test_prefailed_jobs_are_never_offered(tmp_path):
    url = make_queue(tmp_path, [job("a-1", prefailed="skip: broken"), job("b-1", ["a-1"]), job("c-1")])
    with open_queue(url, tmp_path) as q:
        assert lease.claim(q, "w1").job == "c-1"
        lease.report(q, "w1", "c-1", "success")
        with pytest.raises(QueueFinished):
            lease.claim(q, "w1")
        c = status(q)["counts"]
        assert (c["prefailed"], c["indirect-prefailed"], c["success"]) == (1, 1, 1)


def test_commit_messages_and_trailers(tmp_path):
    url = make_queue(tmp_path, [job("gmake-4.4.1", pkgpath="devel/gmake", version="4.4.1")])
    with open_queue(url, tmp_path) as q:
        token = lease.claim(q, "hp300-1").lease
        lease.report(q, "hp300-1", "gmake-4.4.1", "success", duration=312)
    subjects = git_log(url).splitlines()
    assert subjects[:2] == ["report gmake-4.4.1 (devel/gmake): success by hp300-1 in 312 s",
                            "claim gmake-4.4.1 (devel/gmake) by hp300-1"]
    facts = git_log(url, "%(trailers:key=Gitqueue-Status,key=Gitqueue-Lease,valueonly)").split()
    assert facts[:2] == ["success", token]


def test_release_declines_for_that_worker_only(tmp_path):
    url = make_queue(tmp_path, [job("gmake-4.4.1")])
    with open_queue(url, tmp_path) as q:
        lease.claim(q, "w1")
        lease.release(q, "w1", "gmake-4.4.1", "my pkgsrc has gmake-4.3, not 4.4.1")
        with pytest.raises(NothingReady):
            lease.claim(q, "w1")
        assert lease.claim(q, "w2").job == "gmake-4.4.1"
    assert "release gmake-4.4.1 by w1: my pkgsrc has gmake-4.3, not 4.4.1" in git_log(url)


def test_report_for_a_job_not_held_writes_nothing(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1")])
    with open_queue(url, tmp_path, host="h1") as q1, open_queue(url, tmp_path, host="h2") as q2:
        lease.claim(q1, "w1")
        before = git_log(url)
        with pytest.raises(LeaseLost):
            lease.report(q2, "w2", "a-1", "success")
        with pytest.raises(LeaseLost):
            lease.report(q2, "w2", "b-1", "success")
        with pytest.raises(UnknownJob):
            lease.report(q2, "w2", "zz-1", "success")
        assert git_log(url) == before


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_reclaim_uses_only_the_reclaimers_clock(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1")], ttl=100)
    # The worker's clock is wrong by ten hours; expiry must not care.
    with open_queue(url, tmp_path, host="worker", clock=Clock(1_036_000.0)) as w, \
            open_queue(url, tmp_path, host="cron", clock=Clock()) as cron:
        held = lease.claim(w, "w1").job
        assert lease.reclaim(cron) == []  # first sight starts the count
        cron.clock.t += 90
        assert lease.reclaim(cron) == []
        lease.heartbeat(w, "w1")  # heard from: the count starts again when cron sees it
        cron.clock.t += 90
        assert lease.reclaim(cron) == []
        cron.clock.t += 100
        assert lease.reclaim(cron) == []  # exactly the TTL is not longer than the TTL
        cron.clock.t += 1
        reclaimed = lease.reclaim(cron)
        assert [(r["job"], r["worker"], r["silent_for"]) for r in reclaimed] == [(held, "w1", 101)]
        assert f"reclaim {held} from w1: not heard from for 101 s (ttl 100 s)" in git_log(url)
        # Fencing: the old holder's heartbeat reports the loss and recreates nothing.
        assert lease.heartbeat(w, "w1") == lease.Heartbeat(held=[], lost=[held])


def test_late_reports_are_fenced(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1")], ttl=10)
    with open_queue(url, tmp_path, host="slow", clock=Clock()) as slow, \
            open_queue(url, tmp_path, host="fast") as fast, \
            open_queue(url, tmp_path, host="cron", clock=Clock()) as cron:
        first = lease.claim(slow, "slow")
        second = lease.claim(slow, "slow")
        lease.reclaim(cron)
        cron.clock.t += 11
        assert len(lease.reclaim(cron)) == 2
        # a-1 (or b-1) goes to another worker: the late report must not touch it.
        taken = lease.claim(fast, "fast").job
        other = ({"a-1", "b-1"} - {taken}).pop()
        with pytest.raises(LeaseLost):
            lease.report(slow, "slow", taken, "success",
                         token=first.lease if first.job == taken else second.lease)
        # Nobody took the other one: a late failure is dropped, a late success kept.
        tok = first.lease if first.job == other else second.lease
        with pytest.raises(LeaseLost):
            lease.report(slow, "slow", other, "failure", token=tok)
        assert lease.report(slow, "slow", other, "success", token=tok)["late"] is True
        # Never a second result: the same report again is told it is recorded, writing nothing.
        before = slow.remote.fetch()
        again = lease.report(slow, "slow", other, "success", token=tok)
        assert isinstance(again, lease.AlreadyRecorded) and again["late"] is True
        with pytest.raises(LeaseLost):
            lease.report(slow, "slow", other, "failure", token=tok)
        assert slow.remote.fetch() == before
        lease.report(fast, "fast", taken, "success")
        tip = fast.remote.fetch()
        audit = replay(fast.remote, tip)
    assert audit.violations == []
    assert (audit.results, audit.late, audit.reclaims) == (2, 1, 2)


def test_index_is_a_cache(tmp_path):
    import os

    url = make_queue(tmp_path, CHAIN)
    with open_queue(url, tmp_path) as q:
        lease.claim(q, "w1")
        lease.report(q, "w1", "a-1", "success")
        index_path = q.index.path
    with open(index_path, "wb") as f:
        f.write(b"garbage, not sqlite")
    with open_queue(url, tmp_path) as q:
        assert lease.claim(q, "w1").job in {"b-1", "d-1"}
    os.unlink(index_path)
    with open_queue(url, tmp_path) as q:
        assert status(q)["counts"]["leased"] == 1


def test_a_worker_holds_at_most_max_leases(tmp_path):
    from gitqueue.admin import import_jobs, init_queue
    from gitqueue.errors import TooManyLeases
    from gitqueue.queue import Queue

    url = str(tmp_path / "q.git")
    with Queue(url, str(tmp_path / "cache-admin")) as q:
        init_queue(q, "capped", limits={"max_leases": 2})
        import_jobs(q, [job(f"p{i}-1") for i in range(4)], "g.jsonl")
    with open_queue(url, tmp_path) as w:
        first = lease.claim(w, "w1")
        lease.claim(w, "w1")
        with pytest.raises(TooManyLeases, match=r"^w1 already holds 2 live leases, the most this queue allows "
                                                r"\(max_leases 2\): report or release one first$"):
            lease.claim(w, "w1")
        assert lease.claim(w, "w2").job  # another worker is not held back
        # Reporting and claiming the next job in one commit (gitqueue work) is fine at the cap.
        [out] = lease.settle(w, [{"worker": "w1", "claim": True, "id": "ab" * 8,
                                  "report": {"job": first.job, "status": "success", "token": first.lease}}],
                             lease.identity("w1"))
        assert out.result["status"] == "success" and out.claim is not None
