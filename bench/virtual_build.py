"""A bulk build through the real protocol in virtual time, for benchmarks and pictures.

Workers of different speeds claim and report through gitqueue.lease on one queue, with a clock
that jumps from one event to the next: a build of thousands of packages takes a minute or two
and its history looks like a real one (claims, reports with durations, failures, waits).
"""

import hashlib
import heapq

from gitqueue import lease
from gitqueue.errors import NothingReady, QueueFinished

SLOW = ("firefox", "gcc", "rust", "llvm", "clang", "qt", "webkit", "perl-", "python3", "ghc", "openjdk", "libreoffice")


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self):
        return self.t


def seconds(job: str) -> float:
    """A stand-in build time derived from the name: 20 s to 10 min, big packages 20 times more."""
    h = int(hashlib.sha256(job.encode()).hexdigest()[:8], 16)
    base = 20 + (h % 1000) / 1000 * 580
    return base * (20 if job.startswith(SLOW) else 1)


def fails(job: str) -> bool:
    """About 3% of the packages fail, and a few known ones (as in the demo)."""
    h = int(hashlib.sha256(b"fail" + job.encode()).hexdigest()[:8], 16)
    return h % 100 < 3 or job.startswith(("clisp-", "parrot-"))


def run(queue, clock: Clock, workers: dict[str, float], max_results: int | None = None,
        stop_at: float | None = None, progress=None) -> int:
    """Build with `workers` ({name: slowness factor}) until done, `max_results` results, or the
    virtual time `stop_at`; leases still held then stay held. Returns the number of results."""
    events = [(clock.t, name, None) for name in workers]
    heapq.heapify(events)
    results = 0
    while events:
        t, name, job = heapq.heappop(events)
        if stop_at is not None and t > stop_at:
            clock.t = stop_at
            break
        clock.t = max(clock.t, t)
        if job is not None:
            status = "failure" if fails(job) else "success"
            tail = "*** Error code 1\n" if status == "failure" else None
            lease.report(queue, name, job, status, duration=round(seconds(job) * workers[name], 1), log_tail=tail)
            results += 1
            if progress and results % 500 == 0:
                progress(results)
            if max_results is not None and results >= max_results:
                break
        try:
            job = lease.claim(queue, name).job
        except NothingReady:
            heapq.heappush(events, (clock.t + 120, name, None))
            continue
        except QueueFinished:
            continue
        heapq.heappush(events, (clock.t + seconds(job) * workers[name], name, job))
    return results
