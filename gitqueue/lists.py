"""The priority list and the per-architecture "no way" lists: reading them from a queue's tree and
matching jobs against them (admin.change_priority and admin.change_noway change them).

Patterns are shell-style (fnmatch) and match a job's PKGNAME (`gmake-4.4.1`), its base name
without the version (`gmake`), or its package path (`devel/gmake`).
"""

import fnmatch
import re

from . import records
from .layout import NOWAY, PRIORITY, base_name


def compile_patterns(patterns):
    """One regular expression matching any of the fnmatch patterns (None if there are none)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def matches(rx, job: dict) -> bool:
    """Whether the compiled patterns `rx` match a job's name, base name or package path.

    The base name is the name without the record's version (layout.base_name), so `libbsd`
    matches libbsd-0.11.7-2 of version 0.11.7-2.
    """
    if rx is None:
        return False
    return bool(rx.match(job["name"]) or rx.match(base_name(job))
                or (job.get("pkgpath") and rx.match(job["pkgpath"])))


def read_priority(reader) -> list[str]:
    data = reader.read(PRIORITY)
    return [] if data is None else records.loads("priority", data, PRIORITY)["packages"]


def read_noway(reader) -> list[dict]:
    data = reader.read(NOWAY)
    return [] if data is None else records.loads("noway", data, NOWAY)["entries"]


def noway_for(entries: list[dict], arch: str) -> list[dict]:
    """The entries that apply to a queue of architecture `arch`."""
    return [e for e in entries if not e["arch"] or e["arch"] == arch]
