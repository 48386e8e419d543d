"""Inter-process file locks that the kernel drops when their holder dies.

On POSIX this is flock(2) directly: importing filelock costs a claim ~20 ms of start-up (it
pulls in asyncio). filelock remains the fallback where fcntl is missing.
"""

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filelock import BaseFileLock

try:
    import fcntl

    HAVE_FCNTL = True
except ImportError:  # pragma: no cover - not POSIX
    HAVE_FCNTL = False


class FileLock:
    """An exclusive lock on `path`, re-entrant within one object."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None
        self._depth = 0
        self._fallback: BaseFileLock | None = None

    def acquire(self):
        if self._depth == 0:
            if not HAVE_FCNTL:
                from filelock import FileLock as _FileLock

                self._fallback = self._fallback or _FileLock(self.path)
                self._fallback.acquire()
            else:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
        self._depth += 1

    def release(self):
        self._depth -= 1
        if self._depth == 0:
            if self._fallback is not None:
                self._fallback.release()
            elif self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
