"""The worker's index: brought forward by the tree diff, it says what one rebuilt from the tree says."""

import collections

from gitqueue import lease
from gitqueue.index import STATES, Index

from helpers import job, local_commit, make_queue, open_queue, pkg
from known_build import COUNTS, make_known_build


def _view(index):
    """What the index knows: each job's state and lease, dependencies, learned speeds, ready jobs."""
    return (sorted(index.states()), sorted(index.dependencies()), index.speeds().sums,
            [c.name for c in index.ready("w9", 100)], index.counts())


def _rebuilt(queue, path):
    index = Index(str(path))
    index.rebuild(queue.remote, queue.remote.fetch())
    return index


def test_an_index_brought_forward_step_by_step_matches_one_rebuilt_from_the_tree(tmp_path):
    url, clock = make_known_build(tmp_path)
    # The builder's index followed every claim, report, release and reclaim by the diff alone.
    with open_queue(url, tmp_path, host="builder-known.git", clock=clock) as q:
        with q.lock():
            q.sync()
        fresh = _rebuilt(q, tmp_path / "fresh.sqlite")
        try:
            assert _view(q.index) == _view(fresh)
            assert q.index.counts() == COUNTS
        finally:
            fresh.close()


def test_states_are_the_counts_job_by_job(tmp_path):
    url, clock = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        with q.lock():
            q.sync()
        states = collections.Counter(state for _, _, _, _, _, state, _ in q.index.states())
        assert {s: states[s] for s in STATES} == q.index.counts() == COUNTS
        assert q.index.skipped() == [("n-1.0", "no way on any arch: needs rust")]


def test_an_entry_outside_the_layout_sends_the_index_to_the_tree(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1", ["a-1"])], hook=False)
    with open_queue(url, tmp_path) as q:
        lease.report(q, "w1", lease.claim(q, "w1").job, "success")
        local_commit(url, {"README": b"a local writer's note\n"})
        assert lease.claim(q, "w1").job == "b-1"
        assert q.index.leased_to("w1") == ["b-1"] and q.index.lease_holders() == ["w1"]
        fresh = _rebuilt(q, tmp_path / "fresh.sqlite")
        try:
            assert _view(q.index) == _view(fresh)
        finally:
            fresh.close()


def test_requirements_are_every_dependency_direct_or_not(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1", ["a-1"]), job("c-1", ["b-1"]), job("d-1", ["a-1", "c-1"]),
                                job("e-1")])
    with open_queue(url, tmp_path) as q:
        with q.lock():
            q.sync()
        assert q.index.requirements("d-1") == ["a-1", "b-1", "c-1"]
        assert q.index.requirements("a-1") == [] and q.index.requirements("nonesuch") == []


def test_one_diff_over_a_whole_build_says_what_every_step_said(tmp_path):
    # MULTI_VERSION siblings (one package path, default estimates) and measured durations: a
    # measured sibling sets the estimate of those not built yet, and every success refines its
    # worker's speed. Which sibling comes first differs (a diff over many commits has no order
    # but the paths'), so the estimates and speeds may; the states may not.
    jobs = [pkg("py39-foo-1.0", pkgpath="lang/foo"), pkg("py310-foo-1.0", pkgpath="lang/foo"),
            pkg("py311-foo-1.0", ["base-1.0"], pkgpath="lang/foo"),
            pkg("py312-foo-1.0", ["lone-1.0"], pkgpath="lang/foo"),
            pkg("base-1.0", pkgpath="devel/base"), pkg("lone-1.0", pkgpath="misc/lone"),
            pkg("top-1.0", ["py39-foo-1.0", "py311-foo-1.0"], pkgpath="misc/top")]
    url = make_queue(tmp_path, jobs)
    with open_queue(url, tmp_path, host="stepper") as q:
        with q.lock():
            start, _ = q.sync()
        behind = Index(str(tmp_path / "behind.sqlite"))
        behind.rebuild(q.remote, start)
        durations = {"base-1.0": 30.0, "py39-foo-1.0": 400.0, "py310-foo-1.0": 350.0, "py311-foo-1.0": 5.0,
                     "top-1.0": 3.0}
        for _ in range(6):  # every job but py312-foo, held back by lone's failure
            got = lease.claim(q, "w1")
            status = "failure" if got.job == "lone-1.0" else "success"
            lease.report(q, "w1", got.job, status, duration=durations.get(got.job, 2.0))
        with q.lock():
            tip, _ = q.sync()
        try:
            behind.update(q.remote, tip)
            assert behind.commit_id() == tip
            assert _view(behind)[:2] + _view(behind)[3:] == _view(q.index)[:2] + _view(q.index)[3:]
            assert behind.counts()["success"] == 5
            for index in (behind, q.index):
                unbuilt = index.db.execute("SELECT est, est_source FROM jobs WHERE name='py312-foo-1.0'").fetchone()
                assert unbuilt[1] == "this build" and unbuilt[0] != 60.0
                assert set(index.speeds().sums) == {"w1"}
        finally:
            behind.close()
