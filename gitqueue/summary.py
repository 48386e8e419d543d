"""Status summaries of a queue as plain data (counts, live leases, progress, expected end); the CLI renders them."""

from . import records

FINAL = ("success", "up-to-date", "failed", "indirect-failed", "prefailed", "indirect-prefailed", "skipped",
         "indirect-skipped")


def status(queue) -> dict:
    """Counts per state, the live leases (worker, age) and progress of a queue."""
    with queue.lock():
        tip, reader = queue.sync()
        index = queue.index
        counts = index.counts()
        eta = estimate_completion(index)
        skipped = [{"job": name, "reason": why} for name, why in index.skipped()]
        # Still under the lock: `gitqueue gc --cache` may not remove a pack while this reads.
        settings = queue.settings(reader)
        now = queue.clock()
        leases = live_leases(queue, reader, now)
    return {**progress(settings, tip, counts, eta), "leases": leases, "skipped": skipped}


def progress(settings: dict, tip: bytes, counts: dict, eta) -> dict:
    """The keys every status has: queue, commit, settings, counts, total, done, progress,
    finished and eta_seconds."""
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
        "eta_seconds": eta,
    }


def live_leases(queue, reader, now: float) -> list[dict]:
    """The leases in `reader`'s tree: job, worker, lease token, claimed_at and age, by worker."""
    leases = []
    store = queue.remote.object_store
    for path, sha in reader.walk_files("leases"):
        lease = records.load_at("lease", store[sha].as_raw_string(), path)
        claimed = records.epoch(lease.get("claimed_at"))
        # The worker's clock wrote claimed_at: an age is a hint, never used for expiry.
        leases.append({"job": lease["job"], "worker": lease["worker"], "lease": lease["token"],
                       "claimed_at": lease.get("claimed_at"),
                       "age": None if claimed is None else max(0, int(now - claimed))})
    leases.sort(key=lambda item: (item["worker"], item["job"]))
    return leases


def estimate_completion(index) -> int | None:
    """Seconds until the build should be finished, from the scheduler's estimates.

    The larger of the longest remaining chain on the fastest active worker and the remaining
    work spread over the active workers (those holding leases) at their learned speeds.
    None when no worker is active.
    """
    work, chain = index.remaining()
    if work == 0:
        return 0
    speeds = index.speeds()
    workers = index.lease_holders()
    if not workers:
        return None
    factors = [speeds.factor(w) for w in workers]
    return round(max(chain * min(factors), work / sum(1 / f for f in factors)))
