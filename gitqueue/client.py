"""The public Queue: a queue opened by `gitqueue.open_queue`, with the worker's protocol as methods."""

from . import queue
from .errors import GitqueueError


class Queue(queue.Queue):
    """A queue as `open_queue` opens it: queue.Queue, plus the worker's protocol as methods.

    The methods live here, above lease.py and worker.py, which build on queue.Queue: defined in
    queue.py they made an import loop (queue -> lease -> queue).
    """

    def _worker_name(self) -> str:
        if not self.worker:
            raise GitqueueError(f"{self.url}: no worker name: open the queue with worker=NAME")
        return self.worker

    def claim(self, host: str | None = None, platform: dict | None = None):
        """Lease the best ready job for this queue's worker; returns a lease.Claim (see lease.claim)."""
        from .lease import claim

        return claim(self, self._worker_name(), host, platform)

    def report(self, job: str, status: str, **details) -> dict:
        """Upload a build's files and record its result (see worker.report_build for `details`)."""
        from .worker import report_build

        return report_build(self, self._worker_name(), job, status, **details)

    def heartbeat(self):
        """Tell the queue this worker is alive; returns a lease.Heartbeat (see lease.heartbeat)."""
        from .lease import heartbeat

        return heartbeat(self, self._worker_name())

    def release(self, job: str, reason: str = "released", token: str | None = None) -> None:
        """Give `job` back; other workers get it, this one is not offered it again (see lease.release)."""
        from .lease import release

        release(self, self._worker_name(), job, reason, token)

    def status(self, top: int = 5) -> dict:
        """Progress, rates, workers, expiring leases and blockers, as `gitqueue status --json` prints."""
        from .live import status

        return status(self, top=top)
