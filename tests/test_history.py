"""Across builds: every attempt at a package, and what changed between two builds."""

import pytest

from gitqueue import lease
from gitqueue.errors import NothingReady, QueueFinished, UnknownJob
from gitqueue.history import compare, package_history

from helpers import make_queue, open_queue
from known_build import JOBS, T0, Clock, make_known_build

# The previous build: c-3.0 built then, f-1.0 failed; b-2.0 took ten times longer.
OLD_TIMES = {"a-1.0": 90, "b-2.0": 300, "g-1.0": 10}


def make_old_build(tmp_path):
    url = make_queue(tmp_path, JOBS, name="old.git")
    clock = Clock(T0 - 90 * 86400)
    with open_queue(url, tmp_path, host="old-builder", clock=clock) as q:
        while True:
            try:
                job = lease.claim(q, "old1").job
            except (NothingReady, QueueFinished):
                break
            clock.t += OLD_TIMES.get(job, 10)
            lease.report(q, "old1", job, "failure" if job == "f-1.0" else "success", duration=OLD_TIMES.get(job, 10))
    return url


def test_the_history_of_a_package(tmp_path):
    url, _ = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer") as q:
        for name in ("f-1.0", "f", "cat/f"):
            rows = package_history([q], name)
            assert [(r["worker"], r["result"], r["start"] - T0, r["duration"], r["reason"]) for r in rows] == [
                ("w2", "released", 10, 10, "no room for the work directory"),
                ("w3", "reclaimed", 30, 170, "not heard from for 80 s (ttl 60 s)"),
                ("w1", "success", 220, 20, None)]
        failed = package_history([q], "c")
        assert [(r["job"], r["result"], r["log"]) for r in failed] == [("c-3.0", "failure", "c-3.0.log")]
        never = package_history([q], "cat/e")
        assert [(r["job"], r["worker"], r["result"], r["reason"]) for r in never] == [
            ("e-1.0", None, "indirect-failed", "depends on c-3.0")]
        with pytest.raises(UnknownJob,
                           match="^unknown package zz: no job has this PKGNAME, base name or package path$"):
            package_history([q], "zz")


def test_the_history_across_builds(tmp_path):
    old = make_old_build(tmp_path)
    new, _ = make_known_build(tmp_path)
    with open_queue(old, tmp_path, host="v1") as q1, open_queue(new, tmp_path, host="v2") as q2:
        rows = package_history([q1, q2], "c")
    assert [(r["queue"], r["worker"], r["result"]) for r in rows] == [("test", "old1", "success"),
                                                                        ("test", "w1", "failure")]


def test_the_difference_between_two_builds(tmp_path):
    old = make_old_build(tmp_path)
    new, _ = make_known_build(tmp_path)
    with open_queue(old, tmp_path, host="v1") as q1, open_queue(new, tmp_path, host="v2") as q2:
        data = compare(q1, q2)
        same = compare(q2, q2)
    assert [(r["new"], r["old_state"], r["breaks"]) for r in data["newly_failing"]] == [("c-3.0", "success", 2)]
    assert [(r["new"], r["old_state"]) for r in data["newly_fixed"]] == [("f-1.0", "failed")]
    assert data["still_failing"] == [] and data["added"] == [] and data["removed"] == []
    assert [(c["new"], c["old_seconds"], c["new_seconds"], c["change"]) for c in data["time_changes"]] == [
        ("b-2.0", 300, 30, -270), ("a-1.0", 90, 100, 10), ("g-1.0", 10, 5, -5)]
    assert [r["new"] for r in same["still_failing"]] == ["c-3.0"] and same["newly_failing"] == []


def debian_build(tmp_path, name, revision, status):
    """A queue of two Debian source packages whose versions carry a Debian revision (2.0.6-4)."""
    jobs = [{"name": f"libmd-1.1.0-{revision}", "version": f"1.1.0-{revision}", "deps": []},
            {"name": f"libbsd-0.11.7-{revision}", "version": f"0.11.7-{revision}",
             "deps": [f"libmd-1.1.0-{revision}"]}]
    url = make_queue(tmp_path, jobs, name=name)
    with open_queue(url, tmp_path, host=name) as q:
        for job in jobs:
            assert lease.claim(q, "w1").job == job["name"]
            lease.report(q, "w1", job["name"], status if "libbsd" in job["name"] else "success", duration=60)
    return url


def test_packages_are_named_by_the_records_own_version_not_the_last_dash(tmp_path):
    """libbsd-0.11.7-2 of version 0.11.7-2 is libbsd, not "libbsd-0.11.7"; across builds too."""
    old = debian_build(tmp_path, "old.git", 1, "failure")
    new = debian_build(tmp_path, "new.git", 2, "success")
    with open_queue(old, tmp_path, host="v1") as q1, open_queue(new, tmp_path, host="v2") as q2:
        rows = package_history([q1, q2], "libbsd")
        assert [(r["job"], r["result"]) for r in rows] == [("libbsd-0.11.7-1", "failure"),
                                                            ("libbsd-0.11.7-2", "success")]
        assert [r["job"] for r in package_history([q2], "libbsd-0.11.7-2")] == ["libbsd-0.11.7-2"]
        with pytest.raises(UnknownJob):
            package_history([q2], "libbsd-0.11.7")
        data = compare(q1, q2)
    # The same package in both builds: fixed, neither added nor removed.
    assert [(r["old"], r["new"]) for r in data["newly_fixed"]] == [("libbsd-0.11.7-1", "libbsd-0.11.7-2")]
    assert data["added"] == [] and data["removed"] == []
