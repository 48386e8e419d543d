"""Looking across builds: every attempt at one package, and what changed between two builds."""

import collections

from . import records, timeline
from .errors import UnknownJob
from .layout import base_name, record_path
from .outcome import from_index


def _snapshot(queue):
    """(settings, reader, Outcome, Timeline) of a queue at its tip."""
    with queue.lock():
        tip, reader = queue.sync()
        outcome = from_index(queue.index)
    return queue.settings(reader), reader, outcome, timeline.load(queue, tip)


def matching(outcome, package: str) -> list[str]:
    """Names of the jobs that `package` names: a PKGNAME, its base name or a package path.

    The base name is the job's name without its record's version (libbsd for libbsd-0.11.7-2 of
    version 0.11.7-2), not what precedes the last '-'.
    """
    return sorted(name for name, job in outcome.jobs.items() if package in (name, job["pkgpath"], base_name(job)))


def package_history(queues: list, package: str) -> list[dict]:
    """Every attempt at `package` in each of `queues` (oldest build first, as given).

    Rows are {"queue", "job", "attempt", "worker", "start", "end", "duration", "result", "late",
    "reason", "log"}, in the order claimed; "attempt" numbers a job's attempts in its queue from 1
    (what `gitqueue log --attempt` takes). A job never attempted gives one row with its state as
    result (prefailed, indirect-failed, waiting, ...) and attempt None. Raises UnknownJob when no
    queue has the package.
    """
    rows = []
    names_seen = False
    for queue in queues:
        settings, reader, outcome, history = _snapshot(queue)
        names = set(matching(outcome, package))
        if not names:
            continue
        names_seen = True
        attempted: collections.Counter[str] = collections.Counter()
        for a in history.attempts():
            if a["job"] not in names:
                continue
            attempted[a["job"]] += 1
            log = None
            if a["result"] in ("success", "failure"):
                data = reader.read(record_path("results", a["job"]))
                if data is not None:
                    result = records.load_at("result", data, record_path("results", a["job"]))
                    if result["token"] == a["lease"] and result.get("log"):
                        log = result["log"].get("name")
            rows.append({"queue": settings["name"], "job": a["job"], "attempt": attempted[a["job"]],
                         **{k: a[k] for k in ("worker", "start", "end", "duration", "result", "late", "reason")},
                         "log": log})
        for name in sorted(names - set(attempted)):
            job = outcome.jobs[name]
            why = job["skip"] or (f"depends on {job['cause']}" if job["cause"] else None)
            rows.append({"queue": settings["name"], "job": name, "attempt": None, "worker": None, "start": None,
                         "end": None,
                         "duration": None, "result": job["state"], "late": False, "reason": why, "log": None})
    if not names_seen:
        raise UnknownJob(f"unknown package {package}: no job has this PKGNAME, base name or package path")
    return rows


def _key(job):
    return f"{job['pkgpath'] or '-'} {base_name(job)}"


def compare(old_queue, new_queue, limit: int = 20) -> dict:
    """What changed from the build in `old_queue` to the one in `new_queue`.

    Packages are matched by package path and base name (versions may differ). Returns
    {"old", "new", "newly_failing", "newly_fixed", "still_failing": [{"pkgpath", "old", "new",
    "old_state", "new_state", "breaks"}], "time_changes": [{"pkgpath", "old", "new",
    "old_seconds", "new_seconds", "change"}] (the `limit` largest), "added", "removed"}.
    """
    old_settings, _, old, old_history = _snapshot(old_queue)
    new_settings, _, new, new_history = _snapshot(new_queue)
    before = {_key(j): j for j in old.jobs.values()}
    after = {_key(j): j for j in new.jobs.values()}
    old_times = _build_times(old_history)
    new_times = _build_times(new_history)
    newly_failing: list[dict] = []
    newly_fixed: list[dict] = []
    still_failing: list[dict] = []
    changes: list[dict] = []
    for key in sorted(after):
        n = after[key]
        o = before.get(key)
        row = {"pkgpath": n["pkgpath"], "old": o["name"] if o else None, "new": n["name"],
               "old_state": o["state"] if o else None, "new_state": n["state"], "breaks": new.breaks.get(n["name"], 0)}
        if n["state"] == "failed":
            (still_failing if o and o["state"] == "failed" else newly_failing).append(row)
        elif o and o["state"] == "failed" and n["state"] == "success":
            newly_fixed.append(row)
        if o and o["state"] == "success" and n["state"] == "success":
            t_old, t_new = old_times.get(o["name"]), new_times.get(n["name"])
            if t_old is not None and t_new is not None:
                changes.append({"pkgpath": n["pkgpath"], "old": o["name"], "new": n["name"], "old_seconds": t_old,
                                "new_seconds": t_new, "change": round(t_new - t_old, 3)})
    changes.sort(key=lambda c: (-abs(c["change"]), c["new"]))
    by_breaks = lambda r: (-r["breaks"], r["pkgpath"] or "", r["new"])  # noqa: E731
    return {
        "old": old_settings["name"],
        "new": new_settings["name"],
        "newly_failing": sorted(newly_failing, key=by_breaks),
        "newly_fixed": newly_fixed,
        "still_failing": sorted(still_failing, key=by_breaks),
        "time_changes": changes[:limit],
        "added": sorted(after[k]["name"] for k in after.keys() - before.keys()),
        "removed": sorted(before[k]["name"] for k in before.keys() - after.keys()),
    }


def _build_times(history) -> dict[str, float]:
    """{job: measured seconds} of the successful builds of a timeline."""
    return {a["job"]: a["duration"] for a in history.attempts() if a["result"] == "success" and a["duration"]}
