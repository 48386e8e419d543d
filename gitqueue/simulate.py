"""Run scheduling policies over a dependency graph in virtual time: no git, no waiting.

Durations: JSONL `est_seconds` are the true build times (others get the scheduler's estimate).
Each worker has a time multiplier (`slowness`, cycled over the workers). With `estimate_error`
e, the scheduler sees each duration off by a random factor in [1-e, 1+e] while the simulation
uses the true one. The `gitqueue` policy runs the same functions as `gitqueue claim`.
"""

import heapq
import random
from collections.abc import Mapping

from . import scheduler

POLICIES = ("fifo", "pbulk", "critical-path", "gitqueue")


def _buildable(jobs):
    """Jobs that would be built: not prefailed, nor depending on a prefailed job."""
    blocked = set()
    by_name = {j["name"]: j for j in jobs}
    for name in scheduler.topological(jobs):
        job = by_name[name]
        if job.get("prefailed") or any(d in blocked for d in job["deps"]):
            blocked.add(name)
    return [j for j in jobs if j["name"] not in blocked]


def lower_bound(jobs, true, multipliers):
    """max(critical path x fastest multiplier, total work / sum of 1/multiplier)."""
    chain = max(scheduler.critical_paths(jobs, true).values(), default=0.0)
    total = sum(true.values())
    return max(chain * min(multipliers), total / sum(1.0 / m for m in multipliers))


def simulate(jobs: list[dict], workers: int, policy: str, slowness=(1.0,), estimate_error: float = 0.0,
             seed: int = 0, history: dict | None = None) -> dict:
    """Simulate one policy; return {"policy", "workers", "makespan", "lower_bound", "ratio"}."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    jobs = _buildable(jobs)
    rng = random.Random(seed)
    true = {j["name"]: scheduler.estimate(j, history)[0] for j in jobs}
    seen = {n: t * rng.uniform(1 - estimate_error, 1 + estimate_error) if estimate_error else t
            for n, t in true.items()}
    multipliers = [float(slowness[i % len(slowness)]) for i in range(workers)]
    names = [f"w{i}" for i in range(workers)]

    rank: Mapping[str, float]
    if policy == "fifo":
        rank = {j["name"]: -i for i, j in enumerate(jobs)}
    elif policy == "pbulk":
        rank = scheduler.dependents_counts(jobs)
    else:
        rank = scheduler.priorities(jobs, seen)

    dependents = scheduler.dependents_of(jobs)
    pending = {j["name"]: len(j["deps"]) for j in jobs}
    ready: list[tuple[float, int, str]] = []  # heap of (-rank, seq, name); fifo ranks by the moment a job became ready
    seq = 0

    def make_ready(name, now):
        nonlocal seq
        seq += 1
        key = -now if policy == "fifo" else rank[name]
        heapq.heappush(ready, (-key, seq, name))

    for j in jobs:
        if pending[j["name"]] == 0:
            make_ready(j["name"], 0.0)

    speeds = scheduler.Speeds()
    idle = list(range(workers))
    running: dict[int, tuple[str, float]] = {}  # worker index -> (name, start)
    events: list[tuple[float, int, str]] = []  # (finish time, worker index, name)
    now = 0.0
    done = 0

    def assign(w, name):
        running[w] = (name, now)
        heapq.heappush(events, (now + true[name] * multipliers[w], w, name))

    while done < len(jobs):
        for w in sorted(idle):
            if not ready:
                break
            if policy != "gitqueue":
                _, _, name = heapq.heappop(ready)
                idle.remove(w)
                assign(w, name)
                continue
            factor = speeds.factor(names[w])
            busy = [scheduler.Busy(names[o], speeds.factor(names[o]),
                                   start + seen[n] * speeds.factor(names[o]))
                    for o, (n, start) in running.items()]
            k = scheduler.candidates_needed(factor, busy)
            top = heapq.nsmallest(k, ready)
            cands = [scheduler.Candidate(n, seen[n], -negr) for negr, _, n in top]
            chosen = scheduler.choose(cands, factor, busy, now, speeds.measured(names[w]))
            if not chosen:
                continue
            name = chosen[0].name
            ready.remove(next(e for e in top if e[2] == name))
            heapq.heapify(ready)
            idle.remove(w)
            assign(w, name)
        if not events:
            raise RuntimeError("simulation stalled with jobs left")  # a policy bug, not user error
        now = events[0][0]
        # Finish everything that ends at this instant before anyone chooses again.
        while events and events[0][0] == now:
            _, w, name = heapq.heappop(events)
            _, start = running.pop(w)
            speeds.observe(names[w], now - start, seen[name])
            idle.append(w)
            done += 1
            for d in dependents[name]:
                pending[d] -= 1
                if pending[d] == 0:
                    make_ready(d, now)

    bound = lower_bound(jobs, true, multipliers)
    return {"policy": policy, "workers": workers, "makespan": round(now, 1), "lower_bound": round(bound, 1),
            "ratio": round(now / bound, 4) if bound else 1.0}
