"""A queue as one process sees it: the repository, the local cache and index, and transactions.

A transaction is the porcelain of the protocol: fetch the tip, bring the index forward, let the
caller decide on changes from the fresh tree, commit and push; when the push is rejected because
another worker moved the branch first, back off with jitter and do it all again from the new tip.
"""

import hashlib
import os
import re
import time
from typing import TYPE_CHECKING

from . import records
from .backoff import Backoff
from .errors import GitqueueError, PushRejected, QueueNotFound, RemoteError, RepositoryDamaged
from .gitstore import CachedRemote, LocalRemote, build_tree, is_local_path, make_commit
from .layout import SETTINGS

if TYPE_CHECKING:
    from .index import Index
    from .locking import FileLock


class Change:
    """What one transaction writes: files to set (bytes) or delete (None), and the message."""

    __slots__ = ("files", "message")

    def __init__(self, files: dict, message: str):
        self.files = files
        self.message = message


class IndexBehind(Exception):
    """Raised by a `decide` that cannot decide with the index left behind the tip (see
    Queue.transact's `may_defer`): the transaction brings the index to the tip and decides again."""


class Queue:
    """One queue repository, with this host's cache directory for it."""

    def __init__(self, url: str, cache_root: str, branch: str = "main", ssh_command: str | None = None,
                 clock=time.time, signer=None, notice=None, network_timeout: float | None = None,
                 worker: str | None = None):
        if not url:
            raise QueueNotFound("no queue given (use --queue URL or GITQUEUE_QUEUE)")
        self.url = url
        self.branch = branch
        self.clock = clock
        self.cache_dir = os.path.join(cache_root, _cache_name(url, branch))
        os.makedirs(self.cache_dir, exist_ok=True)
        self.ssh_command = ssh_command  # as given: gitqueue.open_queue adds connection reuse
        self.worker = worker  # who claim, report, heartbeat and release act as
        self._remote: LocalRemote | CachedRemote | None = None
        self._index: Index | None = None
        self._lock: FileLock | None = None
        self.stats = {"pushes": 0, "rejected": 0}
        # True while a transaction decides with the index behind the tip (see transact)
        self.index_behind = False
        # signing.Signer: every commit made through this queue is signed with it (docs/trust.md)
        self.signer = signer
        # Where to say what was repaired (the CLI: stderr); the library never prints.
        self.notice = notice or (lambda message: None)
        self.network_timeout = network_timeout
        self._signed = (None, False)  # (blob id of queue.toml, whether it lists admins)

    # -- resources -------------------------------------------------------------------------

    @property
    def remote(self):
        if self._remote is None:
            if is_local_path(self.url):
                path = self.url[7:] if self.url.startswith("file://") else self.url
                if not os.path.isdir(path):
                    raise QueueNotFound(f"{self.url}: no such repository")
                self._remote = LocalRemote(path, self.branch)
            else:
                self._remote = CachedRemote(
                    self.url, os.path.join(self.cache_dir, "repo.git"), self.branch, self.ssh_command
                )
                if self.network_timeout:
                    self._remote.timeout = self.network_timeout
        return self._remote

    @property
    def index(self):
        if self._index is None:
            from .index import Index

            self._index = Index(os.path.join(self.cache_dir, "index.sqlite"))
        return self._index

    def lock(self):
        """The file lock that serializes this host's processes on this queue's cache."""
        if self._lock is None:
            from .locking import FileLock

            self._lock = FileLock(os.path.join(self.cache_dir, "lock"))
        return self._lock

    def close(self):
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    def rest(self):
        """Hold as little memory as possible until the next use: the index keeps its connection
        but not its page cache, the cache repository (its pack maps, its parsed objects) is
        closed and reopens when used, and the freed heap goes back to the system. A worker rests
        while its build runs: on a small machine that memory is the build's."""
        if self._index is not None:
            self._index.shrink()
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        from .memory import give_back

        give_back()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def repairing(self, operation):
        """Run `operation()`; if this host's cache of a remote queue turns out damaged, rebuild it
        from the remote and run it once more. A damaged local-path queue is an error to report.
        """
        try:
            return operation()
        except RepositoryDamaged as e:
            if is_local_path(self.url):
                raise RepositoryDamaged(f"{e} (the queue repository itself: check it with git fsck)") from None
            with self.lock():
                self._discard_cache()
            self.notice(f"gitqueue: {e}; the cache was rebuilt from {self.url}")
            return operation()

    def _discard_cache(self):
        """Throw this host's copy of a remote queue away; the next fetch makes it anew (shallow)."""
        import shutil

        self.close()  # the next use opens the new cache and index
        repo = os.path.join(self.cache_dir, "repo.git")
        aside = f"{repo}.damaged-{os.getpid()}"
        if os.path.isdir(repo):
            os.rename(repo, aside)
            shutil.rmtree(aside, ignore_errors=True)
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            try:
                os.unlink(os.path.join(self.cache_dir, name))
            except FileNotFoundError:
                pass

    def fetch(self):
        """Fetch the tip; return (commit id, TreeReader). Raises QueueNotFound when empty."""
        return self.repairing(self._fetch)

    def _fetch(self):
        with self.lock():
            tip = self.remote.fetch()
        if tip is None:
            raise QueueNotFound(f"{self.url}: no queue on branch {self.branch} (run gitqueue init)")
        return tip, self.remote.reader(tip)

    def settings(self, reader) -> dict:
        data = reader.read(SETTINGS)
        if data is None:
            raise QueueNotFound(f"{self.url}: {SETTINGS} is missing on branch {self.branch}")
        return records.loads("queue", data, SETTINGS)

    def sync(self):
        """Fetch and bring the index to the tip (caller holds the lock); return (tip, reader)."""
        return self.repairing(self._sync)

    def _sync(self, defer: bool = False):
        tip, reader = self._fetch()
        self.index_behind = False
        try:
            if defer and self.index.defer_graph(self.remote, tip):
                self.index_behind = True
            else:
                self.index.update(self.remote, tip)
        finally:
            forget = getattr(self.remote.object_store, "forget_fetched", None)
            if forget is not None:
                forget()  # what the fetch brought is in the index now; the rest is read from packs
        return tip, reader

    # -- writing ---------------------------------------------------------------------------

    def batch(self):
        """Hold this host's locks across several transactions (each still its own commit)."""
        from contextlib import ExitStack

        stack = ExitStack()
        stack.enter_context(self.lock())
        stack.enter_context(self.remote.writer_lock())
        return stack

    def transact(self, decide, identity: str, attempts: int = 200, use_index: bool = True,
                 may_defer: bool = False):
        """Run `decide(tip, reader)` -> Change | None against the freshest tip and push it.

        `decide` may raise GitqueueError to stop. Returns (new commit id, the Change) or
        (None, None) when `decide` had nothing to do. Retries with jittered backoff on a
        rejected push; gives up with RemoteError after `attempts` tries.

        With `may_defer` (claims), an admin commit that changed the graph since the index's
        commit may be left for the index's next update (see Index.defer_graph): `decide` then
        runs with `index_behind` set, takes the index's jobs as mere candidates and checks each
        against the tree, and raises IndexBehind for anything else it would conclude from the
        index; the index is then brought to the tip and `decide` runs again.
        """
        return self.repairing(lambda: self._transact(decide, identity, attempts, use_index, may_defer))

    def _transact(self, decide, identity, attempts, use_index, may_defer=False):
        delays = Backoff(0.005, 1.0)
        defer = may_defer and use_index
        with self.lock():
            for _ in range(attempts):
                with self.remote.writer_lock():
                    tip, reader = self._sync(defer) if use_index else self._fetch()
                    defer = False  # once per transaction at most
                    try:
                        change = decide(tip, reader)
                    except IndexBehind:
                        continue  # at once, with the index brought to the tip
                    finally:
                        behind, self.index_behind = self.index_behind, False
                    if change is None:
                        return None, None
                    tree, objects = build_tree(self.remote.object_store, reader.tree_id, change.files)
                    commit = self._commit(tree, tip, change.message, identity, reader)
                    self.stats["pushes"] += 1
                    try:
                        self.remote.push(tip, commit, objects)
                    except PushRejected:
                        self.stats["rejected"] += 1
                        commit = None
                if commit is None:
                    time.sleep(delays.next())
                    continue
                if use_index and not behind:
                    self.index.update(self.remote, commit.id)
                return commit.id, change
        raise RemoteError(f"{self.url}: gave up after {attempts} rejected pushes")

    def _commit(self, tree, tip, message, identity, reader):
        """The commit object, signed when this queue has a signer; refused unsigned on a signed queue."""
        commit = make_commit(tree, tip, message, identity, self.clock())
        if self.signer is not None:
            from .signing import sign_commit

            sign_commit(commit, self.signer)
        elif self.is_signed(reader):
            raise GitqueueError(f"{self.url}: this queue requires signed commits: give a signing key "
                                "(--signing-key, GITQUEUE_SIGNING_KEY or signing_key in the config)")
        return commit

    def is_signed(self, reader) -> bool:
        """Whether the queue at `reader`'s tree lists admins, so that every commit must be signed."""
        blob = reader.blob_id(SETTINGS)
        if blob != self._signed[0]:
            self._signed = (blob, bool(blob and self.settings(reader).get("admins")))
        return self._signed[1]

    @property
    def signer_fingerprint(self) -> str | None:
        return None if self.signer is None else self.signer.fingerprint

    def create(self, settings: dict, identity: str):
        """Write the first commit (queue.toml) of a new queue; refuse if the branch exists."""
        data = records.dumps("queue", settings)
        with self.lock():
            if self.remote.fetch() is not None:
                raise GitqueueError(f"{self.url}: a queue already exists on branch {self.branch}")
            tree, objects = build_tree(self.remote.object_store, None, {SETTINGS: data})
            message = f"init queue {settings['name']}\n\n" + trailers(
                {"Action": "init", "Queue": settings["name"], "Format-Version": settings["format_version"]}
            )
            commit = make_commit(tree, None, message, identity, self.clock())
            if self.signer is not None:
                from .signing import sign_commit

                sign_commit(commit, self.signer)
            elif settings.get("admins"):
                raise GitqueueError(f"{self.url}: a queue with admins is signed: give a signing key "
                                    "(--signing-key, GITQUEUE_SIGNING_KEY or signing_key in the config)")
            try:
                self.remote.push(None, commit, objects)
            except PushRejected:
                raise GitqueueError(f"{self.url}: a queue already exists on branch {self.branch}") from None
            return commit.id


def trailers(facts: dict) -> str:
    """git trailer lines ("Gitqueue-Job: x") for a commit message."""
    lines = []
    for key, value in facts.items():
        if value is None or value == "":
            continue
        text = " ".join(str(value).split())  # one line each, whatever the value held
        lines.append(f"Gitqueue-{key}: {text}")
    return "\n".join(lines) + "\n"


def _cache_name(url: str, branch: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").rsplit("/", 1)[-1])[:40] or "queue"
    digest = hashlib.sha256(f"{url}\0{branch}".encode()).hexdigest()[:12]
    return f"{slug}-{digest}"
