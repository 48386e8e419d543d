"""Keeping a long-running process small: memory given back, and a library not loaded.

glibc's malloc keeps what Python and SQLite free for the process, so a worker's resident size
stays at the highest it ever reached: a rebuilt index, a catch-up, the page cache of a claim.
A small machine's `gitqueue work` runs for weeks, and its builds need that memory.
"""

import gc
import sys

# CPython's own implementations of what hashlib always offers (3.12 merged the SHA-2 modules).
_BUILTIN_HASHES: tuple[str, ...]
if sys.version_info >= (3, 12):
    _BUILTIN_HASHES = ("_md5", "_sha1", "_sha2", "_sha3", "_blake2")
else:
    _BUILTIN_HASHES = ("_md5", "_sha1", "_sha256", "_sha512", "_sha3", "_blake2")


def give_back() -> None:
    """Collect garbage, then return the heap's free pages to the system (where malloc is glibc's)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (ImportError, OSError, AttributeError):  # no ctypes, or not glibc
        pass


def builtin_hashes() -> bool:
    """Have hashlib use the hashes built into CPython rather than OpenSSL's: libcrypto is 3.4 MiB
    resident for as long as the process lives, and what a worker hashes (git objects, its logs
    and packages) is little next to what it builds. Works only before hashlib is first imported,
    and only where CPython was built with its own; returns whether hashlib is without OpenSSL."""
    if "hashlib" in sys.modules:
        return sys.modules.get("_hashlib", False) is None
    from importlib.util import find_spec

    if not all(find_spec(name) for name in _BUILTIN_HASHES):
        return False
    # `import _hashlib` then fails, and hashlib takes _sha1 and the others
    sys.modules["_hashlib"] = None  # type: ignore[assignment]
    return True


def lean_worker() -> None:
    """What a long-running `gitqueue work` gives up for memory: OpenSSL's hashes (builtin_hashes)
    and most of SQLite's page cache for its index (index.page_cache_kib)."""
    builtin_hashes()
    from . import index

    index.page_cache_kib = 256
