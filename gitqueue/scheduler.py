"""Scheduling, pure: estimates, critical-path priorities, worker speeds and the choice of job.

No I/O here. `claim` (through the index) and `simulate` call the same functions, so what the
simulator measures is what workers do.

The rule a worker follows when it asks for work (`choose`):

1. Ready jobs are ranked by their critical path: the longest chain of estimated build time from
   the job to the end of the build (the job's own time included). Jobs on the priority list
   and everything they need come first.
2. Each worker has a speed factor learned from its results: the geometric mean of measured
   duration / estimate, shrunk a little towards 1.0 (2.0 means it takes twice as long). A worker
   that has not reported yet counts as 3.0: unknown machines do not get the critical jobs while
   measured ones could finish them sooner.
3. Walking the ranked jobs (the best 8, plus 2 for each faster worker), a worker passes over a
   job when a worker at least 10% faster, busy now, would finish it earlier - its expected free
   time plus the job's estimate times its factor - than this worker would if it started now.
   The passed-over job is queued behind that faster worker's current one, so a fast worker can
   stand for several passed jobs. The first job not passed over is taken. If every candidate is
   passed over, the worker waits (`claim` exits 3) and asks again when the first faster worker
   should be free - unless it has never been measured: then it takes the least critical of the
   candidates, so that it gets measured at little risk instead of waiting for ever.

So a slow machine takes work that the fast ones could not finish sooner, and the longest chain
is not given to a 68030 while a RISC-V board is about to free up.
"""

import math
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

DEFAULT_SECONDS = 60.0  # a build we know nothing about (real pkgsrc median: 34 s; mean higher)
PRIORITY_BOOST = 1e12  # above any critical path: priority-list jobs come first
SPEED_MARGIN = 0.10  # "faster" means at least 10% faster
MIN_MEASURED = 1.0  # seconds
FASTER_LOOKAHEAD = 2
SPEED_PRIOR = 0.5  # pseudo-observations of factor 1.0 mixed into a worker's own results
# Until its first result, a worker is assumed this much slower than the estimates: a machine of
# unknown speed should not take a critical job that a measured one would finish sooner.
UNKNOWN_FACTOR = 3.0


def estimate(job: dict, history: dict | None = None) -> tuple[float, str]:
    """(seconds, source) for a job: history by name, then by package path, est_seconds,
    PBULK_WEIGHT (100 = the default), then the default."""
    if job.get("est_source") == "history":
        return float(job["est_seconds"]), "history"
    if history:
        for key in (job["name"], job.get("pkgpath")):
            if key and key in history:
                return float(history[key]), "history"
    if "est_seconds" in job:
        return float(job["est_seconds"]), "est_seconds"
    if "weight" in job:
        return DEFAULT_SECONDS * job["weight"] / 100.0, "weight"
    return DEFAULT_SECONDS, "default"


def dependents_of(jobs: list[dict]) -> dict[str, list[str]]:
    """For each job, the jobs that depend on it directly (unknown names are ignored)."""
    dependents: dict[str, list[str]] = {job["name"]: [] for job in jobs}
    for job in jobs:
        for dep in job["deps"]:
            if dep in dependents:
                dependents[dep].append(job["name"])
    return dependents


def topological(jobs: list[dict], dependents: dict[str, list[str]] | None = None) -> list[str]:
    """Names in an order where every job comes after its dependencies."""
    dependents = dependents if dependents is not None else dependents_of(jobs)
    indegree = dict.fromkeys(dependents, 0)
    for children in dependents.values():
        for child in children:
            indegree[child] += 1
    stack = [name for name, d in indegree.items() if d == 0]
    out = []
    while stack:
        name = stack.pop()
        out.append(name)
        for child in dependents[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                stack.append(child)
    return out


def critical_paths(jobs: list[dict], est: dict[str, float]) -> dict[str, float]:
    """For each job, the longest chain of estimated time from it to the end of the build."""
    dependents = dependents_of(jobs)
    level: dict[str, float] = {}
    for name in reversed(topological(jobs, dependents)):
        level[name] = est[name] + max((level[d] for d in dependents[name]), default=0.0)
    return level


def dependents_counts(jobs: list[dict]) -> dict[str, int]:
    """Number of jobs that depend on each job, directly or not (pbulk's ordering)."""
    order = {job["name"]: i for i, job in enumerate(jobs)}
    dependents = dependents_of(jobs)
    closure: dict[str, int] = {}
    # Bit sets as Python ints: one OR per edge, in reverse topological order.
    for name in reversed(topological(jobs, dependents)):
        bits = 0
        for d in dependents[name]:
            bits |= closure[d] | (1 << order[d])
        closure[name] = bits
    return {name: bits.bit_count() for name, bits in closure.items()}


def with_dependencies(jobs: list[dict], roots: Iterable[str]) -> set[str]:
    """`roots` and everything they need, directly or not."""
    deps = {job["name"]: job["deps"] for job in jobs}
    seen = set()
    stack = [r for r in roots if r in deps]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(deps[name])
    return seen


def priorities(jobs: list[dict], est: dict[str, float], boosted: AbstractSet[str] = frozenset()) -> dict[str, float]:
    """Critical path of each job, plus PRIORITY_BOOST for the priority list and its needs."""
    level = critical_paths(jobs, est)
    if boosted:
        for name in with_dependencies(jobs, boosted):
            level[name] += PRIORITY_BOOST
    return level


class Speeds:
    """Worker speed factors learned from (measured duration, estimate) pairs."""

    def __init__(self, sums: dict | None = None):
        self.sums = dict(sums or {})  # worker -> (n, sum of log ratios)

    def observe(self, worker: str, duration: float, estimate: float) -> None:
        # Builds shorter than a second say more about start-up noise than about the machine.
        if duration < MIN_MEASURED or estimate <= 0:
            return
        n, total = self.sums.get(worker, (0, 0.0))
        self.sums[worker] = (n + 1, total + math.log(duration / estimate))

    def measured(self, worker: str) -> bool:
        """Whether `worker` has reported a measured result yet."""
        return self.sums.get(worker, (0, 0.0))[0] > 0

    def factor(self, worker: str) -> float:
        """Measured duration / estimate for `worker` (UNKNOWN_FACTOR before its first result)."""
        n, total = self.sums.get(worker, (0, 0.0))
        if n == 0:
            return UNKNOWN_FACTOR
        return math.exp(total / (n + SPEED_PRIOR))


class Candidate:
    """A ready job as the scheduler sees it."""

    __slots__ = ("name", "est", "priority")

    def __init__(self, name: str, est: float, priority: float):
        self.name, self.est, self.priority = name, est, priority


class Busy:
    """Another worker that holds a job: its speed factor and when it should be free."""

    __slots__ = ("worker", "factor", "free_at")

    def __init__(self, worker: str, factor: float, free_at: float):
        self.worker, self.factor, self.free_at = worker, factor, free_at


def candidates_needed(factor: float, busy: list[Busy], base: int = 8) -> int:
    """How many ranked jobs to look at: enough to pass a few over for each faster worker."""
    return base + FASTER_LOOKAHEAD * sum(1 for b in busy if b.factor < factor * (1 - SPEED_MARGIN))


def choose(candidates: list[Candidate], factor: float, busy: list[Busy], now: float,
           measured: bool = True) -> list[Candidate]:
    """Jobs this worker should try, best first (see the module docstring for the rule).

    `candidates` are ranked by priority, best first; `factor` is this worker's speed factor;
    `measured` says whether it comes from the worker's own results. An empty list means: wait,
    faster workers will do these sooner.
    """
    faster = [[max(b.free_at, now), b.factor] for b in busy if b.factor < factor * (1 - SPEED_MARGIN)]
    accepted = []
    for c in candidates:
        mine = now + c.est * factor
        best, best_t = None, mine
        for slot in faster:
            t = slot[0] + c.est * slot[1]
            if t < best_t:
                best, best_t = slot, t
        if best is not None:
            best[0] = best_t  # that worker would do this one next; later ones queue behind it
            continue
        accepted.append(c)
    if not accepted and not measured and candidates:
        # A worker never measured would wait for ever behind measured ones: let it take the
        # least critical candidate, so it gets measured at little risk.
        return [candidates[-1]]
    return accepted


def next_chance(factor: float, busy: list[Busy], now: float) -> float:
    """Seconds until the first faster busy worker should be free: when a worker that passed
    over every candidate should ask again (at least 0.1 s)."""
    times = [b.free_at - now for b in busy if b.factor < factor * (1 - SPEED_MARGIN)]
    return max(0.1, min(times, default=0.1))
