"""The scheduler's rule and the simulator's floors on a real pkgsrc bulk build."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitqueue import scheduler
from gitqueue.importers import load_graph
from gitqueue.simulate import POLICIES, simulate

from helpers import BULK_JSONL, job


def test_estimates_in_order_of_trust():
    j = job("gmake-4.4.1", pkgpath="devel/gmake", est_seconds=50, weight=300)
    assert scheduler.estimate(j, {"gmake-4.4.1": 70}) == (70.0, "history")
    assert scheduler.estimate(j, {"devel/gmake": 65}) == (65.0, "history")
    assert scheduler.estimate(j, {}) == (50.0, "est_seconds")
    assert scheduler.estimate(job("x-1", weight=300)) == (3 * scheduler.DEFAULT_SECONDS, "weight")
    assert scheduler.estimate(job("x-1")) == (scheduler.DEFAULT_SECONDS, "default")


def test_critical_path_and_priority_list():
    jobs = [job("a-1"), job("b-1", ["a-1"]), job("c-1", ["b-1"]), job("d-1", ["a-1"])]
    est = {"a-1": 10, "b-1": 20, "c-1": 30, "d-1": 100}
    assert scheduler.critical_paths(jobs, est) == {"a-1": 110, "b-1": 50, "c-1": 30, "d-1": 100}
    boosted = scheduler.priorities(jobs, est, {"c-1"})
    assert boosted["c-1"] > boosted["d-1"] and boosted["b-1"] > boosted["d-1"]
    assert scheduler.dependents_counts(jobs) == {"a-1": 3, "b-1": 1, "c-1": 0, "d-1": 0}


def test_a_slow_worker_leaves_the_critical_job_to_a_faster_one_about_to_free_up():
    cands = [scheduler.Candidate("big-1", 1000, 5000), scheduler.Candidate("small-1", 10, 100)]
    fast_soon = [scheduler.Busy("fast", 1.0, free_at=60)]
    picked = scheduler.choose(cands, 4.0, fast_soon, now=0)
    assert [c.name for c in picked] == ["small-1"]
    # The fast one is busy for hours: the slow one is the quicker way.
    fast_late = [scheduler.Busy("fast", 1.0, free_at=10_000)]
    assert [c.name for c in scheduler.choose(cands, 4.0, fast_late, now=0)] == ["big-1", "small-1"]
    # Equal machines never pass work to each other.
    assert [c.name for c in scheduler.choose(cands, 1.0, [scheduler.Busy("twin", 1.05, 1)], now=0)][0] == "big-1"


def test_speeds_are_learned_from_results():
    speeds = scheduler.Speeds()
    assert speeds.factor("new") == scheduler.UNKNOWN_FACTOR
    for _ in range(5):
        speeds.observe("m68k", 400, 100)
        speeds.observe("riscv", 100, 100)
    assert 3.0 < speeds.factor("m68k") < 4.0
    assert speeds.factor("riscv") == pytest.approx(1.0)


@st.composite
def dags(draw):
    n = draw(st.integers(1, 25))
    jobs = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        jobs.append(job(f"j{i}-1", [f"j{d}-1" for d in sorted(deps)], est_seconds=draw(st.integers(1, 500))))
    return jobs


@settings(max_examples=60, deadline=None)
@given(dags(), st.integers(1, 6), st.sampled_from([(1,), (1, 4), (1, 2, 5)]), st.sampled_from([0.0, 0.5]))
def test_every_policy_finishes_and_respects_the_bound(jobs, workers, slowness, error):
    for policy in POLICIES:
        r = simulate(jobs, workers, policy, slowness, error, seed=1)
        assert r["makespan"] >= r["lower_bound"] - 1e-6
        assert r["ratio"] >= 0.9999


@pytest.fixture(scope="module")
def bulk():
    return load_graph(str(BULK_JSONL))


def ratios(jobs, workers, slowness=(1,), error=0.0, seed=0):
    return {p: simulate(jobs, workers, p, slowness, error, seed)["ratio"] for p in POLICIES}


@pytest.mark.parametrize("workers", [4, 8, 16, 32, 64])
def test_floor_equal_workers(bulk, workers):
    r = ratios(bulk, workers)
    assert r["gitqueue"] <= 1.02 and r["gitqueue"] <= r["pbulk"]
    assert ratios(bulk, workers, error=0.5)["gitqueue"] <= 1.03


@pytest.mark.parametrize("workers", [8, 32])
@pytest.mark.parametrize("slowness", [(1, 4), (1, 2, 5, 10, 20)])
def test_floor_mixed_machines(bulk, workers, slowness):
    for error in (0.0, 0.5):
        r = ratios(bulk, workers, slowness, error)
        assert r["gitqueue"] <= min(r["fifo"], r["pbulk"], r["critical-path"]), r
