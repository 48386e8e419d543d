"""A signed queue with hostile workers, for the hook, verify and serve tests.

`SignedQueue` builds, in a bare repository made by `git init --bare`, a queue whose admin is
alice, with workers w1 and w2 (each its own key), w3 (registered, then revoked) and a key that
was never registered; jobs a-1, b-1, c-1 (needs a-1). Hostile commits are made directly with
dulwich (gitstore.build_tree + make_commit + signing.sign_commit) and pushed with real git.
"""

import subprocess
from pathlib import Path

from dulwich.repo import Repo

from gitqueue import lease, records, registry
from gitqueue.admin import import_jobs, init_queue
from gitqueue.gitstore import build_tree, make_commit
from gitqueue.layout import heartbeat_path, record_path
from gitqueue.queue import Queue
from gitqueue.signing import Signer, sign_commit

from helpers import job

JOBS = [job("a-1"), job("b-1"), job("c-1", ["a-1"])]


def keypair(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path


class SignedQueue:
    def __init__(self, tmp_path: Path, jobs=JOBS, max_record_bytes=None, packages_url=""):
        self.tmp = tmp_path
        keys = tmp_path / "keys"
        keys.mkdir(exist_ok=True)
        self.keys = {n: keypair(keys, n) for n in ("alice", "k1", "k2", "k3", "stranger")}
        self.signers = {n: Signer.from_key_file(str(p)) for n, p in self.keys.items()}
        self.path = str(tmp_path / "q.git")
        subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", self.path], check=True)
        alice = self.signers["alice"]
        with self.queue("alice") as q:
            init_queue(q, "hostile", lease_ttl=60, packages_url=packages_url,
                       admins=[{"name": "alice", "key": alice.public_key}],
                       **({"max_record_bytes": max_record_bytes} if max_record_bytes else {}))
            import_jobs(q, jobs, "g.jsonl")
            for name, key in (("w1", "k1"), ("w2", "k2"), ("w3", "k3")):
                registry.add_worker(q, name, self.signers[key].public_key)
            registry.revoke_worker(q, "w3", "stolen laptop")
        # Hostile commits are made here, seeing the queue's objects through alternates, so that
        # a push sends them to the server like any client would.
        self.client = str(tmp_path / "client.git")
        subprocess.run(["git", "init", "-q", "--bare", self.client], check=True)
        Path(self.client, "objects", "info", "alternates").write_text(str(Path(self.path, "objects")) + "\n")

    def install_hook(self) -> "SignedQueue":
        """Install gitqueue's pre-receive hook in the queue repository (what `gitqueue hooks
        install` does, with this checkout's gitqueue); returns self."""
        import sys

        from gitqueue.hook import install

        from helpers import REPO

        install(self.path, sys.executable, package_dir=str(REPO))
        return self

    def queue(self, who: str, url: str | None = None, ssh_command: str | None = None) -> Queue:
        return Queue(url or self.path, str(self.tmp / f"cache-{who}"), ssh_command=ssh_command,
                     signer=self.signers[who])

    def tip(self) -> bytes:
        with Repo(self.path) as repo:
            return repo.refs[b"refs/heads/main"]

    def read(self, path: str, commit: bytes | None = None) -> bytes | None:
        with Repo(self.path) as repo:
            sha = commit or repo.refs[b"refs/heads/main"]
            tree = repo.object_store[sha].tree
            try:
                from dulwich.object_store import tree_lookup_path

                _, blob = tree_lookup_path(repo.object_store.__getitem__, tree, path.encode())
            except KeyError:
                return None
            return repo.object_store[blob].as_raw_string()

    def commit(self, changes: dict, who: str | None, message: str = "hostile", parent: bytes | None = None,
               identity: str = "mallory <m@gitqueue>", raw_tree=None) -> bytes:
        """A commit, stored in the client repository only, on `parent` (default: the queue's tip)."""
        return client_commit(self.client, parent or self.tip(), changes, self.signers[who] if who else None,
                             message, identity, raw_tree)


def client_commit(client: str, parent: bytes, changes: dict | None, signer, message: str, identity: str,
                  raw_tree=None) -> bytes:
    """A commit on `parent`, signed by `signer` (None: unsigned), stored in the repository `client`
    only (it sees the queue's objects through alternates): `changes` ({path: bytes|None}) applied
    by gitqueue's own tree builder, or `raw_tree(store, base_tree) -> (tree id, objects)`."""
    with Repo(client) as repo:
        store = repo.object_store
        if raw_tree is not None:
            tree, objects = raw_tree(store, store[parent].tree)
        else:
            tree, objects = build_tree(store, store[parent].tree, changes)
        c = make_commit(tree, parent, message, identity)
        if signer is not None:
            sign_commit(c, signer)
        for o in objects + [c]:
            store.add_object(o)
        return c.id


def lease_record(name, worker, token="ab" * 16, **extra) -> tuple[str, bytes]:
    return record_path("leases", name), records.dumps("lease", {"job": name, "worker": worker, "token": token,
                                                                **extra})


def result_record(name, worker, token="ab" * 16, status="success", **extra) -> tuple[str, bytes]:
    rec = {"job": name, "version": "1.0", "status": status, "worker": worker, "token": token, **extra}
    return record_path("results", name), records.dumps("result", rec)


def heartbeat_record(worker, seq=0) -> tuple[str, bytes]:
    return heartbeat_path(worker), records.dumps("heartbeat", {"worker": worker, "seq": seq})


def push(sq: SignedQueue, url: str, sha: bytes, ssh_command: str, ref: str = "refs/heads/main",
         force: bool = False) -> subprocess.CompletedProcess:
    """git push SHA:REF from the client repository to `url` over ssh; returns the finished process."""
    import os

    argv = ["git", "-C", sq.client, "push", *(["--force"] if force else []), url,
            f"{sha.decode() if sha else ''}:{ref}"]
    return subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, GIT_SSH_COMMAND=ssh_command),
                          timeout=120)


__all__ = ["SignedQueue", "client_commit", "lease", "lease_record", "result_record", "heartbeat_record", "keypair",
           "push"]
