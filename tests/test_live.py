"""`gitqueue status` data: progress, rates, workers, expiring leases and blockers."""

from gitqueue import live

from helpers import open_queue
from known_build import COUNTS, TTL, make_known_build


def status_at(tmp_path, seconds, **kwargs):
    url, clock = make_known_build(tmp_path, **kwargs)
    clock.at(seconds)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        return live.status(q)


def test_the_status_of_a_finished_build(tmp_path):
    data = status_at(tmp_path, 300)
    assert data["counts"] == COUNTS and data["finished"]
    assert (data["total"], data["done"], data["buildable"], data["built"]) == (11, 11, 7, 7)
    assert data["build_progress"] == 1.0 and data["eta_seconds"] == 0
    assert data["started"] == "2026-01-01T00:00:00Z" and data["elapsed"] == 240
    assert data["rate"] == {"overall": 75.0, "last_hour": 5}  # 5 results in 4 minutes
    rows = {w["worker"]: (w["job"], w["done"], w["failed"], w["last_heard"]) for w in data["workers"]}
    assert rows == {"w1": (None, 3, 1, 60), "w2": (None, 2, 0, 85), "w3": (None, 0, 0, 270)}
    assert data["leases"] == [] and data["expiring"] == []
    assert [(b["job"], b["pkgpath"], b["breaks"]) for b in data["blockers"]] == [("c-3.0", "cat/c", 2)]
    assert data["skipped"] == [{"job": "n-1.0", "reason": "no way on any arch: needs rust"}]


def test_the_status_while_building(tmp_path):
    data = status_at(tmp_path, 140, until=8)  # w1 builds c-3.0, w2 b-2.0, w3 (silent) holds f-1.0
    assert not data["finished"] and data["counts"]["leased"] == 3 and data["built"] == 1
    rows = {w["worker"]: (w["job"], w["for"], w["last_heard"], w["done"]) for w in data["workers"]}
    assert rows == {"w1": ("c-3.0", 30, 30, 1), "w2": ("b-2.0", 20, 20, 0), "w3": ("f-1.0", 110, 110, 0)}
    assert [(x["job"], x["worker"], x["silent"], x["expires_in"]) for x in data["expiring"]] == [
        ("f-1.0", "w3", 110, TTL - 110), ("c-3.0", "w1", 30, TTL - 30), ("b-2.0", "w2", 20, TTL - 20)]
    assert data["rate"]["last_hour"] == 1 and data["eta_seconds"] > 0
    assert data["blockers"] == []
