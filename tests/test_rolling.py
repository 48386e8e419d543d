"""Properties of a rolling build: any sequence of builds, failures, transient failures, retries
and updates leaves an index equal to one built from nothing, and a history that verifies."""

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitqueue import admin, lease
from gitqueue.errors import GitqueueError

from helpers import gitqueue, job, make_queue, open_queue
from test_update import states

NAMES = ["p0", "p1", "p2", "p3", "p4", "p5"]


def graph(versions: dict, edges: set) -> list[dict]:
    return [job(n, sorted(d for a, d in edges if a == n), version=str(versions[n])) for n in NAMES if n in versions]


ops = st.lists(st.one_of(
    st.tuples(st.just("build"), st.sampled_from(["w1", "w2"]), st.sampled_from(["success", "failure", "transient"])),
    st.tuples(st.just("retry"), st.just(""), st.just("")),
    st.tuples(st.just("bump"), st.sampled_from(NAMES), st.just("")),
    st.tuples(st.just("drop"), st.sampled_from(NAMES[1:]), st.just("")),
), min_size=1, max_size=12)


def test_plan_update_agrees_with_a_recursive_definition():
    @given(st.sets(st.tuples(st.integers(0, 5), st.integers(0, 5)).filter(lambda e: e[0] > e[1])),
           st.sets(st.sampled_from(NAMES)))
    def check(raw_edges, bumped):
        edges = {(NAMES[a], NAMES[b]) for a, b in raw_edges}
        old = graph(dict.fromkeys(NAMES, 1), edges)
        new = graph({n: 2 if n in bumped else 1 for n in NAMES}, edges)
        plan = admin.plan_update(old, new)
        deps = {j["name"]: j["deps"] for j in new}
        memo: dict = {}

        def rebuilt(n):
            if n not in memo:
                memo[n] = n in bumped or any(rebuilt(d) for d in deps[n])
            return memo[n]

        assert plan["rebuilt"] == sorted(n for n in NAMES if rebuilt(n))
        assert plan["kept"] == sorted(n for n in NAMES if not rebuilt(n))

    check()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_any_rolling_history_keeps_the_index_exact_and_verifies(steps):
    edges = {("p1", "p0"), ("p2", "p1"), ("p3", "p1"), ("p5", "p4")}
    versions = dict.fromkeys(NAMES, 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        url = make_queue(tmp, graph(versions, edges), hook=False)
        with open_queue(url, tmp) as q:
            for op, arg, how in steps:
                if op == "build":
                    try:
                        got = lease.claim(q, arg)
                    except GitqueueError:
                        continue
                    extra = {"transient": True} if how == "transient" else None
                    lease.report(q, arg, got.job, "success" if how == "success" else "failure", extra=extra)
                elif op == "retry":
                    try:
                        admin.retry_jobs(q, failed=True, reason="again")
                    except GitqueueError:
                        continue
                else:
                    if op == "bump" and arg in versions:
                        versions[arg] += 1
                    elif op == "drop" and arg in versions and not any(d == arg for _, d in edges):
                        del versions[arg]
                    admin.update_jobs(q, graph(versions, edges), "scan")
                states(q)  # the index brought forward equals one rebuilt from nothing
        proc = gitqueue("verify", url, env={"GITQUEUE_CACHE": str(tmp / "cache-v")})
        assert proc.returncode == 0, proc.stdout + proc.stderr
