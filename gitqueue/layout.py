"""The layout of a queue's tree: every path a queue may hold, and the rule for each name in it.

This is the one description of the layout that writers, readers, the server's hook and
`gitqueue verify` share. The hook judges every entry of every tree a push brings by `entry_problem`
(the name as git stores it, in its place), so no name can stand for a path it is not.

    queue.toml  priority.toml  noway.toml       settings and lists (files)
    graph.tsv                                   the job graph derived from them (graph.py)
    jobs/ leases/ results/ declines/ lapsed/ retries/
                                                per-job records: KIND/XX/JOB.toml, XX = shard(JOB)
    heartbeats/ workers/                        per-worker records: KIND/WORKER.toml

Job and worker names follow `check_job_name` and `check_worker_name`. Names a worker writes that
later become file names (log and package files) follow `FILE_NAME` and `LOG_NAME`, the patterns of
the record schemas.
"""

import fnmatch
import hashlib
import re
from typing import TypeGuard

from .errors import InvalidName
from .schema import FILE_NAME_PATTERN, LOG_NAME_PATTERN

SETTINGS = "queue.toml"
PRIORITY = "priority.toml"
NOWAY = "noway.toml"
GRAPH = "graph.tsv"
# Top-level files and the record kind each holds; all administrative. graph.tsv is not TOML.
TOP_FILES = {SETTINGS: "queue", PRIORITY: "priority", NOWAY: "noway", GRAPH: "graph"}
# Directories of per-job records (KIND/XX/JOB.toml) and of per-worker records (KIND/NAME.toml).
JOB_DIRS = {"jobs": "job", "leases": "lease", "results": "result", "declines": "decline", "lapsed": "lapsed",
            "retries": "retry"}
WORKER_DIRS = {"heartbeats": "heartbeat", "workers": "worker"}
ADMIN_KINDS = {"queue", "priority", "noway", "graph", "job", "worker", "lapsed", "retry"}
DEFAULT_MAX_ATTEMPTS = 3
# The largest graph.tsv anyone reads: a queue of a million jobs (pkgsrc has 29k) is about 80 MB.
MAX_GRAPH_BYTES = 128 << 20

FILE_MODE = b"100644"  # records are plain files: no executables, symlinks or submodules
TREE_MODE = b"40000"
_SHARD = re.compile(rb"[0-9a-f]{2}")

FILE_NAME = re.compile(FILE_NAME_PATTERN.strip("^$"))
LOG_NAME = re.compile(LOG_NAME_PATTERN.strip("^$"))
MAX_FILE_NAME = 250
MAX_LOG_NAME = 128

DEFAULT_PACKAGE_FILES = ("{name}.tgz",)
DEFAULT_MAX_LEASES = 4
DEFAULT_UPLOAD_QUOTA = 4 << 30
DEFAULT_MAX_RECORD_BYTES = 65536


# -- job and worker names, and the paths of their records ------------------------------------------

# pkgsrc PKGNAMEs use letters, digits and ._+-~ (e.g. gtk3+-3.24.51, p5-URI-5.21).
# Nothing here can form a path separator, a dot-dir or an option. A job name only ever names
# files (KIND/XX/NAME.toml, build directories, logs), never a git ref, so "flufl.lock" (a Debian
# source package) is a job name like any other.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")
_WORKER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 200


def check_job_name(name: str, where: str = "") -> str:
    """Return `name` if it is a safe job name, else raise InvalidName naming `where`."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
        prefix = f"{where}: " if where else ""
        raise InvalidName(f"{prefix}invalid job name {name!r}")
    return name


def check_worker_name(name: str, where: str = "") -> str:
    """Return `name` if it is a safe worker name, else raise InvalidName."""
    if not isinstance(name, str) or len(name) > 64 or not _WORKER_RE.fullmatch(name) or name.endswith(".lock"):
        prefix = f"{where}: " if where else ""
        raise InvalidName(
            f"{prefix}invalid worker name {name!r} (letters, digits, '.', '_', '-'; at most 64)"
        )
    return name


def shard(name: str) -> str:
    """Two hex digits spreading records over 256 directories."""
    return hashlib.sha1(name.encode()).hexdigest()[:2]


def record_path(kind: str, name: str) -> str:
    """Path of the `kind` record (jobs, leases, results, declines, lapsed) of job `name`."""
    return f"{kind}/{shard(name)}/{name}.toml"


def heartbeat_path(worker: str) -> str:
    """Path of a worker's heartbeat record."""
    return f"heartbeats/{worker}.toml"


def worker_path(worker: str) -> str:
    """Path of a worker's registration record."""
    return f"workers/{worker}.toml"


def name_from_path(path: str) -> tuple[str, str]:
    """Split 'kind/xx/name.toml' into (kind, name); raise InvalidName if it is not one."""
    parts = path.split("/")
    if not parts[0].isalpha():
        raise InvalidName(f"{path}: not a record path of the queue layout")
    if len(parts) == 3 and parts[2].endswith(".toml"):
        name = parts[2][:-5]
        if parts[1] == shard(name):
            return parts[0], check_job_name(name, path)
    if len(parts) == 2 and parts[1].endswith(".toml"):
        return parts[0], check_worker_name(parts[1][:-5], path)
    raise InvalidName(f"{path}: not a record path of the queue layout")


# -- places and the names they allow ---------------------------------------------------------------
#
# A place is where a tree sits in the layout: ROOT, ("kind", DIR) for jobs/ and the like,
# ("shard", DIR, XX) for jobs/XX/, ("workers", DIR) for heartbeats/ and workers/.

ROOT = ("root",)
OUTSIDE = "outside the queue layout"


def shown(text: str) -> str:
    """A worker-made name or path as a message shows it: printable, cut short."""
    text = text if text.isprintable() else repr(text)[1:-1]
    return text if len(text) <= 120 else text[:117] + "..."


def entry_problem(place: tuple, name: bytes, mode: bytes) -> str | None:
    """Why the tree entry `name` (bytes as git stores them) with `mode` may not stand in `place`,
    or None when the layout allows it there."""
    kind = place[0]
    if kind == "root":
        text = name.decode("ascii", "replace")
        if text in TOP_FILES:
            return None if mode == FILE_MODE else f"mode {_mode(mode)}: {text} is a plain file (100644)"
        if text in JOB_DIRS or text in WORKER_DIRS:
            return None if mode == TREE_MODE else f"mode {_mode(mode)}: {text} is a directory (40000)"
        return OUTSIDE
    if kind == "kind":
        if mode != TREE_MODE:
            return f"mode {_mode(mode)}: only shard directories (40000) belong here"
        return None if _SHARD.fullmatch(name) else f"{OUTSIDE}: not a shard directory (two hex digits)"
    if mode != FILE_MODE:
        return f"mode {_mode(mode)}: records are plain files (100644)"
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        return f"{OUTSIDE}: not a record name"
    if not text.endswith(".toml"):
        return f"{OUTSIDE}: not a record name (NAME.toml)"
    stem = text[:-5]
    try:
        if kind == "shard":
            check_job_name(stem)
            return None if shard(stem) == place[2] else f"{OUTSIDE}: in the wrong shard directory"
        check_worker_name(stem)
    except InvalidName:
        return f"{OUTSIDE}: not a valid {'job' if kind == 'shard' else 'worker'} name"
    return None


def child_place(place: tuple, name: bytes) -> tuple | None:
    """The place of directory `name` inside `place` (already allowed there), None for a file."""
    text = name.decode("ascii")
    if place[0] == "root":
        if text in JOB_DIRS:
            return ("kind", text)
        if text in WORKER_DIRS:
            return ("workers", text)
        return None
    if place[0] == "kind":
        return ("shard", place[1], text)
    return None


def kind_of(place: tuple, name: bytes) -> tuple[str, str | None]:
    """(record kind, job or worker name) of the file `name` allowed in `place`."""
    text = name.decode("ascii")
    if place[0] == "root":
        return TOP_FILES[text], None
    if place[0] == "shard":
        return JOB_DIRS[place[1]], text[:-5]
    return WORKER_DIRS[place[1]], text[:-5]


def _mode(mode: bytes) -> str:
    return mode.decode("ascii", "replace")[:8]


# -- file names a worker writes ----------------------------------------------------------------------


def is_file_name(name: object) -> TypeGuard[str]:
    """True for a name that may become a file in the package tree (All/NAME, incoming/TOKEN/NAME)."""
    return isinstance(name, str) and 0 < len(name) <= MAX_FILE_NAME and FILE_NAME.fullmatch(name) is not None


def is_log_name(name: object) -> TypeGuard[str]:
    """True for a build log's file name: a plain file name ending in .log or .txt."""
    return isinstance(name, str) and 0 < len(name) <= MAX_LOG_NAME and LOG_NAME.fullmatch(name) is not None


def base_name(job: dict) -> str:
    """A job's name without its version ("gmake" for gmake-4.4.1), from the record's own split."""
    name, version = job["name"], job.get("version") or ""
    suffix = f"-{version}"
    return name[: -len(suffix)] if version and name.endswith(suffix) and len(name) > len(suffix) else name


def package_patterns(job: dict, settings: dict | None) -> list[str]:
    """The shell patterns the package files of `job`'s success result must match."""
    templates = (settings or {}).get("package_files") or DEFAULT_PACKAGE_FILES
    values = {"name": job["name"], "base": base_name(job), "version": job.get("version") or ""}
    out = []
    for template in templates:
        try:
            out.append(template.format(**values))
        except (KeyError, IndexError, ValueError):
            continue  # an unknown placeholder matches nothing
    return out


def package_name_problem(name: str, job: dict, settings: dict | None) -> str | None:
    """Why `name` may not be a package file of `job`'s result, or None.

    A result names only its own job's packages (PKGNAME.tgz unless the queue's `package_files`
    say otherwise), so that no worker can publish a file under another job's name.
    """
    if not is_file_name(name):
        return f"{name!r} is not a plain file name"
    patterns = package_patterns(job, settings)
    if any(fnmatch.fnmatchcase(name, p) for p in patterns):
        return None
    return f"{name} is not a package file of {job['name']} (package_files allow {', '.join(patterns) or 'none'})"


def max_leases(settings: dict | None) -> int:
    return (settings or {}).get("max_leases") or DEFAULT_MAX_LEASES


def upload_quota(settings: dict | None) -> int:
    value = (settings or {}).get("upload_quota")
    return DEFAULT_UPLOAD_QUOTA if value is None else value


def min_heartbeat_seconds(settings: dict) -> float:
    value = settings.get("min_heartbeat_seconds")
    return min(60.0, settings["lease_ttl"] / 20) if value is None else float(value)


def max_attempts(settings: dict | None) -> int:
    """Attempts that end in a transient failure before a job becomes a failure."""
    return (settings or {}).get("max_attempts") or DEFAULT_MAX_ATTEMPTS
