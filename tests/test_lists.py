"""Priority and no-way lists, and the scheduler inside claim."""

import pytest

from gitqueue import admin, lease
from gitqueue.errors import GitqueueError, QueueFinished
from gitqueue.summary import status

from helpers import git_log, gitqueue, job, make_queue, open_queue, pkg

GRAPH = [pkg("base-1"), pkg("icu-78.1", ["base-1"], pkgpath="textproc/icu"),
         pkg("needs-icu-1", ["icu-78.1"]), pkg("gmake-4.4.1", ["base-1"], pkgpath="devel/gmake"),
         pkg("other-1", ["base-1"])]


def settings_arch(tmp_path, arch="m68k"):
    from gitqueue.admin import import_jobs, init_queue
    from gitqueue.queue import Queue

    url = str(tmp_path / "q.git")
    with Queue(url, str(tmp_path / "cache-admin")) as q:
        init_queue(q, "t", arch=arch)
        import_jobs(q, GRAPH, "g.jsonl")
    return url


def test_noway_jobs_are_never_offered_and_their_dependents_are_skipped(tmp_path):
    url = settings_arch(tmp_path, "m68k")
    with open_queue(url, tmp_path) as q:
        admin.change_noway(q, add=[{"pattern": "textproc/icu", "arch": "m68k", "reason": "panics m68k hosts"},
                                   {"pattern": "other-*", "arch": "vax", "reason": "not on vax"}])
        built = []
        while True:
            try:
                got = lease.claim(q, "w1")
            except QueueFinished:
                break
            built.append(got.job)
            lease.report(q, "w1", got.job, "success")
        s = status(q)
    assert sorted(built) == ["base-1", "gmake-4.4.1", "other-1"]
    assert (s["counts"]["skipped"], s["counts"]["indirect-skipped"]) == (1, 1) and s["finished"]
    assert s["skipped"] == [{"job": "icu-78.1", "reason": "no way on m68k: panics m68k hosts"}]
    assert "no way: textproc/icu on m68k: panics m68k hosts; other-* on vax: not on vax" in git_log(url)


def test_priority_list_puts_packages_and_their_needs_first(tmp_path):
    url = settings_arch(tmp_path)
    with open_queue(url, tmp_path) as q:
        assert admin.change_priority(q, add=["needs-icu"]) == ["needs-icu"]
        order = []
        for _ in range(3):
            got = lease.claim(q, "w1")
            order.append(got.job)
            lease.report(q, "w1", got.job, "success")
        assert order == ["base-1", "icu-78.1", "needs-icu-1"]
        with pytest.raises(GitqueueError, match="not on the priority list: zz"):
            admin.change_priority(q, remove=["zz"])
        assert admin.change_priority(q, remove=["needs-icu"]) == []


def test_patterns_match_the_base_name_of_a_debian_version(tmp_path):
    """`libbsd` names libbsd-0.11.7-2 (version 0.11.7-2): the record's version is cut off, whole."""
    url = make_queue(tmp_path, [job("libbsd-0.11.7-2", version="0.11.7-2"),
                                job("libbsd-doc-0.11.7-2", version="0.11.7-2"), job("zlib-1.3-1", version="1.3-1")])
    with open_queue(url, tmp_path) as q:
        admin.change_noway(q, add=[{"pattern": "libbsd", "arch": "", "reason": "not here"}])
        assert [s["job"] for s in status(q)["skipped"]] == ["libbsd-0.11.7-2"]
        admin.change_priority(q, add=["libbsd-doc"])  # else zlib comes first
        assert lease.claim(q, "w1").job == "libbsd-doc-0.11.7-2"


def test_list_commands(tmp_path):
    url = settings_arch(tmp_path)
    env = {"GITQUEUE_CACHE": str(tmp_path / "c")}
    p = gitqueue("noway", "add", "icu-*", "--reason", "panics", "--queue", url, env=env)
    assert p.returncode == 0 and p.stdout == "icu-*\tm68k\tpanics\n", p.stderr
    assert gitqueue("noway", "list", "--queue", url, env=env).stdout == "icu-*\tm68k\tpanics\n"
    p = gitqueue("noway", "remove", "zz", "--queue", url, env=env)
    assert (p.returncode, p.stderr) == (1, "Error: not on the no-way list: zz (m68k)\n")
    p = gitqueue("priority", "add", "../etc", "--queue", url, env=env)
    assert p.returncode == 2 and "'../etc' is not a package pattern" in p.stderr
    assert gitqueue("priority", "add", "gmake*", "--queue", url, "--json", env=env).stdout.split() == \
        ["[", '"gmake*"', "]"]


def test_claim_leaves_long_jobs_to_a_faster_worker_about_to_free_up(tmp_path):
    url = make_queue(tmp_path, [
        job("c1-1", est_seconds=100), job("c2-1", ["c1-1"], est_seconds=100),
        job("crit-1", ["c2-1"], est_seconds=200), job("tail-1", ["crit-1"], est_seconds=5000),
        job("long-1", ["c2-1"], est_seconds=1000), job("small-1", ["c2-1"], est_seconds=10)])

    class Clock:
        t = 1_000_000.0

        def __call__(self):
            return self.t

    clock = Clock()
    with open_queue(url, tmp_path, host="fast", clock=clock) as fast, \
            open_queue(url, tmp_path, host="slow", clock=clock) as slow:
        assert lease.claim(fast, "fast").job == "c1-1"
        lease.report(fast, "fast", "c1-1", "success", duration=100)  # measured: as estimated
        assert lease.claim(slow, "slow").job == "c2-1"
        lease.report(slow, "slow", "c2-1", "success", duration=800)  # measured: about 4x slower
        assert lease.claim(fast, "fast").job == "crit-1"
        clock.t += 10
        # Plain critical path would give long-1 to the slow machine (1000 s there: ~4000 s);
        # the fast one frees up in 190 s and would finish it at +1200 s, so slow takes small-1.
        assert lease.claim(slow, "slow").job == "small-1"
        s = status(slow)
    assert s["eta_seconds"] > 0


def test_a_worker_never_measured_is_not_starved_by_a_fast_one(tmp_path):
    # The demo's case: builds far shorter than the default estimate make the first worker to
    # report look 100x fast; a new worker must still get work (and so get measured).
    url = make_queue(tmp_path, [job(f"p{i}-1") for i in range(30)])
    with open_queue(url, tmp_path, host="a") as a, open_queue(url, tmp_path, host="b") as b:
        first = lease.claim(a, "fast").job
        lease.report(a, "fast", first, "success", duration=2)
        lease.claim(a, "fast")
        # Without the rule this raised NothingReady ("faster workers will finish ... sooner").
        got = lease.claim(b, "new")
        assert got.job.startswith("p") and got.job != first
