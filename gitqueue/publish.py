"""Publishing: verified uploads from incoming/ into All/ of the shared package tree.

The package tree is a directory on the master:

    All/                     published binary packages, All/pkg_summary.gz and All/SHA512
    incoming/TOKEN/          what a worker uploaded for one lease (packages, build log, phase logs)
    logs/JOB/FILE            published build logs and phase logs

Everything a worker wrote (its records, the names in them, its uploads) is hostile input here:
the server's hook refuses what breaks the rules, but local writers and histories from before the
hook are not checked by it, so `publish` checks again. It copies into All/ exactly the package
files that success results name, and only those of the result's own job (PKGNAME.tgz unless the
queue's package_files say otherwise), after checking their size and SHA-256 against the result
and that the package, if it names itself, names its job; never a restricted package
(NO_BIN_ON_FTP or RESTRICTED), never over an existing file with other contents, never for a
result whose lease token is not its own or a late result whose lease was not reclaimed from its
worker (lapsed/). No file is read or written through a symbolic link (files.py). Every file
appears under its final name by rename(2) of a fsync'ed temporary file in the same directory, so
a crash at any point leaves All/ holding whole files only; a temporary file a crash left behind
is removed by the next run. Then All/pkg_summary.gz (pkg_summary(5), as `pkg_info -X` writes
it, with PKGNAME, PKGPATH and CATEGORIES from the job record) and All/SHA512 (digest(1) lines,
as pbulk writes them) are regenerated from the published files.

Last, `publish` removes from incoming/ the upload of each result it published whole (every
package in All/ with its checksum, the log in logs/JOB/ or never uploaded; a failure's log
likewise), and the uploads of this queue that no lease or result will use: neither a live
lease's nor a result's, nor a reclaimed lease's whose job has no result yet (its worker may
report a late success at any time, however long it was gone). An upload is this queue's when
its records once named the token (publish remembers the tokens it saw at the tip): another
queue's uploads, waiting in the same incoming/, are left alone. Removal comes after every copy is
fsynced and renamed into place, so a crash leaves the upload, or the copies and part of the
upload, never neither; it never follows a link (files.remove_tree).

Several queues (builds, branches) may publish into one package tree, and its clients (pkgin,
pkg_add) need indexes of all of it. So `.publish-cache.json` at the top of the tree remembers,
for every file a publish run put (or found) in All/ for a job, the identity of that job (PKGNAME,
PKGPATH, CATEGORIES: the entry's, never the file's own) and the queue it came from, with the
file's digests and package metadata. Every run, whichever queue it publishes, writes
pkg_summary.gz and SHA512 for every package in All/ that some run recorded, as long as it still
has the recorded checksum; a file no run recorded (put there by hand) is listed as "unlisted",
not indexed. Entries are keyed by (size, mtime, inode), so a file replaced or rewritten in place
is read again, keeping its record only if its bytes are the same; entries of files gone from
All/ are dropped. Runs are serialized by a lock on `.publish.lock` there, whatever queue they
publish: two runs never interleave their reading and writing of the records and indexes.
"""

import gzip
import hashlib
import json
import os
import re
import stat
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal, TypedDict, overload

from . import files, records
from .errors import GitqueueError, RecordInvalid
from .gitstore import is_local_path
from .layout import is_file_name, is_log_name, package_name_problem, record_path
from .locking import FileLock
from .pkgsummary import format_entry, identity_problem, read_package

ALL = "All"
INCOMING = "incoming"
LOGS = "logs"
SUMMARY = "pkg_summary.gz"
DIGESTS = "SHA512"
CACHE = ".publish-cache.json"
LOCK = ".publish.lock"
TMP_PREFIX = ".publish-tmp-"  # package names start with a letter or digit: never a clash

_TOKEN = re.compile(r"[0-9a-f]{16,64}")
# The lease tokens in a record's bytes, even one that fails its schema (read_queue keeps its
# upload; gc --cache keeps the build outputs of the leases a tip holds).
TOKENS_IN_RECORD = re.compile(rb'\btoken\s*=\s*"([0-9a-f]{16,64})"')
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


def _copy_verified(src_fd: int, dir_fd: int, name: str, size: int, sha256: str, temp_dir_fd: int | None = None,
                   inspect=None) -> tuple[str | None, str | None]:
    """Copy the open file `src_fd` to NAME in the directory `dir_fd` if its bytes have `size` and `sha256`.

    The digest is taken of the bytes copied, and `inspect` (given the copy, open for reading)
    reads the copy, so what lands is what was checked, even if the upload changes meanwhile. The
    copy is made in `temp_dir_fd` (default `dir_fd`), fsynced and renamed into place.

    Returns:
        (SHA-512 of the file, None) once it is in place; (None, None) when the contents differ;
        (None, why) when `inspect` returned why it may not be published. Nothing is left behind
        unless it was put in place.
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
                    return None, None
                h256.update(chunk)
                h512.update(chunk)
                out.write(chunk)
            if copied != size or h256.hexdigest() != sha256:
                return None, None
            out.flush()
            os.fsync(out.fileno())
        if inspect is not None:
            with files.open_own(temp_dir_fd, temp) as copy:
                why = inspect(copy)
            if why is not None:
                return None, why
        files.install(dir_fd, temp, name, temp_dir_fd)
        installed = True
        return h512.hexdigest(), None
    finally:
        if not installed:
            files.unlink(temp, temp_dir_fd)


def _existing(dir_fd: int, name: str) -> tuple[bool, int | None]:
    """(whether NAME is in the directory, a read descriptor when it is a regular file, else None)."""
    if files.lstat(dir_fd, name) is None:
        return False, None
    return True, files.open_file(dir_fd, name)


# -- the records of All/: digests, metadata, and the job each file was published for ------------------

CACHE_VERSION = 2  # 1: digests and metadata only; 2: and the job (identity) each All/ file was published for


def _load_cache(path: str) -> dict:
    """{"files": {name: entry}, "uploads": {token: queue}} as the last run left them (empty if none)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and data.get("version") in (1, CACHE_VERSION)
            and isinstance(data.get("files"), dict)):
        return {"files": {}, "uploads": {}}
    uploads = data.get("uploads")
    if not isinstance(uploads, dict):
        uploads = {}
    return {"files": {name: entry for name, entry in data["files"].items() if isinstance(entry, dict)},
            "uploads": {token: queue for token, queue in uploads.items()
                        if isinstance(token, str) and _TOKEN.fullmatch(token) and isinstance(queue, str)}}


def _stat_key(st) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _identity(job: dict) -> dict:
    """What a pkg_summary entry takes from the job record (format_entry): its name, PKGPATH, CATEGORIES."""
    return {"name": job["name"], "pkgpath": job.get("pkgpath"), "categories": job.get("categories")}


def _recorded(entry) -> dict | None:
    """The job identity an entry of the records holds, or None (none, or not one publish wrote)."""
    job = entry.get("job") if isinstance(entry, dict) else None
    if not (isinstance(job, dict) and is_file_name(job.get("name"))):
        return None
    for key in ("pkgpath", "categories"):
        value = job.get(key)
        if value is not None and not (isinstance(value, str) and value.isprintable() and len(value) <= 4096):
            return None
    return job


class _Known:
    """Digests, package metadata and publish records of All/ files and published logs, by their stat.

    `old` is what the last run remembered; `new` what this run saw, which it remembers next. With
    `trust_stat` false every file is read again, but a file whose bytes did not change keeps the
    job it was published for.
    """

    def __init__(self, old: dict, trust_stat: bool = True):
        self.old = old
        self.trust_stat = trust_stat
        self.new: dict[str, dict] = {}

    def digests(self, fd: int, name: str) -> dict:
        key = _stat_key(os.fstat(fd))
        entry = self.new.get(name)
        if entry is not None and entry["stat"] == key:
            return entry
        old = self.old.get(name)
        if not (self.trust_stat and isinstance(old, dict) and old.get("stat") == key
                and isinstance(old.get("sha256"), str) and isinstance(old.get("sha512"), str)):
            sha256, sha512 = _hash_both(fd)
            entry = {"stat": key, "sha256": sha256, "sha512": sha512}
            if isinstance(old, dict) and old.get("sha256") == sha256:
                # The same bytes (touched, copied back): still what was published for its job.
                entry.update({k: old[k] for k in ("job", "queue") if k in old})
                if self.trust_stat and "meta" in old:
                    entry["meta"] = old["meta"]
            old = entry
        self.new[name] = old
        return old

    def installed(self, dir_fd: int, name: str, key: str, sha256: str, sha512: str, **meta) -> None:
        """Remember NAME of `dir_fd` (as `key`), just put in place; `meta=` its metadata when read."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        self.new[key] = {"stat": _stat_key(st), "sha256": sha256, "sha512": sha512, **meta}

    def record(self, name: str, job: dict, queue: str | None) -> None:
        """Remember that All/NAME (seen this run) is published for `job` of `queue`. The first
        record stays: another queue's result for the same file does not take it over."""
        entry = self.new[name]
        if _recorded(entry) is None:
            entry["job"] = _identity(job)
            entry["queue"] = queue

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


@dataclass
class Snapshot:
    """What publish decides from: the records at the queue's tip (read_queue), or made by hand."""

    entries: list = field(default_factory=list)  # (job record or None, result record)
    settings: dict = field(default_factory=dict)  # queue.toml: package_files
    lapsed: dict = field(default_factory=dict)  # job -> the entries of its lapsed/ record
    fenced: set = field(default_factory=set)  # lease tokens an administrator's retry or update fenced
    leases: dict = field(default_factory=dict)  # lease token -> job, of the live leases
    unreadable: list = field(default_factory=list)  # "PATH: why" of result records failing their schema
    tokens: set = field(default_factory=set)  # lease tokens in records that fail their schema
    read_at: float | None = None  # this machine's time just before the tip was read
    # Which queue this is (its repository's path or URL): the upload directories that publish
    # learns are this queue's it may remove as abandoned; without it, none.
    queue: str | None = None


class PublishSummary(TypedDict):
    """What one publish run did (see `publish`)."""

    published: list[str]
    already: int
    missing: list[str]
    mismatch: list[str]
    restricted: list[str]
    conflict: list[str]
    invalid: list[str]
    unproven: list[str]
    logs: list[str]
    removed: int
    abandoned: int
    indexed: int
    unlisted: list[str]


def publish(tree: str, snapshot: Snapshot, cache: bool = True) -> PublishSummary:
    """Publish the verified uploads of the results in `snapshot` into TREE/All/ and refresh its indexes.

    The indexes (pkg_summary.gz, SHA512) list every package in All/ that a publish run recorded,
    for this queue or another one publishing into the same tree, while it has the recorded
    checksum (see the module's docstring); runs on one tree are serialized by its lock.

    A success result's package files are published only when
    - the result is proven: its lease token is no other result's nor a live lease's, and a late
      result's lease was reclaimed from that worker under that token (lapsed/);
    - the name is one of its own job's package files (`layout.package_name_problem`: PKGNAME.tgz
      unless the queue's package_files say otherwise), and the package, if it names itself
      (+CONTENTS @name), names its job;
    - the job is not restricted (NO_BIN_ON_FTP or RESTRICTED, or no job record);
    - size and SHA-256 match the result; no other file stands under that name in All/.
    The pkg_summary entry's PKGNAME, PKGPATH and CATEGORIES come from the job record.

    Returns {"published": [names copied now], "already": number already in All/ with the right
    checksum, "missing": [not (yet) in incoming/TOKEN/], "mismatch": [size or checksum differs
    from the result; left in incoming/], "restricted": [never copied], "conflict": [All/ holds
    another file under that name; not overwritten], "invalid": ["JOB: why" of files that are
    not the job's, and "PATH: why" of result records that fail their schema], "unproven":
    ["JOB: why" of results published for nobody], "logs": [build logs copied to logs/JOB/],
    "removed": number of upload directories removed once published, "abandoned": number of
    upload directories removed that no lease or result will use, "indexed": number of packages
    the indexes list, "unlisted": [files in All/ that no publish run recorded, or that changed
    since: left out of the indexes]}. A build log that differs from
    its result is listed under mismatch or conflict as "logs/JOB/NAME". An upload directory
    changed after `snapshot.read_at` may be a lease claimed since, and is kept (without
    read_at, every unknown one is). No file is read or written
    through a symbolic link (files.py): a link where an upload should be is not there; All/,
    logs/ and incoming/ must be real directories. Without `cache`, every file is read again
    instead of trusting the digests remembered for its stat (the records of what was published
    for which job are kept all the same). Failures to write (disk full, ...) raise
    OSError after removing the temporary file; what was renamed into place before stays, and is
    whole, and no upload is removed.
    """
    with FileLock(os.path.join(tree, LOCK)):
        run = _Run(tree, snapshot, cache)
        try:
            run.publish()
        finally:
            run.close()
    run.out["published"].sort()
    return run.out


@overload
def _part(root_fd: int, tree: str, name: str, create: Literal[True]) -> int: ...
@overload
def _part(root_fd: int, tree: str, name: str, create: bool) -> int | None: ...


def _part(root_fd: int, tree: str, name: str, create: bool) -> int | None:
    """A descriptor of the directory NAME (All, logs, incoming) of the tree; None when it is missing
    and not created. A link there is refused: publish reads and writes only real directories."""
    fd = files.open_dir(root_fd, name, create=create)
    if fd is None and (create or files.lstat(root_fd, name) is not None):
        raise GitqueueError(f"{os.path.join(tree, name)} is not a directory (a symbolic link?); publish "
                            "reads and writes only real directories of the tree")
    return fd


class _Run:
    """One run of publish: the tree's directories (descriptors), what is known of All/, the outcome."""

    def __init__(self, tree: str, snapshot: Snapshot, cache: bool):
        self.tree, self.snapshot = tree, snapshot
        self.out = PublishSummary(published=[], already=0, missing=[], mismatch=[], restricted=[], conflict=[],
                                  invalid=list(snapshot.unreadable), unproven=[], logs=[], removed=0,
                                  abandoned=0, indexed=0, unlisted=[])
        self.queue_name = snapshot.settings.get("name")
        saved = _load_cache(os.path.join(tree, CACHE))
        self.known = _Known(saved["files"], trust_stat=cache)
        self.uploads = saved["uploads"]  # lease token -> the queue whose upload it is ("": two claim it)
        with ExitStack() as opened:  # closed here if opening the next one fails, else by close()
            self.root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            opened.callback(os.close, self.root)
            self.all = _part(self.root, tree, ALL, create=True)
            opened.callback(os.close, self.all)
            self.logs = _part(self.root, tree, LOGS, create=True)
            opened.callback(os.close, self.logs)
            self.incoming = _part(self.root, tree, INCOMING, create=False)
            if self.incoming is not None:
                opened.callback(os.close, self.incoming)
            self._opened = opened.pop_all()

    def close(self) -> None:
        self._opened.close()

    def publish(self) -> None:
        for fd in (self.root, self.all, self.logs):
            files.sweep(fd, TMP_PREFIX)
        uses = Counter(result.get("token") for _, result in self.snapshot.entries)
        uses.update(list(self.snapshot.leases))  # the tokens
        done = []  # lease tokens whose upload is published whole
        for job, result in sorted(self.snapshot.entries, key=lambda e: e[1]["job"]):
            why = _unproven(result, self.snapshot, uses)
            if why is not None:
                self.out["unproven"].append(f"{result['job']}: {why}")
                continue
            upload = self._upload(result.get("token"))
            try:
                in_place = [self._publish_log(result["job"], upload, result["log"])] if result.get("log") else []
                # The phase logs (configure.log, ...) beside it, in logs/JOB/ too.
                in_place += [self._publish_log(result["job"], upload, entry)
                             for entry in result.get("phase_logs") or () if isinstance(entry, dict)]
                if result.get("status") == "success":
                    in_place += [self._publish_package(upload, job, result["job"], package)
                                 for package in result.get("packages") or ()]
            finally:
                if upload is not None:
                    os.close(upload)
            if all(in_place) and upload is not None:
                done.append(result["token"])
        listed = self._listed()
        self.out["indexed"] = len(listed)
        _write_indexes(self.all, listed, self.known)
        self._keep_log_entries()
        at_tip = self._learn_uploads()
        self._save()
        # Last, once every copy is fsynced and in place: a crash before this leaves the upload
        # and the copies, one during it the copies and part of the upload, never neither.
        if self.incoming is not None:
            self.out["removed"] = sum(self._remove_upload(self.incoming, token) for token in done)
            self.out["abandoned"] = self._remove_abandoned(self.incoming)
        for token in list(self.uploads):  # forget what is gone and no lease of this queue stands for
            if token not in at_tip and (self.incoming is None or files.lstat(self.incoming, token) is None):
                del self.uploads[token]
        self._save()

    def _save(self) -> None:
        """Write what this run knows of the tree (`.publish-cache.json`) when it changed."""
        _replace_if_changed(self.root, CACHE, json.dumps(
            {"version": CACHE_VERSION, "files": self.known.new, "uploads": self.uploads}, sort_keys=True).encode())

    def _learn_uploads(self) -> set:
        """Remember the lease tokens at this queue's tip as this queue's upload directories; return them.

        Other queues may publish into the same tree, and their uploads wait in the same incoming/:
        only a directory this queue's records once named (a live lease, a result, a reclaimed
        lease) is this queue's to remove as abandoned. A token two queues name is neither's.
        """
        snap = self.snapshot
        at_tip = set(snap.leases) | snap.tokens | {result.get("token") for _, result in snap.entries}
        at_tip |= {entry.get("token") for entries in snap.lapsed.values() for entry in entries}
        at_tip = {token for token in at_tip if isinstance(token, str) and _TOKEN.fullmatch(token)}
        if snap.queue is not None:
            for token in at_tip:
                self.uploads[token] = snap.queue if self.uploads.get(token, snap.queue) == snap.queue else ""
        return at_tip

    def _remove_upload(self, incoming: int, token: str) -> bool:
        removed = files.remove_tree(incoming, token)
        if removed:
            self.uploads.pop(token, None)
        return removed

    def _listed(self) -> dict:
        """{name: job identity} of the files in All/ to index: every regular file that a publish
        run (of any queue) recorded and that still has the recorded bytes."""
        listed = {}
        for name in sorted(os.listdir(self.all)):
            if name.startswith(".") or name in RESERVED:
                continue
            fd = files.open_file(self.all, name)
            if fd is None:
                continue  # a directory or a link: not a package
            with os.fdopen(fd, "rb"):
                job = _recorded(self.known.digests(fd, name))
            if job is None:
                self.out["unlisted"].append(name)
            else:
                listed[name] = job
        return listed

    def _keep_log_entries(self) -> None:
        """Carry over the remembered digests of published logs this run did not look at (other
        queues' logs), as long as the file is there unchanged."""
        for key, entry in self.known.old.items():
            parts = key.split("/")
            if key in self.known.new or len(parts) != 3 or parts[0] != LOGS:
                continue
            job_dir = files.open_dir(self.logs, parts[1])
            if job_dir is None:
                continue
            try:
                st = files.lstat(job_dir, parts[2]) if is_file_name(parts[2]) else None
            finally:
                os.close(job_dir)
            if st is not None and stat.S_ISREG(st.st_mode) and entry.get("stat") == _stat_key(st):
                self.known.new[key] = entry

    def _remove_abandoned(self, incoming: int) -> int:
        """Remove the upload directories that no lease or result will ever use; return how many.

        Only this queue's directories (_learn_uploads: another queue's uploads may wait in the same
        incoming/) are removed. Kept: a live lease's, any result's (removed above once published),
        and a lease's that was reclaimed from a worker that may still report a late success: the
        hook accepts one whenever the job has no result and no other live lease, however late, so
        such an upload stays until the job has a result or an administrator's retry or update fenced
        its token. A directory changed since the tip was read may be a lease claimed after that, and
        is kept too; without `read_at`, all are kept.
        """
        snap = self.snapshot
        if snap.read_at is None or snap.queue is None:
            return 0
        finished = {result["job"] for _, result in snap.entries}
        kept = set(snap.leases) | snap.tokens | {result.get("token") for _, result in snap.entries}
        kept |= {entry.get("token") for job, entries in snap.lapsed.items() if job not in finished
                 for entry in entries} - snap.fenced
        removed = 0
        for name in os.listdir(incoming):
            mine = _TOKEN.fullmatch(name) and name not in kept and self.uploads.get(name) == snap.queue
            st = files.lstat(incoming, name) if mine else None
            if st is None or not stat.S_ISDIR(st.st_mode) or st.st_mtime >= snap.read_at:
                continue
            removed += self._remove_upload(incoming, name)
        return removed

    def _upload(self, token) -> int | None:
        """A descriptor of incoming/TOKEN/, or None when it is not a directory there."""
        if self.incoming is None or not (isinstance(token, str) and _TOKEN.fullmatch(token)):
            return None
        return files.open_dir(self.incoming, token)

    def _publish_package(self, upload: int | None, job: dict | None, job_name: str, package: dict) -> bool:
        """Publish one package file of a success result; True once it is in All/ with its checksum."""
        out = self.out
        name = package.get("name")
        if not is_file_name(name) or name in RESERVED:
            out["invalid"].append(f"{job_name}: {name!r} is not a package file name")
            return False
        if job is None or job.get("no_bin_on_ftp") or job.get("restricted"):
            out["restricted"].append(name)  # without its job record, nothing says it may be published
            return False
        problem = package_name_problem(name, job, self.snapshot.settings)
        if problem is not None:
            out["invalid"].append(f"{job_name}: {problem}")
            return False
        present, fd = _existing(self.all, name)
        if present:
            if fd is None:
                out["conflict"].append(name)  # a link or a directory: not a package
                return False
            with os.fdopen(fd, "rb"):
                same = self.known.digests(fd, name)["sha256"] == package["sha256"]
            if not same:
                out["conflict"].append(name)
                return False
            problem = identity_problem(self.known.meta(self.all, name), job)
            if problem is not None:  # published before publish looked inside
                out["invalid"].append(f"{job_name}: {ALL}/{name}: {problem}")
                return False
            out["already"] += 1
            self.known.record(name, job, self.queue_name)
            return True
        src = files.open_file(upload, name) if upload is not None else None
        if src is None:
            out["missing"].append(name)
            return False
        meta: list[dict | None] = []

        def inspect(copy):
            meta.append(read_package(copy))
            return identity_problem(meta[0], job)

        try:
            if os.fstat(src).st_size != package["size"]:
                sha512, problem = None, None
            else:
                sha512, problem = _copy_verified(src, self.all, name, package["size"], package["sha256"],
                                                 inspect=inspect)
        finally:
            os.close(src)
        if problem is not None:
            out["invalid"].append(f"{job_name}: {name}: {problem}")
            return False
        if sha512 is None:
            out["mismatch"].append(name)
            return False
        self.known.installed(self.all, name, name, package["sha256"], sha512, meta=meta[0])
        self.known.record(name, job, self.queue_name)
        out["published"].append(name)
        return True

    def _publish_log(self, job: str, upload: int | None, log: dict) -> bool:
        """Publish a result's build log into logs/JOB/; True once it is there, or was not uploaded."""
        out, name = self.out, log.get("name")
        if not (is_log_name(name) and is_file_name(job)):
            out["invalid"].append(f"{job}: log {name!r} is not a plain .log or .txt file name")
            return False
        rel = f"{LOGS}/{job}/{name}"  # the cache's key: never a package name, those have no '/'
        there = files.lstat(self.logs, job) is not None
        job_dir = files.open_dir(self.logs, job) if there else None
        if there and job_dir is None:
            out["conflict"].append(rel)  # logs/JOB is not a directory (a link?)
            return False
        try:
            if job_dir is not None:
                present, fd = _existing(job_dir, name)
                if present:
                    if fd is None:
                        out["conflict"].append(rel)
                        return False
                    with os.fdopen(fd, "rb"):
                        same = (os.fstat(fd).st_size == log["size"]
                                and self.known.digests(fd, rel)["sha256"] == log["sha256"])
                    if not same:
                        out["conflict"].append(rel)
                    return same
            src = files.open_file(upload, name) if upload is not None else None
            if src is None:
                return True  # logs are optional: not uploaded (or not a regular file: not read)
            try:
                if job_dir is None:
                    job_dir = _part(self.logs, os.path.join(self.tree, LOGS), job, create=True)
                sha512, _ = _copy_verified(src, job_dir, name, log["size"], log["sha256"], temp_dir_fd=self.logs)
                if sha512 is None:
                    out["mismatch"].append(rel)
                    return False
                self.known.installed(job_dir, name, rel, log["sha256"], sha512)
                out["logs"].append(rel)
                return True
            finally:
                os.close(src)
        finally:
            if job_dir is not None:
                os.close(job_dir)


def _unproven(result: dict, snapshot: Snapshot, uses: Counter) -> str | None:
    """Why nothing of `result` may be published, or None.

    Its lease token must be its own (no other result's, no live lease's: the upload directory is
    that lease's alone), and a late result must be for a lease reclaimed from that worker under
    that token (lapsed/): the server's hook requires both, but a local writer or a history from
    before the hook may not have.
    """
    token, worker, job = result.get("token"), result.get("worker"), result["job"]
    if uses[token] > 1:
        return f"its lease token {token} is another result's or a live lease's too; published for neither"
    if result.get("late") and not any(entry.get("worker") == worker and entry.get("token") == token
                                      for entry in snapshot.lapsed.get(job, ())):
        return (f"a late result by {worker}, but no lease of {job} reclaimed from {worker} (lapsed/) "
                f"has its token {token}")
    if token in snapshot.fenced:
        return f"its lease token {token} was fenced by an administrator's retry or update"
    return None


def _write_indexes(all_fd: int, listed: dict, known: _Known) -> None:
    """Rewrite All/pkg_summary.gz, then All/SHA512, from the files in `listed` ({name: job
    identity}), when they changed."""
    text: list[str] = []
    digests: list[tuple[str, str]] = []
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
        with files.open_own(dir_fd, name) as f:
            if f.read() == data:
                return
    except OSError:
        pass
    files.write_atomic(dir_fd, name, data, TMP_PREFIX)


# -- reading the queue -----------------------------------------------------------------------------


def local_tree(settings: dict) -> str | None:
    """The package tree's directory when the queue's packages_url is one on this machine, else None."""
    from .transfer import parse_tree

    url = settings.get("packages_url")
    try:
        where = parse_tree(url) if url else None
    except GitqueueError:
        return None  # not a tree this machine can use as a directory
    return where.path if where is not None and not where.host else None


def read_queue(queue, clock=time.time) -> Snapshot:
    """The records publish decides from, at the queue's tip: settings, results with their jobs,
    live leases and lapsed leases.

    A result record that fails its schema (a local writer's, or one written before the schema
    refused it) is not published: it is listed in `unreadable`, and the lease tokens of such
    records are kept in `tokens` so that their upload directories are not taken for abandoned
    ones. A result whose job record is missing gets None (publish then treats the job as
    restricted). `clock` is this machine's (the package tree's) clock: `read_at`.
    """
    read_at = clock()
    _, reader = queue.fetch()
    snap = Snapshot(settings=queue.settings(reader), read_at=read_at,
                    queue=os.path.realpath(queue.url) if is_local_path(queue.url) else queue.url)

    def each(kind_dir, kind):
        for path, blob in reader.walk_files(kind_dir):
            data = reader.store[blob].as_raw_string()
            try:
                yield records.load_at(kind, data, path)
            except RecordInvalid as e:
                if kind == "result":
                    snap.unreadable.append(str(e))
                snap.tokens.update(token.decode() for token in TOKENS_IN_RECORD.findall(data))

    for result in each("results", "result"):
        job_path = record_path("jobs", result["job"])
        data = reader.read(job_path)
        snap.entries.append((records.load_at("job", data, job_path) if data is not None else None, result))
    snap.entries.sort(key=lambda pair: pair[1]["job"])
    snap.leases = {lease["token"]: lease["job"] for lease in each("leases", "lease")}
    snap.lapsed = {lapsed["job"]: lapsed["lapsed"] for lapsed in each("lapsed", "lapsed")}
    from .lease import fenced_tokens

    snap.fenced = {token for retries in each("retries", "retry") for token in fenced_tokens(retries)}
    return snap
