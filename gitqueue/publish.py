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

from . import files, records
from .errors import GitqueueError
from .layout import is_file_name, is_log_name
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

_TOKEN = re.compile(r"[0-9a-f]{16,64}")
# Names publish writes itself (and pbulk's siblings of them): a package may not take them.
RESERVED = {SUMMARY, DIGESTS, "pkg_summary.bz2", "pkg_summary.xz", "pkg_summary.zst", "SHA512.bz2"}

_CHUNK = 1 << 20


# -- digests and copies -----------------------------------------------------------------------------


def _hash_both(fd: int) -> tuple[str, str]:
    """(sha256, sha512) of the open file `fd`, read from its start."""
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        offset += len(chunk)
        h256.update(chunk)
        h512.update(chunk)
    return h256.hexdigest(), h512.hexdigest()


def _copy_verified(src_fd: int, dir_fd: int, name: str, size: int, sha256: str,
                   temp_dir_fd: int | None = None) -> str | None:
    """Copy the open file `src_fd` to NAME in the directory `dir_fd` if its bytes have `size` and `sha256`.

    The digest is taken of the bytes copied, so what lands is what was checked, even if the
    upload changes meanwhile. The copy is made in `temp_dir_fd` (default `dir_fd`), fsynced and
    renamed into place. Returns the SHA-512 of the file, or None (nothing written) when the
    contents differ.
    """
    h256, h512 = hashlib.sha256(), hashlib.sha512()
    copied = 0
    temp_dir_fd = dir_fd if temp_dir_fd is None else temp_dir_fd
    fd, temp = files.temp_file(temp_dir_fd, TMP_PREFIX)
    installed = False
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := os.pread(src_fd, _CHUNK, copied):
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
        files.install(dir_fd, temp, name, temp_dir_fd)
        installed = True
        return h512.hexdigest()
    finally:
        if not installed:
            files.unlink(temp_dir_fd, temp)


def _existing(dir_fd: int, name: str) -> tuple[bool, int | None]:
    """(whether NAME is in the directory, a read descriptor when it is a regular file, else None)."""
    if files.lstat(dir_fd, name) is None:
        return False, None
    return True, files.open_file(dir_fd, name)


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
    """Digests (and package metadata) of All/ files and published logs, remembered by their stat."""

    def __init__(self, old: dict):
        self.old = old
        self.new = {}

    def digests(self, fd: int, name: str) -> dict:
        key = _stat_key(os.fstat(fd))
        entry = self.new.get(name) or self.old.get(name)
        if not (isinstance(entry, dict) and entry.get("stat") == key and "sha256" in entry and "sha512" in entry):
            sha256, sha512 = _hash_both(fd)
            entry = {"stat": key, "sha256": sha256, "sha512": sha512}
        self.new[name] = entry
        return entry

    def installed(self, dir_fd: int, name: str, key: str, sha256: str, sha512: str) -> None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        self.new[key] = {"stat": _stat_key(st), "sha256": sha256, "sha512": sha512}

    def meta(self, dir_fd: int, name: str):
        """The metadata of NAME in `dir_fd` (read_package), read only when not remembered."""
        entry = self.new[name]
        if "meta" not in entry:
            fd = files.open_file(dir_fd, name)
            if fd is None:
                raise GitqueueError(f"{ALL}/{name} went away while publish ran")
            with os.fdopen(fd, "rb") as f:
                entry["meta"] = read_package(f)
        return entry["meta"]


# -- publishing ------------------------------------------------------------------------------------


def _part(root_fd: int, tree: str, name: str, create: bool) -> int | None:
    """A descriptor of the directory NAME (All, logs, incoming) of the tree; None when it is missing
    and not created. A link there is refused: publish reads and writes only real directories."""
    fd = files.open_dir(root_fd, name, create=create)
    if fd is None and (create or files.lstat(root_fd, name) is not None):
        raise GitqueueError(f"{os.path.join(tree, name)} is not a directory (a symbolic link?); publish "
                            "reads and writes only real directories of the tree")
    return fd


def _publish_log(dirs, job: str, upload: int | None, log: dict, known: _Known, out: dict) -> None:
    name = log.get("name")
    if not (is_log_name(name) and is_file_name(job)):
        return
    rel = f"{LOGS}/{job}/{name}"  # the cache's key: never a package name, those have no '/'
    there = files.lstat(dirs.logs, job) is not None
    job_dir = files.open_dir(dirs.logs, job) if there else None
    if there and job_dir is None:
        out["conflict"].append(rel)  # logs/JOB is not a directory (a link?)
        return
    try:
        if job_dir is not None:
            present, fd = _existing(job_dir, name)
            if present:
                if fd is None:
                    out["conflict"].append(rel)
                    return
                with os.fdopen(fd, "rb"):
                    if not (os.fstat(fd).st_size == log["size"] and known.digests(fd, rel)["sha256"] == log["sha256"]):
                        out["conflict"].append(rel)
                return
        src = files.open_file(upload, name) if upload is not None else None
        if src is None:
            return  # logs are optional: not uploaded (yet)
        try:
            if job_dir is None:
                job_dir = _part(dirs.logs, os.path.join(dirs.tree, LOGS), job, create=True)
            sha512 = _copy_verified(src, job_dir, name, log["size"], log["sha256"], dirs.logs)
            if sha512 is None:
                out["mismatch"].append(rel)
            else:
                known.installed(job_dir, name, rel, log["sha256"], sha512)
                out["logs"].append(rel)
        finally:
            os.close(src)
    finally:
        if job_dir is not None:
            os.close(job_dir)


class _Dirs:
    """Descriptors of the tree and of its All/, logs/ and incoming/ (None when there is none)."""

    def __init__(self, tree: str):
        self.tree = tree
        self.root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.all = self.logs = self.incoming = None
        try:
            self.all = _part(self.root, tree, ALL, create=True)
            self.logs = _part(self.root, tree, LOGS, create=True)
            self.incoming = _part(self.root, tree, INCOMING, create=False)
        except BaseException:
            self.close()
            raise

    def upload(self, token) -> int | None:
        """A descriptor of incoming/TOKEN/, or None when it is not a directory there."""
        if self.incoming is None or not (isinstance(token, str) and _TOKEN.fullmatch(token)):
            return None
        return files.open_dir(self.incoming, token)

    def close(self) -> None:
        for fd in (self.root, self.all, self.logs, self.incoming):
            if fd is not None:
                os.close(fd)


def publish(tree: str, entries, cache: bool = True) -> dict:
    """Publish the verified uploads of success results into TREE/All/ and refresh its indexes.

    `entries` is an iterable of (job record, result record), typically `results_of(queue)`.
    Returns {"published": [names copied now], "already": number already in All/ with the right
    checksum, "missing": [not (yet) in incoming/TOKEN/], "mismatch": [size or checksum differs
    from the result; left in incoming/], "restricted": [NO_BIN_ON_FTP or RESTRICTED, never
    copied], "conflict": [All/ holds another file under that name; not overwritten],
    "invalid": [names that are no safe file name], "logs": [build logs copied to logs/JOB/]}.
    A build log that differs from its result is listed under mismatch or conflict as
    "logs/JOB/NAME". No file is read or written through a symbolic link (files.py): a link
    where an upload should be is not there; All/, logs/ and incoming/ must be real directories.
    Failures to write (disk full, ...) raise OSError after removing the temporary file; what was
    renamed into place before stays, and is whole.
    """
    out = {"published": [], "already": 0, "missing": [], "mismatch": [], "restricted": [], "conflict": [],
           "invalid": [], "logs": []}
    with FileLock(os.path.join(tree, LOCK)):
        dirs = _Dirs(tree)
        try:
            _publish(dirs, entries, cache, out)
        finally:
            dirs.close()
    out["published"].sort()
    return out


def _publish(dirs: _Dirs, entries, cache: bool, out: dict) -> None:
    for fd in (dirs.root, dirs.all, dirs.logs):
        files.sweep(fd, TMP_PREFIX)
    cache_path = os.path.join(dirs.tree, CACHE)
    known = _Known(_load_cache(cache_path) if cache else {})
    listed: dict[str, dict | None] = {}  # name in All/ -> the job it was published for

    for job, result in sorted(entries, key=lambda e: e[1]["job"]):
        upload = dirs.upload(result.get("token"))
        try:
            if result.get("log"):
                _publish_log(dirs, result["job"], upload, result["log"], known, out)
            if result.get("status") == "success":
                restricted = job is None or bool(job.get("no_bin_on_ftp") or job.get("restricted"))
                for package in result.get("packages") or ():
                    _publish_package(dirs, upload, job, package, restricted, known, listed, out)
        finally:
            if upload is not None:
                os.close(upload)

    _write_indexes(dirs.all, listed, known)
    if cache:
        _replace_if_changed(dirs.root, CACHE, json.dumps({"version": 1, "files": known.new}, sort_keys=True).encode())


def _publish_package(dirs: _Dirs, upload: int | None, job: dict | None, package: dict, restricted: bool,
                     known: _Known, listed: dict, out: dict) -> None:
    name = package.get("name")
    if not is_file_name(name) or name in RESERVED:
        out["invalid"].append(str(name))
        return
    present, fd = _existing(dirs.all, name)
    if present:
        if fd is None:
            out["conflict"].append(name)  # a link or a directory: not a package
            return
        with os.fdopen(fd, "rb"):
            if known.digests(fd, name)["sha256"] == package["sha256"]:
                out["already"] += 1
                listed.setdefault(name, job)
            else:
                out["conflict"].append(name)
        return
    if restricted:
        out["restricted"].append(name)
        return
    src = files.open_file(upload, name) if upload is not None else None
    if src is None:
        out["missing"].append(name)
        return
    try:
        if os.fstat(src).st_size != package["size"]:
            sha512 = None
        else:
            sha512 = _copy_verified(src, dirs.all, name, package["size"], package["sha256"])
    finally:
        os.close(src)
    if sha512 is None:
        out["mismatch"].append(name)
        return
    known.installed(dirs.all, name, name, package["sha256"], sha512)
    out["published"].append(name)
    listed[name] = job


def _write_indexes(all_fd: int, listed: dict, known: _Known) -> None:
    """Rewrite All/pkg_summary.gz, then All/SHA512, from the files in `listed` (when they changed)."""
    text = []
    digests = []
    for name in sorted(listed):
        entry = known.new[name]
        text.append(format_entry(known.meta(all_fd, name), listed[name], name, entry["stat"][0], entry["sha256"]))
        digests.append((f"{ALL}/{name}", entry["sha512"]))
    summary = gzip.compress("\n".join(text).encode("utf-8") + (b"\n" if text else b""), compresslevel=9, mtime=0)
    _replace_if_changed(all_fd, SUMMARY, summary)
    # pbulk: `digest SHA512 All/pkg_summary.* All/*.tgz` from the top of the tree, sorted.
    digests.append((f"{ALL}/{SUMMARY}", hashlib.sha512(summary).hexdigest()))
    lines = "".join(f"SHA512 ({path}) = {hexdigest}\n" for path, hexdigest in sorted(digests))
    _replace_if_changed(all_fd, DIGESTS, lines.encode("utf-8"))


def _replace_if_changed(dir_fd: int, name: str, data: bytes) -> None:
    try:
        with open(name, "rb", opener=lambda path, flags: os.open(path, flags | os.O_NOFOLLOW, dir_fd=dir_fd)) as f:
            if f.read() == data:
                return
    except OSError:
        pass
    files.write_atomic(dir_fd, name, data, TMP_PREFIX)


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
