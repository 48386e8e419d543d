"""The bulk build report as plain data, and as the plain text mailed to a list (pbulk's report)."""

from . import records, timeline
from .outcome import UNSUCCESSFUL, details, from_index, reason, results
from .text import printable_lines

BREAKAGE_ROWS = 100  # the HTML table; the text report shows fewer


def build(queue) -> dict:
    """The report of `queue` at its tip.

    Returns {"queue", "commit", "settings", "started", "ended", "duration", "finished", "counts",
    "total", "breakage": [{"job", "pkgpath", "state", "breaks", "maintainer"}], "unsuccessful":
    [{"job", "pkgpath", "state", "reason", "maintainer", "breaks", "worker", "log"}], "workers":
    [...], "attempts": [...] (timeline.Timeline.attempts()), "progress": [[t, success, failed]],
    "retried": [...] (see `retried`)}.
    Times are epoch seconds from commit times (the workers' clocks); ended is None while the
    build runs.
    """
    with queue.lock():
        tip, reader = queue.sync()
        outcome = from_index(queue.index)
        speeds = queue.index.speeds()
    settings = queue.settings(reader)
    history = timeline.load(queue, tip)
    attempts = history.attempts()
    counts = outcome.counts()
    total = sum(counts.values())
    finished = total > 0 and all(counts[s] == 0 for s in ("ready", "waiting", "leased"))
    claims = [e.t for e in history.events if e.action == "claim"]
    reports = [e for e in history.events if e.action == "report"]
    started = claims[0] if claims else None
    ended = reports[-1].t if finished and reports else None

    roots = [j for j in outcome.jobs.values() if j["state"] in ("failed", "prefailed", "skipped")]
    job_records = details(reader, [j["name"] for j in roots])
    failed = [j["name"] for j in roots if j["state"] == "failed"]
    result_records = results(reader, failed)

    def maintainer(name):
        return job_records.get(name, {}).get("maintainer")

    breakage = [{**row, "maintainer": maintainer(row["job"])}
                for row in outcome.breakers(("failed", "prefailed"), limit=BREAKAGE_ROWS)]
    order = {state: i for i, state in enumerate(UNSUCCESSFUL)}
    unsuccessful = []
    for job in sorted((j for j in outcome.jobs.values() if j["state"] in order),
                      key=lambda j: (order[j["state"]], j["pkgpath"] or "", j["name"])):
        result = result_records.get(job["name"])
        log = (result or {}).get("log")
        unsuccessful.append({
            "job": job["name"], "pkgpath": job["pkgpath"], "state": job["state"],
            "reason": reason(job, result), "maintainer": maintainer(job["name"]),
            "breaks": outcome.breaks.get(job["name"], 0),
            "worker": result["worker"] if result else None,
            "log": log.get("name") if log else None,
            "log_tail": (result or {}).get("log_tail"),
            "failed_phase": (result or {}).get("failed_phase"),
            "phase_logs": [entry["name"] for entry in (result or {}).get("phase_logs") or ()],
        })

    workers: dict[str, dict] = {}
    for a in attempts:
        w = workers.setdefault(a["worker"], {"worker": a["worker"], "success": 0, "failure": 0, "released": 0,
                                             "reclaimed": 0, "building": 0, "busy": 0.0, "first": None,
                                             "last": None, "speed": None})
        w[a["result"]] += 1
        if a["result"] in ("success", "failure") and a["duration"]:
            w["busy"] += a["duration"]
        for t in (a["start"], a["end"]):
            if t is not None:
                w["first"] = t if w["first"] is None else min(w["first"], t)
                w["last"] = t if w["last"] is None else max(w["last"], t)
    for name, w in workers.items():
        w["busy"] = round(w["busy"], 1)
        if speeds.measured(name):
            w["speed"] = round(speeds.factor(name), 2)

    progress = [[started, 0, 0]] if started is not None else []
    ok = bad = 0
    for e in reports:
        if e.status == "failure":
            bad += 1
        else:
            ok += 1
        progress.append([e.t, ok, bad])
    return {
        "queue": settings["name"],
        "commit": tip.decode(),
        "settings": settings,
        "started": started,
        "ended": ended,
        "duration": None if started is None else (ended if ended is not None else queue.clock()) - started,
        "finished": finished,
        "counts": counts,
        "total": total,
        "breakage": breakage,
        "unsuccessful": unsuccessful,
        "workers": sorted(workers.values(), key=lambda w: w["worker"]),
        "attempts": [a for a in attempts if a["start"] is not None],
        "progress": progress,
        "retried": retried(reader, {name: job["state"] for name, job in outcome.jobs.items()}),
        "truncated": history.truncated,
        "generated": queue.clock(),
    }


def retried(reader, states: dict[str, str]) -> list[dict]:
    """The jobs that took more than one attempt, by name: [{"job", "state", "attempts",
    "set_aside", "transient"}]. `attempts` counts the results an administrator set aside
    (retries/), the transient failures (declines/) and the current result or lease, if any."""
    store = reader.store
    aside: dict[str, dict] = {}
    for path, sha in reader.walk_files("retries"):
        rec = records.load_at("retry", store[sha].as_raw_string(), path)
        aside[rec["job"]] = rec
    transient: dict[str, int] = {}
    for path, sha in reader.walk_files("declines"):
        rec = records.load_at("decline", store[sha].as_raw_string(), path)
        count = sum(1 for e in rec["declined"] if e.get("transient"))
        if count:
            transient[rec["job"]] = count
    out = []
    for name in sorted(set(aside) | set(transient)):
        state = states.get(name)
        if state is None:
            continue  # retired by an update
        set_aside = sum(1 for e in aside.get(name, {}).get("retried", ()) if "token" in e)
        current = 1 if state in ("success", "failed", "leased") else 0
        count = transient.get(name, 0)
        out.append({"job": name, "state": state, "attempts": set_aside + count + current,
                    "set_aside": set_aside, "transient": count})
    return out


def duration_text(seconds) -> str:
    """A duration for people: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def time_text(t) -> str:
    return records.utc(t).replace("T", " ").replace("Z", " UTC") if t is not None else "-"


def platform_text(settings: dict) -> str:
    parts = [settings.get("os_release"), settings.get("arch")]
    text = "/".join(p for p in parts if p) or "any platform"
    branch = settings.get("pkgsrc_branch")
    if branch:
        text += f", {branch}"
    if settings.get("pkgsrc_revision"):
        text += f" ({settings['pkgsrc_revision']})"
    return text


SUMMARY_ROWS = (
    ("success", "Successfully built"),
    ("up-to-date", "Up to date (an earlier build's package)"),
    ("failed", "Failed to build"),
    ("indirect-failed", "Depending on failed package"),
    ("prefailed", "Explicitly broken or masked (prefailed)"),
    ("indirect-prefailed", "Depending on masked package"),
    ("skipped", "Never built on this architecture (no way)"),
    ("indirect-skipped", "Depending on a no-way package"),
    ("leased", "Being built now"),
    ("ready", "Ready to build"),
    ("waiting", "Waiting for dependencies"),
)


def summary_rows(data: dict) -> list[tuple[str, int]]:
    """(label, count) of the summary, leaving out the not-yet-built states once finished."""
    counts = data["counts"]
    return [(label, counts[state]) for state, label in SUMMARY_ROWS
            if not (state in ("leased", "ready", "waiting", "up-to-date") and counts[state] == 0)]


def text(data: dict, breakage_rows: int = 20) -> str:
    """The report as plain text for a mailing list, every control character escaped."""
    s = data["settings"]
    state = "finished" if data["finished"] else "in progress"
    kind = "pkgsrc bulk build report" if s.get("pkgsrc_branch") else "Bulk build report"
    lines = [f"{kind}: {data['queue']} ({state})", "",
             f"Platform:   {platform_text(s)}",
             f"Started:    {time_text(data['started'])}",
             f"Ended:      {time_text(data['ended']) if data['ended'] is not None else '- (still running)'}",
             f"Duration:   {duration_text(data['duration'])}", "",
             f"Total number of packages:                      {data['total']:7}"]
    for label, n in summary_rows(data):
        lines.append(f"  {label + ':':44}{n:7}")
    if data["truncated"]:
        lines += ["", "(the history read starts after the build began: times are partial)"]
    rows = data["breakage"][:breakage_rows]
    if rows:
        lines += ["", "Packages causing the most breakage:", "",
                  f"{'Package':40} {'Breaks':>6}  {'State':9}  Maintainer",
                  "-" * 78]
        for r in rows:
            lines.append(f"{(r['pkgpath'] or r['job']):40} {r['breaks']:6}  {r['state']:9}  {r['maintainer'] or ''}")
    failed = [u for u in data["unsuccessful"] if u["state"] == "failed"]
    if failed:
        lines += ["", "Failed packages:", "", f"{'Package':40} {'Breaks':>6}  Maintainer", "-" * 78]
        for u in failed:
            lines.append(f"{(u['pkgpath'] or u['job']):40} {u['breaks']:6}  {u['maintainer'] or ''}")
            lines.append(f"    {u['job']}: {u['reason']}")
    if data.get("retried"):
        lines += ["", "Packages that took more than one attempt:", "",
                  f"{'Package':40} {'Attempts':>8} {'Retried':>8} {'Transient':>9}  State", "-" * 78]
        for r in data["retried"]:
            lines.append(f"{r['job']:40} {r['attempts']:8} {r['set_aside']:8} {r['transient']:9}  {r['state']}")
    if data["workers"]:
        lines += ["", "Workers:", "",
                  f"{'Worker':20} {'built':>6} {'failed':>6} {'released':>8} {'reclaimed':>9} {'busy':>12}"
                  f" {'speed':>6}",
                  "-" * 78]
        for w in data["workers"]:
            speed = f"{w['speed']:.2f}x" if w["speed"] else "-"
            lines.append(f"{w['worker']:20} {w['success']:6} {w['failure']:6} {w['released']:8} {w['reclaimed']:9} "
                         f"{duration_text(w['busy']):>12} {speed:>6}")
    lines += ["", f"Queue commit {data['commit']}"]
    # Reasons, worker names and maintainers were written by others: no control reaches the mail.
    return printable_lines(lines) + "\n"
