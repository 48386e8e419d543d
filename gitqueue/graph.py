"""The job graph a queue carries (graph.tsv): what a worker's index needs of every job, in one file.

Every job's scheduling facts (version, package path, why it is never built, estimate, priority,
dependencies) follow from the job records, the settings and the priority and no-way lists: all
administrative, all changed only by admin commits. Each such commit writes them once into
graph.tsv, so that a new worker (or one back after a long absence) reads one plain-text file
instead of parsing every job record and recomputing the critical paths: on the 29k pkgsrc queue
that is the difference between seconds and minutes on a slow machine (bench/small_machine.py).

The file names the ids of the trees and files it was derived from; a reader uses it only when
they are those of its own tree (else it derives the same from the records, as before), and the
server's hook refuses an admin commit whose graph.tsv does not match its records (rules.py).

    # gitqueue graph 1
    # jobs <tree id of jobs/>
    # queue.toml <blob id, or ->
    # priority.toml <blob id, or ->
    # noway.toml <blob id, or ->
    NAME<TAB>VERSION<TAB>PKGPATH<TAB>SKIP_KIND<TAB>SKIP<TAB>EST<TAB>EST_SOURCE<TAB>PRIORITY<TAB>DEPS

one line per job, by name; DEPS are the line numbers (from 1) of the jobs it depends on,
space-separated; SKIP_KIND is p (prefailed), s (no way on this architecture) or empty; text
fields escape backslash, tab, newline and carriage return as \\\\, \\t, \\n, \\r.
"""

import io
import math
import re
from typing import NamedTuple

from .errors import InvalidName, RecordInvalid
from .layout import GRAPH, NOWAY, PRIORITY, SETTINGS

MAGIC = b"# gitqueue graph 1"
INPUTS = ("jobs", SETTINGS, PRIORITY, NOWAY)
_FIELDS = 9


class Row(NamedTuple):
    """One job's derived facts, one line of graph.tsv; `deps` are the ids (line numbers) of its
    dependencies as the file writes them, space-separated ("3 17 204")."""

    name: str
    version: str
    pkgpath: str | None
    skip_kind: str | None
    skip: str | None
    est: float
    est_source: str
    priority: float
    deps: str


# -- deriving ---------------------------------------------------------------------------------------


def derive(jobs: list[dict], settings: dict, priority_patterns: list[str], noway_entries: list[dict]) -> list[Row]:
    """The rows of `jobs` (checked job records) under these settings and lists, sorted by name.

    Raises RecordInvalid for a dependency on a job that is not there, or a dependency cycle.
    """
    from . import lists, scheduler

    jobs = sorted(jobs, key=lambda j: j["name"])
    reason = dependency_problem({job["name"]: job["deps"] for job in jobs})
    if reason:
        raise RecordInvalid(reason)
    ids = {job["name"]: i for i, job in enumerate(jobs, 1)}
    estimates = {job["name"]: scheduler.estimate(job) for job in jobs}
    est = {name: e[0] for name, e in estimates.items()}
    boost_rx = lists.compile_patterns(priority_patterns)
    boosted = {job["name"] for job in jobs if lists.matches(boost_rx, job)}
    priority = scheduler.priorities(jobs, est, boosted)
    noway = _noway(settings, noway_entries)
    rows = []
    for job in jobs:
        name = job["name"]
        kind, skip = _skip(job, noway)
        rows.append(Row(name, job["version"], job.get("pkgpath") or None, kind, skip,
                        est[name], estimates[name][1], priority[name], " ".join(str(ids[d]) for d in job["deps"])))
    return rows


def dependency_problem(deps: dict[str, list[str]]) -> str | None:
    """Why the dependencies ({job: its dependencies}) cannot be built: the first (by name) on a
    job that is not there, else a cycle; None when they can."""
    for name in sorted(deps):
        for dep in deps[name]:
            if dep not in deps:
                return f"jobs: {name} depends on unknown job {dep}"
    dependents: dict[str, list[str]] = {name: [] for name in deps}
    waiting = {}
    for name, needs in deps.items():
        waiting[name] = len(needs)
        for dep in needs:
            dependents[dep].append(name)
    ready = [name for name, n in waiting.items() if n == 0]
    while ready:
        for up in dependents[ready.pop()]:
            waiting[up] -= 1
            if waiting[up] == 0:
                ready.append(up)
    left = {name for name, n in waiting.items() if n}
    if not left:
        return None
    # Each job left waits on another one left: following those from the first one left comes round.
    path, at = [], min(left)
    while at not in path:
        path.append(at)
        at = next(d for d in deps[at] if d in left)
    cycle = path[path.index(at):] + [at]
    return f"jobs: dependency cycle {' -> '.join(cycle[:6])}{' -> ...' if len(cycle) > 6 else ''}"


def _noway(settings: dict, noway_entries: list[dict]) -> list:
    from . import lists

    return [(lists.compile_patterns([e["pattern"]]), e)
            for e in lists.noway_for(noway_entries, settings.get("arch", ""))]


def _skip(job: dict, noway: list) -> tuple[str | None, str | None]:
    """(skip kind, reason) of a job: prefailed, no way on this architecture, or (None, None)."""
    from . import lists

    if job.get("prefailed"):
        return "p", job["prefailed"]
    skip = next((f"no way on {e['arch'] or 'any arch'}: {e['reason']}" for rx, e in noway if lists.matches(rx, job)),
                None)
    return ("s", skip) if skip else (None, None)


def read_jobs(reader) -> list[dict]:
    """Every job record of `reader`'s tree, parsed (what an admin command derives the graph from)."""
    from . import records

    store = reader.store
    return [records.load_at("job", store[sha].as_raw_string(), path) for path, sha in reader.walk_files("jobs")]


def inputs_of(reader, changes: dict | None = None) -> dict[str, str]:
    """The ids graph.tsv names for `reader`'s tree with `changes` ({path: bytes or None}) applied."""
    from .gitstore import blob_id, build_tree

    changes = changes or {}
    out = {}
    job_changes = {p[len("jobs/"):]: d for p, d in changes.items() if p.startswith("jobs/")}
    jobs_tree = reader.tree_id_of("jobs")
    if job_changes:
        jobs_tree, _ = build_tree(reader.store, jobs_tree, job_changes)
    out["jobs"] = jobs_tree.decode() if jobs_tree else "-"
    for path in INPUTS[1:]:
        if path in changes:
            data = changes[path]
            out[path] = blob_id(data).decode() if data is not None else "-"
        else:
            blob = reader.blob_id(path)
            out[path] = blob.decode() if blob else "-"
    return out


def graph_change(reader, changes: dict, jobs: list[dict] | None = None) -> bytes:
    """graph.tsv for `reader`'s tree once `changes` ({path: bytes or None}) are applied; `jobs`
    are the new job records when the caller has them, else they are read from the tree."""
    def read(path):
        return changes[path] if path in changes else reader.read(path)

    if jobs is None:
        jobs = read_jobs(reader)
    return render(derive(jobs, *_settings_and_lists(read)), inputs_of(reader, changes))


def _settings_and_lists(read) -> tuple[dict, list[str], list[dict]]:
    from . import records

    def current(path, kind, default):
        data = read(path)
        return default if data is None else records.loads(kind, data, path)

    return (current(SETTINGS, "queue", {}), current(PRIORITY, "priority", {"packages": []})["packages"],
            current(NOWAY, "noway", {"entries": []})["entries"])


# -- the file ---------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _unescape(text: str, where: str) -> str:
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1: i + 2]
            if nxt not in _UNESCAPES:
                raise RecordInvalid(f"{where}: unknown escape \\{nxt[:1]}")
            out.append(_UNESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def render(rows: list[Row], inputs: dict[str, str]) -> bytes:
    """graph.tsv's bytes for `rows` derived from the trees and files `inputs` names."""
    lines = [MAGIC.decode()] + [f"# {key} {inputs[key]}" for key in INPUTS]
    for r in rows:
        lines.append("\t".join((
            _escape(r.name), _escape(r.version), _escape(r.pkgpath or ""), r.skip_kind or "",
            _escape(r.skip or ""), repr(float(r.est)), _escape(r.est_source), repr(float(r.priority)), r.deps,
        )))
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse(data: bytes, where: str = GRAPH) -> tuple[dict[str, str], list[Row]]:
    """(inputs, rows) of graph.tsv's bytes; raises RecordInvalid (one line: where and what) if the
    file is not one gitqueue writes: every field checked, dependencies pointing at other lines."""
    inputs, lines = read(data, where)
    rows = list(lines)
    for n, row in enumerate(rows, 1):
        deps = [int(d) for d in row.deps.split(" ")] if row.deps else []
        if deps and (n in deps or len(set(deps)) != len(deps) or max(deps) > len(rows)):
            raise RecordInvalid(f"{where}:{n + len(INPUTS) + 1}: a dependency that is not another line of the graph")
    return inputs, rows


def read(data: bytes, where: str = GRAPH):
    """(inputs, iterator of Rows) of graph.tsv's bytes, the header checked now and each line as it
    is reached (a worker streams 29k lines into its index without holding them); the iterator
    raises RecordInvalid at the first bad line. Which line numbers the dependencies name is the
    reader's to check (`parse` does; the index lets SQLite do it)."""
    stream = io.BytesIO(data)
    header = [stream.readline() for _ in range(len(INPUTS) + 1)]
    if header[0] != MAGIC + b"\n":
        raise RecordInvalid(f"{where}: not a gitqueue graph (its first line is not {MAGIC.decode()!r})")
    inputs = {}
    for n, (key, line) in enumerate(zip(INPUTS, header[1:], strict=True), 2):
        parts = line.decode("ascii", "replace").split(" ")
        if len(parts) != 3 or parts[0] != "#" or parts[1] != key or not parts[2].endswith("\n") \
                or not _is_id(parts[2][:-1]):
            raise RecordInvalid(f"{where}:{n}: expected '# {key} <object id or ->'")
        inputs[key] = parts[2][:-1]
    return inputs, _lines(stream, where, len(INPUTS) + 2)


_DEPS = re.compile(r"(?:[1-9][0-9]{0,8}(?: [1-9][0-9]{0,8})*)?")


# A line with nothing escaped and every field in its plainest form (what gitqueue writes for
# pkgsrc): read by one match, not field by field (29k lines: 0.2 s to 0.1 s). Anything else
# goes through _row, which says what is wrong.
_PLAIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._+~-]{0,199})\t([^\t\\]*)\t([^\t\\]*)\t(?:([ps])\t([^\t\\]+)|\t)"
                    r"\t([0-9]+\.[0-9]+(?:e[+-]?[0-9]+)?)\t([^\t\\]*)\t([0-9]+\.[0-9]+(?:e[+-]?[0-9]+)?)\t"
                    r"((?:[1-9][0-9]{0,8}(?: [1-9][0-9]{0,8})*)?)")


def _lines(stream, where: str, first: int):
    previous = ""
    plain = _PLAIN.fullmatch
    for n, raw in enumerate(stream, first):
        try:
            m = plain(raw[:-1].decode("utf-8")) if raw.endswith(b"\n") else None
        except UnicodeDecodeError:
            m = None
        if m is not None and math.isfinite(est := float(m[6])) and math.isfinite(priority := float(m[8])):
            version, pkgpath, kind, skip, source = m[2], m[3], m[4], m[5], m[7]
            row = Row(m[1], version, pkgpath or None, kind, skip, est, _SOURCES.get(source) or source, priority, m[9])
        else:
            row = _row(raw, f"{where}:{n}")
        if row.name <= previous:
            raise RecordInvalid(f"{where}:{n}: job {row.name} out of order or given twice (lines are sorted by name)")
        previous = row.name
        yield row


def _row(raw: bytes, at: str) -> Row:
    """The Row of one line of graph.tsv (`at`: file and line number, for the error)."""
    from .layout import check_job_name

    if not raw.endswith(b"\n"):
        raise RecordInvalid(f"{at}: the last line does not end in a newline")
    try:
        f = raw[:-1].decode("utf-8").split("\t")
    except UnicodeDecodeError:
        raise RecordInvalid(f"{at}: not UTF-8") from None
    if len(f) != _FIELDS:
        raise RecordInvalid(f"{at}: {len(f)} fields, not {_FIELDS}")
    name = _unescape(f[0], at)
    try:
        check_job_name(name, at)
    except InvalidName as e:
        raise RecordInvalid(str(e)) from None
    kind = f[3] or None
    if kind not in (None, "p", "s") or (kind is None) != (f[4] == ""):
        raise RecordInvalid(f"{at}: skip kind {f[3][:10]!r} with reason {f[4][:40]!r}")
    try:
        est, priority = float(f[5]), float(f[7])
    except ValueError:
        raise RecordInvalid(f"{at}: estimate or priority is not a number") from None
    if not (math.isfinite(est) and est >= 0 and math.isfinite(priority) and priority >= 0):
        raise RecordInvalid(f"{at}: estimate and priority are finite numbers, at least 0")
    if not _DEPS.fullmatch(f[8]):
        raise RecordInvalid(f"{at}: dependencies are line numbers separated by spaces")
    return Row(name, _unescape(f[1], at), _unescape(f[2], at) or None, kind, _unescape(f[4], at) or None,
               est, _SOURCES.get(f[6]) or _unescape(f[6], at), priority, f[8])


class Difference(NamedTuple):
    """What changed from one graph.tsv to the next."""

    gone: list[str]  # names of the jobs no longer there
    rows: list[tuple[Row, list[str]]]  # (row, names of its dependencies) of each job added or changed
    jobs: int  # how many jobs the new one has


def difference(old: bytes, new: bytes, where: str = GRAPH) -> Difference:
    """What changed from graph.tsv `old` to graph.tsv `new` (both with headers checked), the rows
    in new's order. A line whose text is the same but for the line numbers of dependencies naming
    the same jobs is unchanged: an update that adds or retires a few jobs renumbers most lines,
    yet a worker's index then rewrites only what the update changed (bench/rolling.py).

    Raises RecordInvalid (where and what) for a changed line that does not read, names out of
    order or given twice, or a dependency that is not another line."""
    skip = len(INPUTS) + 1
    old_lines = old.split(b"\n")[skip:-1]
    new_lines = new.split(b"\n")[skip:-1]
    if not new.endswith(b"\n"):
        raise RecordInvalid(f"{where}: the last line does not end in a newline")
    old_names = [line[:line.find(b"\t")] for line in old_lines]
    new_names = [line[:line.find(b"\t")] for line in new_lines]
    for n in range(1, len(new_names)):
        if new_names[n] <= new_names[n - 1]:
            shown = new_names[n][:80].decode("utf-8", "replace")
            raise RecordInvalid(f"{where}:{n + skip + 1}: job {shown!r} out of order or given twice "
                                "(lines are sorted by name)")
    changed: list[int] = []
    if old_names == new_names:
        changed = [n for n, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
    else:
        number = {name: str(n).encode() for n, name in enumerate(new_names, 1)}
        # old line number -> new line number of the same job (None: gone), both as the text has them
        renumber = {str(n).encode(): number.get(name) for n, name in enumerate(old_names, 1)}
        moved = {old_number for old_number, new_number in renumber.items() if new_number != old_number}
        old_by_name = dict(zip(old_names, old_lines))
        for n, (name, line) in enumerate(zip(new_names, new_lines)):
            before = old_by_name.get(name)
            if before is None:
                changed.append(n)
                continue
            if line == before and not moved.intersection(line[line.rfind(b"\t") + 1:].split(b" ")):
                continue
            head, _, line_deps = line.rpartition(b"\t")
            old_head, _, old_deps = before.rpartition(b"\t")
            if head != old_head:
                changed.append(n)
                continue
            try:
                now = [renumber[d] for d in old_deps.split(b" ")] if old_deps else []
            except KeyError:
                changed.append(n)  # not what this worker's index was loaded from: the new line decides
                continue
            if None in now or b" ".join(now) != line_deps:  # type: ignore[arg-type]
                changed.append(n)
    names = [name.decode("ascii", "replace") for name in new_names]
    out = []
    for n in changed:
        at = f"{where}:{n + skip + 1}"
        row = _row(new_lines[n] + b"\n", at)
        numbers = [int(d) for d in row.deps.split(" ")] if row.deps else []
        if any(d == n + 1 or d > len(names) for d in numbers) or len(set(numbers)) != len(numbers):
            raise RecordInvalid(f"{at}: a dependency that is not another line of the graph")
        out.append((row, [names[d - 1] for d in numbers]))
    gone = sorted(set(old_names) - set(new_names))
    return Difference([name.decode("ascii", "replace") for name in gone], out, len(new_names))


# One string object each for the estimate sources of 29k lines, not 29k copies.
_SOURCES = {s: s for s in ("default", "weight", "est_seconds", "history")}


def _is_id(text: str) -> bool:
    return text == "-" or (len(text) == 40 and all(c in "0123456789abcdef" for c in text))


def current_rows(reader):
    """An iterator of the Rows of `reader`'s graph.tsv if it describes `reader`'s own tree, else
    None (no graph, a stale one or one whose header is unreadable: derive from the records then).
    The lines are checked as they come (see `read`)."""
    data = current_data(reader)
    return None if data is None else read(data)[1]


def current_data(reader) -> bytes | None:
    """The bytes of `reader`'s graph.tsv if its header reads and names `reader`'s own tree, else None."""
    data = reader.read(GRAPH)
    if data is None:
        return None
    try:
        inputs, _ = read(data)
    except RecordInvalid:
        return None
    return data if inputs == inputs_of(reader) else None


class _Facts(NamedTuple):
    """What graph.tsv must say of one job exactly (estimates and priorities are hints)."""

    version: str
    pkgpath: str | None
    skip_kind: str | None
    skip: str | None
    deps: tuple  # names


def _facts(job: dict, noway: list) -> _Facts:
    return _Facts(job["version"], job.get("pkgpath") or None, *_skip(job, noway), tuple(job["deps"]))


def problem(reader, data: bytes, since=None) -> str | None:
    """Why graph.tsv's `data` does not describe `reader`'s tree (its records, settings and
    lists), or None. Estimates and priorities are hints of the admin's gitqueue version: only
    their form is checked; names, versions, package paths, skips and dependencies must be exact.

    `since`: (reader of the parent's tree, the parent's graph.tsv, {name: new record, or None
    when removed} of every job record the commit changes), when that graph.tsv is known to match
    the parent's records (None: the parent has no graph.tsv and no jobs). If it names the
    parent's own inputs and the settings and lists are unchanged, only the changed records are
    read; the verdict is the same.
    """
    try:
        inputs, rows = parse(data)
    except RecordInvalid as e:
        return str(e).removeprefix(f"{GRAPH}: ")
    if inputs != inputs_of(reader):
        return "names other trees or files than its own commit's: rewrite it with the records"
    try:
        facts = _facts_since(inputs, reader, *since) if since is not None else None
        if facts is None:
            settings, _, noway_entries = _settings_and_lists(reader.read)
            noway = _noway(settings, noway_entries)
            facts = {}
            for job in read_jobs(reader):
                if job["name"] in facts:
                    raise RecordInvalid(f"jobs: {job['name']} is recorded twice")
                facts[job["name"]] = _facts(job, noway)
    except RecordInvalid as e:
        return f"the records it describes are invalid: {e}"
    reason = dependency_problem({name: list(f.deps) for name, f in facts.items()})
    if reason:
        return f"the records it describes are invalid: {reason}"
    names = sorted(facts)
    if len(rows) != len(names):
        return f"{len(rows)} jobs, but the records hold {len(names)}"
    ids = {name: i for i, name in enumerate(names, 1)}
    for got, name in zip(rows, names, strict=True):
        f = facts[name]
        if (got.name, got.version, got.pkgpath, got.skip_kind, got.skip, got.deps) != \
                (name, f.version, f.pkgpath, f.skip_kind, f.skip, " ".join(str(ids[d]) for d in f.deps)):
            return f"job {got.name} does not match its record (version, package path, skip or dependencies)"
    return None


def _facts_since(inputs: dict, reader, parent, old_data: bytes | None, changed: dict) -> dict | None:
    """Each job's _Facts from the parent's graph.tsv `old_data` (which matches the parent's
    records) and the `changed` records; None when that graph is stale or a setting or list changed."""
    old_rows: list[Row] = []
    if old_data is None:
        old_inputs = inputs_of(parent)
        if old_inputs["jobs"] != "-":
            return None
    else:
        old_inputs, old_rows = parse(old_data)
    if old_inputs != inputs_of(parent) or any(old_inputs[k] != inputs[k] for k in INPUTS[1:]):
        return None
    names = [row.name for row in old_rows]
    facts = {row.name: _Facts(row.version, row.pkgpath, row.skip_kind, row.skip,
                              tuple(names[int(d) - 1] for d in row.deps.split()))
             for row in old_rows if row.name not in changed}
    settings, _, noway_entries = _settings_and_lists(reader.read)
    noway = _noway(settings, noway_entries)
    for name, job in changed.items():
        if job is not None:
            facts[name] = _facts(job, noway)
    return facts


def graph_rows(reader) -> list[Row]:
    """The rows derived from `reader`'s own records, settings and lists."""
    return derive(read_jobs(reader), *_settings_and_lists(reader.read))
