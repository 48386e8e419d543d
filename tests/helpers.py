"""Small builders shared by the tests: real bare repositories, real queues."""

import json
import os
import subprocess
import sys
from pathlib import Path

from gitqueue.admin import import_jobs, init_queue
from gitqueue.queue import Queue

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO / "gitqueue" / "data" / "pkgsrc-subset.presolve"
# Real data shipped with the tests (tests/data/README.md names the source), so that they run in a
# plain clone: the whole 29k scan, a real bulk build's times, and its packages as a JSONL graph.
DATA = REPO / "tests" / "data"
FULL_SCAN = DATA / "pkgsrc-presolve.xz"
BUILD_TIMES = DATA / "pkgsrc-build-times.tsv.xz"
BULK_JSONL = DATA / "pkgsrc-bulk-large.jsonl.xz"


def job(name, deps=(), version="1.0", **extra):
    return {"name": name, "version": version, "deps": list(deps), **extra}


def pkg(name, deps=(), **extra):
    """A job named as pkgsrc names it, NAME-VERSION: its version is what follows the last '-'."""
    return job(name, deps, version=name.rpartition("-")[2], **extra)


def make_queue(tmp_path, jobs, ttl=3600, name="q.git", hook=True):
    """A local bare queue with `jobs` imported; returns its URL (a path).

    With `hook`, the server's pre-receive hook is installed, as on a real master: every test that
    pushes over ssh:// or git:// then passes through it (local-path writes never run hooks).
    """
    url = str(tmp_path / name)
    with Queue(url, str(tmp_path / "cache-admin")) as q:
        init_queue(q, "test", lease_ttl=ttl)
        if jobs:
            import_jobs(q, jobs, "test.jsonl")
    if hook:
        from gitqueue.hook import install

        install(url, sys.executable, package_dir=str(REPO))
    return url


def make_package_queue(tmp_path, packages_url, jobs):
    """A local queue whose settings name the package tree `packages_url`; returns its path."""
    url = str(tmp_path / "q.git")
    with Queue(url, str(tmp_path / "cache-admin")) as q:
        init_queue(q, "pkgs", packages_url=packages_url)
        import_jobs(q, jobs, "g.jsonl")
    return url


def open_queue(url, tmp_path, host="h1", clock=None, ssh_command=None):
    kwargs = {"clock": clock} if clock else {}
    return Queue(url, str(tmp_path / f"cache-{host}"), ssh_command=ssh_command, **kwargs)


def local_commit(url, files, message="local writer"):
    """What a writer with file system access can do: commit anything, bypassing the hook and the
    record schemas (`files`: {path: bytes or None}). Returns the commit id."""
    from gitqueue.gitstore import build_tree, make_commit

    with open_queue(url, Path(url).parent, host="local-writer") as q:
        remote = q.remote
        tip = remote.fetch()
        tree, objects = build_tree(remote.object_store, remote.commit(tip).tree, files)
        commit = make_commit(tree, tip, message, "mallory <m@gitqueue>")
        remote.push(tip, commit, objects)
        return commit.id.decode()


def write_jsonl(path, jobs):
    with open(path, "w") as f:
        for j in jobs:
            f.write(json.dumps(j) + "\n")
    return str(path)


def gitqueue(*args, env=None, check=False, timeout=120, cwd=None):
    """Run the real command line in a new process, with this checkout's gitqueue.

    PYTHONPATH names this checkout: the shared Python's installed gitqueue may be another one's.
    """
    base = {**os.environ, **(env or {})}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "gitqueue", *map(str, args)], capture_output=True, text=True,
                          env=base, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"gitqueue {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr}")
    return proc


def git_log(url, fmt="%s", ref="main"):
    return subprocess.run(["git", "-C", url, "log", f"--format={fmt}", ref], capture_output=True, text=True,
                          check=True).stdout


def index_view(index):
    """Everything an index says of each job, by name (its ids are keys only): the graph's facts,
    pending count, result, lease, declines and dependencies. An estimate this build learned from
    a sibling's measured time is left out: only an index that followed the build knows it."""
    db = index.db
    names = dict(db.execute("SELECT id, name FROM jobs"))
    deps: dict = {}
    for job_id, dep in db.execute("SELECT job, dep FROM deps"):
        deps.setdefault(names[job_id], []).append(names[dep])
    declines: dict = {}
    for job_id, worker, until in db.execute("SELECT job, worker, until FROM declines"):
        declines.setdefault(names[job_id], []).append((worker, until))
    return {name: (version, pkgpath, skip, skip_kind, None if source == "this build" else (est, source), priority,
                   pending, result, up_to_date, leased_by, token, lease_at, sorted(deps.get(name, [])),
                   sorted(declines.get(name, [])))
            for name, version, pkgpath, skip, skip_kind, est, source, priority, pending, result, up_to_date,
            leased_by, token, lease_at in db.execute(
                "SELECT name, version, pkgpath, skip, skip_kind, est, est_source, priority, pending, result, "
                "up_to_date, leased_by, lease_token, lease_at FROM jobs")}
