"""What became of each package: its state, what blocked it, and who breaks the most others."""

from . import records
from .index import STATES
from .layout import record_path

# The order in which blocking kinds win (Index.states()): a failure over a prefailed package over
# a no-way one.
_KINDS = (("failed", "indirect-failed"), ("prefailed", "indirect-prefailed"), ("skipped", "indirect-skipped"))
NOT_BUILT = {"prefailed", "indirect-prefailed", "skipped", "indirect-skipped"}
UNSUCCESSFUL = ("failed", "indirect-failed", "prefailed", "indirect-prefailed", "skipped", "indirect-skipped")


class Outcome:
    """The state of every job of a queue at one commit.

    `jobs` maps a name to {"name", "version", "pkgpath", "state", "cause", "skip", "worker"}:
    `cause` is, for an indirect state, the failed (prefailed, skipped) package that keeps it from
    building; `skip` the prefailed or no-way reason; `worker` who holds a leased job. `breaks`
    maps each failed, prefailed or skipped job to how many jobs depend on it, directly or not.
    """

    def __init__(self, jobs: dict, breaks: dict):
        self.jobs = jobs
        self.breaks = breaks

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (Index.counts() without reading the index again)."""
        counts = dict.fromkeys(STATES, 0)
        for job in self.jobs.values():
            counts[job["state"]] += 1
        return counts

    def breakers(self, states=("failed", "prefailed"), limit: int | None = None) -> list[dict]:
        """Jobs in `states` ranked by how many jobs they keep from building (most first).

        Each is {"job", "pkgpath", "state", "breaks"}; only jobs that break at least one other.
        """
        rows = [{"job": name, "pkgpath": self.jobs[name]["pkgpath"], "state": self.jobs[name]["state"],
                 "breaks": n} for name, n in self.breaks.items() if n and self.jobs[name]["state"] in states]
        rows.sort(key=lambda r: (-r["breaks"], r["job"]))
        return rows if limit is None else rows[:limit]


def from_index(index) -> Outcome:
    """The Outcome described by a queue's index (brought up to date by the caller).

    The states are the index's (Index.states()); this adds what blocks each indirect one and
    how many jobs each failed, prefailed or skipped one keeps from building.
    """
    jobs = {}
    by_id = {}
    roots: dict[str, list[int]] = {kind: [] for kind, _ in _KINDS}
    for jid, name, version, pkgpath, skip, state, leased_by in index.states():
        job = {"name": name, "version": version, "pkgpath": pkgpath, "state": state, "cause": None,
               "skip": skip, "worker": leased_by}
        jobs[name] = job
        by_id[jid] = job
        if state in roots:
            roots[state].append(jid)
    dependents: dict[int, list[int]] = {}
    # Only the edges out of unsuccessful jobs: a closure below walks nothing else (29k jobs have
    # 209k edges; a status reads a few thousand).
    blocked = [jid for jid, job in by_id.items() if job["state"] in UNSUCCESSFUL]
    for job_id, dep in index.dependencies(of=blocked):
        dependents.setdefault(dep, []).append(job_id)
    breaks = {}
    closures = {}
    for kind, _ in _KINDS:
        for root in roots[kind]:
            seen = set()
            stack = list(dependents.get(root, ()))
            while stack:
                j = stack.pop()
                if j not in seen:
                    seen.add(j)
                    stack.extend(dependents.get(j, ()))
            closures[root] = seen
            breaks[by_id[root]["name"]] = len(seen)
    # The biggest blocker of the strongest kind is named as the cause of each indirect state.
    for kind, indirect in _KINDS:
        for root in sorted(roots[kind], key=lambda r: (-len(closures[r]), by_id[r]["name"])):
            name = by_id[root]["name"]
            for j in closures[root]:
                job = by_id[j]
                if job["cause"] is None and job["state"] == indirect:
                    job["cause"] = name
    return Outcome(jobs, breaks)


def details(reader, names) -> dict[str, dict]:
    """{name: job record} of `names` read from the tree (for maintainers and categories)."""
    files = reader.read_many([record_path("jobs", name) for name in names])
    return {name: records.load_at("job", files[path], path)
            for name in names if (path := record_path("jobs", name)) in files}


def results(reader, names) -> dict[str, dict]:
    """{name: result record} of those of `names` that have a result."""
    files = reader.read_many([record_path("results", name) for name in names])
    return {name: records.load_at("result", files[path], path)
            for name in names if (path := record_path("results", name)) in files}


def reason(job: dict, result: dict | None) -> str:
    """One line saying why a job was not built."""
    state = job["state"]
    if state == "failed":
        tail = (result or {}).get("log_tail") or ""
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        phase = (result or {}).get("failed_phase")
        if phase:  # as pbulk's report says it
            return f"failed in {phase}" + (f": {lines[-1][:300]}" if lines else "")
        return lines[-1][:300] if lines else "build failed"
    if state in ("prefailed", "skipped"):
        return job["skip"] or state
    if job["cause"]:
        return f"depends on {job['cause']} ({state.removeprefix('indirect-')})"
    return state
