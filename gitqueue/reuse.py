"""Up-to-date reuse: the jobs of a new scan whose packages an earlier build already made.

A job is up to date when the package tree holds the package files an earlier success named,
with the checksums it recorded, that success was for the same name, version and dependency
names, none of its dependencies is being built again (each is itself up to date), and the
site's check (pbulk's pkg-up-to-date convention: the command gets the package name and its
dependencies' names, exit 0 means "still up to date") does not veto it.
"""

import hashlib
import os
import subprocess


def file_sha256(path: str) -> str | None:
    """The SHA-256 of the regular file at `path` (never following a link), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def up_to_date(jobs: list[dict], previous: dict, tree: str, command: list[str] | None = None,
               run=subprocess.run) -> dict[str, dict]:
    """The earlier success results that stand for jobs of `jobs`, by name.

    Args:
        jobs: the new scan's job records, in topological order (importers.check_graph).
        previous: {name: (job record, result record)} of the earlier build's successes.
        tree: the package tree (a directory) holding All/.
        command: the site's veto (argv, before the package and dependency names), or None.
        run: subprocess.run (tests may count calls).

    Returns:
        {name: earlier result} of the jobs that are up to date.
    """
    reused: dict[str, dict] = {}
    all_dir = os.path.join(tree, "All")
    for job in jobs:
        name = job["name"]
        earlier = previous.get(name)
        if earlier is None:
            continue
        old_job, result = earlier
        if (result["status"] != "success" or not result.get("packages") or old_job["version"] != job["version"]
                or sorted(old_job["deps"]) != sorted(job["deps"])
                or not all(dep in reused for dep in job["deps"])):
            continue
        if not all(file_sha256(os.path.join(all_dir, p["name"])) == p["sha256"] for p in result["packages"]):
            continue
        if command:
            proc = run([*command, name, *job["deps"]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
            if proc.returncode != 0:
                continue
        reused[name] = result
    return reused


def previous_successes(reader) -> dict:
    """{name: (job record, success result)} of a queue's tree."""
    from . import records
    from .lease import read_job_record

    store = reader.store
    out = {}
    for path, sha in reader.walk_files("results"):
        result = records.load_at("result", store[sha].as_raw_string(), path)
        if result["status"] == "success" and result.get("packages"):
            job = read_job_record(reader, "jobs", result["job"])
            if job is not None:
                out[result["job"]] = (job, result)
    return out


def reused_result(job: dict, earlier: dict, queue_url: str, token: str, at: str) -> dict:
    """The up-to-date result of `job` that an import writes for the earlier success `earlier`."""
    rec = {"job": job["name"], "version": job["version"], "status": "success", "worker": REUSE_WORKER,
           "token": token, "finished_at": at, "up_to_date": True, "packages": earlier["packages"],
           "reused": {"queue": queue_url[:1000], "token": earlier["token"]}}
    return rec


# The worker name up-to-date results carry: an administrator's import wrote them, no worker built.
REUSE_WORKER = "gitqueue-admin"
