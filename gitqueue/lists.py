"""The priority list and the per-architecture "no way" lists, stored in the queue repository.

Patterns are shell-style (fnmatch) and match a job's PKGNAME (`gmake-4.4.1`), its base name
without the version (`gmake`), or its package path (`devel/gmake`).
"""

import fnmatch
import re

from . import records
from .errors import GitqueueError
from .layout import NOWAY, PRIORITY, base_name
from .queue import Change, trailers

ADMIN = "gitqueue-admin <admin@gitqueue>"


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


def change_priority(queue, add=(), remove=()) -> list[str]:
    """Add and remove patterns of the priority list in one commit; return the new list."""
    out = []

    def decide(tip, reader):
        queue.settings(reader)
        current = read_priority(reader)
        missing = [p for p in remove if p not in current]
        if missing:
            raise GitqueueError(f"not on the priority list: {', '.join(missing)}")
        new = [p for p in current if p not in remove] + [p for p in add if p not in current]
        out[:] = new
        if new == current:
            return None
        what = "; ".join(x for x in (f"add {' '.join(add)}" if add else "",
                                     f"remove {' '.join(remove)}" if remove else "") if x)
        message = f"priority: {what}\n\n" + trailers({"Action": "priority", "Packages": " ".join(new)})
        data = records.dumps("priority", {"packages": new}) if new else None
        return Change({PRIORITY: data}, message)

    queue.transact(decide, ADMIN, use_index=False)
    return out


def change_noway(queue, add: list[dict] = (), remove: list[tuple[str, str]] = ()) -> list[dict]:
    """Add entries ({pattern, arch, reason}) and remove (pattern, arch) pairs; return the list."""
    out = []

    def decide(tip, reader):
        queue.settings(reader)
        current = read_noway(reader)
        keys = {(e["pattern"], e["arch"]) for e in current}
        missing = [f"{p} ({a or 'every arch'})" for p, a in remove if (p, a) not in keys]
        if missing:
            raise GitqueueError(f"not on the no-way list: {', '.join(missing)}")
        new = [e for e in current if (e["pattern"], e["arch"]) not in set(remove)]
        for entry in add:
            new = [e for e in new if (e["pattern"], e["arch"]) != (entry["pattern"], entry["arch"])] + [entry]
        out[:] = new
        if new == current:
            return None
        parts = [f"{e['pattern']} on {e['arch'] or 'every arch'}: {e['reason']}" for e in add]
        parts += [f"remove {p} ({a or 'every arch'})" for p, a in remove]
        message = f"no way: {'; '.join(parts)}\n\n" + trailers(
            {"Action": "noway", "Add": " ".join(e["pattern"] for e in add) or None,
             "Remove": " ".join(p for p, _ in remove) or None})
        data = records.dumps("noway", {"entries": new}) if new else None
        return Change({NOWAY: data}, message)

    queue.transact(decide, ADMIN, use_index=False)
    return out
