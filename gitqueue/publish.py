"""Publishing: verified uploads from incoming/ into All/ of the shared package tree.

The package tree is a directory on the master:

    All/                     published binary packages, All/pkg_summary.gz and All/SHA512
    incoming/TOKEN/          what a worker uploaded for one lease (packages, build log)
    logs/JOB/FILE            published build logs

`publish` copies into All/ exactly the files that success results name, only after checking
their size and SHA-256 against the result, never a restricted package (NO_BIN_ON_FTP or
RESTRICTED), never over an existing file with other contents. Every file appears under its
final name by rename(2) of a fsync'ed temporary file in the same directory, so a crash at any
point leaves All/ holding whole files only; a temporary file a crash left behind is removed by
the next run. Then All/pkg_summary.gz (pkg_summary(5), as `pkg_info -X` writes it) and
All/SHA512 (digest(1) lines, as pbulk writes them) are regenerated from the published files.
Nothing is removed from incoming/.

Hashing every package on every run would read the whole tree each time, so the digests and
package metadata of All/ files are remembered in `.publish-cache.json` at the top of the tree,
keyed by (size, mtime, inode): a file replaced or rewritten in place gets new values and is read
again. Runs are serialized by a lock on `.publish.lock` there.
"""

import gzip
import hashlib
import json
import os
import re
import secrets
import stat

from . import records
from .locking import FileLock
from .names import record_path
from .pkgsummary import format_entry, read_package

ALL = "All"
INCOMING = "incoming"
LOGS = "logs"
SUMMARY = "pkg_summary.gz"
DIGESTS = "SHA512"
CACHE = ".publish-cache.json"
LOCK = ".publish.lock"
TMP_PREFIX = ".publish-tmp-"  # package names start with a letter or digit: never a clash

# What a file name in All/ or logs/JOB/ may be (the result schema's package name pattern).
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")
_MAX_FILE_NAME = 250
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")
_TOKEN = re.compile(r"[0-9a-f]{16,64}")
# Names publish writes itself (and pbulk's siblings of them): a package may not take them.
RESERVED = {SUMMARY, DIGESTS, "pkg_summary.bz2", "pkg_summary.xz", "pkg_summary.zst", "SHA512.bz2"}

_CHUNK = 1 << 20


# -- digests and atomic files -----------------------------------------------------------------------


def _hash_both(path: str) -> tuple[str, str]:
    """(sha256, sha512) of a file in one read."""
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h256.update(chunk)
            h512.update(chunk)
    return h256.hexdigest(), h512.hexdigest()


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(directory: str):
    """(fd, path) of a new private temporary file in `directory`."""
    path = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_atomic(path: str, data: bytes, temp_dir: str | None = None) -> None:
    """Replace `path` with `data`: a temporary file, fsync, rename, fsync of the directory."""
    directory = os.path.dirname(path)
    fd, tmp = _open_temp(temp_dir or directory)
    installed = False
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        installed = True
        _fsync_dir(directory)
    finally:
        if not installed:
            _unlink(tmp)


def _copy_verified(src_fd: int, final: str, size: int, sha256: str, temp_dir: str) -> str | None:
    """Copy the open file `src_fd` to `final` if its bytes have `size` and `sha256`.

    The digest is taken of the bytes copied, so what lands in All/ is what was checked, even if
    the upload changes meanwhile. Returns the SHA-512 of the file, or None (nothing written) when
    the contents differ.
    """
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    copied = 0
    fd, tmp = _open_temp(temp_dir)
    installed = False
    try:
        with os.fdopen(fd, "wb") as out, os.fdopen(src_fd, "rb", closefd=False) as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                copied += len(chunk)
                if copied > size:
                    return None
                h256.update(chunk)
                h512.update(chunk)
                out.write(chunk)
            if copied != size or h256.hexdigest() != sha256:
                return None
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
        installed = True
        _fsync_dir(os.path.dirname(final))
        return h512.hexdigest()
    finally:
        if not installed:
            _unlink(tmp)


def _open_upload(tree: str, token: str, name: str) -> int | None:
    """A read descriptor of incoming/TOKEN/NAME if it is a regular file (no symlink), else None."""
    directory = os.path.join(tree, INCOMING, token)
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return None
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _safe_file_name(name) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= _MAX_FILE_NAME and "/" not in name
            and _FILE_NAME.fullmatch(name) is not None)


# -- the cache of All/ digests and metadata ----------------------------------------------------------


def _load_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data.get("files", {}) if isinstance(data, dict) and data.get("version") == 1 else {}


def _stat_key(st) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class _Known:
    """Digests (and package metadata) of All/ files, remembered by their stat."""

    def __init__(self, old: dict):
        self.old = old
        self.new = {}

    def digests(self, path: str, name: str, st) -> dict:
        key = _stat_key(st)
        entry = self.new.get(name) or self.old.get(name)
        if not (isinstance(entry, dict) and entry.get("stat") == key and "sha256" in entry and "sha512" in entry):
            sha256, sha512 = _hash_both(path)
            entry = {"stat": key, "sha256": sha256, "sha512": sha512}
        self.new[name] = entry
        return entry

    def installed(self, path: str, name: str, sha256: str, sha512: str) -> None:
        self.new[name] = {"stat": _stat_key(os.stat(path)), "sha256": sha256, "sha512": sha512}

    def meta(self, path: str, name: str):
        entry = self.new[name]
        if "meta" not in entry:
            entry["meta"] = read_package(path)
        return entry["meta"]


# -- publishing ------------------------------------------------------------------------------------


def _sweep(directory: str) -> None:
    """Remove the temporary files a crashed run left in `directory`."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(TMP_PREFIX):
            _unlink(os.path.join(directory, name))


def _publish_log(tree: str, job: str, token: str, log: dict, known: _Known, out: dict) -> None:
    name = log.get("name")
    if not (_safe_file_name(name) and _JOB_NAME.fullmatch(job) and _TOKEN.fullmatch(token)):
        return
    logs = os.path.join(tree, LOGS)
    rel = f"{LOGS}/{job}/{name}"  # the cache's key: never a package name, those have no '/'
    final = os.path.join(logs, job, name)
    try:
        st = os.stat(final)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not (stat.S_ISREG(st.st_mode) and st.st_size == log["size"]
                and known.digests(final, rel, st)["sha256"] == log["sha256"]):
            out["conflict"].append(rel)
        return
    src = _open_upload(tree, token, name)
    if src is None:
        return  # logs are optional: not uploaded (yet)
    try:
        os.makedirs(os.path.join(logs, job), exist_ok=True)
        sha512 = _copy_verified(src, final, log["size"], log["sha256"], logs)
        if sha512 is None:
            out["mismatch"].append(rel)
        else:
            known.installed(final, rel, log["sha256"], sha512)
            out["logs"].append(rel)
    finally:
        os.close(src)


def publish(tree: str, entries, cache: bool = True) -> dict:
    """Publish the verified uploads of success results into TREE/All/ and refresh its indexes.

    `entries` is an iterable of (job record, result record), typically `results_of(queue)`.
    Returns {"published": [names copied now], "already": number already in All/ with the right
    checksum, "missing": [not (yet) in incoming/TOKEN/], "mismatch": [size or checksum differs
    from the result; left in incoming/], "restricted": [NO_BIN_ON_FTP or RESTRICTED, never
    copied], "conflict": [All/ holds another file under that name; not overwritten],
    "invalid": [names that are no safe file name], "logs": [build logs copied to logs/JOB/]}.
    A build log that differs from its result is listed under mismatch or conflict as
    "logs/JOB/NAME". Failures to write (disk full, ...) raise OSError after removing the
    temporary file; what was renamed into place before stays, and is whole.
    """
    all_dir = os.path.join(tree, ALL)
    os.makedirs(all_dir, exist_ok=True)
    os.makedirs(os.path.join(tree, LOGS), exist_ok=True)
    out = {"published": [], "already": 0, "missing": [], "mismatch": [], "restricted": [], "conflict": [],
           "invalid": [], "logs": []}
    with FileLock(os.path.join(tree, LOCK)):
        for directory in (tree, all_dir, os.path.join(tree, LOGS)):
            _sweep(directory)
        cache_path = os.path.join(tree, CACHE)
        known = _Known(_load_cache(cache_path) if cache else {})
        listed: dict[str, dict | None] = {}  # name in All/ -> the job it was published for

        for job, result in sorted(entries, key=lambda e: e[1]["job"]):
            token = result.get("token", "")
            if result.get("log"):
                _publish_log(tree, result["job"], token, result["log"], known, out)
            if result.get("status") != "success" or not result.get("packages"):
                continue
            restricted = job is None or bool(job.get("no_bin_on_ftp") or job.get("restricted"))
            for package in result["packages"]:
                name = package.get("name")
                if not _safe_file_name(name) or name in RESERVED:
                    out["invalid"].append(str(name))
                    continue
                final = os.path.join(all_dir, name)
                try:
                    st = os.stat(final)
                except FileNotFoundError:
                    st = None
                if st is not None:
                    if stat.S_ISREG(st.st_mode) and known.digests(final, name, st)["sha256"] == package["sha256"]:
                        out["already"] += 1
                        listed.setdefault(name, job)
                    else:
                        out["conflict"].append(name)
                    continue
                if restricted:
                    out["restricted"].append(name)
                    continue
                src = _open_upload(tree, token, name) if _TOKEN.fullmatch(token) else None
                if src is None:
                    out["missing"].append(name)
                    continue
                try:
                    if os.fstat(src).st_size != package["size"]:
                        sha512 = None
                    else:
                        sha512 = _copy_verified(src, final, package["size"], package["sha256"], all_dir)
                finally:
                    os.close(src)
                if sha512 is None:
                    out["mismatch"].append(name)
                    continue
                known.installed(final, name, package["sha256"], sha512)
                out["published"].append(name)
                listed[name] = job

        _write_indexes(all_dir, listed, known)
        if cache:
            data = json.dumps({"version": 1, "files": known.new}, sort_keys=True).encode()
            try:
                with open(cache_path, "rb") as f:
                    unchanged = f.read() == data
            except OSError:
                unchanged = False
            if not unchanged:
                _write_atomic(cache_path, data)
    out["published"].sort()
    return out


def _write_indexes(all_dir: str, listed: dict, known: _Known) -> None:
    """Rewrite All/pkg_summary.gz, then All/SHA512, from the files in `listed` (when they changed)."""
    text = []
    digests = []
    for name in sorted(listed):
        path = os.path.join(all_dir, name)
        entry = known.new[name]
        text.append(format_entry(known.meta(path, name), listed[name], name, entry["stat"][0], entry["sha256"]))
        digests.append((f"{ALL}/{name}", entry["sha512"]))
    summary = gzip.compress("\n".join(text).encode("utf-8") + (b"\n" if text else b""), compresslevel=9, mtime=0)
    _replace_if_changed(os.path.join(all_dir, SUMMARY), summary)
    # pbulk: `digest SHA512 All/pkg_summary.* All/*.tgz` from the top of the tree, sorted.
    digests.append((f"{ALL}/{SUMMARY}", hashlib.sha512(summary).hexdigest()))
    lines = "".join(f"SHA512 ({path}) = {hexdigest}\n" for path, hexdigest in sorted(digests))
    _replace_if_changed(os.path.join(all_dir, DIGESTS), lines.encode("utf-8"))


def _replace_if_changed(path: str, data: bytes) -> None:
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except OSError:
        pass
    _write_atomic(path, data)


# -- reading the queue -----------------------------------------------------------------------------


def local_tree(settings: dict) -> str | None:
    """The package tree's directory when the queue's packages_url is one on this machine, else None."""
    from .errors import GitqueueError
    from .transfer import parse_tree

    url = settings.get("packages_url")
    try:
        where = parse_tree(url) if url else None
    except GitqueueError:
        return None  # not a tree this machine can use as a directory
    return where.path if where is not None and not where.host else None


def results_of(queue) -> list[tuple[dict | None, dict]]:
    """(job record, result record) of every result at the queue's tip, by job name.

    The job record is None if the queue lacks it (publish then treats the job as restricted).
    """
    _, reader = queue.fetch()
    pairs = []
    for path, blob in reader.walk_files("results"):
        result = records.load_at("result", reader.store[blob].as_raw_string(), path)
        job_path = record_path("jobs", result["job"])
        data = reader.read(job_path)
        job = records.load_at("job", data, job_path) if data is not None else None
        pairs.append((job, result))
    pairs.sort(key=lambda pair: pair[1]["job"])
    return pairs
