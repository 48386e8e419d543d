"""Build logs: the log of one attempt at a job, from this host's cache or the package tree, checked and bounded.

A worker keeps each build's log in its cache (CACHE/logs/JOB-LEASE8.log, written by
`gitqueue work`) and uploads it with the build's files to incoming/LEASE/ of the package tree;
its result names the log with its size and SHA-256, and `gitqueue publish` copies it to
logs/JOB/. So the log of an attempt is read, in this order, from
- this host's cache, when this host ran the attempt (its own file: not checked);
- the package tree, when it is a directory on this machine (the master): logs/JOB/NAME, then
  incoming/LEASE/NAME, opened inside the tree without following a link (files.py);
- else the package tree named by the queue's packages_url, fetched with rsync
  (transfer.download, which removes a copy whose SHA-256 is not the result's).
A log read from the tree must match the result's SHA-256: a log that does not is refused, and
nothing of it is shown. The name in the result is a worker's: it must be a plain .log or .txt
file name (layout.is_log_name), and is only ever used below logs/JOB/ or incoming/LEASE/.
"""

import hashlib
import os
import re

from . import files, records
from .errors import NoLog, UnknownJob
from .layout import check_job_name, is_log_name, record_path
from .phases import phase_of

# Where `gitqueue work` keeps, in the queue's cache directory, each build's output directory and
# log, named JOB-LEASE8 (the job and the first 8 hex digits of its lease token).
BUILDS = "build"
LOGS = "logs"
BULKLOG = "bulklog"  # CACHE/bulklog/JOB-LEASE8: an attempt's build info and phase logs (worker.py)
_ATTEMPT_NAME = re.compile(r"(?P<job>[A-Za-z0-9][A-Za-z0-9._+~-]*)-(?P<lease>[0-9a-f]{8})")
_TOKEN = re.compile(r"[0-9a-f]{16,64}")  # trailers are anyone's text: a lease token from one is checked

MAX_BYTES = 4 << 20  # shown by default: a log's end, where the build failed
MAX_FETCH = 256 << 20  # the largest log fetched from a remote package tree (rsync gets the whole file)
_CHUNK = 1 << 20


def attempt_name(job: str, token: str) -> str:
    """JOB-LEASE8: the name of an attempt's build directory, and of its log (plus .log), in a cache."""
    return f"{job}-{token[:8]}"


def parse_attempt_name(name: str) -> tuple[str, str] | None:
    """(job, first 8 hex digits of the lease token) of an attempt_name, or None."""
    m = _ATTEMPT_NAME.fullmatch(name)
    return (m["job"], m["lease"]) if m else None


def read_log(queue, job: str, attempt: int | None = None, max_bytes: int = MAX_BYTES, tail: int | None = None,
             tree: str | None = None, transfer: dict | None = None, phase: str | None = None) -> dict:
    """The build log of `job`'s latest attempt (or of attempt number `attempt`), its end at most;
    with `phase`, the log of that build phase (configure.log: "configure") instead.

    Attempts are numbered from 1 in the order claimed, as `gitqueue history` lists them. A log
    is read from this host's cache, else from the package tree (see the module's docstring);
    `transfer` holds transfer.download's options (rsh, attempts, ...) for a remote tree.

    Args:
        queue: the queue.
        job: the job's name (PKGNAME).
        attempt: which attempt (1: the first); None for the latest.
        max_bytes: return at most the log's last `max_bytes` bytes, from a line's start.
        tail: return at most the last `tail` lines of that.
        tree: the package tree's directory on this machine (default: the queue's packages_url,
            read as a directory when it is one on this machine, else fetched from).
        transfer: keyword arguments for transfer.download.
        phase: a phase whose log the result names (phase_logs), or that this host's cache holds.

    Returns:
        {"job", "attempt" (its number, or None when not looked up), "lease", "worker", "result"
        (success, failure, released, reclaimed, building), "source" ("cache", "tree" or
        "remote"), "where" (the file or URL read), "size" (the whole log's bytes), "data" (the
        bytes shown), "skipped" (bytes before them left out), "cut" ("max_bytes", "tail" or None:
        what left them out)}.

    Raises:
        InvalidName, UnknownJob: no such job.
        RecordInvalid: the job's result record fails its schema (a local writer's).
        NoLog: the attempt has no log here, it cannot be fetched, or it does not match its result.
    """
    check_job_name(job)
    tip, reader = queue.fetch()
    if reader.read(record_path("jobs", job)) is None:
        raise UnknownJob(f"unknown job {job}: the queue has no job of that name (give its PKGNAME)")
    data = reader.read(record_path("results", job))
    result = records.load_at("result", data, record_path("results", job)) if data is not None else None
    found = _attempt(queue, tip, reader, job, result, attempt)
    out = {"job": job, **found}
    log = result.get("log") if result is not None and result["token"] == found["lease"] else None
    what = f"the log of {job}" + (f" (attempt {attempt})" if attempt else "")

    if phase is not None:
        log, cached = _phase_log(queue.cache_dir, job, found["lease"],
                                 result if result is not None and result["token"] == found["lease"] else None, phase)
        what = f"the {phase} log of {job}" + (f" (attempt {attempt})" if attempt else "")
        if cached is not None:
            fd, where = cached
            with os.fdopen(fd, "rb") as f:
                out.update(source="cache", where=where, **_bounded(f.fileno(), max_bytes, tail))
            return out
        if log is None:
            named = [p for p in (phase_of(e.get("name")) for e in ((result or {}).get("phase_logs") or ())
                                 if isinstance(e, dict)) if p]
            has = f"; its result has the logs of {', '.join(named)}" if named else "; its result names no phase log"
            raise NoLog(f"no {phase} log of {job} (lease {found['lease'][:8]}, {found['result']}){has}")
    else:
        own_name = f"{attempt_name(job, found['lease'])}.log"
        own = _open_cached(queue.cache_dir, own_name)
        if own is not None:
            with os.fdopen(own, "rb") as f:
                out.update(source="cache", where=os.path.join(queue.cache_dir, LOGS, own_name),
                           **_bounded(f.fileno(), max_bytes, tail))
            return out
    if log is None:
        by = f", {found['result']} by {found['worker']}" if found["worker"] else f", {found['result']}"
        raise NoLog(f"no log of {job} (lease {found['lease'][:8]}{by}): only a reported result names an "
                    "uploaded log, and this host's cache has none")
    name = log.get("name")
    if not is_log_name(name):
        raise NoLog(f"{what}: its result names {name!r}, not a plain .log or .txt file name")
    settings = queue.settings(reader)
    from .publish import local_tree

    places = ((f"logs/{job}", ("logs", job)), (f"incoming/{found['lease']}", ("incoming", found["lease"])))
    tree = tree or local_tree(settings)
    if tree is not None:
        out.update(source="tree", **_from_tree(tree, places, log, what, max_bytes, tail))
    else:
        url = settings.get("packages_url")
        if not url:
            raise NoLog(f"{what}: the queue has no package tree (packages_url) to upload logs to")
        out.update(source="remote", **_fetch(url, places, log, what, max_bytes, tail, transfer or {}))
    return out


def _attempt(queue, tip, reader, job: str, result: dict | None, number: int | None) -> dict:
    """{"attempt", "lease", "worker", "result"} of attempt `number` of `job` (None: the latest)."""
    if number is None and result is not None:
        # A job with a result is never leased again: the result's attempt is the latest.
        return {"attempt": None, "lease": result["token"], "worker": result.get("worker"), "result": result["status"]}
    if number is None:
        data = reader.read(record_path("leases", job))
        if data is not None:
            lease = records.load_at("lease", data, record_path("leases", job))
            return {"attempt": None, "lease": lease["token"], "worker": lease["worker"], "result": "building"}
    from .timeline import load

    attempts = [a for a in load(queue, tip).attempts() if a["job"] == job]
    if not attempts:
        raise NoLog(f"{job} has not been attempted yet: no log")
    if number is not None and number > len(attempts):
        raise NoLog(f"{job} has {len(attempts)} attempt{'s' if len(attempts) > 1 else ''}: no attempt {number} "
                    "(see gitqueue history)")
    number = number or len(attempts)
    chosen = attempts[number - 1]
    if not (isinstance(chosen["lease"], str) and _TOKEN.fullmatch(chosen["lease"])):
        raise NoLog(f"attempt {number} of {job} names no lease token in the history: no log")
    return {"attempt": number, "lease": chosen["lease"], "worker": chosen["worker"], "result": chosen["result"]}


def _phase_log(cache_dir: str, job: str, lease: str, result: dict | None, phase: str):
    """(the result's entry for the log of `phase` or None, (descriptor, path) of this host's own
    copy or None). The own copy is CACHE/bulklog/JOB-LEASE8/bulklog/JOB/NAME, where `gitqueue
    work` ran the build (pbulk's build script removes it after a success)."""
    entries = (result or {}).get("phase_logs") or ()
    log = next((e for e in entries if isinstance(e, dict) and phase_of(e.get("name")) == phase), None)
    names = [log["name"]] if log is not None else [f"{phase}.log", f"{phase}.txt"]
    attempt = attempt_name(job, lease)
    for name in names:
        if not is_log_name(name):
            continue
        try:
            fd = files.open_file(cache_dir, BULKLOG, attempt, "bulklog", job, name)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            return log, (fd, os.path.join(cache_dir, BULKLOG, attempt, "bulklog", job, name))
    return log, None


def _open_cached(cache_dir: str, name: str) -> int | None:
    """A read descriptor of CACHE/logs/NAME, this host's own log of an attempt, or None."""
    try:
        return files.open_file(cache_dir, LOGS, name)
    except FileNotFoundError:
        return None


def _from_tree(tree: str, places, log: dict, what: str, max_bytes: int, tail: int | None) -> dict:
    """The log read from the first of `places` in the local package tree that holds it unchanged."""
    refused = []
    for shown, parts in places:
        try:
            fd = files.open_file(tree, *parts, log["name"])
        except FileNotFoundError:
            raise NoLog(f"{what}: the package tree {tree} is not there") from None
        if fd is None:
            continue
        where = os.path.join(tree, shown, log["name"])
        with os.fdopen(fd, "rb") as f:
            got = _checked(f.fileno(), log, max_bytes, tail)
        if got is not None:
            return {"where": where, **got}
        refused.append(where)
    if refused:
        raise NoLog(f"{what}: {refused[0]} does not match the size and SHA-256 its result recorded; not shown")
    raise NoLog(f"{what}: {log['name']} is in neither {places[0][0]}/ nor {places[1][0]}/ of {tree}")


def _fetch(url: str, places, log: dict, what: str, max_bytes: int, tail: int | None, transfer: dict) -> dict:
    """The log fetched with rsync from the first of `places` of the remote tree that has it."""
    import tempfile

    from .transfer import TransferError, download

    if not isinstance(log.get("size"), int) or log["size"] > MAX_FETCH:
        raise NoLog(f"{what}: {log['name']} is {log.get('size')} bytes, more than gitqueue log fetches "
                    f"({MAX_FETCH}); get it with rsync from {url}")
    failed = []
    with tempfile.TemporaryDirectory(prefix="gitqueue-log-") as scratch:
        for i, (shown, _) in enumerate(places):
            # The first place is tried once: a log not published yet is not there, and is not
            # worth the retries that the second place, the last chance, gets.
            options = dict(transfer, attempts=1) if i < len(places) - 1 else transfer
            try:
                [path] = download([{"name": log["name"], "sha256": log["sha256"]}], url,
                                  os.path.join(scratch, str(i)), source=shown, **options)
            except TransferError as e:
                failed.append(f"{shown}: {e}")
                continue
            fd = files.open_file(os.path.dirname(path), log["name"])
            if fd is None:
                failed.append(f"{shown}: {log['name']} is not a regular file")
                continue
            with os.fdopen(fd, "rb") as f:
                got = _checked(f.fileno(), log, max_bytes, tail)
            if got is None:  # download() checked it: changed since, on this host
                failed.append(f"{shown}: {log['name']} does not match its result")
                continue
            return {"where": f"{url.rstrip('/')}/{shown}/{log['name']}", **got}
    raise NoLog(f"cannot fetch {what} from {url}: " + "; ".join(failed))


def _checked(fd: int, log: dict, max_bytes: int, tail: int | None) -> dict | None:
    """_bounded's answer for the open file when its bytes are the ones `log` describes, else None.

    The digest is of the bytes read, in one pass that keeps only the last `max_bytes` of them:
    what is shown is what was checked, however the file changes meanwhile.
    """
    if os.fstat(fd).st_size != log.get("size"):
        return None
    h = hashlib.sha256()
    window = bytearray()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        offset += len(chunk)
        h.update(chunk)
        window += chunk
        if len(window) > 2 * max_bytes + 1:
            del window[:len(window) - max_bytes - 1]
    if offset != log["size"] or h.hexdigest() != log.get("sha256"):
        return None
    return _cut(bytes(window[-max_bytes - 1:]), offset, max_bytes, tail)


def _bounded(fd: int, max_bytes: int, tail: int | None) -> dict:
    """{"size", "data", "skipped", "cut"} of the open file: at most its last `max_bytes` bytes."""
    size = os.fstat(fd).st_size
    start = max(0, size - max_bytes - 1)
    data = bytearray()
    while len(data) <= max_bytes and (chunk := os.pread(fd, min(_CHUNK, max_bytes + 1 - len(data)),
                                                        start + len(data))):
        data += chunk
    return _cut(bytes(data), max(size, start + len(data)), max_bytes, tail)


def _cut(data: bytes, size: int, max_bytes: int, tail: int | None) -> dict:
    """{"size", "data", "skipped", "cut"}: the end `data` of a log of `size` bytes, at most its last
    `max_bytes` from a line's start (`data` may hold one byte more, before them: a newline there
    means they start a line), and of those the last `tail` lines."""
    start = max(0, len(data) - max_bytes)
    if start:
        newline = data.find(b"\n", start - 1)
        if 0 <= newline < len(data) - 1:  # start at a line, not in the middle of one
            start = newline + 1
    skipped = size - len(data) + start
    data = data[start:]
    cut = "max_bytes" if skipped else None
    if tail is not None:
        lines = data.splitlines(keepends=True)
        if len(lines) > tail:
            drop = sum(len(line) for line in lines[:-tail])
            skipped += drop
            data = data[drop:]
            cut = "tail"
    return {"size": size, "data": data, "skipped": skipped, "cut": cut}
