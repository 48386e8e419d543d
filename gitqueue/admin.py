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
# Settings that bound what one worker may do (enforced by the server's hook and gitqueue serve),
# and how often a job may fail for reasons not its own.
LIMITS = ("max_leases", "package_files", "upload_quota", "min_heartbeat_seconds", "max_attempts")


def init_queue(queue, name: str, arch: str = "", os_release: str = "", pkgsrc_branch: str = "",
               lease_ttl: int = 3600, packages_url: str = "", pkgsrc_revision: str = "",
               admins: list[dict] | None = None, max_record_bytes: int | None = None,
               limits: dict | None = None) -> dict:
    """Create the queue (and, for a local path, the bare repository); return its settings.

    With `admins` ([{"name", "key"}]) the queue is signed (docs/trust.md): the queue's signer
    must be one of them. `limits` holds the settings that bound what a worker may do
    (max_leases, package_files, upload_quota, min_heartbeat_seconds, max_attempts; see
    schema/queue.json).
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


def import_jobs(queue, jobs: list[dict], source: str, reused: dict | None = None, previous: str = "") -> dict:
    """Write one job record per job in one commit; refuse if the queue already has jobs.

    `jobs` must already be checked (see importers.load_graph). `reused` ({name: earlier success
    result}, see reuse.up_to_date) are the jobs an earlier build of the queue `previous` already
    made: each gets an up-to-date result in the same commit. Returns counts.
    """
    files: dict[str, bytes | None] = {record_path("jobs", job["name"]): records.dumps("job", job) for job in jobs}
    prefailed = sum(1 for job in jobs if job.get("prefailed"))
    edges = sum(len(job["deps"]) for job in jobs)
    if reused:
        from .records import utc
        from .reuse import reused_result

        at = utc(queue.clock())
        by_name = {job["name"]: job for job in jobs}
        for name, earlier in reused.items():
            rec = reused_result(by_name[name], earlier, previous, os.urandom(16).hex(), at)
            files[record_path("results", name)] = records.dumps("result", rec)

    def decide(tip, reader):
        queue.settings(reader)
        if reader.tree_id_of("jobs") is not None:
            raise GitqueueError(f"{queue.url}: the queue already has jobs; one queue holds one build")
        also = f", {len(reused)} up to date" if reused else ""
        message = f"import {len(jobs)} jobs from {os.path.basename(source)}{also}\n\n" + trailers(
            {"Action": "import", "Jobs": len(jobs), "Edges": edges, "Prefailed": prefailed,
             "Up-To-Date": len(reused) if reused else None, "Previous": previous or None,
             "Source": os.path.basename(source)}
        )
        return Change(with_graph(reader, files, jobs), message)

    queue.transact(decide, ADMIN, use_index=False)
    counts = {"jobs": len(jobs), "edges": edges, "prefailed": prefailed}
    if reused is not None:
        counts["up_to_date"] = len(reused)
    return counts


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


def _set_aside(reader, name: str, action: str, reason: str, at: str, result: dict | None,
               lease: dict | None = None) -> tuple[dict, dict]:
    """The files that set aside `name`'s result (and end its live `lease`): the result removed,
    an entry appended to its retries record; and that entry.

    The entry fences every lease token the job had so far (the live one and those reclaimed):
    none of them may give the job its next result, not even late (rules.py, lease.report).
    """
    from .lease import read_job_record

    retries = read_job_record(reader, "retries", name) or {"job": name, "retried": []}
    declines = read_job_record(reader, "declines", name)
    lapsed = read_job_record(reader, "lapsed", name)
    fenced = [e["token"] for e in (lapsed or {}).get("lapsed", ())]
    if lease is not None:
        fenced.append(lease["token"])
    entry: dict = {"action": action, "reason": reason, "at": at,
                   "declines": len((declines or {}).get("declined", ()))}
    files: dict[str, bytes | None] = {}
    if result is not None:
        entry.update(status=result["status"], worker=result["worker"], token=result["token"])
        if result.get("version"):
            entry["version"] = result["version"]
        files[record_path("results", name)] = None
    if lease is not None:
        files[record_path("leases", name)] = None
    done = {e.get("token") for e in retries["retried"]} | {t for e in retries["retried"] for t in e.get("fenced", ())}
    fresh = [t for t in dict.fromkeys(fenced) if t not in done]
    if fresh:
        entry["fenced"] = fresh
    retries["retried"].append(entry)
    files[record_path("retries", name)] = records.dumps("retry", retries)
    return files, entry


def retry_jobs(queue, names: Sequence[str] = (), failed: bool = False, since: str | None = None,
               reason: str = "") -> list[dict]:
    """Make failed jobs buildable again, in one commit; return what was retried.

    Each failure result is set aside (removed from the tree, kept in the history, and named in
    the job's retries record with `reason`), so the job is ready again once its dependencies are
    built, and the jobs its failure kept from building wait for it again.

    Args:
        queue: the Queue.
        names: jobs to retry; each must have a failure result.
        failed: retry every failed job (those of `names` when given).
        since: with `failed`, only failures that finished at or after this UTC time
            (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ).
        reason: why (required): recorded in the retries records and the commit.

    Returns:
        [{"job", "version", "worker", "token", "attempts"}] of the retried jobs, by name;
        `attempts`: how many results the job has had so far.

    Raises:
        GitqueueError: no reason, an unknown job, a job without a failure result, nothing to retry.
    """
    from .layout import check_job_name
    from .lease import read_job_record
    from .records import epoch, utc
    from .text import printable

    reason = printable(" ".join(reason.split()))[:1000]
    if not reason:
        raise GitqueueError("give the reason for the retry (--reason)")
    for name in names:
        check_job_name(name)
    if not names and not failed:
        raise GitqueueError("name the jobs to retry, or give --failed")
    cutoff = None
    if since is not None:
        cutoff = epoch(since) if "T" in since else epoch(f"{since}T00:00:00Z")
        if cutoff is None:
            raise GitqueueError(f"--since {since!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ")
    out: list[dict] = []

    def decide(tip, reader):
        queue.settings(reader)
        out.clear()
        chosen = []
        if names:
            for name in sorted(set(names)):
                if reader.blob_id(record_path("jobs", name)) is None:
                    raise GitqueueError(f"unknown job {name}")
                result = read_job_record(reader, "results", name)
                if result is None or result["status"] != "failure":
                    has = f"has a {result['status']} result" if result else "has no result"
                    raise GitqueueError(f"{name} {has}: only failed jobs are retried")
                chosen.append((name, result))
        else:
            store = reader.store
            for path, sha in reader.walk_files("results"):
                result = records.load_at("result", store[sha].as_raw_string(), path)
                if result["status"] == "failure":
                    chosen.append((result["job"], result))
            chosen.sort(key=lambda c: c[0])
        if cutoff is not None:
            chosen = [(n, r) for n, r in chosen if (epoch(r.get("finished_at")) or 0) >= cutoff]
        if not chosen:
            raise GitqueueError("nothing to retry: no failure matches")
        files: dict[str, bytes | None] = {}
        at = utc(queue.clock())
        for name, result in chosen:
            change, entry = _set_aside(reader, name, "retry", reason, at, result)
            files.update(change)
            retries = records.loads("retry", change[record_path("retries", name)], record_path("retries", name))
            out.append({"job": name, "version": result.get("version"), "worker": result["worker"],
                        "token": result["token"], "attempts": len(retries["retried"])})
        shown = ", ".join(n for n, _ in chosen[:3]) + (f" (+{len(chosen) - 3} more)" if len(chosen) > 3 else "")
        message = f"retry {shown}: {reason}"[:120] + "\n\n" + trailers(
            {"Action": "retry", "Jobs": len(chosen), "Reason": reason})
        return Change(files, message)

    queue.transact(decide, ADMIN, use_index=False)
    return out


# Fields of a job record that change no build: scheduling hints and what reports show.
UNBUILT_FIELDS = frozenset(("est_seconds", "est_source", "priority", "weight", "maintainer", "categories"))
# The records of a job besides its own; a retired job loses them all.
_JOB_RECORDS = ("leases", "results", "declines", "lapsed", "retries")


def _build_facts(job: dict) -> dict:
    return {k: v for k, v in job.items() if k not in UNBUILT_FIELDS}


def plan_update(old_jobs: list[dict], new_jobs: list[dict]) -> dict:
    """What applying the scan `new_jobs` to a queue holding `old_jobs` does, by name.

    Returns {"added", "retired", "changed", "rebuilt", "kept"} (sorted lists of names): `changed`
    are the jobs whose version, dependencies or build settings differ (UNBUILT_FIELDS aside);
    `rebuilt` those and every job that depends on one of them, directly or not (in the new
    graph); `kept` the jobs of both that are not rebuilt.
    """
    old = {job["name"]: job for job in old_jobs}
    new = {job["name"]: job for job in new_jobs}
    changed = {name for name, job in new.items() if name in old and _build_facts(old[name]) != _build_facts(job)}
    dependents: dict[str, list[str]] = {}
    for job in new_jobs:
        for dep in job["deps"]:
            dependents.setdefault(dep, []).append(job["name"])
    rebuilt = set(changed)
    stack = list(changed)
    while stack:
        for up in dependents.get(stack.pop(), ()):
            if up not in rebuilt and up in old:
                rebuilt.add(up)
                stack.append(up)
    return {"added": sorted(new.keys() - old.keys()), "retired": sorted(old.keys() - new.keys()),
            "changed": sorted(changed), "rebuilt": sorted(rebuilt),
            "kept": sorted((new.keys() & old.keys()) - rebuilt)}


def update_jobs(queue, jobs: list[dict], source: str, dry_run: bool = False) -> dict:
    """Apply a new scan to a live queue in one commit (import --update); return what it did.

    New jobs appear; jobs gone from the scan retire (their records go, the history keeps
    them); jobs whose version, dependencies or build settings changed, and every job that
    depends on them, become buildable again: their results are set aside as `retry` does
    (action "update"), their live leases end, and every lease token they had is fenced. The
    other jobs keep their results. graph.tsv is rewritten.

    Args:
        queue: the Queue.
        jobs: the new scan's job records, already checked (importers.load_graph).
        source: the scan's file name (for the commit message).
        dry_run: decide only; write nothing.

    Returns:
        plan_update's lists, plus "set_aside" (names of the results set aside), "fenced"
        (names of the jobs whose live lease ended) and "committed".
    """
    from .graph import read_jobs
    from .lease import read_job_record
    from .records import utc

    out: dict = {}
    new = {job["name"]: job for job in jobs}

    def decide(tip, reader):
        queue.settings(reader)
        old_jobs = read_jobs(reader)
        plan = plan_update(old_jobs, jobs)
        old = {job["name"]: job for job in old_jobs}
        files: dict[str, bytes | None] = {}
        set_aside, fenced = [], []
        at = utc(queue.clock())
        reason = f"update from {os.path.basename(source)}"
        for name in plan["added"]:
            files[record_path("jobs", name)] = records.dumps("job", new[name])
        for name in plan["retired"]:
            files[record_path("jobs", name)] = None
            for kind in _JOB_RECORDS:
                if reader.blob_id(record_path(kind, name)) is not None:
                    files[record_path(kind, name)] = None
        for name in plan["kept"] + plan["rebuilt"]:
            if new[name] != old[name]:
                files[record_path("jobs", name)] = records.dumps("job", new[name])
        for name in plan["rebuilt"]:
            result = read_job_record(reader, "results", name)
            lease = read_job_record(reader, "leases", name)
            lapsed = reader.blob_id(record_path("lapsed", name)) is not None
            if result is None and lease is None and not lapsed:
                continue  # not built yet, nothing in flight: it will build the new version
            change, entry = _set_aside(reader, name, "update", reason, at, result, lease)
            if result is None and lease is None and not entry.get("fenced"):
                continue  # its reclaimed leases were fenced by an earlier update
            files.update(change)
            if result is not None:
                set_aside.append(name)
            if lease is not None:
                fenced.append(name)
        out.clear()
        out.update(plan, set_aside=set_aside, fenced=fenced, committed=False)
        if dry_run or not files:
            return None
        message = (f"update from {os.path.basename(source)}: {len(plan['added'])} added, "
                   f"{len(plan['retired'])} retired, {len(plan['rebuilt'])} rebuilt, {len(plan['kept'])} kept\n\n"
                   + trailers({"Action": "update", "Added": len(plan["added"]), "Retired": len(plan["retired"]),
                               "Changed": len(plan["changed"]), "Rebuilt": len(plan["rebuilt"]),
                               "Kept": len(plan["kept"]), "Set-Aside": len(set_aside), "Fenced": len(fenced),
                               "Source": os.path.basename(source)}))
        return Change(with_graph(reader, files, jobs), message)

    commit, _ = queue.transact(decide, ADMIN, use_index=False)
    out["committed"] = commit is not None
    return out
