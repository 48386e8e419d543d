"""The layout of a queue's tree: every path a queue may hold, and the rule for each name in it.

This is the one description of the layout that writers, readers, the server's hook and
`gitqueue verify` share. The hook judges every entry of every tree a push brings by `entry_problem`
(the name as git stores it, in its place), so no name can stand for a path it is not.

    queue.toml  priority.toml  noway.toml       settings and lists (files)
    jobs/ leases/ results/ declines/ lapsed/    per-job records: KIND/XX/JOB.toml, XX = shard(JOB)
    heartbeats/ workers/                        per-worker records: KIND/WORKER.toml

Names a worker writes that later become file names (log and package files) follow
`FILE_NAME` and `LOG_NAME`, the patterns of the record schemas.
"""

import fnmatch
import re

from .errors import InvalidName
from .names import check_job_name, check_worker_name, heartbeat_path, record_path, shard
from .schema import FILE_NAME_PATTERN, LOG_NAME_PATTERN

SETTINGS = "queue.toml"
PRIORITY = "priority.toml"
NOWAY = "noway.toml"
# Top-level files and the record kind each holds; all administrative.
TOP_FILES = {SETTINGS: "queue", PRIORITY: "priority", NOWAY: "noway"}
# Directories of per-job records (KIND/XX/JOB.toml) and of per-worker records (KIND/NAME.toml).
JOB_DIRS = {"jobs": "job", "leases": "lease", "results": "result", "declines": "decline", "lapsed": "lapsed"}
WORKER_DIRS = {"heartbeats": "heartbeat", "workers": "worker"}
ADMIN_KINDS = {"queue", "priority", "noway", "job", "worker", "lapsed"}

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


__all__ = ["record_path", "heartbeat_path", "worker_path", "entry_problem", "child_place", "kind_of",
           "is_file_name", "is_log_name", "package_name_problem"]


def worker_path(worker: str) -> str:
    return f"workers/{worker}.toml"


# -- places and the names they allow ---------------------------------------------------------------
#
# A place is where a tree sits in the layout: ROOT, ("kind", DIR) for jobs/ and the like,
# ("shard", DIR, XX) for jobs/XX/, ("workers", DIR) for heartbeats/ and workers/.

ROOT = ("root",)
OUTSIDE = "outside the queue layout"


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


def is_file_name(name) -> bool:
    """True for a name that may become a file in the package tree (All/NAME, incoming/TOKEN/NAME)."""
    return isinstance(name, str) and 0 < len(name) <= MAX_FILE_NAME and FILE_NAME.fullmatch(name) is not None


def is_log_name(name) -> bool:
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
