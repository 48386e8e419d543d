"""Summaries of a queue as plain data; the CLI renders them."""

from datetime import datetime, timezone

from . import records

FINAL = ("success", "failed", "indirect-failed", "prefailed", "indirect-prefailed")


def _age(stamp: str | None, now: float) -> int | None:
    if not stamp:
        return None
    try:
        t = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    return int(now - t)


def status(queue) -> dict:
    """Counts per state, the live leases (worker, age) and progress of a queue."""
    with queue.lock():
        tip, reader = queue.sync()
        counts = queue.index.counts()
    settings = queue.settings(reader)
    now = queue.clock()
    leases = []
    store = queue.remote.object_store
    for path, sha in reader.walk_files("leases"):
        lease = records.loads("lease", store[sha].as_raw_string(), path)
        leases.append(
            {
                "job": lease["job"],
                "worker": lease["worker"],
                "lease": lease["token"],
                "claimed_at": lease.get("claimed_at"),
                # The worker's clock wrote claimed_at: an age is a hint, never used for expiry.
                "age": _age(lease.get("claimed_at"), now),
            }
        )
    leases.sort(key=lambda item: (item["worker"], item["job"]))
    total = sum(counts.values())
    done = sum(counts[s] for s in FINAL)
    return {
        "queue": settings["name"],
        "commit": tip.decode(),
        "settings": settings,
        "counts": counts,
        "total": total,
        "done": done,
        "progress": round(done / total, 4) if total else 1.0,
        "finished": total > 0 and done == total,
        "leases": leases,
    }
