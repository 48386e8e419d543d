"""The rules of a queue: which commit may change which record, and how (docs/trust.md).

A commit C is judged against the tree of its parent P: P's administrators and registered
workers say who may sign C, and P's records say what C may do. `check_commit` applies every rule
to one commit; a `State` carries what it needs from one commit to the next, so that a push (the
pre-receive hook) or a whole history (`gitqueue verify`) is checked in one pass.

Objects are judged as git stores them: every entry of every tree a commit brings is checked by
name and mode in its place of the layout (`layout.entry_problem`, on the walk of
`trees.TreeWalk`), never through a map of path strings (a root entry literally named
"results/63/x.toml" is not that record), and every object's type and size are read from its
header before its contents.

Only the standard library, dulwich's object store and gitqueue's records are used here;
signatures are checked with `signing` (in process with `cryptography` when it is importable).
"""

import stat
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from . import layout, records
from .errors import GitqueueError
from .gitstore import Commit, TreeReader, object_header, read_object
from .layout import DEFAULT_MAX_RECORD_BYTES, SETTINGS, record_path, worker_path
from .trees import TreeWalk

MAX_COMMIT_BYTES = 1 << 16  # a commit settling a host's 16 workers is about 10 KB
MAX_READ_BYTES = 1 << 20  # any record read while judging (queue.toml of a root commit, ...)
# Parsed records and trees a State keeps: a commit settling 100 workers reads a few thousand
# records (every dependency's result), most of them read by the commits before it too.
RECORD_CACHE = 8192
TREE_CACHE = 1024
TOML_TOP_KINDS = ("queue", "priority", "noway")


class ChainError(GitqueueError):
    """A commit of a history that cannot be judged at all (missing, too large, not a commit)."""


@dataclass(frozen=True)
class Violation:
    """One broken rule: the commit, the path (if any), the rule's name and a one-line message."""

    commit: str
    rule: str
    message: str
    path: str | None = None

    def __str__(self):
        where = f" {layout.shown(self.path)}:" if self.path else ""
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
    unregistered: bool = False  # a good signature on an unsigned queue: no rights, only a name

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
    lease_changes: list = field(default_factory=list)  # (job, worker or None when the lease ends)
    objects: set = field(default_factory=set)  # ids of the new trees and files the commit reaches
    heartbeat_only: str | None = None  # the worker, when the commit only rewrites its heartbeat


def read_record(reader: TreeReader, kind: str, path: str):
    """The parsed `kind` record at `path` of `reader`'s tree, None if absent, its size checked
    from the object's header before it is read; raises GitqueueError if it is invalid."""
    sha = reader.blob_id(path)
    if sha is None:
        return None
    cache = getattr(reader, "records", None)
    if cache is not None:
        return cache.get(kind, path, sha)
    return parse_record(reader.store, kind, path, sha)


def parse_record(store, kind: str, path: str, sha: bytes) -> dict:
    """The `kind` record in blob `sha` at `path` (see read_record)."""
    data = read_blob(store, sha, MAX_READ_BYTES, path)
    return records.loads(kind, data, path) if kind in TOML_TOP_KINDS else records.load_at(kind, data, path)


class RecordCache:
    """Parsed records by (kind, path, blob id), the most recently used kept: a record's verdict
    follows from these alone, so a result that many claims depend on is parsed once, not once
    per dependent. Callers never change the records they get."""

    def __init__(self, store, size: int):
        self.store = store
        self.size = size
        self._items: OrderedDict = OrderedDict()  # key -> record, or the GitqueueError it raised

    def get(self, kind: str, path: str, sha: bytes) -> dict:
        key = (kind, path, sha)
        got = self._items.get(key)
        if got is None:
            try:
                got = parse_record(self.store, kind, path, sha)
            except GitqueueError as e:
                got = e
            self.put(key, got)
        else:
            self._items.move_to_end(key)
        if isinstance(got, GitqueueError):
            raise got.with_traceback(None)
        return got

    def put(self, key: tuple, record) -> None:
        self._items[key] = record
        self._items.move_to_end(key)
        if len(self._items) > self.size:
            self._items.popitem(last=False)


class CachedReader(TreeReader):
    """A TreeReader whose lookups go through a State's parsed trees and records."""

    def __init__(self, state: "State", tree_id):
        super().__init__(state.store, tree_id)
        self._state = state
        self.records = state.records

    def _lookup(self, path: str):
        sha = self.tree_id
        if sha is None:
            return None, None
        mode = stat.S_IFDIR
        if path == "":
            return mode, sha
        for part in path.split("/"):
            if not stat.S_ISDIR(mode):
                return None, None
            entry = self._state.tree_entries(sha).get(part.encode())
            if entry is None:
                return None, None
            mode, sha = entry
        return mode, sha


def read_blob(store, sha: bytes, limit: int, where: str) -> bytes:
    """The contents of blob `sha`, after its header said it is a blob of at most `limit` bytes."""
    data = read_object(store, sha, "blob", limit)
    if isinstance(data, str):
        raise GitqueueError(f"{where}: {data}")
    return data


def load_registry(store, tree_id) -> Registry:
    """The administrators and workers of the tree `tree_id` (invalid entries are left out)."""
    from .signing import key_blob

    reader = TreeReader(store, tree_id)
    try:
        settings = read_record(reader, "queue", SETTINGS)
    except GitqueueError:
        settings = None
    reg = Registry(settings)
    for admin in (settings or {}).get("admins", []):
        try:
            reg.admins.setdefault(key_blob(admin["key"]), admin["name"])
        except GitqueueError:
            pass
    workers_tree = reader.tree_id_of("workers")
    if workers_tree is not None:
        for entry in store[workers_tree].iteritems():
            if layout.entry_problem(("workers", "workers"), entry.path, b"%o" % entry.mode) is not None:
                continue
            path = worker_path(entry.path.decode("ascii")[:-5])
            try:
                rec = records.load_at("worker", read_blob(store, entry.sha, MAX_READ_BYTES, path), path)
                blob = key_blob(rec["key"])
            except GitqueueError:
                continue
            reg.workers[rec["name"]] = rec
            (reg.revoked if rec.get("revoked_at") else reg.live).setdefault(blob, []).append(rec["name"])
    return reg


class State:
    """The parent's tree and what was learnt from it, carried from one commit to the next.

    The registry is read again only when queue.toml or workers/ change; with `Options.history`
    the lease tokens seen so far are kept (token -> worker). Parsed records and trees are kept
    by object id, a bounded number of each, so a replay reads each commit's changes, not the
    records around them again; and the graph.tsv blobs found to match their records, so that
    the next one is judged from the last and the job records its commit changes.
    """

    def __init__(self, store, tree_id=None):
        self.store = store
        self.tree = tree_id
        self._registry = None
        self._registry_key = None
        self.tokens: dict[str, str] = {}
        self._leases: dict[str, str] | None = None  # job -> worker of every live lease
        self.parsed_trees: dict = {}  # tree id -> entries, for TreeWalk
        self.records = RecordCache(store, RECORD_CACHE)
        self._trees: OrderedDict = OrderedDict()  # tree id -> {name: (mode, id)}, for CachedReader
        self.checked_graphs: set[bytes] = set()  # graph.tsv blobs found to match the records they name

    def reader(self, tree_id) -> CachedReader:
        """A reader of `tree_id` that shares this state's parsed trees and records."""
        return CachedReader(self, tree_id)

    def tree_entries(self, sha: bytes) -> dict:
        """{name: (mode, id)} of tree `sha`, as dulwich reads it (the last of a repeated name)."""
        got = self._trees.get(sha)
        if got is None:
            walked = self.parsed_trees.get(sha)  # parsed by the walk as git stores it, which dulwich agrees with
            if walked is not None:
                got = {name: (int(mode, 8), entry) for mode, name, entry in walked}
            else:
                got = {e.path: (e.mode, e.sha) for e in self.store[sha].iteritems()}
            self._trees[sha] = got
            if len(self._trees) > TREE_CACHE:
                self._trees.popitem(last=False)
        else:
            self._trees.move_to_end(sha)
        return got

    def leases(self) -> dict[str, str]:
        """{job: worker} of the live leases of the parent's tree (read once, then kept up to date)."""
        if self._leases is None:
            self._leases = {}
            for path, sha in TreeReader(self.store, self.tree).walk_files("leases"):
                try:
                    rec = self.records.get("lease", path, sha)
                except GitqueueError:
                    continue
                self._leases[rec["job"]] = rec["worker"]
        return self._leases

    def registry(self, tree_id=None) -> Registry:
        tree_id = self.tree if tree_id is None else tree_id
        reader = TreeReader(self.store, tree_id)
        key = (reader.blob_id(SETTINGS), reader.tree_id_of("workers"))
        if self._registry is None or key != self._registry_key:
            self._registry = load_registry(self.store, tree_id)
            self._registry_key = key
        return self._registry

    def advance(self, commit, verdict: "Verdict | None" = None) -> None:
        """Move on to `commit` (judged by `verdict`: its lease changes keep the lease map)."""
        self.tree = commit.tree
        if verdict is None or verdict.violations:
            self._leases = None
        elif self._leases is not None:
            for job, worker in verdict.lease_changes:
                if worker is None:
                    self._leases.pop(job, None)
                else:
                    self._leases[job] = worker


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

    problem = commit_text_problem(commit)
    if problem:
        fail("commit", problem)
        return verdict
    # Who signed, for records that name their signer: on an unsigned queue, whoever's key made a
    # good signature (it gives no rights there).
    named = signer if reg.signed else _self_signed(commit)

    limit = reg.max_record_bytes if reg.settings else DEFAULT_MAX_RECORD_BYTES
    walk = TreeWalk(store, limit, state.parsed_trees).run(state.tree, commit.tree)
    state.parsed_trees = walk.new_trees  # the next commit's old side; nothing older is kept
    for path, rule, message in walk.problems:
        fail(rule, message.removeprefix(f"{path}: ") if path else message, path or None)
    verdict.objects = walk.objects
    if verdict.violations:
        return verdict
    if not walk.changes:
        fail("empty", "commit changes nothing")
        return verdict
    before = state.reader(state.tree)
    after = state.reader(commit.tree)
    _Check(store, state, reg, signer, named, walk.changes, before, after, options, verdict, fail,
           commit.message).run()
    kinds = {c.kind for c in walk.changes}
    if kinds == {"heartbeat"} and len(walk.changes) == 1 and not verdict.violations:
        verdict.heartbeat_only = walk.changes[0].name
    return verdict


# Characters no commit message or identity may hold: they reach terminals through `git log`.
_CONTROLS = {*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029,
             *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def commit_text_problem(commit) -> str | None:
    """Why the commit's message or author and committer lines are not plain text, or None."""
    if commit.encoding not in (None, b"UTF-8", b"utf-8"):
        return f"commit encoding {commit.encoding[:20]!r}: messages are UTF-8"
    for what, raw, allowed in (("message", commit.message, "\n\t"), ("author", commit.author, ""),
                               ("committer", commit.committer, "")):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return f"commit {what} is not UTF-8"
        bad = next((c for c in text if ord(c) in _CONTROLS and c not in allowed), None)
        if bad is not None:
            return f"commit {what} holds the control character U+{ord(bad):04X}"
    return None


def _self_signed(commit) -> "Signer | None":
    """On an unsigned queue: the key whose signature a commit carries, if that signature is good.

    Nobody is registered there, so a signature only proves which key made the commit; records
    that name their signer are checked against it (docs/trust.md).
    """
    from .signing import SignatureError, fingerprint, parse_signature, verify_commit

    if not commit.gpgsig:
        return None
    try:
        key_line = parse_signature(commit.gpgsig)[0]
        verify_commit(commit, {"self": [key_line]})
    except SignatureError:
        return None
    return Signer(fingerprint(key_line), None, frozenset(), unregistered=True)


# Kinds whose _load checks more than read_record does: never taken from the record cache.
_UNCACHED = frozenset({"graph", "queue", "worker"})


class _Check:
    """The per-path rules of one commit (see check_commit)."""

    def __init__(self, store, state, reg, signer, named, changes, before, after, options, verdict, fail, message):
        self.message = message
        self.store, self.state, self.reg, self.signer, self.named = store, state, reg, signer, named
        self.changes, self.before, self.after = changes, before, after
        self.options, self.verdict, self.fail = options, verdict, fail
        self.parsed = {}  # path -> (old record, new record, had, has)
        self.kinds = {}  # path -> (kind, name)

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
                res = read_record(self.after, "result", record_path("results", dep))
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
            rec = read_record(self.after, "job", record_path("jobs", name))
        except GitqueueError:
            rec = None
        if rec is None:
            self.fail(what, f"{name} is not a job of this queue", path)
        return rec

    def installed_problem(self, job_rec, result) -> str | None:
        """Why the packages a result lists as installed are not its direct dependencies' packages
        as their results name them (name and SHA-256), or None."""
        if not result.get("installed"):
            return None
        built = set()
        for dep in job_rec["deps"]:
            try:
                res = read_record(self.after, "result", record_path("results", dep))
            except GitqueueError:
                res = None
            for package in (res or {}).get("packages", ()):
                built.add((package["name"], package["sha256"]))
        for entry in result["installed"]:
            if (entry["name"], entry["sha256"]) not in built:
                return (f"{job_rec['name']} lists {entry['name']} as installed, which no result of its dependencies "
                        "names with that SHA-256")
        return None

    def check_signer_field(self, rec, path):
        if "signer" in rec and (self.named is None or rec["signer"] != self.named.fingerprint):
            by = self.named.fingerprint if self.named else "nobody (no good signature)"
            self.fail("signer", f"records signer {rec['signer']} but the commit is signed by {by}", path)

    # -- the rules --------------------------------------------------------------------------------

    def run(self):
        ok = True
        for change in self.changes:
            path, old, new = change.path, change.old, change.new
            if change.kind is None:
                if self.is_admin():
                    continue  # an administrator may clear away what a local writer left
                self.fail("layout", "outside the queue layout", path)
                ok = False
                continue
            kind = change.kind
            old_rec = new_rec = None
            cached = kind not in _UNCACHED
            if new is not None:
                try:
                    new_rec = self._load(kind, change.data, path)
                except GitqueueError as e:
                    self.fail("schema", str(e).removeprefix(f"{path}: "), path)
                    ok = False
                    continue
                if cached and len(change.data) <= MAX_READ_BYTES:
                    self.state.records.put((kind, path, new[1]), new_rec)
            if old is not None:
                try:
                    if cached:
                        old_rec = self.state.records.get(kind, path, old[1])
                    else:
                        old_rec = self._load(kind, read_blob(self.store, old[1], MAX_READ_BYTES, path), path)
                except GitqueueError:
                    old_rec = None  # what a local writer left; it is being replaced or removed
            self.parsed[path] = (old_rec, new_rec, old is not None, new is not None)
            self.kinds[path] = (kind, change.name)
        if not ok:
            return
        for path, (old_rec, new_rec, had, has) in self.parsed.items():
            kind, name = self.kinds[path]
            getattr(self, f"_{kind}")(path, name, old_rec, new_rec, had, has)
        self._lease_limit()

    def _lease_limit(self):
        """No worker holds more live leases than the queue's max_leases after this commit."""
        gained = {w for _, w in self.verdict.lease_changes if w is not None}
        if not gained:
            return
        live = dict(self.state.leases())
        for job, worker in self.verdict.lease_changes:
            if worker is None:
                live.pop(job, None)
            else:
                live[job] = worker
        cap = layout.max_leases(self.reg.settings)
        counts = Counter(live.values())
        for worker in sorted(gained):
            held = counts[worker]
            if held > cap:
                self.fail("lease", f"{worker} would hold {held} live leases, more than max_leases ({cap})")

    def _load(self, kind, data, path):
        if kind == "graph":
            from .graph import parse

            parse(data, path)  # its form here; whether it matches the records in _graph
            return data
        if kind in TOML_TOP_KINDS:
            rec = records.loads(kind, data, path)
        else:
            rec = records.load_at(kind, data, path)
        if kind == "queue":
            keys = [a["key"] for a in rec.get("admins", [])]
        else:
            keys = [rec["key"]] if kind == "worker" else []
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

    def _graph(self, path, name, old, new, had, has):
        """graph.tsv: an administrator's, and it must describe the commit's own records."""
        if not self._admin_only(path, had, has) or not has:
            return
        from .graph import problem

        reason = problem(self.after, new, self._graph_since())
        if reason:
            self.fail("graph", reason, path)
        else:
            self.state.checked_graphs.add(self.after.blob_id(layout.GRAPH))

    def _graph_since(self):
        """graph.problem's `since` when the parent's graph.tsv was found to match the records it
        names (by this State: a replay from the first commit checks every one), or the parent
        has neither graph.tsv nor jobs; else None."""
        old_id = self.before.blob_id(layout.GRAPH)
        if old_id is None:
            if self.before.tree_id_of("jobs") is not None:
                return None
            old = None
        elif old_id in self.state.checked_graphs:
            try:
                old = read_blob(self.store, old_id, layout.MAX_GRAPH_BYTES, layout.GRAPH)
            except GitqueueError:
                return None
        else:
            return None
        changed = {}
        for change in self.changes:
            if change.path.startswith("jobs/"):
                if change.kind != "job" or change.name in changed:
                    return None
                changed[change.name] = self.parsed[change.path][1]
        return self.before, old, changed

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
                result = read_record(self.after, "result", record_path("results", name))
            except GitqueueError:
                result = True
            if result is not None:
                self.fail("lease", f"lease on {name}, which has a result", path)
                return
            if job.get("prefailed"):
                self.fail("lease", f"lease on {name}, which is prefailed ({job['prefailed']})", path)
                return
            if new["token"] in self._fenced(name):
                self.fail("lease", f"lease on {name} under token {new['token']}, which an administrator's retry "
                                   "or update fenced", path)
                return
            self.deps_built(job, path, "lease")
            self.verdict.lease_changes.append((name, new["worker"]))
            if self.options.history:
                seen = self.state.tokens.get(new["token"])
                if seen is not None:
                    self.fail("token", f"lease token {new['token']} was used before (by {seen})", path)
                self.state.tokens[new["token"]] = new["worker"]
            return
        # removed: by its worker (release, report) or by an administrator (reclaim)
        self.verdict.lease_changes.append((name, None))
        if old is None:
            return  # not a valid lease: whoever may touch the path may clear it
        if record_path("results", name) not in self.parsed and b"Gitqueue-Action: reclaim" in self.message:
            self.verdict.reclaims += 1
        if not self.may_act_as(old["worker"]) and not self.is_admin():
            self.fail("owner", f"lease of {old['worker']} on {name} removed by {self.signer.fingerprint} "
                               f"({self.signer.principal})", path)

    def _result(self, path, name, old, new, had, has):
        if had and not has and self._set_aside(name, old):
            return
        if had:
            self.fail("result", f"result of {name} {'rewritten' if has else 'removed'}: a result is final (only "
                                "an administrator's retry or update sets one aside, naming it in retries/)", path)
            return
        self.verdict.results += 1
        worker = new["worker"]
        # A reused result names no worker that built it: an administrator's import wrote it.
        if not ("reused" in new and self.is_admin()) and self.deny_worker(path, worker, "result"):
            return
        self.check_signer_field(new, path)
        job = self.job(name, path, "result")
        if job is None:
            return
        lease_path = record_path("leases", name)
        try:
            lease = read_record(self.before, "lease", lease_path)
        except GitqueueError:
            lease = None
        if "reused" in new:
            problem = self._reuse_problem(name, new, lease)
            if problem:
                self.fail("result", problem, path)
                return
        elif lease is not None:
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
        elif new["token"] in self._fenced(name):
            self.fail("result", f"late result for {name} by {worker} under token {new['token']}, which an "
                                "administrator's retry or update fenced", path)
            return
        else:
            self.verdict.late += 1
            if self.options.history and self.state.tokens.get(new["token"]) != worker:
                self.fail("token", f"late result for {name} under token {new['token']}, which was never a lease "
                                   f"of {worker}", path)
                return
        if not self.deps_built(job, path, "result"):
            return
        problem = build_fields_problem(new) or self.installed_problem(job, new) or self._transient_problem(name, new)
        if problem:
            self.fail("result", problem, path)
            return
        for package in new.get("packages", ()):
            problem = layout.package_name_problem(package["name"], job, self.reg.settings)
            if problem:
                self.fail("result", problem, path)
                return
        if new["status"] == "success":
            for package in new.get("packages", ()):
                self.verdict.packages.append((name, new["token"], package))

    def _lapsed_lease(self, name, worker, token) -> bool:
        """Whether the parent's lapsed record of `name` lists `worker`'s lease under `token`."""
        try:
            lapsed = read_record(self.before, "lapsed", record_path("lapsed", name))
        except GitqueueError:
            return False
        return any(e["worker"] == worker and e["token"] == token for e in (lapsed or {}).get("lapsed", ()))

    def _reuse_problem(self, name, result, lease) -> str | None:
        """Why an up-to-date result taken from an earlier success (import --previous) may not
        stand, or None: only an administrator writes one, for a job nobody holds, a success
        marked up_to_date naming packages. (That the package tree holds them with these
        checksums is checked where the tree is: `verify --packages`, publish.)"""
        if not self.is_admin():
            return f"an up-to-date result for {name} reused from an earlier build, written by a worker"
        if lease is not None:
            return f"an up-to-date result for {name} reused from an earlier build while {lease['worker']} holds it"
        if result["status"] != "success" or result.get("up_to_date") is not True or not result.get("packages"):
            return f"a reused result for {name} is an up-to-date success naming its packages"
        return None

    def _retries_before(self, name):
        try:
            return read_record(self.before, "retry", record_path("retries", name))
        except GitqueueError:
            return None

    def _fenced(self, name) -> set:
        from .lease import fenced_tokens

        return fenced_tokens(self._retries_before(name))

    def _transient_problem(self, name, result) -> str | None:
        """Why a failure marked transient comes before the queue's max_attempts, or None."""
        if not result.get("transient"):
            return None
        from .lease import transient_failures

        try:
            declines = read_record(self.before, "decline", record_path("declines", name))
        except GitqueueError:
            declines = None
        failures = transient_failures(declines, self._retries_before(name)) + 1
        cap = layout.max_attempts(self.reg.settings)
        if failures < cap:
            return (f"a transient failure of {name} marked final at attempt {failures}, before max_attempts ({cap}): "
                    "it goes back to the queue (a transient entry of declines/)")
        return None

    def _retired(self, name) -> bool:
        """Whether this commit is an administrator's that removes job `name` (import --update):
        then every record of the job may go with it."""
        job = self.parsed.get(record_path("jobs", name))
        return self.is_admin() and job is not None and job[2] and not job[3]

    def _set_aside(self, name, old) -> bool:
        """Whether this commit sets aside the result `old` of `name` as an administrator may: its
        retries record gains an entry naming the result's token (checked by _retry), or the job
        itself is retired."""
        if self._retired(name):
            return True
        if not self.is_admin() or old is None:
            return False
        entry = self.parsed.get(record_path("retries", name))
        if entry is None or entry[1] is None:
            return False
        before = entry[0]["retried"] if entry[0] else []
        return any(e.get("token") == old["token"] for e in entry[1]["retried"][len(before):])

    def _retry(self, path, name, old, new, had, has):
        """retries/: an administrator's, appended to only; each entry names the result this
        commit removes (if any), and the job's declines as the parent has them."""
        if not self._admin_only(path, had, has):
            return
        if not has and self._retired(name):
            return
        if not has:
            self.fail("retry", f"retries of {name} removed: they are only ever appended to", path)
            return
        before = old["retried"] if old else []
        added = new["retried"][len(before):]
        if new["retried"][:len(before)] != before or not added:
            self.fail("retry", f"retries of {name} changed: entries are only appended", path)
            return
        if self.job(name, path, "retry") is None:
            return
        try:
            declines = read_record(self.before, "decline", record_path("declines", name))
        except GitqueueError:
            declines = None
        count = len((declines or {}).get("declined", ()))
        result_path = record_path("results", name)
        removed = self.parsed.get(result_path)
        for entry in added:
            if entry["declines"] != count:
                self.fail("retry", f"retry of {name} counts {entry['declines']} declines, but the job has {count}",
                          path)
                return
            if "token" in entry:
                if removed is None or removed[3] or removed[0] is None or removed[0]["token"] != entry["token"] \
                        or removed[0]["status"] != entry.get("status"):
                    self.fail("retry", f"retry of {name} names the result under token {entry['token']}, which is not "
                                       "the result this commit removes", path)
                    return

    def _lapsed(self, path, name, old, new, had, has):
        if not self._admin_only(path, had, has):
            return
        if not has and self._retired(name):
            return
        if not has:
            self.fail("lapsed", f"lapsed leases of {name} removed: they are only ever appended to", path)
            return
        before = old["lapsed"] if old else []
        added = new["lapsed"][len(before):]
        if new["lapsed"][:len(before)] != before or len(added) != 1:
            self.fail("lapsed", f"lapsed leases of {name} changed: one entry is appended per reclaim", path)
            return
        lease_path = record_path("leases", name)
        removed = self.parsed.get(lease_path)
        entry = added[0]
        if (removed is None or removed[3] or removed[0] is None or removed[0]["worker"] != entry["worker"]
                or removed[0]["token"] != entry["token"]):
            self.fail("lapsed", f"lapsed lease of {entry['worker']} on {name} is not the lease this commit "
                                "reclaims", path)

    def _decline(self, path, name, old, new, had, has):
        if not has and self._retired(name):
            return
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
        if len(added) > 1:
            # One lease is given back per commit: more entries would count a transient failure twice
            # against the job's max_attempts (or hold it back from its worker twice).
            self.fail("decline", f"declines of {name} gain {len(added)} entries: one is appended per lease given "
                                 "back", path)
            return
        lease_path = record_path("leases", name)
        released = self.parsed.get(lease_path)
        for entry in added:
            if self.deny_worker(path, entry["worker"], "decline"):
                return
            if released is None or released[3] or released[0] is None or released[0]["worker"] != entry["worker"]:
                self.fail("decline", f"{entry['worker']} declines {name} without giving back its lease in the "
                                     "same commit", path)
                return
            if "token" in entry and entry["token"] != released[0]["token"]:
                self.fail("decline", f"{entry['worker']} declines {name} under token {entry['token']}, which is not "
                                     "the token of the lease it gives back", path)
                return


def build_fields_problem(result: dict) -> str | None:
    """Why the build fields of a (schema-valid) result contradict each other, or None.

    An up-to-date result is a success; a failed phase belongs to a failure; the files a result
    names in its upload area (packages, log, phase logs) have names of their own, so that none
    stands for another in incoming/TOKEN/ or logs/JOB/.
    """
    status = result["status"]
    if result.get("up_to_date") and status != "success":
        return f"a {status} marked up_to_date: only a success can be up to date"
    if result.get("transient") and status != "failure":
        return f"a {status} marked transient: only a failure can be transient"
    if result.get("failed_phase") and status != "failure":
        return f"a {status} naming the failed phase {result['failed_phase']}"
    names = [p["name"] for p in result.get("packages", ())] + [p["name"] for p in result.get("phase_logs", ())]
    if result.get("log", {}).get("name"):
        names.append(result["log"]["name"])
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        return f"the result names {twice[0]} twice among its packages and logs"
    installed = [p["name"] for p in result.get("installed", ())]
    if len(set(installed)) != len(installed):
        return "the result lists an installed package twice"
    return None


def first_parent_chain(store, old: bytes | None, new: bytes, limit: int | None = None):
    """The commits from just after `old` to `new` (oldest first) along first parents.

    Returns None when `old` is not reached (not a fast-forward, or more than `limit` commits);
    with `old` None, the whole chain down to the root commit. Each commit's header is read
    before the commit: ChainError for one that is missing, not a commit, or larger than
    MAX_COMMIT_BYTES.
    """
    chain: list[Commit] = []
    sha: bytes | None = new
    while sha != old:
        if sha is None or (limit is not None and len(chain) >= limit):
            return None
        header = object_header(store, sha)
        if header is None:
            raise ChainError(f"commit {sha.decode()} is missing")
        if header[0] != "commit":
            raise ChainError(f"{sha.decode()} is a {header[0]}, not a commit")
        if header[1] > MAX_COMMIT_BYTES:
            raise ChainError(f"commit {sha.decode()} has {header[1]} bytes, more than {MAX_COMMIT_BYTES}")
        try:
            commit = store[sha]
        except Exception as e:  # noqa: BLE001 - dulwich's parse errors of a malformed commit are many
            raise ChainError(f"commit {sha.decode()} is malformed ({type(e).__name__})") from None
        chain.append(commit)
        sha = commit.parents[0] if commit.parents else None
    chain.reverse()
    return chain
