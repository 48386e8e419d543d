"""The rules of a queue: which commit may change which record, and how (docs/trust.md).

A commit C is judged against the tree of its parent P: P's administrators and registered
workers say who may sign C, and P's records say what C may do. `check_commit` applies every rule
to one commit; a `State` carries what it needs from one commit to the next, so that a push (the
pre-receive hook) or a whole history (`gitqueue verify`) is checked in one pass.

Only the standard library and gitqueue's records are imported here; signatures are checked with
`signing` (in process with `cryptography` when it is importable).
"""

import stat
from dataclasses import dataclass, field

from . import records
from .errors import GitqueueError
from .names import check_job_name, check_worker_name, shard

DEFAULT_MAX_RECORD_BYTES = 65536
SETTINGS = "queue.toml"
# Top-level files and what they hold; all administrative.
TOP_FILES = {"queue.toml": "queue", "priority.toml": "priority", "noway.toml": "noway"}
# Directories of per-job records (kind/XX/JOB.toml) and of per-worker records (kind/NAME.toml).
JOB_DIRS = {"jobs": "job", "leases": "lease", "results": "result", "declines": "decline", "lapsed": "lapsed"}
WORKER_DIRS = {"heartbeats": "heartbeat", "workers": "worker"}
ADMIN_KINDS = {"queue", "priority", "noway", "job", "worker"}
FILE_MODE = 0o100644  # no executables, symlinks or submodules in a queue


@dataclass(frozen=True)
class Violation:
    """One broken rule: the commit, the path (if any), the rule's name and a one-line message."""

    commit: str
    rule: str
    message: str
    path: str | None = None

    def __str__(self):
        where = f" {self.path}:" if self.path else ""
        return f"{self.commit[:12]}{where} {self.message} [{self.rule}]"


@dataclass
class Options:
    """What the caller knows beyond the history.

    Attributes:
        pusher: the worker whose ssh key pushed (forced command); every new commit must be
            signed by a key of that worker or of an administrator.
        root_key: the fingerprint (SHA256:...) that must have signed the first commit.
        history: also check what needs the whole history (tokens never reused, late results).
        backend: signature backend for signing.verify ("auto", "cryptography", "ssh-keygen").
    """

    pusher: str | None = None
    root_key: str | None = None
    history: bool = False
    backend: str = "auto"


@dataclass
class Registry:
    """Who may sign, as one tree says: administrators and workers, by key blob."""

    settings: dict | None
    admins: dict = field(default_factory=dict)  # key blob -> admin name
    workers: dict = field(default_factory=dict)  # name -> worker record
    live: dict = field(default_factory=dict)  # key blob -> [unrevoked worker names]
    revoked: dict = field(default_factory=dict)  # key blob -> [revoked worker names]

    @property
    def signed(self) -> bool:
        return bool(self.admins)

    @property
    def max_record_bytes(self) -> int:
        return (self.settings or {}).get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)


@dataclass
class Signer:
    """The key that signed a commit and what it may do there."""

    fingerprint: str
    admin: str | None
    workers: frozenset

    @property
    def principal(self) -> str:
        return self.admin or ",".join(sorted(self.workers))


@dataclass
class Verdict:
    """What `check_commit` found: violations, the signer, and the actions the commit took."""

    violations: list
    signer: Signer | None = None
    claims: int = 0
    results: int = 0
    reclaims: int = 0
    late: int = 0
    packages: list = field(default_factory=list)  # (job, token, package) of each success result


class _Reader:
    """Files of one tree by path (a small, dependency-free twin of gitstore.TreeReader)."""

    def __init__(self, store, tree_id):
        self.store = store
        self.tree_id = tree_id

    def blob_id(self, path: str):
        sha = self.tree_id
        mode = stat.S_IFDIR
        if sha is None:
            return None
        for part in path.split("/"):
            if not stat.S_ISDIR(mode):
                return None
            try:
                mode, sha = self.store[sha][part.encode()]
            except KeyError:
                return None
        return None if stat.S_ISDIR(mode) else sha

    def tree_of(self, path: str):
        sha = self.tree_id
        if sha is None:
            return None
        for part in path.split("/"):
            try:
                mode, sha = self.store[sha][part.encode()]
            except KeyError:
                return None
            if not stat.S_ISDIR(mode):
                return None
        return sha

    def record(self, kind: str, path: str):
        """The parsed record at `path`, None if absent; raises GitqueueError if invalid."""
        sha = self.blob_id(path)
        if sha is None:
            return None
        data = self.store[sha].as_raw_string()
        return records.loads(kind, data, path) if kind in TOP_FILES.values() else records.load_at(kind, data, path)


def job_path(kind_dir: str, name: str) -> str:
    return f"{kind_dir}/{shard(name)}/{name}.toml"


def classify(path: str) -> tuple[str, str | None] | None:
    """(record kind, job or worker name) of a path of the layout, None for any other path."""
    if path in TOP_FILES:
        return TOP_FILES[path], None
    parts = path.split("/")
    if not parts[-1].endswith(".toml"):
        return None
    name = parts[-1][:-5]
    try:
        if len(parts) == 3 and parts[0] in JOB_DIRS and parts[1] == shard(name):
            return JOB_DIRS[parts[0]], check_job_name(name)
        if len(parts) == 2 and parts[0] in WORKER_DIRS:
            return WORKER_DIRS[parts[0]], check_worker_name(name)
    except GitqueueError:
        return None
    return None


def _changes(store, old, new, prefix=""):
    """Yield (path, old (mode, sha) or None, new (mode, sha) or None) for each differing file.

    Unlike gitstore.diff_trees this keeps modes (a symlink or submodule is not a record) and
    reports an empty directory as a path ending in "/".
    """
    if old == new:
        return
    a = {} if old is None else {e.path: (e.mode, e.sha) for e in store[old].iteritems()}
    b = {} if new is None else {e.path: (e.mode, e.sha) for e in store[new].iteritems()}
    if new is not None and not b and prefix:
        yield prefix, None, (stat.S_IFDIR, new)
    for name in sorted(a.keys() | b.keys()):
        o, n = a.get(name), b.get(name)
        if o == n:
            continue
        path = prefix + name.decode("utf-8", "replace")
        o_dir = o is not None and stat.S_ISDIR(o[0])
        n_dir = n is not None and stat.S_ISDIR(n[0])
        if o_dir or n_dir:
            yield from _changes(store, o[1] if o_dir else None, n[1] if n_dir else None, path + "/")
        if not o_dir and not n_dir:
            yield path, o, n
        elif not o_dir and o is not None:
            yield path, o, None
        elif not n_dir and n is not None:
            yield path, None, n


def load_registry(store, tree_id) -> Registry:
    """The administrators and workers of the tree `tree_id` (invalid entries are left out)."""
    from .signing import key_blob

    reader = _Reader(store, tree_id)
    try:
        settings = reader.record("queue", SETTINGS)
    except GitqueueError:
        settings = None
    reg = Registry(settings)
    for admin in (settings or {}).get("admins", []):
        try:
            reg.admins.setdefault(key_blob(admin["key"]), admin["name"])
        except GitqueueError:
            pass
    workers_tree = reader.tree_of("workers")
    if workers_tree is not None:
        for entry in store[workers_tree].iteritems():
            path = f"workers/{entry.path.decode('utf-8', 'replace')}"
            if entry.mode != FILE_MODE or classify(path) is None:
                continue
            try:
                rec = records.load_at("worker", store[entry.sha].as_raw_string(), path)
                blob = key_blob(rec["key"])
            except GitqueueError:
                continue
            reg.workers[rec["name"]] = rec
            (reg.revoked if rec.get("revoked_at") else reg.live).setdefault(blob, []).append(rec["name"])
    return reg


class State:
    """The parent's tree and what was learnt from it, carried from one commit to the next.

    The registry is read again only when queue.toml or workers/ change; with `Options.history`
    the lease tokens seen so far are kept (token -> worker).
    """

    def __init__(self, store, tree_id=None):
        self.store = store
        self.tree = tree_id
        self._registry = None
        self._registry_key = None
        self.tokens: dict[str, str] = {}

    def registry(self, tree_id=None) -> Registry:
        tree_id = self.tree if tree_id is None else tree_id
        reader = _Reader(self.store, tree_id)
        key = (reader.blob_id(SETTINGS), reader.tree_of("workers"))
        if self._registry is None or key != self._registry_key:
            self._registry = load_registry(self.store, tree_id)
            self._registry_key = key
        return self._registry

    def advance(self, commit) -> None:
        self.tree = commit.tree


def _identify(commit, reg: Registry, backend: str):
    """(Signer, None) for a good signature by a known key, else (None, message)."""
    from .signing import SignatureError, fingerprint, key_blob, parse_signature, verify_commit

    if not commit.gpgsig:
        return None, "commit is not signed, and every commit of a signed queue must be"
    try:
        key_line = parse_signature(commit.gpgsig)[0]
        blob = key_blob(key_line)
    except SignatureError as e:
        return None, f"malformed signature: {e}"
    fp = fingerprint(blob)
    admin = reg.admins.get(blob)
    names = reg.live.get(blob, [])
    if admin is None and not names:
        if blob in reg.revoked:
            who = ", ".join(sorted(reg.revoked[blob]))
            return None, f"signed by {fp}, the revoked key of {who}"
        return None, f"signed by {fp}, which is neither an administrator's key nor a registered worker's"
    principal = admin or names[0]
    try:
        verify_commit(commit, {principal: [key_line]}, backend=backend)
    except SignatureError as e:
        return None, str(e) if str(e).startswith("bad signature") else f"bad signature: {e}"
    return Signer(fp, admin, frozenset(names)), None


def check_commit(store, state: State, commit, options: Options | None = None) -> Verdict:
    """Check one commit against the tree of its parent (`state.tree`); see docs/trust.md.

    Args:
        store: an object store holding both trees (and everything they reach).
        state: the parent's state; call `state.advance(commit)` before the next commit.
        commit: the dulwich Commit.
        options: see Options.

    Returns:
        A Verdict; its violations are empty when the commit keeps every rule.
    """
    options = options or Options()
    cid = commit.id.decode()
    verdict = Verdict([])

    def fail(rule, message, path=None):
        verdict.violations.append(Violation(cid, rule, message, path))

    root = not commit.parents
    if len(commit.parents) > 1:
        fail("history", f"merge commit with {len(commit.parents)} parents: a queue's history is one line")
    reg = state.registry(commit.tree if root else None)
    signer = None
    if reg.signed:
        signer, problem = _identify(commit, reg, options.backend)
        if signer is None:
            fail("signature", problem)
            return verdict
        verdict.signer = signer
        if root and signer.admin is None:
            fail("signature", f"the first commit is signed by {signer.fingerprint}, not by an administrator "
                              "listed in its own queue.toml")
        if options.pusher is not None and signer.admin is None and options.pusher not in signer.workers:
            fail("pusher", f"pushed with the ssh key of {options.pusher} but signed by {signer.fingerprint} "
                           f"({signer.principal})")
    if root and options.root_key is not None and (signer is None or signer.fingerprint != options.root_key):
        fail("signature", f"the first commit is not signed by the pinned administrator key {options.root_key}")
    if verdict.violations:
        return verdict

    changes = {path: (o, n) for path, o, n in _changes(store, state.tree, commit.tree)}
    if not changes:
        fail("empty", "commit changes nothing")
        return verdict
    before = _Reader(store, state.tree)
    after = _Reader(store, commit.tree)
    _Check(store, state, reg, signer, changes, before, after, options, verdict, fail, commit.message).run()
    return verdict


class _Check:
    """The per-path rules of one commit (see check_commit)."""

    def __init__(self, store, state, reg, signer, changes, before, after, options, verdict, fail, message):
        self.message = message
        self.store, self.state, self.reg, self.signer = store, state, reg, signer
        self.changes, self.before, self.after = changes, before, after
        self.options, self.verdict, self.fail = options, verdict, fail
        self.parsed = {}  # path -> (old record, new record)

    # -- helpers ----------------------------------------------------------------------------------

    def may_act_as(self, worker: str) -> bool:
        """True when the signer may write `worker`'s records (always in an unsigned queue)."""
        return self.signer is None or worker in self.signer.workers

    def is_admin(self) -> bool:
        return self.signer is None or self.signer.admin is not None

    def deny_worker(self, path, worker, what):
        if self.may_act_as(worker):
            return False
        s = self.signer
        if worker in self.reg.workers and self.reg.workers[worker].get("revoked_at"):
            why = f"{worker} is revoked"
        elif worker in self.reg.workers:
            why = f"signed by {s.fingerprint} ({s.principal or 'an administrator'}), not by {worker}'s key"
        else:
            why = f"{worker} is not a registered worker"
        self.fail("owner", f"{what} of {worker}: {why}", path)
        return True

    def deps_built(self, job_rec, path, what):
        missing = []
        for dep in job_rec["deps"]:
            try:
                res = self.after.record("result", job_path("results", dep))
            except GitqueueError:
                res = None
            if res is None or res["status"] != "success":
                missing.append(dep)
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            self.fail(what, f"{job_rec['name']} depends on {', '.join(missing[:3])}{more}, "
                            "which has no success result", path)
            return False
        return True

    def job(self, name, path, what):
        try:
            rec = self.after.record("job", job_path("jobs", name))
        except GitqueueError:
            rec = None
        if rec is None:
            self.fail(what, f"{name} is not a job of this queue", path)
        return rec

    def check_signer_field(self, rec, path):
        if "signer" in rec and (self.signer is None or rec["signer"] != self.signer.fingerprint):
            by = self.signer.fingerprint if self.signer else "nobody (unsigned commit)"
            self.fail("signer", f"records signer {rec['signer']} but the commit is signed by {by}", path)

    # -- the rules --------------------------------------------------------------------------------

    def run(self):
        limit = self.reg.max_record_bytes if self.reg.settings else DEFAULT_MAX_RECORD_BYTES
        ok = True
        for path, (old, new) in self.changes.items():
            where = classify(path)
            if where is None:
                if new is None and self.is_admin():
                    continue  # an administrator may clear away what a local writer left
                self.fail("layout", "outside the queue layout", path)
                ok = False
                continue
            kind, _ = where
            old_rec = new_rec = None
            if new is not None:
                if new[0] != FILE_MODE:
                    self.fail("layout", f"mode {new[0]:o}: records are plain files (100644)", path)
                    ok = False
                    continue
                data = self.store[new[1]].as_raw_string()
                if len(data) > limit:
                    self.fail("size", f"{len(data)} bytes, more than max_record_bytes ({limit})", path)
                    ok = False
                    continue
                try:
                    new_rec = self._load(kind, data, path)
                except GitqueueError as e:
                    self.fail("schema", str(e).removeprefix(f"{path}: "), path)
                    ok = False
                    continue
            if old is not None:
                try:
                    old_rec = self._load(kind, self.store[old[1]].as_raw_string(), path)
                except GitqueueError:
                    old_rec = None  # what a local writer left; it is being replaced or removed
            self.parsed[path] = (old_rec, new_rec, old is not None, new is not None)
        if not ok:
            return
        for path, (old_rec, new_rec, had, has) in self.parsed.items():
            kind, name = classify(path)
            getattr(self, f"_{kind}")(path, name, old_rec, new_rec, had, has)

    def _load(self, kind, data, path):
        if kind in ("queue", "priority", "noway"):
            rec = records.loads(kind, data, path)
        else:
            rec = records.load_at(kind, data, path)
        keys = [a["key"] for a in rec.get("admins", [])] if kind == "queue" else [rec["key"]] if kind == "worker" else []
        if keys:
            from .signing import key_blob

            for key in keys:
                key_blob(key)
        return rec

    def _admin_only(self, path, had, has):
        if self.is_admin():
            return True
        verb = "changed" if had and has else "added" if has else "removed"
        self.fail("admin", f"administrative record {verb} by {self.signer.fingerprint} "
                           f"({self.signer.principal}), who is not an administrator", path)
        return False

    def _queue(self, path, name, old, new, had, has):
        if not has:
            self.fail("layout", "queue.toml removed: a queue always has its settings", path)
            return
        self._admin_only(path, had, has)

    def _priority(self, path, name, old, new, had, has):
        self._admin_only(path, had, has)

    _noway = _priority
    _job = _priority
    _worker = _priority

    def _heartbeat(self, path, name, old, new, had, has):
        if not has:
            self.fail("heartbeat", "heartbeat removed: heartbeats are only ever rewritten", path)
            return
        self.deny_worker(path, name, "heartbeat")

    def _lease(self, path, name, old, new, had, has):
        if had and has:
            self.fail("lease", f"lease on {name} rewritten: a lease is only ever added or removed", path)
            return
        if has:
            self.verdict.claims += 1
            if self.deny_worker(path, new["worker"], "lease"):
                return
            self.check_signer_field(new, path)
            job = self.job(name, path, "lease")
            if job is None:
                return
            try:
                result = self.after.record("result", job_path("results", name))
            except GitqueueError:
                result = True
            if result is not None:
                self.fail("lease", f"lease on {name}, which has a result", path)
                return
            if job.get("prefailed"):
                self.fail("lease", f"lease on {name}, which is prefailed ({job['prefailed']})", path)
                return
            self.deps_built(job, path, "lease")
            if self.options.history:
                seen = self.state.tokens.get(new["token"])
                if seen is not None:
                    self.fail("token", f"lease token {new['token']} was used before (by {seen})", path)
                self.state.tokens[new["token"]] = new["worker"]
            return
        # removed: by its worker (release, report) or by an administrator (reclaim)
        if old is None:
            return  # not a valid lease: whoever may touch the path may clear it
        if job_path("results", name) not in self.parsed and b"Gitqueue-Action: reclaim" in self.message:
            self.verdict.reclaims += 1
        if not self.may_act_as(old["worker"]) and not self.is_admin():
            self.fail("owner", f"lease of {old['worker']} on {name} removed by {self.signer.fingerprint} "
                               f"({self.signer.principal})", path)

    def _result(self, path, name, old, new, had, has):
        if had:
            self.fail("result", f"result of {name} {'rewritten' if has else 'removed'}: a result is final", path)
            return
        self.verdict.results += 1
        worker = new["worker"]
        if self.deny_worker(path, worker, "result"):
            return
        self.check_signer_field(new, path)
        job = self.job(name, path, "result")
        if job is None:
            return
        lease_path = job_path("leases", name)
        try:
            lease = self.before.record("lease", lease_path)
        except GitqueueError:
            lease = None
        if lease is not None:
            if lease["worker"] != worker or lease["token"] != new["token"]:
                held = f"held by {lease['worker']}" if lease["worker"] != worker else "held under another token"
                self.fail("result", f"result for {name} by {worker}, but the lease is {held}", path)
                return
            if lease_path not in self.parsed or self.parsed[lease_path][3]:
                self.fail("result", f"result for {name} does not end its lease in the same commit", path)
                return
        elif not (new["status"] == "success" and new.get("late") is True):
            self.fail("result", f"result for {name} by {worker}, who does not hold it "
                                "(without a lease only a success marked late = true is kept)", path)
            return
        elif not self._lapsed_lease(name, worker, new["token"]):
            self.fail("result", f"late result for {name} by {worker} under token {new['token']}, which is no "
                                "lease of theirs that was reclaimed", path)
            return
        else:
            self.verdict.late += 1
            if self.options.history and self.state.tokens.get(new["token"]) != worker:
                self.fail("token", f"late result for {name} under token {new['token']}, which was never a lease "
                                   f"of {worker}", path)
                return
        if not self.deps_built(job, path, "result"):
            return
        if new["status"] == "success":
            for package in new.get("packages", ()):
                self.verdict.packages.append((name, new["token"], package))

    def _lapsed_lease(self, name, worker, token) -> bool:
        """Whether the parent's lapsed record of `name` lists `worker`'s lease under `token`."""
        try:
            lapsed = self.before.record("lapsed", job_path("lapsed", name))
        except GitqueueError:
            return False
        return any(e["worker"] == worker and e["token"] == token for e in (lapsed or {}).get("lapsed", ()))

    def _lapsed(self, path, name, old, new, had, has):
        if not self._admin_only(path, had, has):
            return
        if not has:
            self.fail("lapsed", f"lapsed leases of {name} removed: they are only ever appended to", path)
            return
        before = old["lapsed"] if old else []
        added = new["lapsed"][len(before):]
        if new["lapsed"][:len(before)] != before or len(added) != 1:
            self.fail("lapsed", f"lapsed leases of {name} changed: one entry is appended per reclaim", path)
            return
        lease_path = job_path("leases", name)
        removed = self.parsed.get(lease_path)
        entry = added[0]
        if (removed is None or removed[3] or removed[0] is None or removed[0]["worker"] != entry["worker"]
                or removed[0]["token"] != entry["token"]):
            self.fail("lapsed", f"lapsed lease of {entry['worker']} on {name} is not the lease this commit "
                                "reclaims", path)

    def _decline(self, path, name, old, new, had, has):
        if not has:
            self.fail("decline", f"declines of {name} removed: they are only ever appended to", path)
            return
        before = old["declined"] if old else []
        if new["declined"][:len(before)] != before:
            self.fail("decline", f"declines of {name} rewritten: entries may only be appended", path)
            return
        added = new["declined"][len(before):]
        if not added:
            self.fail("decline", f"declines of {name} changed without a new entry", path)
            return
        lease_path = job_path("leases", name)
        released = self.parsed.get(lease_path)
        for entry in added:
            if self.deny_worker(path, entry["worker"], "decline"):
                return
            if released is None or released[3] or released[0] is None or released[0]["worker"] != entry["worker"]:
                self.fail("decline", f"{entry['worker']} declines {name} without giving back its lease in the "
                                     "same commit", path)
                return


def first_parent_chain(store, old: bytes | None, new: bytes, limit: int | None = None):
    """The commits from just after `old` to `new` (oldest first) along first parents.

    Returns None when `old` is not reached (not a fast-forward); with `old` None, the whole
    chain down to the root commit.
    """
    chain = []
    sha = new
    while sha != old:
        if sha is None or (limit is not None and len(chain) >= limit):
            return None
        commit = store[sha]
        chain.append(commit)
        sha = commit.parents[0] if commit.parents else None
    chain.reverse()
    return chain
