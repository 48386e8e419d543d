"""The spool: the waiting workers of a host are settled in one commit, each request once."""

import json
import os
import subprocess
import time

from gitqueue import lease
from gitqueue.audit import replay
from gitqueue.errors import LeaseLost, NothingReady
from gitqueue.spool import Spool

from helpers import git_log, job, make_queue, open_queue


def _request(worker, report=None, claim=True, rid=None):
    req = {"worker": worker, "host": "h1", "report": report, "claim": claim}
    if rid:
        req["id"] = rid
    return req


def _spool_waiting(spool, worker, request, pid):
    """Leave a request in the spool as a process `pid` waiting for the lock would."""
    path = os.path.join(spool.dir, f"{worker}.{pid}.req")
    with open(path, "w") as f:
        json.dump(dict(request, pid=pid, at=time.time()), f)
    return path


def test_waiting_requests_are_settled_in_one_commit(tmp_path):
    url = make_queue(tmp_path, [job(f"p{i}-1.0", pkgpath=f"devel/p{i}") for i in range(6)])
    with open_queue(url, tmp_path) as q:
        first = lease.claim(q, "w1")
        spool = Spool(q)
        # w2 and w3 are "waiting for the lock": their processes are alive (this one).
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            _spool_waiting(spool, "w2", dict(_request("w2"), id="22" * 8), sleeper.pid)
            _spool_waiting(spool, "w3", dict(_request("w3"), id="33" * 8), sleeper.pid)
            report = {"job": first.job, "status": "success", "token": first.lease, "duration": 1.5}
            before = len(git_log(url).splitlines())
            mine = spool.submit(_request("w1", report), lease.identity("w1"))
            after = len(git_log(url).splitlines())
            outs = sorted(n for n in os.listdir(spool.dir) if n.endswith(".out"))
        finally:
            sleeper.kill()
            sleeper.wait()
        assert after == before + 1, "one commit for three workers"
        assert mine.result["status"] == "success" and mine.claim is not None
        assert outs == [f"w2.{sleeper.pid}.out", f"w3.{sleeper.pid}.out"]
        theirs = [json.load(open(os.path.join(spool.dir, n)))["outcome"]["claim"]["job"] for n in outs]
        assert [lease.Outcome.from_json(json.load(open(os.path.join(spool.dir, n)))["outcome"]).claim.job
                for n in outs] == theirs
        claimed = {mine.claim.job, *theirs}
        assert len(claimed) == 3 and first.job not in claimed
        body = git_log(url, "%b", "-1").splitlines()
        assert sum(line.startswith("claim ") for line in body) == 3
        assert sum(line.startswith("report ") for line in body) == 1
        # The whole subjects would pass 100 characters: the subject names the packages instead.
        claims = [line.split()[1] for line in body if line.startswith("claim ")]
        assert git_log(url, "%s", "-1") == f"report {first.job}; claim {', '.join(claims)}\n"
        assert not [n for n in os.listdir(spool.dir) if n.endswith(".req")]
        audit = replay(q.remote, q.remote.fetch())
    assert audit.violations == [] and audit.claims == 4


def test_the_subject_of_many_actions_names_their_packages_and_stays_short():
    reports = [("report", f"p5-Module-Name-{i}.{i}nb1") for i in range(5)]
    claims = [("claim", f"py313-package-{i}-2.{i}") for i in range(4)]
    subject = lease.short_subject(reports + claims)
    assert subject == ("report p5-Module-Name-0.0nb1, p5-Module-Name-1.1nb1 (+3 more); "
                       "claim py313-package-0-2.0 (+3 more)")
    assert len(subject) <= lease.SUBJECT_LIMIT
    # Every action names its first package in the order the commit does them, however many.
    many = lease.short_subject([("claim", "a-1")] + [("report", f"r{i}-1") for i in range(300)])
    assert many.startswith("claim a-1; report r0-1, r1-1, ") and many.endswith(", r10-1 (+289 more)")
    # Names of 200 characters are cut short so that both still show.
    long = lease.short_subject([("report", "r" * 200 + "-1"), ("claim", "c" * 200 + "-1")])
    assert len(long) <= lease.MAX_SUBJECT and long.startswith("report rrr") and "; claim ccc" in long


def test_requests_of_dead_processes_are_dropped(tmp_path):
    url = make_queue(tmp_path, [job("a-1.0"), job("b-1.0")])
    with open_queue(url, tmp_path) as q:
        spool = Spool(q)
        dead = subprocess.Popen(["true"])
        dead.wait()
        path = _spool_waiting(spool, "ghost", _request("ghost"), dead.pid)
        out = spool.submit(_request("w1"), lease.identity("w1"))
        assert out.claim is not None
        assert not os.path.exists(path)
        assert "ghost" not in git_log(url, "%B")


def test_a_retried_request_takes_no_second_job(tmp_path):
    """The settler died after pushing: the same request again returns what it got."""
    url = make_queue(tmp_path, [job("a-1.0"), job("b-1.0"), job("c-1.0")])
    with open_queue(url, tmp_path) as q:
        first = lease.claim(q, "w1")
        report = {"job": first.job, "status": "success", "token": first.lease}
        req = _request("w1", report, rid="ab" * 8)
        [once] = lease.settle(q, [req], lease.identity("w1"))
        [again] = lease.settle(q, [req], lease.identity("w1"))
        assert again.claim == once.claim
        assert again.result["token"] == first.lease
        assert git_log(url).count("claim ") == 2  # the first claim and the settled one, no third
        # A different request is a new claim.
        [other] = lease.settle(q, [_request("w1", rid="cd" * 8)], lease.identity("w1"))
        assert other.claim.job not in (first.job, once.claim.job)


def test_one_lost_lease_does_not_stop_the_others(tmp_path):
    url = make_queue(tmp_path, [job("a-1.0"), job("b-1.0"), job("c-1.0")])
    with open_queue(url, tmp_path) as q:
        held = lease.claim(q, "w1")
        bogus = {"job": held.job, "status": "success", "token": "0" * 32}
        out = lease.settle(q, [_request("w2", bogus), _request("w3")], lease.identity("w2"))
        assert isinstance(out[0].report_error, LeaseLost) and "leased by w1" in str(out[0].report_error)
        assert out[0].result is None and out[0].claim is not None and out[1].claim is not None
        with_nothing = lease.settle(q, [_request("w4")], lease.identity("w4"))
        assert isinstance(with_nothing[0].claim_error, NothingReady) and with_nothing[0].claim is None
        assert "nothing ready" in str(with_nothing[0].claim_error)
