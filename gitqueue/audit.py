"""Replay a queue's history and check the protocol's invariants commit by commit."""

from dataclasses import dataclass, field

from . import records
from .names import name_from_path


@dataclass
class Audit:
    """What a replay of the history found."""

    commits: int = 0
    claims: int = 0
    results: int = 0
    reclaims: int = 0
    late: int = 0
    violations: list = field(default_factory=list)


def replay(remote, tip: bytes) -> Audit:
    """Walk the branch from its first commit to `tip` and check every state change.

    Checked: history is one chain (no merges), a job never has two live leases, a result is
    never written twice nor rewritten, and every commit changes something.
    """
    from .gitstore import diff_trees

    store = remote.object_store
    chain = []
    sha = tip
    while sha is not None:
        commit = store[sha]
        chain.append(commit)
        if len(commit.parents) > 1:
            return Audit(violations=[f"{sha.decode()[:12]}: merge commit"])
        sha = commit.parents[0] if commit.parents else None
    chain.reverse()
    audit = Audit(commits=len(chain))
    leases: dict[str, str] = {}
    results: set[str] = set()
    previous_tree = None
    for commit in chain:
        short = commit.id.decode()[:12]
        changed = False
        for path, old, new in diff_trees(store, previous_tree, commit.tree):
            changed = True
            kind = path.split("/", 1)[0]
            if kind not in ("leases", "results"):
                continue
            _, job = name_from_path(path)
            if kind == "leases":
                if new is not None:
                    rec = records.load_at("lease", store[new].as_raw_string(), path)
                    if old is not None and leases.get(job) != rec["token"]:
                        audit.violations.append(f"{short}: lease on {job} replaced while live")
                    if old is None:
                        if job in leases:
                            audit.violations.append(f"{short}: second live lease on {job}")
                        if job in results:
                            audit.violations.append(f"{short}: lease on {job}, which has a result")
                        audit.claims += 1
                    leases[job] = rec["token"]
                else:
                    leases.pop(job, None)
                    if b"Gitqueue-Action: reclaim" in commit.message:
                        audit.reclaims += 1
            else:
                if old is not None:
                    audit.violations.append(f"{short}: result of {job} rewritten or removed")
                    continue
                rec = records.load_at("result", store[new].as_raw_string(), path)
                if job in results:
                    audit.violations.append(f"{short}: second result for {job}")
                if job in leases and leases[job] != rec["token"]:
                    audit.violations.append(f"{short}: result for {job} while another worker holds it")
                results.add(job)
                audit.results += 1
                audit.late += bool(rec.get("late"))
        if not changed:
            audit.violations.append(f"{short}: commit changes nothing")
        previous_tree = commit.tree
    return audit
