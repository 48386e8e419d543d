"""Administrative changes: create a queue, load its dependency graph, change its priority and no-way lists."""

import os
from collections.abc import Sequence

from . import layout, lists, records
from .errors import GitqueueError
from .gitstore import init_bare, is_local_path, point_head_at
from .layout import record_path
from .queue import Change, trailers
from .schema import FORMAT_VERSION

ADMIN = "gitqueue-admin <admin@gitqueue>"
# Settings that bound what one worker may do (enforced by the server's hook and gitqueue serve).
LIMITS = ("max_leases", "package_files", "upload_quota", "min_heartbeat_seconds")


def init_queue(queue, name: str, arch: str = "", os_release: str = "", pkgsrc_branch: str = "",
               lease_ttl: int = 3600, packages_url: str = "", pkgsrc_revision: str = "",
               admins: list[dict] | None = None, max_record_bytes: int | None = None,
               limits: dict | None = None) -> dict:
    """Create the queue (and, for a local path, the bare repository); return its settings.

    With `admins` ([{"name", "key"}]) the queue is signed (docs/trust.md): the queue's signer
    must be one of them. `limits` holds the settings that bound what a worker may do
    (max_leases, package_files, upload_quota, min_heartbeat_seconds; see schema/queue.json).
    """
    from .records import utc

    if lease_ttl < 1:
        raise GitqueueError(f"--lease-ttl must be at least 1 second, not {lease_ttl}")
    if is_local_path(queue.url):
        path = queue.url[7:] if queue.url.startswith("file://") else queue.url
        if not os.path.exists(os.path.join(path, "objects")):
            if os.path.exists(path) and os.listdir(path):
                raise GitqueueError(f"{path}: exists and is not a git repository")
            init_bare(path, queue.branch)
        else:
            point_head_at(path, queue.branch)
    settings = {"format_version": FORMAT_VERSION, "name": name, "lease_ttl": int(lease_ttl),
                "created": utc(queue.clock())}
    for key, value in (("arch", arch), ("os_release", os_release), ("pkgsrc_branch", pkgsrc_branch),
                       ("packages_url", packages_url), ("pkgsrc_revision", pkgsrc_revision)):
        if value:
            settings[key] = value
    if max_record_bytes is not None:
        settings["max_record_bytes"] = int(max_record_bytes)
    for key, value in (limits or {}).items():
        if key not in LIMITS:
            raise GitqueueError(f"unknown queue setting {key!r} (one of {', '.join(LIMITS)})")
        if value is not None:
            settings[key] = value
    if admins:
        settings["admins"] = admins
        if queue.signer is None or queue.signer.public_key not in {a["key"] for a in admins}:
            raise GitqueueError("a signed queue's first commit must be signed by one of its admins: "
                                "give that admin's private key with --signing-key")
    records.validate("queue", settings)
    queue.create(settings, ADMIN)
    return settings


def import_jobs(queue, jobs: list[dict], source: str) -> dict:
    """Write one job record per job in one commit; refuse if the queue already has jobs.

    `jobs` must already be checked (see importers.load_graph). Returns counts.
    """
    files = {record_path("jobs", job["name"]): records.dumps("job", job) for job in jobs}
    prefailed = sum(1 for job in jobs if job.get("prefailed"))
    edges = sum(len(job["deps"]) for job in jobs)

    def decide(tip, reader):
        queue.settings(reader)
        if reader.tree_id_of("jobs") is not None:
            raise GitqueueError(f"{queue.url}: the queue already has jobs; one queue holds one build")
        message = f"import {len(jobs)} jobs from {os.path.basename(source)}\n\n" + trailers(
            {"Action": "import", "Jobs": len(jobs), "Edges": edges, "Prefailed": prefailed,
             "Source": os.path.basename(source)}
        )
        return Change(with_graph(reader, files, jobs), message)

    queue.transact(decide, ADMIN, use_index=False)
    return {"jobs": len(jobs), "edges": edges, "prefailed": prefailed}


def with_graph(reader, files: dict, jobs: list[dict] | None = None) -> dict:
    """`files` ({path: bytes or None}) of an admin commit, with graph.tsv derived for the tree they make.

    Every admin change of the job records, the settings or the lists rewrites graph.tsv, so that
    workers can read the graph instead of every record (graph.py). `jobs`: the new job records,
    when the caller has them.
    """
    from .graph import graph_change

    return {**files, layout.GRAPH: graph_change(reader, files, jobs)}


def change_priority(queue, add: Sequence[str] = (), remove: Sequence[str] = ()) -> list[str]:
    """Add and remove patterns of the priority list in one commit; return the new list."""
    out: list[str] = []

    def decide(tip, reader):
        queue.settings(reader)
        current = lists.read_priority(reader)
        missing = [p for p in remove if p not in current]
        if missing:
            raise GitqueueError(f"not on the priority list: {', '.join(missing)}")
        new = [p for p in current if p not in remove] + [p for p in add if p not in current]
        out[:] = new
        if new == current:
            return None
        what = "; ".join(x for x in (f"add {' '.join(add)}" if add else "",
                                     f"remove {' '.join(remove)}" if remove else "") if x)
        message = f"priority: {what}\n\n" + trailers({"Action": "priority", "Packages": " ".join(new)})
        data = records.dumps("priority", {"packages": new}) if new else None
        return Change(with_graph(reader, {layout.PRIORITY: data}), message)

    queue.transact(decide, ADMIN, use_index=False)
    return out


def change_noway(queue, add: Sequence[dict] = (), remove: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """Add entries ({pattern, arch, reason}) and remove (pattern, arch) pairs; return the list."""
    out: list[dict] = []

    def decide(tip, reader):
        queue.settings(reader)
        current = lists.read_noway(reader)
        keys = {(e["pattern"], e["arch"]) for e in current}
        missing = [f"{p} ({a or 'every arch'})" for p, a in remove if (p, a) not in keys]
        if missing:
            raise GitqueueError(f"not on the no-way list: {', '.join(missing)}")
        new = [e for e in current if (e["pattern"], e["arch"]) not in set(remove)]
        for entry in add:
            new = [e for e in new if (e["pattern"], e["arch"]) != (entry["pattern"], entry["arch"])] + [entry]
        out[:] = new
        if new == current:
            return None
        parts = [f"{e['pattern']} on {e['arch'] or 'every arch'}: {e['reason']}" for e in add]
        parts += [f"remove {p} ({a or 'every arch'})" for p, a in remove]
        message = f"no way: {'; '.join(parts)}\n\n" + trailers(
            {"Action": "noway", "Add": " ".join(e["pattern"] for e in add) or None,
             "Remove": " ".join(p for p, _ in remove) or None})
        data = records.dumps("noway", {"entries": new}) if new else None
        return Change(with_graph(reader, {layout.NOWAY: data}), message)

    queue.transact(decide, ADMIN, use_index=False)
    return out
