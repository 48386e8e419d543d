"""The live state of a build for people: progress, rates, workers, expiring leases, blockers."""

from . import records, summary, timeline
from .outcome import NOT_BUILT, from_index, results

HOUR = 3600


def status(queue, top: int = 5) -> dict:
    """Everything `gitqueue status` shows, as plain data.

    Keys of summary.progress() (queue, commit, settings, counts, total, done, progress, finished,
    eta_seconds), leases and skipped, plus: buildable and built (success, failed or
    indirect-failed among the jobs not prefailed or skipped), started, rate {overall,
    last_hour} in packages per hour, workers (current job and for how long, last heard, done,
    failed, speed factor), expiring (the leases whose workers were heard from longest ago),
    blockers (failed packages keeping the most others from building, with the phase each failed
    in) and failures (the newest failed packages: job, pkgpath, phase, breaks). Times written by
    workers' clocks are hints only.
    """
    # The tree is read under the host's lock: `gitqueue gc --cache` may not remove a pack
    # meanwhile. The history is not in the cache (timeline.py), so it is read after.
    with queue.lock():
        tip, reader = queue.sync()
        index = queue.index
        outcome = from_index(index)
        eta = summary.estimate_completion(index)
        speeds = index.speeds()
        settings = queue.settings(reader)
        now = queue.clock()
        store = queue.remote.object_store
        leases = summary.live_leases(queue, reader, now)
        heard: dict[str, float | None] = {}
        for path, sha in reader.walk_files("heartbeats"):
            rec = records.load_at("heartbeat", store[sha].as_raw_string(), path)
            at = records.epoch(rec.get("at"))
            if at is not None:
                heard[rec["worker"]] = at
    history = timeline.load(queue, tip)
    counts = outcome.counts()
    base = summary.progress(settings, tip, counts, eta)
    total, finished = base["total"], base["finished"]
    buildable = total - sum(counts[s] for s in NOT_BUILT)
    built = counts["success"] + counts["up-to-date"] + counts["failed"] + counts["indirect-failed"]

    reports = [e for e in history.events if e.action == "report"]
    claims = [e for e in history.events if e.action == "claim"]
    started = claims[0].t if claims else None
    end = reports[-1].t if finished and reports else now
    hours = (end - started) / HOUR if started is not None and end > started else 0
    rate = {"overall": round(len(reports) / hours, 1) if hours else None,
            "last_hour": sum(1 for e in reports if e.t > now - HOUR)}

    workers: dict[str, dict] = {}

    def worker(name):
        return workers.setdefault(name, {"worker": name, "job": None, "for": None, "last_heard": None,
                                         "done": 0, "failed": 0, "speed": None})

    for e in reports:
        w = worker(e.worker)
        w["done"] += 1
        w["failed"] += e.status == "failure"
    for e in history.events:
        if e.worker and e.action in ("claim", "heartbeat", "report", "release"):
            last = heard.setdefault(e.worker, None)
            if last is None or e.t > last:
                heard[e.worker] = e.t
    for name, at in heard.items():
        worker(name)["last_heard"] = None if at is None else max(0, int(now - at))
    for lease in leases:
        w = worker(lease["worker"])
        w["job"] = lease["job"] if w["job"] is None else f"{w['job']} +1"
        w["for"] = lease["age"]
    for name, w in workers.items():
        if speeds.measured(name):
            w["speed"] = round(speeds.factor(name), 2)
    ttl = settings["lease_ttl"]
    expiring = []
    for lease in leases:
        silent = workers[lease["worker"]]["last_heard"]
        expiring.append({"job": lease["job"], "worker": lease["worker"], "silent": silent,
                         "expires_in": None if silent is None else ttl - silent})
    expiring.sort(key=lambda x: (x["expires_in"] is None, x["expires_in"] or 0, x["job"]))

    churn = _churn(history.events, now, top)
    rows = outcome.breakers(("failed",), limit=top)
    # The newest failures first, and the phase each failed in (the result's failed_phase).
    newest = list(dict.fromkeys(e.job for e in reversed(reports) if e.status == "failure"
                                and e.job in outcome.jobs and outcome.jobs[e.job]["state"] == "failed"))[:top]
    with queue.lock():
        phases = {name: rec.get("failed_phase")
                  for name, rec in results(queue.remote.reader(tip), [r["job"] for r in rows] + newest).items()}
    blockers = []
    for row in rows:
        job = outcome.jobs[row["job"]]
        blockers.append({**row, "version": job["version"], "phase": phases.get(row["job"])})
    failures = [{"job": name, "pkgpath": outcome.jobs[name]["pkgpath"], "phase": phases.get(name),
                 "breaks": outcome.breaks.get(name, 0)} for name in newest]
    return {
        **base,
        "buildable": buildable,
        "built": built,
        "build_progress": round(built / buildable, 4) if buildable else 1.0,
        "started": records.utc(started) if started is not None else None,
        "elapsed": int(end - started) if started is not None else None,
        "rate": rate,
        "workers": sorted(workers.values(), key=lambda w: w["worker"]),
        "leases": leases,
        "expiring": expiring[:top],
        "blockers": blockers,
        "failures": failures,
        "churn": churn,
        "skipped": [{"job": j["name"], "reason": j["skip"]} for j in
                    sorted(outcome.jobs.values(), key=lambda j: j["name"]) if j["state"] == "skipped"],
    }


TROUBLE = 3  # give-backs since a worker's last report that mark it as in trouble


def _churn(events, now: float, top: int) -> dict:
    """Jobs going round in circles instead of getting built.

    {"released_last_hour": give-backs (releases and reclaims) in the last hour, "built_last_hour":
    reports in the last hour, "jobs": [{"job", "given_back"}] given back more than once (most
    first), "workers": [{"worker", "given_back"}] that gave back TROUBLE or more jobs since they
    last reported one}.
    """
    per_job: dict[str, int] = {}
    since_report: dict[str, int] = {}
    released = built = 0
    for e in events:
        if e.action in ("release", "reclaim"):
            per_job[e.job] = per_job.get(e.job, 0) + 1
            released += e.t > now - HOUR
            if e.action == "release":
                since_report[e.worker] = since_report.get(e.worker, 0) + 1
        elif e.action == "report":
            since_report[e.worker] = 0
            built += e.t > now - HOUR
    jobs = sorted(((n, j) for j, n in per_job.items() if n > 1), key=lambda x: (-x[0], x[1]))[:top]
    return {"released_last_hour": released, "built_last_hour": built,
            "jobs": [{"job": j, "given_back": n} for n, j in jobs],
            "workers": [{"worker": w, "given_back": n} for w, n in sorted(since_report.items()) if n >= TROUBLE]}
