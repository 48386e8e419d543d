"""The worker's local index: derived state (readiness, pending dependency counts, priorities).

It is a cache. The repository is the truth: the index remembers which commit it describes and is
brought forward by the diff between that commit and the new tip, so a claim costs in proportion to
what changed. It is rebuilt from the tree when missing, damaged or when the job set changes.
Callers hold the cache lock while they use it.
"""

import json
import os
import sqlite3

from . import records
from .layout import TOP_FILES

INDEX_VERSION = "7"

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE jobs(
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    version TEXT NOT NULL,
    pkgpath TEXT,
    skip TEXT,            -- why the job is never built: prefailed or no-way reason
    skip_kind TEXT,       -- 'p' prefailed, 's' no way on this architecture
    est REAL NOT NULL,
    est_source TEXT NOT NULL,
    priority REAL NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    up_to_date INTEGER NOT NULL DEFAULT 0,  -- a success that built nothing: the package was up to date
    leased_by TEXT,
    lease_token TEXT,
    lease_at REAL
);
CREATE TABLE deps(job INTEGER NOT NULL, dep INTEGER NOT NULL, PRIMARY KEY(job, dep)) WITHOUT ROWID;
-- until: when a transient failure stops holding the job back from the worker; NULL: never offered again
CREATE TABLE declines(job INTEGER NOT NULL, worker TEXT NOT NULL, until REAL, PRIMARY KEY(job, worker));
CREATE TABLE speeds(worker TEXT PRIMARY KEY, n INTEGER NOT NULL, total REAL NOT NULL);
CREATE TABLE mine(job TEXT PRIMARY KEY, worker TEXT NOT NULL, token TEXT NOT NULL);
"""
# Indexes dropped while a rebuild loads 29k jobs and 200k dependencies and made again after it:
# building an index once is faster than keeping it up to date row by row.
_BULK_INDEXES = (
    "CREATE INDEX jobs_pkgpath ON jobs(pkgpath)",
    "CREATE INDEX jobs_leased ON jobs(leased_by) WHERE leased_by IS NOT NULL",
    "CREATE INDEX deps_dep ON deps(dep)",
    "CREATE INDEX ready ON jobs(priority DESC) WHERE pending = 0 AND result IS NULL AND leased_by IS NULL "
    "AND skip IS NULL",
)

# Changes of the job set, the settings or the lists: recompute everything rather than apply a diff.
_REBUILD_KINDS = frozenset(("job", "retry", *TOP_FILES.values()))
# Records the diff reads; a larger one (gitqueue writes none) sends the index to a rebuild.
_MAX_RECORD_BYTES = 1 << 24
# KiB of SQLite's page cache, which also bounds the memory of a sort (a report's countdown of
# dependents); None: SQLite's 2 MB. `gitqueue work` takes 256 (memory.lean_worker): a worker
# that waits on builds for weeks holds it the whole time. A short-lived claim or report keeps
# the default: with 256 KiB its queries read pages again, +5-10% CPU per claim and report cycle.
page_cache_kib: int | None = None
# Estimates a measured duration of a sibling (same package path) in this build improves on.
_WEAK_SOURCES = ("default", "weight")


class Index:
    """Derived state of one queue, kept in SQLite in the worker's cache directory."""

    def __init__(self, path: str):
        self.path = path
        self.db = self._open()
        # Trees parsed by the last update: its new trees are the next one's old trees, so a
        # long-lived worker reads each tree of the queue once, not on both sides of two diffs.
        self._parsed_trees: dict = {}

    def _open(self):
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            version = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if version and version[0] == INDEX_VERSION:
                db.execute("PRAGMA synchronous=NORMAL")
                _size_cache(db)
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
        _size_cache(db)
        db.executescript(_SCHEMA + ";".join(_BULK_INDEXES) + ";")
        db.execute("INSERT INTO meta VALUES('version', ?)", (INDEX_VERSION,))
        return db

    def close(self):
        self.db.close()

    def shrink(self) -> None:
        """Free SQLite's page caches (the index's and its temporary tables'), which the next
        statements refill as far as they need."""
        self.db.execute("PRAGMA shrink_memory")

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
        from .trees import TreeWalk

        store = remote.object_store
        # An admin commit that rewrote graph.tsv sends the index to _regraph, which takes the
        # jobs from that file: the 29k-entry jobs/ trees need not be walked.
        from .layout import GRAPH

        regraphs = remote.reader(old).blob_id(GRAPH) != remote.reader(tip).blob_id(GRAPH)
        # (retries/ only says that a retry happened, and the new graph.tsv already sends the
        # index to _regraph: an update that rebuilds 6,000 jobs writes as many retry records)
        walk = TreeWalk(store, _MAX_RECORD_BYTES, self._parsed_trees, unread=_REBUILD_KINDS,
                        skip=frozenset({b"jobs", b"retries"}) if regraphs else frozenset())
        changes = []
        regraph = False
        for change in walk.changes_between(store[old].tree, store[tip].tree):
            if change.kind in _REBUILD_KINDS:
                regraph = True
            elif change.kind in ("lease", "result", "decline"):
                changes.append(change)
        self._parsed_trees = walk.new_trees
        if walk.problems:  # entries the layout does not allow (a local writer's): the tree decides
            self.rebuild(remote, tip)
            return
        if regraph:
            self._regraph(remote, old, tip, changes)
            return
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            self._apply(changes)
            db.execute("INSERT OR REPLACE INTO meta VALUES('commit', ?)", (tip.decode(),))
            db.execute("COMMIT")
        except _NeedsRebuild:
            db.execute("ROLLBACK")
            self.rebuild(remote, tip)
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def defer_graph(self, remote, tip: bytes | None) -> bool:
        """Whether to leave bringing the index to `tip` for its next update: True, once for the
        commit the index describes, when `tip` has another graph.tsv than that commit (an admin
        commit: on the 29k queue, an update of 500 packages is half a second here). The caller
        then decides against the tree with the index as it is (see Queue.transact).

        Once only, and noted before the caller decides: whatever this host commits meanwhile
        (a claim, and the request id it answers) is in the next update, not on a second
        decision taken from the same old index."""
        old = self.commit_id()
        if old is None or tip is None or old == tip or old not in remote.object_store:
            return False
        noted = self.db.execute("SELECT value FROM meta WHERE key='deferred'").fetchone()
        if noted and noted[0] == old.decode():
            return False
        from .layout import GRAPH

        if remote.reader(old).blob_id(GRAPH) == remote.reader(tip).blob_id(GRAPH):
            return False
        self.db.execute("INSERT OR REPLACE INTO meta VALUES('deferred', ?)", (old.decode(),))
        return True

    def _regraph(self, remote, old, tip, changes) -> None:
        """An admin commit changed the graph (import --update, retry, priority, ...). With
        graph.tsv describing both commits, change only the jobs whose lines changed; else load
        every job from the tip's graph.tsv; else rebuild from the tree."""
        from . import graph
        from .errors import RecordInvalid

        new_data = graph.current_data(remote.reader(tip))
        old_data = graph.current_data(remote.reader(old)) if new_data is not None else None
        if old_data is not None and new_data is not None:
            db = self.db
            try:
                db.execute("BEGIN IMMEDIATE")
                self._apply_graph(graph.difference(old_data, new_data), changes)
                db.execute("INSERT OR REPLACE INTO meta VALUES('commit', ?)", (tip.decode(),))
                db.execute("COMMIT")
                return
            except (RecordInvalid, _NeedsRebuild):
                db.execute("ROLLBACK")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._reload(remote, tip, changes)

    def _apply_graph(self, difference, changes) -> None:
        """Bring the jobs from one graph.tsv to the next (a graph.Difference) and apply the
        commit's own result, lease and declines `changes`: on the 29k queue, an update of 500
        packages is a few thousand rows here, where loading every job took a second.

        A job keeps its id (and an estimate learned in this build) while its line is unchanged,
        so ids stop following the order of names; nothing reads them as more than keys."""
        db = self.db
        gone, rows = difference.gone, difference.rows
        columns = ("version", "pkgpath", "skip", "skip_kind", "est", "est_source", "priority")
        if gone:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS gone(id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM temp.gone")
            db.executemany("INSERT INTO temp.gone SELECT id FROM jobs WHERE name=?", ((n,) for n in gone))
            for statement in ("DELETE FROM deps WHERE job IN temp.gone", "DELETE FROM deps WHERE dep IN temp.gone",
                              "DELETE FROM declines WHERE job IN temp.gone",
                              "DELETE FROM jobs WHERE id IN temp.gone"):
                db.execute(statement)
        values = [(r.version, r.pkgpath, r.skip, r.skip_kind, r.est, r.est_source, r.priority, r.name)
                  for r, _ in rows]
        db.executemany(f"INSERT INTO jobs(name, {', '.join(columns)}) VALUES(?8, ?1, ?2, ?3, ?4, ?5, ?6, ?7) "
                       f"ON CONFLICT(name) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in columns)}", values)
        ids = dict(db.execute("SELECT name, id FROM jobs"))
        total = len(ids)
        try:
            touched = [ids[r.name] for r, _ in rows]
            dep_rows = [(ids[r.name], ids[d]) for r, deps in rows for d in deps]
        except KeyError:
            raise _NeedsRebuild() from None  # a dependency on a line this index never loaded
        self._id_table("touched", touched)
        db.execute("DELETE FROM deps WHERE job IN temp.touched")
        db.executemany("INSERT INTO deps VALUES(?, ?)", dep_rows)
        results: list[tuple] = []
        leases: list[tuple] = []
        dropped_declines: list[tuple] = []
        declines: list[tuple] = []
        for change in changes:
            job_id = ids.get(change.name)
            if job_id is None:
                continue  # a record of a job gone in this commit
            record = None if change.new is None else records.load_at(change.kind, change.data, change.path)
            if change.kind == "result":
                results.append(_result_row(record, job_id))
            elif change.kind == "lease":
                leases.append(_lease_row(record, job_id))
            else:
                dropped_declines.append((job_id,))
                if record is not None:
                    declines.extend((job_id, worker, until) for worker, until in decline_rows(record))
        self._write_rows(leases, results, dropped_declines, declines)
        # The dependents of a job whose result came or went wait on it again, or no longer.
        self._id_table("decided", (job_id for *_, job_id in results))
        db.execute("INSERT OR IGNORE INTO temp.touched SELECT d.job FROM temp.decided r JOIN deps d ON d.dep = r.id")
        db.execute("""UPDATE jobs SET pending = (
                          SELECT COUNT(*) FROM deps d JOIN jobs p ON p.id = d.dep
                           WHERE d.job = jobs.id AND p.result IS NOT 'success')
                      WHERE id IN temp.touched""")
        if total != difference.jobs:
            raise _NeedsRebuild()

    def _reload(self, remote, tip, changes) -> None:
        """Load the jobs from the tip's graph.tsv and carry the results, leases and declines over
        from this index with the commit's own changes of them, instead of parsing every result
        again (on the 29k queue after a whole build: 27k records, seconds on a fast machine).
        Without a graph.tsv describing the tip, or with a record that does not read, rebuild
        from the tree."""
        from . import graph
        from .errors import RecordInvalid

        reader = remote.reader(tip)
        rows = graph.current_rows(reader)
        if rows is None:
            self.rebuild(remote, tip)
            return
        db = self.db
        results = {n: (r, u) for n, r, u in db.execute(
            "SELECT name, result, up_to_date FROM jobs WHERE result IS NOT NULL")}
        leases = {n: (w, t, a) for n, w, t, a in db.execute(
            "SELECT name, leased_by, lease_token, lease_at FROM jobs WHERE leased_by IS NOT NULL")}
        declines: dict[str, list] = {}
        for name, worker, until in db.execute(
                "SELECT j.name, d.worker, d.until FROM declines d JOIN jobs j ON j.id = d.job"):
            declines.setdefault(name, []).append((worker, until))
        try:
            for change in changes:
                name = change.name
                record = None if change.new is None else records.load_at(change.kind, change.data, change.path)
                if change.kind == "result":
                    results.pop(name, None)
                    if record is not None:
                        results[name] = (record["status"], 1 if record.get("up_to_date") else 0)
                elif change.kind == "lease":
                    leases.pop(name, None)
                    if record is not None:
                        leases[name] = (record["worker"], record["token"], records.epoch(record.get("claimed_at")))
                else:
                    declines.pop(name, None)
                    if record is not None:
                        declines[name] = decline_rows(record)
            self._load(reader, rows, tip, carried=(results, leases, declines))
        except RecordInvalid:
            self.rebuild(remote, tip)

    def _apply(self, changes) -> None:
        """Apply a diff's lease, result and declines changes: parsed in order, written a few
        statements for each 500 (a worker back from a long absence applies thousands)."""
        from .scheduler import Speeds

        speeds = Speeds({w: (n, t) for w, n, t in self.db.execute("SELECT worker, n, total FROM speeds")})
        learned: set[str] = set()
        siblings_measured: set[str] = set()
        successes: list[int] = []
        for at in range(0, len(changes), 500):
            self._apply_some(changes[at:at + 500], speeds, learned, siblings_measured, successes)
        self._count_down(successes)
        self.db.executemany("INSERT OR REPLACE INTO speeds VALUES(?, ?, ?)",
                            [(w, *speeds.sums[w]) for w in learned if w in speeds.sums])

    def _apply_some(self, changes, speeds, learned: set, siblings_measured: set, successes: list) -> None:
        db = self.db
        names = list(dict.fromkeys(c.name for c in changes))
        jobs = {name: row for name, *row in db.execute(
            f"SELECT name, id, est, est_source, pkgpath FROM jobs WHERE name IN ({','.join('?' * len(names))})",
            names)}
        leases: list[tuple] = []
        results: list[tuple] = []
        dropped_declines: list[tuple] = []
        declines: list[tuple] = []
        # package path -> (the estimate its unbuilt siblings get, the ids of those built before)
        sibling_est: dict[str, tuple[float, list[int]]] = {}
        built: dict[str, list[int]] = {}  # package path -> ids of its jobs with results so far
        for change in changes:
            kind = change.kind
            if change.name not in jobs:
                raise _NeedsRebuild()
            job_id, est, est_source, pkgpath = jobs[change.name]
            record = None if change.new is None else records.load_at(kind, change.data, change.path)
            if kind == "lease":
                leases.append(_lease_row(record, job_id))
            elif kind == "result":
                if change.old is not None or record is None:
                    raise _NeedsRebuild()  # results are never rewritten by the protocol
                results.append(_result_row(record, job_id))
                built.setdefault(pkgpath, []).append(job_id)
                if record["status"] != "success":
                    continue
                successes.append(job_id)
                duration = record.get("duration")
                if not duration or duration <= 0:
                    continue
                # A measured success refines its worker's speed and its siblings' estimates.
                worker = record["worker"]
                if pkgpath in sibling_est and est_source in _WEAK_SOURCES:
                    est = sibling_est[pkgpath][0]  # an earlier sibling in these changes set it
                factor = speeds.factor(worker) if speeds.measured(worker) else 1.0
                speeds.observe(worker, duration, est)
                learned.add(worker)
                # Other MULTI_VERSION variants of this package build in about the same time;
                # the first measured one sets the estimate of those not built yet (after it, no
                # estimate of theirs is weak).
                if pkgpath and pkgpath not in siblings_measured:
                    siblings_measured.add(pkgpath)
                    sibling_est[pkgpath] = (duration / factor, list(built[pkgpath]))
            else:
                dropped_declines.append((job_id,))
                if record is not None:
                    declines.extend((job_id, worker, until) for worker, until in decline_rows(record))
        # (before the results: the siblings it sets are those still without one)
        db.executemany(
            f"UPDATE jobs SET est=?, est_source='this build' WHERE pkgpath=? AND result IS NULL "
            f"AND est_source IN ({','.join('?' * len(_WEAK_SOURCES))}) AND id NOT IN (SELECT value FROM json_each(?))",
            [(est, pkgpath, *_WEAK_SOURCES, json.dumps(before)) for pkgpath, (est, before) in sibling_est.items()])
        self._write_rows(leases, results, dropped_declines, declines)

    def _write_rows(self, leases: list, results: list, dropped_declines: list, declines: list) -> None:
        """Write a diff's lease and result rows (_lease_row, _result_row), the jobs whose
        declines it dropped ([(id,)]) and their new declines ([(id, worker, until)])."""
        db = self.db
        db.executemany("UPDATE jobs SET leased_by=?, lease_token=?, lease_at=? WHERE id=?", leases)
        db.executemany("UPDATE jobs SET result=?, up_to_date=? WHERE id=?", results)
        db.executemany("DELETE FROM declines WHERE job=?", dropped_declines)
        db.executemany("INSERT INTO declines VALUES(?, ?, ?)", declines)

    def _id_table(self, name: str, ids) -> None:
        """The temporary table `name` holding the job ids `ids` (each once), to join with."""
        self.db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name}(id INTEGER PRIMARY KEY)")
        self.db.execute(f"DELETE FROM temp.{name}")
        self.db.executemany(f"INSERT OR IGNORE INTO temp.{name} VALUES(?)", ((i,) for i in ids))

    def _count_down(self, successes) -> None:
        """Lower the pending count of the dependents of the jobs `successes` (ids) just
        succeeded: each dependent once, by all of them (after a long absence, 3,000 successes
        are 180,000 dependencies, and a statement per success took 0.55 s)."""
        db = self.db
        if successes:
            self._id_table("done_now", successes)
            db.execute("CREATE TEMP TABLE IF NOT EXISTS countdown(id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            db.execute("INSERT INTO temp.countdown SELECT d.job, COUNT(*) FROM temp.done_now s "
                       "JOIN deps d ON d.dep = s.id GROUP BY d.job")
            db.execute("UPDATE jobs SET pending = pending - (SELECT n FROM temp.countdown c WHERE c.id = jobs.id) "
                       "WHERE id IN (SELECT id FROM temp.countdown)")
            db.execute("DELETE FROM temp.countdown")

    def rebuild(self, remote, tip: bytes | None) -> None:
        """Recompute everything from the tree of `tip`: the jobs from its graph.tsv when that
        describes the tree (graph.py), else from every job record.

        Streams into SQLite (a new worker on a 29k queue holds no row of it in Python) and lets
        SQLite count the pending dependencies.
        """
        from . import graph
        from .errors import RecordInvalid
        from .memory import give_back

        reader = remote.reader(tip)
        rows = graph.current_rows(reader) if tip is not None else None
        if rows is not None:
            try:
                self._load(reader, rows, tip)
                give_back()
                return
            except RecordInvalid:
                pass  # a graph.tsv that does not read: the records decide
        remote.ensure([sha for _, sha in reader.walk_files("jobs")])  # a partial cache lacks them
        self._load(reader, iter(graph.graph_rows(reader)), tip)
        give_back()

    def _load(self, reader, rows, tip, carried=None) -> None:
        """Load the jobs of `rows` (graph Rows) and the tree's results, leases and declines; or,
        with `carried` ({name: (status, up_to_date)}, {name: (worker, token, at)}, {name:
        [(worker, until)]}), those instead, keeping the learned speeds."""
        from . import scheduler
        from .errors import RecordInvalid

        store = reader.store
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in ("jobs", "deps", "declines") + (() if carried else ("speeds",)):
                db.execute(f"DELETE FROM {table}")
            for index in _BULK_INDEXES:
                db.execute(f"DROP INDEX IF EXISTS {index.split()[2]}")
            # The rows go through a temporary table with their dependencies as text ("3 17 204"),
            # streamed: nothing of 29k jobs is held in Python. SQLite's JSON reader then makes
            # the 200k dependency rows, and deps' primary key refuses one given twice.
            # (its columns are a graph.Row's, in order)
            db.execute("CREATE TEMP TABLE IF NOT EXISTS staging(id INTEGER PRIMARY KEY, name, version, pkgpath, "
                       "skip_kind, skip, est, est_source, priority, deps)")
            db.execute("DELETE FROM temp.staging")
            db.executemany("INSERT INTO temp.staging VALUES(?,?,?,?,?,?,?,?,?,?)",
                           ((jid, *row) for jid, row in enumerate(rows, 1)))
            columns = "id, name, version, pkgpath, skip, skip_kind, est, est_source, priority"
            # pending starts as the number of dependencies (deps' key refuses one named twice);
            # the successes among them are counted down once the results are in
            db.execute(f"INSERT INTO jobs({columns}, pending) SELECT {columns}, CASE WHEN deps = '' THEN 0 "
                       "ELSE length(deps) - length(replace(deps, ' ', '')) + 1 END FROM temp.staging")
            try:
                db.execute("INSERT INTO deps SELECT s.id, CAST(j.value AS INTEGER) FROM temp.staging s, "
                           "json_each('[' || replace(s.deps, ' ', ',') || ']') j WHERE s.deps != ''")
            except sqlite3.IntegrityError:
                raise RecordInvalid("graph.tsv: a job names one dependency twice") from None
            db.execute("DELETE FROM temp.staging")
            bad = db.execute("SELECT job, dep FROM deps WHERE dep = job OR dep > (SELECT MAX(id) FROM jobs) LIMIT 1"
                             ).fetchone()
            if bad:
                raise RecordInvalid(f"graph.tsv: job {bad[0]} names {bad[1]} as a dependency: not another job")
            durations = {}

            def results():
                for path, sha in reader.walk_files("results"):
                    rec = records.load_at("result", store[sha].as_raw_string(), path)
                    if rec["status"] == "success" and rec.get("duration"):
                        durations[rec["job"]] = (rec["worker"], rec["duration"])
                    yield rec["status"], 1 if rec.get("up_to_date") else 0, rec["job"]

            def leases():
                for path, sha in reader.walk_files("leases"):
                    rec = records.load_at("lease", store[sha].as_raw_string(), path)
                    yield rec["worker"], rec["token"], records.epoch(rec.get("claimed_at")), rec["job"]

            def declines():
                for path, sha in reader.walk_files("declines"):
                    rec = records.load_at("decline", store[sha].as_raw_string(), path)
                    for worker, until in decline_rows(rec):
                        yield worker, until, rec["job"]

            if carried:
                kept_results, kept_leases, kept_declines = carried
                db.executemany("UPDATE jobs SET result=?, up_to_date=? WHERE name=?",
                               [(r, u, n) for n, (r, u) in kept_results.items()])
                db.executemany("UPDATE jobs SET leased_by=?, lease_token=?, lease_at=? WHERE name=?",
                               [(*v, n) for n, v in kept_leases.items()])
                db.executemany("INSERT OR IGNORE INTO declines SELECT id, ?, ? FROM jobs WHERE name=?",
                               [(w, u, n) for n, rows in kept_declines.items() for w, u in rows])
            else:
                db.executemany("UPDATE jobs SET result=?, up_to_date=? WHERE name=?", results())
                db.executemany("UPDATE jobs SET leased_by=?, lease_token=?, lease_at=? WHERE name=?", leases())

            if not carried:
                db.executemany("INSERT OR IGNORE INTO declines SELECT id, ?, ? FROM jobs WHERE name=?", declines())
            self._count_down([i for (i,) in db.execute("SELECT id FROM jobs WHERE result = 'success'")])
            speeds = scheduler.Speeds()
            if durations and not carried:
                for name, est in db.execute("SELECT name, est FROM jobs WHERE result = 'success'"):
                    if name in durations:
                        worker, duration = durations[name]
                        speeds.observe(worker, duration, est)
            db.executemany("INSERT INTO speeds VALUES(?,?,?)", [(w, n, t) for w, (n, t) in speeds.sums.items()])
            for index in _BULK_INDEXES:
                db.execute(index)
            db.execute("INSERT OR REPLACE INTO meta VALUES('commit', ?)", (tip.decode() if tip else "",))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- questions ------------------------------------------------------------------------

    def ready(self, worker: str, limit: int, now: float | None = None):
        """Up to `limit` ready jobs not declined by `worker` (nor held back from it at `now` after
        a transient failure of its own), best first, as scheduler Candidates."""
        from .scheduler import Candidate

        return [
            Candidate(*r)
            for r in self.db.execute(
                """SELECT name, est, priority FROM jobs
                   WHERE pending = 0 AND result IS NULL AND leased_by IS NULL AND skip IS NULL
                     AND id NOT IN (SELECT job FROM declines WHERE worker = ? AND (until IS NULL OR until > ?))
                   ORDER BY priority DESC LIMIT ?""",
                (worker, float("inf") if now is None else now, limit),
            )
        ]

    def speeds(self):
        """The learned worker speeds (scheduler.Speeds)."""
        from .scheduler import Speeds

        return Speeds({w: (n, t) for w, n, t in self.db.execute("SELECT worker, n, total FROM speeds")})

    def busy(self, speeds, now: float, exclude: str = ""):
        """Workers holding leases (other than `exclude`) with when each should be free."""
        from .scheduler import Busy

        out = []
        for worker, est, lease_at in self.db.execute(
                "SELECT leased_by, est, lease_at FROM jobs WHERE leased_by IS NOT NULL AND leased_by != ?",
                (exclude,)):
            factor = speeds.factor(worker)
            # lease_at comes from the worker's clock: it only shapes the schedule, never expiry.
            start = min(lease_at, now) if lease_at is not None else now
            out.append(Busy(worker, factor, start + est * factor))
        return out

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state."""
        query = _STATES_SQL.format(columns=f"{_STATE} AS state, COUNT(*)") + " GROUP BY state"
        rows = self.db.execute(query).fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update(rows)
        return counts

    def states(self) -> list[tuple]:
        """(id, name, version, pkgpath, skip reason, state, worker holding its lease) of every job."""
        return self.db.execute(_STATES_SQL.format(
            columns=f"j.id, j.name, j.version, j.pkgpath, j.skip, {_STATE}, j.leased_by")).fetchall()

    def dependencies(self, of: list[int] | None = None) -> list[tuple[int, int]]:
        """(job id, id of a job it depends on) of every dependency, or of those on the jobs `of`."""
        if of is None:
            return self.db.execute("SELECT job, dep FROM deps").fetchall()
        self._id_table("asked", of)
        return self.db.execute("SELECT d.job, d.dep FROM temp.asked a JOIN deps d ON d.dep = a.id").fetchall()

    def skipped(self) -> list[tuple[str, str]]:
        """(name, reason) of the jobs never built on this queue's architecture (no-way lists), by name."""
        return self.db.execute("SELECT name, skip FROM jobs WHERE skip_kind = 's' ORDER BY name").fetchall()

    def requirements(self, name: str) -> list[str]:
        """Names of every job `name` depends on, directly or not, by name."""
        return [n for (n,) in self.db.execute(
            """WITH RECURSIVE need(id) AS (
                   SELECT dep FROM deps WHERE job = (SELECT id FROM jobs WHERE name = ?)
                   UNION
                   SELECT d.dep FROM deps d JOIN need n ON d.job = n.id
               )
               SELECT name FROM jobs WHERE id IN need ORDER BY name""", (name,))]

    def lease_holders(self) -> list[str]:
        """The workers holding at least one live lease."""
        return [w for (w,) in self.db.execute("SELECT DISTINCT leased_by FROM jobs WHERE leased_by IS NOT NULL")]

    def leased_to(self, worker: str) -> list[str]:
        """Names of the jobs `worker` holds a live lease on."""
        return [name for (name,) in self.db.execute("SELECT name FROM jobs WHERE leased_by = ?", (worker,))]

    def remaining(self):
        """(estimated seconds of work left, longest remaining chain) over the jobs still to build.

        Jobs blocked by a failure, a prefailed or a skipped dependency are not counted.
        """
        from .scheduler import PRIORITY_BOOST

        work, chain = self.db.execute(
            """
            WITH RECURSIVE blocked(id) AS (
                SELECT id FROM jobs WHERE skip IS NOT NULL OR result = 'failure'
                UNION
                SELECT d.job FROM deps d JOIN blocked b ON d.dep = b.id
            )
            SELECT COALESCE(SUM(est), 0), COALESCE(MAX(priority), 0) FROM jobs
             WHERE result IS NULL AND id NOT IN (SELECT id FROM blocked)
            """
        ).fetchone()
        return work, chain % PRIORITY_BOOST

    def leases_held(self, worker: str) -> int:
        """How many live leases `worker` holds at the indexed commit."""
        return self.db.execute("SELECT COUNT(*) FROM jobs WHERE leased_by = ?", (worker,)).fetchone()[0]

    def remember_claim(self, job: str, worker: str, token: str):
        self.db.execute("INSERT OR REPLACE INTO mine VALUES(?,?,?)", (job, worker, token))

    def forget_claim(self, job: str):
        self.db.execute("DELETE FROM mine WHERE job=?", (job,))

    def my_claims(self, worker: str) -> dict[str, str]:
        """{job: token} of the leases this cache took for `worker` and has not yet ended."""
        return dict(self.db.execute("SELECT job, token FROM mine WHERE worker=?", (worker,)))


# The state of each job, computed here only (docs/layout.md, "Derived state"): its own result,
# prefailed or no-way mark first; then the strongest block among everything it depends on,
# directly or not (a failure over a prefailed job over a no-way one); then its lease and pending
# dependencies. _STATES_SQL selects `{columns}` from the jobs `j`, where _STATE is the state.
_STATES_SQL = """
WITH RECURSIVE blocked(id, why) AS (
    SELECT id, CASE WHEN skip_kind IS NOT NULL THEN skip_kind ELSE 'f' END FROM jobs
     WHERE skip IS NOT NULL OR result = 'failure'
    UNION
    SELECT d.job, b.why FROM deps d JOIN blocked b ON d.dep = b.id
),
worst(id, why) AS (SELECT id, MIN(why) FROM blocked GROUP BY id)
SELECT {columns} FROM jobs j LEFT JOIN worst w ON w.id = j.id
"""
_STATE = """
CASE
    WHEN j.result = 'success' AND j.up_to_date THEN 'up-to-date'
    WHEN j.result = 'success' THEN 'success'
    WHEN j.result = 'failure' THEN 'failed'
    WHEN j.skip_kind = 'p' THEN 'prefailed'
    WHEN j.skip_kind = 's' THEN 'skipped'
    WHEN w.why = 'f' THEN 'indirect-failed'
    WHEN w.why = 'p' THEN 'indirect-prefailed'
    WHEN w.why = 's' THEN 'indirect-skipped'
    WHEN j.leased_by IS NOT NULL THEN 'leased'
    WHEN j.pending = 0 THEN 'ready'
    ELSE 'waiting'
END"""

STATES = (
    "ready",
    "waiting",
    "leased",
    "success",
    "up-to-date",
    "failed",
    "indirect-failed",
    "prefailed",
    "indirect-prefailed",
    "skipped",
    "indirect-skipped",
)


def _lease_row(record: dict | None, job_id: int) -> tuple:
    """(worker, token, claimed at, id) of a lease record; Nones without one."""
    if record is None:
        return None, None, None, job_id
    return record["worker"], record["token"], records.epoch(record.get("claimed_at")), job_id


def _result_row(record: dict | None, job_id: int) -> tuple:
    """(status, up to date, id) of a result record; None, 0 without one."""
    if record is None:
        return None, 0, job_id
    return record["status"], 1 if record.get("up_to_date") else 0, job_id


def _size_cache(db) -> None:
    if page_cache_kib is not None:
        db.execute(f"PRAGMA cache_size=-{int(page_cache_kib)}")


def decline_rows(record: dict) -> list[tuple[str, float | None]]:
    """(worker, until) of each worker in a declines record: None (never again) for a worker that
    declined the job, else until when its own transient failure holds the job back from it.

    The time is the one the worker wrote, compared with the same worker's clock when it next
    claims: a scheduling hint, never a rule the server enforces.
    """
    from .lease import transient_backoff

    out: dict[str, float | None] = {}
    failures = 0
    for entry in record["declined"]:
        worker = entry["worker"]
        if not entry.get("transient"):
            out[worker] = None
            continue
        failures += 1
        at = records.epoch(entry.get("at"))
        if at is not None and out.get(worker, 0.0) is not None:
            out[worker] = max(out.get(worker) or 0.0, at + transient_backoff(failures))
    return list(out.items())


class _NeedsRebuild(Exception):
    pass
