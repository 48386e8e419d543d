"""Validation of job and worker names, and where their records live in the tree."""

import hashlib
import re

from .errors import InvalidName

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
    """Path of the `kind` record (jobs, leases, results, declines) of job `name`."""
    return f"{kind}/{shard(name)}/{name}.toml"


def heartbeat_path(worker: str) -> str:
    """Path of a worker's heartbeat record."""
    return f"heartbeats/{worker}.toml"


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
