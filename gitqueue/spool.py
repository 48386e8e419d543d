"""Group commit for the workers of one host: whoever gets the host's lock settles everyone's turn.

The workers on one host share a cache and take turns under its lock. With many of them, most of
each turn is fixed cost: a fetch, an index update, a dozen new files, a push. So a worker that
has finished a job writes its request (report this, claim the next) into the spool and then
waits for the lock; whoever gets the lock first settles every request in the spool in one commit
(`lease.settle`) and leaves each requester its outcome. Throughput then grows with the number of
waiting workers instead of shrinking, and over ssh one push serves them all.

Files, in `<cache>/spool/`: `<worker>.<pid>.req` (the request) and `<worker>.<pid>.out` (its
outcome), both JSON written by rename. A request whose process has died is dropped unsettled: a
claim for a dead worker would only wait for reclaim.
"""

import json
import os
import time

from .errors import GitqueueError
from .files import unlink, write_json

STALE_AFTER = 3600.0  # a request this old was left by a process that died long ago


class Spool:
    """This host's pending requests on one queue."""

    def __init__(self, queue):
        self.queue = queue
        self.dir = os.path.join(queue.cache_dir, "spool")
        os.makedirs(self.dir, exist_ok=True)

    def submit(self, request: dict, identity: str):
        """Settle `request` (see lease.settle) alone or with others waiting; return its lease.Outcome."""
        stem = os.path.join(self.dir, f"{request['worker']}.{os.getpid()}")
        request = dict(request, pid=os.getpid(), at=time.time())
        request.setdefault("id", os.urandom(8).hex())
        write_json(stem + ".req", request)
        try:
            with self.queue.lock():
                # Withdrawn before the lock is released: once settled, never settled again.
                try:
                    return self._settle(stem, request, identity)
                finally:
                    unlink(stem + ".req")
        finally:
            unlink(stem + ".req")  # interrupted while waiting for the lock

    def _settle(self, stem, request, identity):
        from .lease import Outcome, settle

        mine = _read(stem + ".out")
        if mine is not None and mine.get("id") == request["id"]:
            os.unlink(stem + ".out")
            return Outcome.from_json(mine["outcome"])
        others = self._waiting(stem, request.get("signer"))
        outcomes = settle(self.queue, [request] + [r for _, r in others], identity)
        for (path, req), outcome in zip(others, outcomes[1:]):
            write_json(path[:-4] + ".out", {"id": req["id"], "outcome": outcome.to_json()})
            unlink(path)
        return outcomes[0]

    def _waiting(self, own: str, signer) -> list:
        """(path, request) of the other live requests that one commit may settle with ours."""
        found = []
        now = time.time()
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if not name.endswith(".req") or path == own + ".req":
                continue
            req = _read(path)
            if req is None:
                continue
            if not _alive(req.get("pid")) or now - req.get("at", 0) > STALE_AFTER:
                unlink(path)
                continue
            if req.get("signer") != signer:
                continue  # one commit has one signer: those settle their own
            found.append((path, req))
        return found


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        # Half-written files cannot exist (rename); an unreadable one is damage: drop it.
        unlink(path)
        if path.endswith(".out"):
            raise GitqueueError(f"{path}: unreadable outcome ({e})") from None
        return None

