"""The worker's index: brought forward by the tree diff, it says what one rebuilt from the tree says."""

import collections

from gitqueue import lease
from gitqueue.index import STATES, Index

from helpers import job, local_commit, make_queue, open_queue
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
