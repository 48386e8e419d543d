"""Dependency-graph importers: a presolve or JSONL file to validated jobs in build order.

Nothing here writes anywhere; every refusal is an ImportRefused with one line of text.
"""

import lzma
import os
from collections import deque

from ..errors import ImportRefused, InvalidName, RecordInvalid
from ..layout import check_job_name
from ..records import validate

FORMATS = ("presolve", "jsonl")
MAX_LISTED = 5


def guess_format(path: str) -> str:
    """'jsonl' for NAME.jsonl or NAME.json (optionally .xz), else 'presolve'."""
    name = os.fspath(path).lower()
    if name.endswith(".xz"):
        name = name[:-3]
    return "jsonl" if name.endswith((".jsonl", ".json")) else "presolve"


def load_graph(path: str, fmt: str | None = None) -> list[dict]:
    """Read the graph file `path` and return its validated job dicts, dependencies first.

    `fmt` is 'presolve' or 'jsonl'; None guesses from the file name. A name ending in .xz
    is decompressed while it is read. Raises ImportRefused for anything wrong with the file.
    """
    from . import jsonl, presolve

    source = os.fspath(path)
    fmt = guess_format(source) if fmt is None else fmt
    parsers = {"presolve": presolve.parse, "jsonl": jsonl.parse}
    if fmt not in parsers:
        raise ImportRefused(f"unknown graph format {quote(fmt)} (expected one of: {', '.join(FORMATS)})")
    try:
        opener = lzma.open if source.lower().endswith(".xz") else open
        with opener(source, "rb") as f:
            jobs = parsers[fmt](f, source)
    except OSError as e:
        raise ImportRefused(f"{source}: cannot read: {e.strerror or e}") from None
    except (lzma.LZMAError, EOFError) as e:
        # EOFError is how lzma reports a truncated stream.
        raise ImportRefused(f"{source}: corrupt xz data: {e}") from None
    if not jobs:
        raise ImportRefused(f"{source}: no jobs in the file")
    return check_graph(jobs, source)


def check_graph(jobs: list[dict], source: str) -> list[dict]:
    """Return `jobs` in topological order: every job after all of its dependencies.

    Raises ImportRefused naming `source` if a name occurs twice, a dependency names no job
    of the graph, or the dependencies form a cycle.
    """
    index: dict[str, dict] = {}
    duplicates: dict[str, None] = {}
    for job in jobs:
        name = job["name"]
        if name in index:
            duplicates[name] = None
        else:
            index[name] = job
    if duplicates:
        raise ImportRefused(f"{source}: duplicate job names: {_listing(list(duplicates))}")

    unknown: dict[str, str] = {}
    for job in jobs:
        for dep in job["deps"]:
            if dep not in index and dep not in unknown:
                unknown[dep] = f"{dep} (needed by {job['name']})"
    if unknown:
        raise ImportRefused(
            f"{source}: dependencies on unknown jobs: {_listing(list(unknown.values()))}"
        )

    waiting: dict[str, int] = {}
    dependents: dict[str, list[str]] = {name: [] for name in index}
    ready: deque[str] = deque()
    for job in jobs:
        deps = dict.fromkeys(job["deps"])
        waiting[job["name"]] = len(deps)
        for dep in deps:
            dependents[dep].append(job["name"])
        if not deps:
            ready.append(job["name"])
    order = []
    while ready:
        name = ready.popleft()
        order.append(index[name])
        for other in dependents[name]:
            waiting[other] -= 1
            if not waiting[other]:
                ready.append(other)
    if len(order) < len(jobs):
        raise ImportRefused(f"{source}: dependency cycle: {_cycle(jobs, index, waiting)}")
    return order


def _cycle(jobs, index, waiting) -> str:
    """Describe one cycle among the jobs left waiting after a topological sort."""
    # Every job still waiting has a waiting dependency, so walking those must loop.
    stuck = [job["name"] for job in jobs if waiting[job["name"]]]
    path: list[str] = []
    seen: dict[str, int] = {}
    name = stuck[0]
    while name not in seen:
        seen[name] = len(path)
        path.append(name)
        name = next(dep for dep in index[name]["deps"] if waiting[dep])
    loop = path[seen[name]:]
    shown = loop
    if len(loop) > MAX_LISTED + 1:
        shown = loop[:MAX_LISTED] + [f"... ({len(loop) - MAX_LISTED} more)"]
    text = " -> ".join(shown + [name])
    if len(stuck) > len(loop):
        text += f" ({len(stuck)} jobs cannot be ordered)"
    return text


def _listing(items: list[str]) -> str:
    """The first few `items`, then how many more there are."""
    text = ", ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        text += f" and {len(items) - MAX_LISTED} more"
    return text


def validated_job(job: dict, where: str) -> dict:
    """Validate `job` against the 'job' schema; a failure becomes ImportRefused at `where`."""
    try:
        return validate("job", job, where)
    except RecordInvalid as e:
        text = str(e)
        if text.startswith(where + "."):
            # "FILE:3.pkgpath: ..." reads better as "FILE:3: pkgpath: ...".
            text = f"{where}: {text[len(where) + 1:]}"
        if len(text) > 300:  # the schema check quotes whole values
            text = text[:300] + "..."
        raise ImportRefused(text) from None


def check_name(name, where: str) -> str:
    """Return `name` if it is a safe job name, else raise ImportRefused at `where`."""
    try:
        return check_job_name(name, where)
    except InvalidName:
        # layout.check_job_name quotes the whole name; a hostile one may be megabytes long.
        raise ImportRefused(f"{where}: invalid job name {quote(name)}") from None


def quote(value, limit: int = 60) -> str:
    """repr(value), cut short, for one-line error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def show(line: bytes) -> str:
    """A short quotation of a raw input line for error messages."""
    return quote(line.rstrip(b"\r\n").decode("utf-8", "replace"))
