"""The history of a queue as events (claims, reports, releases, reclaims) and build attempts.

Every commit's trailers say what happened, one group of keys per action (see docs/layout.md),
so the build's log is the first-parent chain of the branch. Reading 60,000 commits costs seconds, so
the events read are kept in the cache (`timeline.json`) with the commit they reach, and later
reads parse only the commits added since. Times are commit times, written by the worker's
clock: they describe the build, nothing decides on them.
"""

import json
import math
import os

from . import files
from .errors import QueueNotFound

CACHE_FILE = "timeline.json"
CACHE_VERSION = 3  # 2: several actions per commit; 3: trailers gitqueue cannot have written left out
# Commits that say something about the build; admin changes (priority, noway) are left out.
ACTIONS = {"init", "import", "claim", "heartbeat", "report", "release", "reclaim"}
JOB_ACTIONS = {"claim", "report", "release", "reclaim"}


class Event(tuple):
    """One commit of the history: (t, action, job, worker, lease, status, duration, reason, late)."""

    __slots__ = ()
    t = property(lambda self: self[0])
    action = property(lambda self: self[1])
    job = property(lambda self: self[2])
    worker = property(lambda self: self[3])
    lease = property(lambda self: self[4])
    status = property(lambda self: self[5])
    duration = property(lambda self: self[6])
    reason = property(lambda self: self[7])
    late = property(lambda self: self[8])


class Timeline:
    """The events of a queue's history up to `commit`, oldest first."""

    def __init__(self, commit: str | None, events: list[Event], truncated: bool = False):
        self.commit = commit
        self.events = events
        self.truncated = truncated  # the history starts at a shallow boundary, not at init

    def attempts(self) -> list[dict]:
        """Each lease as one attempt, in the order claimed.

        An attempt is {"job", "worker", "lease", "start", "end", "result", "duration", "reason",
        "late"}; result is success, failure, released, reclaimed or building (still leased).
        duration is the worker's measured build time when reported, else end - start.
        """
        out: list[dict] = []
        by_lease: dict[str, dict] = {}
        a: dict | None  # the attempt an event is about
        for e in self.events:
            if e.action == "claim":
                a = {"job": e.job, "worker": e.worker, "lease": e.lease, "start": e.t, "end": None,
                     "result": "building", "duration": None, "reason": None, "late": False}
                out.append(a)
                if e.lease:
                    by_lease[e.lease] = a
            elif e.action in ("report", "release", "reclaim"):
                a = by_lease.get(e.lease)
                if a is None:
                    # Claimed before the history we hold begins (shallow) or never claimed.
                    a = {"job": e.job, "worker": e.worker, "lease": e.lease, "start": None, "end": None,
                         "result": "building", "duration": None, "reason": None, "late": False}
                    out.append(a)
                    if e.lease:
                        by_lease[e.lease] = a
                if e.action == "report":
                    a["result"] = e.status or "success"
                    a["late"] = bool(e.late)
                    a["duration"] = e.duration
                    if e.late and a["end"] is not None:
                        continue  # reclaimed earlier; the build itself ended when it was reclaimed
                    a["end"] = e.t
                else:
                    a["result"] = "released" if e.action == "release" else "reclaimed"
                    a["reason"] = e.reason
                    a["end"] = e.t
        for a in out:
            if a["duration"] is None and a["start"] is not None and a["end"] is not None:
                a["duration"] = a["end"] - a["start"]
        return out


def load(queue, tip: bytes | None = None) -> Timeline:
    """The timeline of `queue` up to its tip (or `tip`), reading only commits not cached yet.

    A local queue is read where it is. For a remote queue every commit of the branch is fetched
    beside the cache (a worker's own mirror holds only recent commits; see
    gitstore.CachedRemote.fetch_commits): the commits alone when the server can filter.
    Raises QueueNotFound when the branch does not exist.
    """
    store, tip = _history(queue, tip)
    path = os.path.join(queue.cache_dir, CACHE_FILE)
    cached = _read_cache(path)
    known = cached["commit"].encode() if cached and cached.get("commit") else None
    new, reached, truncated = _walk(store, tip, known)
    if reached:
        events = [Event(e) for e in cached["events"]]
        truncated = cached.get("truncated", False)
    else:
        events = []
    events.extend(new)
    timeline = Timeline(tip.decode(), events, truncated)
    if new or not reached:
        files.write_json(path, {"version": CACHE_VERSION, "commit": timeline.commit, "truncated": truncated,
                                "events": events}, separators=(",", ":"))
    return timeline


def _history(queue, tip):
    """(object store holding the full history, tip commit id)."""
    with queue.lock():
        store, fetched = queue.remote.fetch_commits()
    tip = tip or fetched
    if tip is None:
        raise QueueNotFound(f"{queue.url}: no queue on branch {queue.branch} (run gitqueue init)")
    return store, tip


def _walk(store, tip: bytes, known: bytes | None):
    """Events of the first-parent commits after `known` up to `tip`, oldest first.

    Returns (events, reached known, stopped at a shallow boundary).
    """
    raw = []
    sha = tip
    reached = False
    truncated = False
    while sha is not None:
        if sha == known:
            reached = True
            break
        try:
            _, data = store.get_raw(sha)
        except KeyError:
            truncated = True
            break
        parent, when, message = _parse_commit(data)
        raw.append((when, message))
        sha = parent
    raw.reverse()
    events = []
    for when, message in raw:
        events.extend(_events(when, message))
    return events, reached, truncated


def _parse_commit(data: bytes):
    """(first parent or None, committer time, message) of a raw commit object."""
    head, _, message = data.partition(b"\n\n")
    parent = None
    when = 0
    for line in head.split(b"\n"):
        if line.startswith(b"parent ") and parent is None:
            parent = line[7:47]
        elif line.startswith(b"committer "):
            parts = line.rsplit(b" ", 2)
            try:
                when = int(parts[-2])
            except (ValueError, IndexError):
                when = 0
    return parent, when, message


def _events(when: int, message: bytes) -> list:
    """The events of one commit: its trailer block, one group per `Gitqueue-Action` line.

    A commit may carry several actions (a report and the next claim; the waiting workers of a
    host settled together); each action's keys follow its own Action line.
    """
    groups: list[dict[bytes, str]] = []
    for line in message.split(b"\n"):
        if line.startswith(b"Gitqueue-"):
            key, _, value = line[9:].partition(b": ")
            if key == b"Action" or not groups:
                groups.append({})
            groups[-1][key] = value.decode("utf-8", "replace").strip()
    return [e for e in (_event(when, facts) for facts in groups) if e is not None]


def _event(when: int, facts: dict) -> Event | None:
    """The event that one group of trailers describes, or None.

    Anyone can write a commit message, and the hook checks only the tree: an action without the
    worker (and job) it is about, or a report whose status is neither success nor failure, is
    not one gitqueue wrote, and is left out rather than half understood.
    """
    action = facts.get(b"Action")
    if action not in ACTIONS:
        return None
    job, worker, status = facts.get(b"Job"), facts.get(b"Worker"), facts.get(b"Status")
    if action in JOB_ACTIONS and not (job and worker) or action == "heartbeat" and not worker:
        return None
    if action == "report" and status not in (None, "success", "failure"):
        return None
    duration = facts.get(b"Duration")
    try:
        duration = float(duration) if duration else None
    except ValueError:
        duration = None
    if duration is not None and not (math.isfinite(duration) and duration >= 0):
        duration = None  # "inf", "nan" or negative: no build took that
    return Event((when, action, job, worker, facts.get(b"Lease"), status, duration, facts.get(b"Reason"),
                  facts.get(b"Late") == "true"))


def _read_cache(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return None
    return data
