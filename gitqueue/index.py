"""The worker's local index: derived state (readiness, pending dependency counts, priorities).

It is a cache. The repository is the truth: the index remembers which commit it describes and is
brought forward by the diff between that commit and the new tip, so a claim costs in proportion to
what changed. It is rebuilt from the tree when missing, damaged or when the job set changes.
Callers hold the cache lock while they use it.
"""

import os
import sqlite3

from . import records
from .errors import RecordInvalid
from .names import name_from_path

INDEX_VERSION = "1"

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE jobs(
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    version TEXT NOT NULL,
    pkgpath TEXT,
    prefailed TEXT,
    priority REAL NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    leased_by TEXT,
    lease_token TEXT
);
CREATE TABLE deps(job INTEGER NOT NULL, dep INTEGER NOT NULL);
CREATE INDEX deps_dep ON deps(dep);
CREATE INDEX deps_job ON deps(job);
CREATE TABLE declines(job INTEGER NOT NULL, worker TEXT NOT NULL, PRIMARY KEY(job, worker));
CREATE TABLE mine(job TEXT PRIMARY KEY, worker TEXT NOT NULL, token TEXT NOT NULL);
CREATE INDEX ready ON jobs(priority DESC)
    WHERE pending = 0 AND result IS NULL AND leased_by IS NULL AND prefailed IS NULL;
"""


class Index:
    """Derived state of one queue, kept in SQLite in the worker's cache directory."""

    def __init__(self, path: str):
        self.path = path
        self.db = self._open()

    def _open(self):
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            version = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if version and version[0] == INDEX_VERSION:
                db.execute("PRAGMA synchronous=NORMAL")
                return db
            db.close()
        except sqlite3.DatabaseError:
            pass
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass
        db = sqlite3.connect(self.path, isolation_level=None)
        # WAL with synchronous=NORMAL: commits without fsync, and a crash loses at most the last
        # transactions, never the file's consistency (the index is a cache of the tree anyway).
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO meta VALUES('version', ?)", (INDEX_VERSION,))
        return db

    def close(self):
        self.db.close()

    # -- bringing the index to a commit ---------------------------------------------------

    def commit_id(self) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE key='commit'").fetchone()
        return row[0].encode() if row and row[0] else None

    def update(self, remote, tip: bytes | None) -> None:
        """Bring the index from the commit it describes to `tip` (a commit in remote's store)."""
        old = self.commit_id()
        if old == tip:
            return
        if old is None or tip is None or old not in remote.object_store:
            self.rebuild(remote, tip)
            return
        from .gitstore import diff_trees

        store = remote.object_store
        changes = []
        for path, old_sha, new_sha in diff_trees(store, store[old].tree, store[tip].tree):
            if path.startswith("jobs/") or path == "queue.toml":
                self.rebuild(remote, tip)
                return
            changes.append((path, old_sha, new_sha))
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            for path, old_sha, new_sha in changes:
                self._apply(store, path, old_sha, new_sha)
            db.execute("INSERT OR REPLACE INTO meta VALUES('commit', ?)", (tip.decode(),))
            db.execute("COMMIT")
        except _NeedsRebuild:
            db.execute("ROLLBACK")
            self.rebuild(remote, tip)
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _apply(self, store, path, old_sha, new_sha):
        kind = path.split("/", 1)[0]
        if kind == "heartbeats":
            return
        if kind not in ("leases", "results", "declines"):
            return
        _, name = name_from_path(path)
        row = self.db.execute("SELECT id, result FROM jobs WHERE name=?", (name,)).fetchone()
        if row is None:
            raise _NeedsRebuild()
        job_id, old_result = row
        record = None
        if new_sha is not None:
            record = records.loads(kind[:-1], store[new_sha].as_raw_string(), path)
        if kind == "leases":
            if record is None:
                self.db.execute("UPDATE jobs SET leased_by=NULL, lease_token=NULL WHERE id=?", (job_id,))
            else:
                self.db.execute(
                    "UPDATE jobs SET leased_by=?, lease_token=? WHERE id=?",
                    (record["worker"], record["token"], job_id),
                )
        elif kind == "results":
            if old_sha is not None or record is None:
                raise _NeedsRebuild()  # results are never rewritten by the protocol
            self.db.execute("UPDATE jobs SET result=? WHERE id=?", (record["status"], job_id))
            if record["status"] == "success":
                self.db.execute(
                    "UPDATE jobs SET pending = pending - 1 WHERE id IN (SELECT job FROM deps WHERE dep=?)",
                    (job_id,),
                )
        else:
            self.db.execute("DELETE FROM declines WHERE job=?", (job_id,))
            if record is not None:
                self.db.executemany(
                    "INSERT OR IGNORE INTO declines VALUES(?, ?)",
                    [(job_id, d["worker"]) for d in record["declined"]],
                )

    def rebuild(self, remote, tip: bytes | None) -> None:
        """Recompute everything from the tree of `tip`."""
        reader = remote.reader(tip)
        store = remote.object_store
        jobs = []
        for path, sha in reader.walk_files("jobs"):
            full = path
            name_from_path(full)
            jobs.append(records.loads("job", store[sha].as_raw_string(), full))
        ids = {job["name"]: i for i, job in enumerate(jobs, 1)}
        results = {}
        for path, sha in reader.walk_files("results"):
            rec = records.loads("result", store[sha].as_raw_string(), path)
            results[rec["job"]] = rec["status"]
        leases = {}
        for path, sha in reader.walk_files("leases"):
            rec = records.loads("lease", store[sha].as_raw_string(), path)
            leases[rec["job"]] = (rec["worker"], rec["token"])
        declines = []
        for path, sha in reader.walk_files("declines"):
            rec = records.loads("decline", store[sha].as_raw_string(), path)
            if rec["job"] in ids:
                declines.extend((ids[rec["job"]], d["worker"]) for d in rec["declined"])
        priorities = dependents_counts(jobs)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in ("jobs", "deps", "declines"):
                db.execute(f"DELETE FROM {table}")
            rows = []
            dep_rows = []
            for job in jobs:
                jid = ids[job["name"]]
                pending = 0
                for dep in job["deps"]:
                    dep_id = ids.get(dep)
                    if dep_id is None:
                        raise RecordInvalid(f"jobs: {job['name']} depends on unknown job {dep}")
                    dep_rows.append((jid, dep_id))
                    if results.get(dep) != "success":
                        pending += 1
                lease = leases.get(job["name"], (None, None))
                rows.append(
                    (
                        jid,
                        job["name"],
                        job["version"],
                        job.get("pkgpath"),
                        job.get("prefailed"),
                        job.get("priority", 0) * 1e9 + priorities[job["name"]],
                        pending,
                        results.get(job["name"]),
                        lease[0],
                        lease[1],
                    )
                )
            db.executemany("INSERT INTO jobs VALUES(?,?,?,?,?,?,?,?,?,?)", rows)
            db.executemany("INSERT INTO deps VALUES(?,?)", dep_rows)
            db.executemany("INSERT OR IGNORE INTO declines VALUES(?,?)", declines)
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES('commit', ?)", (tip.decode() if tip else "",)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- questions ------------------------------------------------------------------------

    def ready(self, worker: str, limit: int) -> list[str]:
        """Names of up to `limit` ready jobs not declined by `worker`, best first."""
        return [
            r[0]
            for r in self.db.execute(
                """SELECT name FROM jobs
                   WHERE pending = 0 AND result IS NULL AND leased_by IS NULL AND prefailed IS NULL
                     AND id NOT IN (SELECT job FROM declines WHERE worker = ?)
                   ORDER BY priority DESC, name LIMIT ?""",
                (worker, limit),
            )
        ]

    def job(self, name: str):
        """(name, version, pkgpath, result, leased_by, lease_token) of a job, or None."""
        return self.db.execute(
            "SELECT name, version, pkgpath, result, leased_by, lease_token FROM jobs WHERE name=?",
            (name,),
        ).fetchone()

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state."""
        rows = self.db.execute(
            """
            WITH RECURSIVE blocked(id, why) AS (
                SELECT id, CASE WHEN prefailed IS NOT NULL THEN 'p' ELSE 'f' END FROM jobs
                 WHERE prefailed IS NOT NULL OR result = 'failure'
                UNION
                SELECT d.job, b.why FROM deps d JOIN blocked b ON d.dep = b.id
            ),
            worst(id, why) AS (SELECT id, MIN(why) FROM blocked GROUP BY id)
            SELECT
              CASE
                WHEN j.result = 'success' THEN 'success'
                WHEN j.result = 'failure' THEN 'failed'
                WHEN j.prefailed IS NOT NULL THEN 'prefailed'
                WHEN w.why = 'f' THEN 'indirect-failed'
                WHEN w.why = 'p' THEN 'indirect-prefailed'
                WHEN j.leased_by IS NOT NULL THEN 'leased'
                WHEN j.pending = 0 THEN 'ready'
                ELSE 'waiting'
              END AS state, COUNT(*)
            FROM jobs j LEFT JOIN worst w ON w.id = j.id
            GROUP BY state
            """
        ).fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update(rows)
        return counts

    def remember_claim(self, job: str, worker: str, token: str):
        self.db.execute("INSERT OR REPLACE INTO mine VALUES(?,?,?)", (job, worker, token))

    def forget_claim(self, job: str):
        self.db.execute("DELETE FROM mine WHERE job=?", (job,))

    def my_claims(self, worker: str) -> dict[str, str]:
        """{job: token} of the leases this cache took for `worker` and has not yet ended."""
        return dict(self.db.execute("SELECT job, token FROM mine WHERE worker=?", (worker,)))


STATES = (
    "ready",
    "waiting",
    "leased",
    "success",
    "failed",
    "indirect-failed",
    "prefailed",
    "indirect-prefailed",
)


class _NeedsRebuild(Exception):
    pass


def dependents_counts(jobs: list[dict]) -> dict[str, int]:
    """Number of jobs that depend on each job, directly or not (pbulk's ordering)."""
    order = {job["name"]: i for i, job in enumerate(jobs)}
    dependents: dict[str, list[str]] = {job["name"]: [] for job in jobs}
    for job in jobs:
        for dep in job["deps"]:
            if dep in dependents:
                dependents[dep].append(job["name"])
    # Bit sets as Python ints: one OR per edge, in reverse topological order.
    closure: dict[str, int] = {}
    for name in reversed(_topological(jobs, order)):
        bits = 0
        for d in dependents[name]:
            bits |= closure[d] | (1 << order[d])
        closure[name] = bits
    return {name: bits.bit_count() for name, bits in closure.items()}


def _topological(jobs, order):
    indegree = {job["name"]: 0 for job in jobs}
    children: dict[str, list[str]] = {job["name"]: [] for job in jobs}
    for job in jobs:
        for dep in job["deps"]:
            if dep in indegree:
                indegree[job["name"]] += 1
                children[dep].append(job["name"])
    queue = [n for n, d in indegree.items() if d == 0]
    out = []
    while queue:
        n = queue.pop()
        out.append(n)
        for c in children[n]:
            indegree[c] -= 1
            if indegree[c] == 0:
                queue.append(c)
    return out
