"""Keeping a long-running process small: the memory it freed goes back to the system.

glibc's malloc keeps what Python and SQLite free for the process, so a worker's resident size
stays at the highest it ever reached: a rebuilt index, a catch-up, the page cache of a claim.
A small machine's `gitqueue work` runs for weeks, and its builds need that memory.
"""

import gc


def give_back() -> None:
    """Collect garbage, then return the heap's free pages to the system (where malloc is glibc's)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (ImportError, OSError, AttributeError):  # no ctypes, or not glibc
        pass
