"""The history of a queue as events and attempts, read incrementally from the commits."""

import json
import os

from gitqueue import lease, timeline

from helpers import open_queue
from known_build import T0, make_known_build

# (job, worker, result, start, end, duration) of every attempt of the known build, in claim order.
ATTEMPTS = [
    ("a-1.0", "w1", "success", 0, 110, 100),
    ("f-1.0", "w2", "released", 10, 20, 10),
    ("f-1.0", "w3", "reclaimed", 30, 200, 170),
    ("c-3.0", "w1", "failure", 110, 170, 55),
    ("b-2.0", "w2", "success", 120, 150, 30),
    ("g-1.0", "w2", "success", 210, 215, 5),
    ("f-1.0", "w1", "success", 220, 240, 20),
]


def summary(attempts):
    return [(a["job"], a["worker"], a["result"], a["start"] - T0, a["end"] - T0, a["duration"]) for a in attempts]


def test_the_attempts_of_a_known_build(tmp_path):
    url, _ = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer") as q:
        history = timeline.load(q)
    assert summary(history.attempts()) == ATTEMPTS
    assert not history.truncated
    actions = [e.action for e in history.events]
    assert actions[:2] == ["init", "import"] and actions.count("report") == 5 and actions.count("reclaim") == 1
    released = [a for a in history.attempts() if a["result"] == "released"][0]
    assert released["reason"] == "no room for the work directory"


def test_a_second_read_parses_only_the_new_commits(tmp_path):
    url, clock = make_known_build(tmp_path, until=5)  # a-1.0 reported, f-1.0 held by w3
    with open_queue(url, tmp_path, host="viewer") as q:
        first = timeline.load(q)
        cache = os.path.join(q.cache_dir, timeline.CACHE_FILE)
        assert json.load(open(cache))["commit"] == first.commit
        with open_queue(url, tmp_path, host="w", clock=clock) as w:
            clock.t += 1
            lease.heartbeat(w, "w3")
        # A marker in the cached events shows that they were reused, not read again.
        data = json.load(open(cache))
        data["events"][0][7] = "cached"
        json.dump(data, open(cache, "w"))
        second = timeline.load(q)
        assert second.events[0].reason == "cached"
        assert len(second.events) == len(first.events) + 1 and second.events[-1].action == "heartbeat"
        assert [a["result"] for a in second.attempts()] == ["success", "released", "building"]
        # A damaged cache is read again from the history.
        open(cache, "w").write("{not json")
        third = timeline.load(q)
        assert third.events[0].reason is None and third.events[1:] == second.events[1:]


def test_a_remote_queue_reads_the_whole_history(tmp_path):
    url, _ = make_known_build(tmp_path)
    # file:// goes through the fetching path (a worker's shallow mirror holds only the tip).
    with open_queue(f"file://{url}", tmp_path, host="remote") as q:
        assert summary(timeline.load(q).attempts()) == ATTEMPTS
        assert summary(timeline.load(q).attempts()) == ATTEMPTS


def test_a_commit_with_several_actions_gives_one_event_each(tmp_path):
    """gitqueue work reports and claims in one commit, and settles a host's waiting workers together."""
    from helpers import job, make_queue

    url = make_queue(tmp_path, [job("a-1.0"), job("b-1.0"), job("c-1.0")])
    with open_queue(url, tmp_path) as q:
        held = lease.claim(q, "w1")
        report = {"job": held.job, "status": "success", "token": held.lease, "duration": 7.0}
        out = lease.settle(q, [{"worker": "w1", "report": report, "claim": True},
                               {"worker": "w2", "claim": True}], lease.identity("w1"))
        events = timeline.load(q).events
    last = [(e.action, e.job, e.worker) for e in events[-3:]]
    assert last == [("report", held.job, "w1"), ("claim", out[0].claim.job, "w1"),
                    ("claim", out[1].claim.job, "w2")]
    assert events[-3].duration == 7.0 and events[-3].status == "success"
