"""Maintenance: pack a queue repository's loose objects and trim a worker's cache, in bounded memory.

A queue gains a dozen loose objects per commit (a full pkgsrc build: about 30,000 commits and
400,000 files). Two kinds of repository are kept small here:

- a local-path queue (the master's bare repository): `git repack -d` (incremental, with
  deltas) packs its loose objects. The master needs git anyway: it serves workers through
  git-upload-pack and git-receive-pack (see serve). A new pack is complete before any loose
  object it holds is removed, no reachable object ever disappears, and refs are never
  touched: it is safe while workers claim and report.
- a worker's cache (the shallow mirror of an ssh:// or git:// queue): workers need the current
  tree only, so the objects reachable from the cached tip are written into one pack (by
  gitstore.write_pack: workers have no git binary), the tip becomes the shallow boundary, and
  every other pack and loose object is removed, under the cache's lock, which every gitqueue
  process of the host takes around its transactions.

A worker's cache also keeps what `gitqueue work` leaves of each build: its output directory
(build/JOB-LEASE8, uploaded, then no longer needed) and its log (logs/JOB-LEASE8.log). gc
--cache removes the output directories of the jobs this host no longer holds, and all but the
newest logs of those (see gc_outputs).
"""

import hashlib
import math
import os
import re
import shutil
import stat
import subprocess
import time

from . import files
from .errors import GitqueueError
from .gitstore import ObjectID, write_pack

# More packs than this and the git path merges them into one (see _git_repack).
MAX_PACKS = 32
# Seconds a worker's cache keeps what gc --cache superseded (see gc_cache).
GRACE = 3600
# Build logs of jobs no longer held that gc --cache keeps in a worker's cache, the newest. A count,
# not an age: it bounds the disk whatever the host's speed (a few hundred MB at most for pkgsrc's
# largest logs), and covers weeks of a slow machine's builds and the last day or so of a fast
# one's; the logs also went to the package tree with each result (a failure's to logs/JOB/).
KEEP_LOGS = 200
ASIDE = ".gc-"  # an output directory being removed: renamed aside first (never a JOB-LEASE8 name)


class GcError(GitqueueError):
    """Maintenance could not be done (git failed, the repository is not a queue's)."""


# -- what a repository holds --------------------------------------------------------------------

def measure(path: str) -> dict:
    """Loose objects, packs and their bytes in the bare repository at `path`.

    Returns {"loose", "loose_bytes", "packs", "pack_bytes", "bytes"}: "loose_bytes" counts
    the file system's blocks (what the objects cost on disk), "bytes" the whole objects/ tree.
    """
    objects = os.path.join(path, "objects")
    loose = loose_bytes = packs = pack_bytes = 0
    for name in _fanout(objects):
        for entry in os.scandir(os.path.join(objects, name)):
            if len(entry.name) == 38:
                loose += 1
                st = entry.stat()
                loose_bytes += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    packdir = os.path.join(objects, "pack")
    for entry in _scandir(packdir):
        if entry.name.endswith((".pack", ".idx")):
            pack_bytes += entry.stat().st_size
            packs += entry.name.endswith(".pack")
    return {"loose": loose, "loose_bytes": loose_bytes, "packs": packs, "pack_bytes": pack_bytes,
            "bytes": loose_bytes + pack_bytes}


def _fanout(objects):
    try:
        names = os.listdir(objects)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if len(n) == 2 and all(c in "0123456789abcdef" for c in n))


def _scandir(path):
    try:
        return list(os.scandir(path))
    except FileNotFoundError:
        return []


# -- a local-path queue -------------------------------------------------------------------------

def gc_repository(path: str, max_packs: int = MAX_PACKS, git: str = "git") -> dict:
    """Pack the loose objects of the bare repository at `path` (a local-path queue) with git.

    Args:
      path: the bare repository.
      max_packs: more packs than this are merged into one.
      git: the git program.

    Returns {"before", "after" (see measure), "packed", "seconds"}.

    Raises GcError when `path` is not a bare repository, git is not installed or git fails.
    """
    if not os.path.isdir(path):
        raise GcError(f"{path}: no such repository")
    if not os.path.isdir(os.path.join(path, "objects")) or not os.path.isdir(os.path.join(path, "refs")):
        raise GcError(f"{path}: not a bare git repository")
    found = shutil.which(git)
    if found is None:
        raise GcError(f"{git}: not found; gc of a queue repository runs git repack (install git, "
                      "which serving workers over ssh needs too)")
    t0 = time.monotonic()
    before = measure(path)
    _git_repack(path, found, before["packs"] >= max_packs)
    after = measure(path)
    return {"before": before, "after": after, "packed": max(0, before["loose"] - after["loose"]),
            "seconds": round(time.monotonic() - t0, 3)}


def _git_repack(path, git, merge):
    """`git repack` with settings that keep it safe under concurrent dulwich readers and writers.

    - No bitmaps: dulwich crashed on a bitmapped pack beside later packs, and nobody serves
      these repositories with git's bitmap-using paths.
    - Incremental by default: only loose reachable objects are packed and then pruned
      (prune-packed removes a loose object only once a pack holds it); existing packs stay.
    - Merging (-A -d) when packs pile up: reachable objects go into one pack, and objects of a
      removed pack that nothing references yet (a writer's push in flight) become loose
      instead of being dropped. Readers that still hold a removed pack rescan (dulwich
      evicts a vanished pack and retries, as git does).
    - Never `git gc`: it packs refs (moving the branch out of its loose ref file while workers
      compare-and-swap it) and prunes unreferenced objects that an in-flight push still needs.
    """
    cmd = [git, "-c", "repack.writeBitmaps=false", "-c", "pack.writeBitmapHashCache=false",
           "-c", "core.fsync=objects,derived-metadata", "-c", "gc.auto=0",
           "--git-dir", path, "repack", "-d", "-q", "--no-write-bitmap-index"]
    if merge:
        cmd.insert(cmd.index("-d"), "-A")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise GcError(f"{path}: git repack failed: {last}")


# -- a worker's cache ---------------------------------------------------------------------------

def gc_cache(queue, grace: float = GRACE, keep_logs: int = KEEP_LOGS) -> dict:
    """Reduce the cache repository of `queue` (ssh:// or git://) to its tip's commit and tree.

    Holds the cache's lock throughout, so no gitqueue process of this host writes the cache
    meanwhile. Writes one pack with the objects reachable from the tip's tree and makes the tip
    the shallow boundary. Every other pack and loose object is then superseded: it is removed
    by the first gc --cache `grace` seconds later (0: at once), so that a command of this host
    still reading an older tip, outside the lock, finds its objects (git keeps unreachable
    objects for a while for the same reason). Refs are left as they are.

    Then the build output directories and logs of the jobs this host no longer holds go, as
    gc_outputs says (`keep_logs` of those logs are kept).

    Returns {"before", "after" (see measure; "after" counts what is kept), "kept" (objects),
    "superseded" ({"files", "bytes"} waiting for removal), "removed" (files), "outputs" (see
    gc_outputs), "seconds"}. A local-path queue has no cache repository (use gc_repository).
    """
    from .gitstore import CachedRemote

    t0 = time.monotonic()
    with queue.lock():
        remote = queue.remote
        if not isinstance(remote, CachedRemote):
            raise GcError(f"{queue.url}: a local-path queue has no cache repository; "
                          "gc the queue itself instead")
        repo = remote.repo
        path = repo.path
        before = measure(path)
        now = time.time()
        pending = _read_superseded(path)
        try:
            tip = repo.refs[remote.ref]
        except KeyError:
            tip = None
        kept = 0
        objects_dir = os.path.join(path, "objects")
        if tip is not None:
            # The tip's objects go into the new pack before any superseded file is removed: a
            # fetch since the last run may have found an object it brought back already in such
            # a file and written nothing (objects are content-addressed), so that file can be
            # the only copy the tip has.
            store = repo.object_store
            names = _reachable(store, tip)

            def read_all():
                for hexsha in names:
                    type_num, data = store.get_raw(ObjectID(hexsha.encode()))
                    yield hexsha, type_num, data

            written = write_pack(os.path.join(objects_dir, "pack"), read_all())
            kept = len(written)
            keep = "pack/pack-" + hashlib.sha1(b"".join(sorted(bytes.fromhex(h) for h in written))).hexdigest()
            # The new boundary before anything goes: a fetch must not offer a parent we drop.
            _write_shallow(path, [tip])
            for name in _object_files(objects_dir):
                if name.startswith(keep + "."):
                    pending.pop(name, None)
                else:
                    pending.setdefault(name, now)
        removed = 0
        for name, since in list(pending.items()):
            if not grace or since <= now - grace:
                removed += files.unlink(os.path.join(objects_dir, name))
                del pending[name]
        for fan in _fanout(objects_dir):
            try:
                os.rmdir(os.path.join(objects_dir, fan))  # only the empty ones
            except OSError:
                pass
        _write_superseded(path, pending)
        # This process's view of the packs: forget the removed ones.
        repo.object_store._update_pack_cache()
        after, waiting = _measure_kept(path, pending)
    outputs = gc_outputs(queue, keep_logs)
    return {"before": before, "after": after, "kept": kept, "superseded": waiting, "removed": removed,
            "outputs": outputs, "seconds": round(time.monotonic() - t0, 3)}


# -- what workers leave in the cache ----------------------------------------------------------------

def gc_outputs(queue, keep_logs: int = KEEP_LOGS) -> dict:
    """Remove the build output directories and old build logs of jobs this host no longer holds.

    `gitqueue work` keeps each attempt's output directory (CACHE/build/JOB-LEASE8) and log
    (CACHE/logs/JOB-LEASE8.log) after uploading them. An attempt is still held, and both are
    kept, while the cached tip has a lease of JOB whose token starts with LEASE8, or a reclaimed
    lease of it (lapsed/) and no result: its worker may still upload and report a late success.
    The tip is the one this host last fetched or pushed; its own claims are always in it, and
    an older tip only holds more. Of the other logs the `keep_logs` newest stay. Without a
    cached tip nothing is removed.

    Crash-safe: under the cache's lock each directory is renamed aside (build/.gc-...), then
    removed after it; a run that dies leaves such a directory, which the next run removes. No
    link is followed (files.remove_tree); only names of the JOB-LEASE8 form are touched.

    Returns {"builds": directories removed, "build_bytes", "logs": logs removed, "log_bytes"}.
    """
    from .buildlog import BUILDS, BULKLOG, LOGS

    out = {"builds": 0, "build_bytes": 0, "logs": 0, "log_bytes": 0}
    builds = files.open_dir(queue.cache_dir, BUILDS)
    logs = files.open_dir(queue.cache_dir, LOGS)
    # An attempt's build info and phase logs (CACHE/bulklog/JOB-LEASE8) go with its output.
    bulklogs = files.open_dir(queue.cache_dir, BULKLOG)
    try:
        with queue.lock():
            remote = queue.remote
            try:
                tip = remote.repo.refs[remote.ref]  # as cached: no network
            except KeyError:
                return out
            held = _held(remote.reader(tip))
            for fd in (builds, bulklogs):
                if fd is not None:
                    _set_aside(fd, held)
            if logs is not None:
                out["logs"], out["log_bytes"] = _trim_logs(logs, held, keep_logs)
        # Outside the lock (removing a large build takes a while): these names are no one's now,
        # and those a crashed run left behind go too.
        for fd in (builds, bulklogs):
            if fd is None:
                continue
            for name in sorted(os.listdir(fd)):
                if name.startswith(ASIDE):
                    size = _tree_bytes(fd, name)
                    if files.remove_tree(fd, name) and fd == builds:
                        out["builds"] += 1
                        out["build_bytes"] += size
    finally:
        for fd in (builds, logs, bulklogs):
            if fd is not None:
                os.close(fd)
    return out


def _held(reader) -> set:
    """{(job, LEASE8)} of the attempts the tip still holds: live leases, and reclaimed leases of
    jobs without a result. Tokens are read from the records' bytes, so a record that fails its
    schema still counts (keeping too much is harmless; removing a live build's files is not)."""
    from .layout import name_from_path, record_path
    from .publish import TOKENS_IN_RECORD

    held: set[tuple[str, str]] = set()
    for kind in ("leases", "lapsed"):
        for path, blob in reader.walk_files(kind):
            try:
                _, job = name_from_path(path)
            except GitqueueError:
                continue
            if kind == "lapsed" and reader.read(record_path("results", job)) is not None:
                continue
            data = reader.store[blob].as_raw_string()
            held.update((job, token[:8].decode()) for token in TOKENS_IN_RECORD.findall(data))
    return held


def _set_aside(builds: int, held: set) -> None:
    """Rename the output directories of attempts not `held` aside (ASIDE + name + pid)."""
    from .buildlog import parse_attempt_name

    for name in os.listdir(builds):
        attempt = parse_attempt_name(name)
        st = files.lstat(builds, name) if attempt is not None and attempt not in held else None
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        os.rename(name, f"{ASIDE}{name}-{os.getpid()}", src_dir_fd=builds, dst_dir_fd=builds)


def _trim_logs(logs: int, held: set, keep: int) -> tuple[int, int]:
    """Remove all but the `keep` newest logs of attempts not `held`; (logs removed, their bytes)."""
    from .buildlog import parse_attempt_name

    candidates = []
    for name in os.listdir(logs):
        attempt = parse_attempt_name(name[:-4]) if name.endswith(".log") else None
        if attempt is None or attempt in held:
            continue
        st = os.stat(name, dir_fd=logs, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            candidates.append((st.st_mtime_ns, name, st.st_size))
    candidates.sort(reverse=True)
    removed = size = 0
    for _, name, bytes_ in candidates[keep:]:
        try:
            os.unlink(name, dir_fd=logs)
        except FileNotFoundError:
            continue
        removed += 1
        size += bytes_
    return removed, size


def _tree_bytes(dir_fd: int, name: str) -> int:
    """Bytes of the regular files below the directory NAME of `dir_fd`, following no link."""
    total = 0
    for _, _, names, fd in os.fwalk(name, dir_fd=dir_fd):
        for entry in names:
            try:
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _object_files(objects_dir):
    """Names, relative to objects/, of the loose objects and pack files."""
    for fan in _fanout(objects_dir):
        for entry in _scandir(os.path.join(objects_dir, fan)):
            yield f"{fan}/{entry.name}"
    for entry in _scandir(os.path.join(objects_dir, "pack")):
        if entry.name.startswith("pack-"):
            yield f"pack/{entry.name}"


def _measure_kept(path, pending):
    """(measure(path) without the superseded files, {"files", "bytes"} of those)."""
    m = measure(path)
    files = size = 0
    for name in pending:
        try:
            st = os.stat(os.path.join(path, "objects", name))
        except FileNotFoundError:
            continue
        files += 1
        if name.startswith("pack/"):
            m["packs"] -= name.endswith(".pack")
            m["pack_bytes"] -= st.st_size
            m["bytes"] -= st.st_size
            size += st.st_size
        else:
            blocks = st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
            m["loose"] -= 1
            m["loose_bytes"] -= blocks
            m["bytes"] -= blocks
            size += blocks
    return m, {"files": files, "bytes": size}


SUPERSEDED = "gitqueue-superseded"  # in the cache repository: "SECONDS NAME" lines


def _read_superseded(path) -> dict:
    try:
        with open(os.path.join(path, SUPERSEDED), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    pending = {}
    for line in lines:
        since, _, name = line.partition(" ")
        # Only names of the shape written: a damaged list must not remove anything else.
        if re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{38}|pack/pack-[0-9a-f]{40}\.[a-z]+", name):
            try:
                pending[name] = float(since)
            except ValueError:
                pass
    return pending


def _write_superseded(path, pending):
    target = os.path.join(path, SUPERSEDED)
    if not pending:
        files.unlink(target)
        return
    # Whole seconds, rounded up: a file is never removed before its grace period has passed.
    files.replace_file(target, "".join(f"{math.ceil(since)} {name}\n" for name, since in sorted(pending.items())))


def _reachable(store, tip: bytes) -> list[str]:
    """Hex shas of the tip commit, its tree and everything below it, in walk order."""
    commit = store[tip]
    out = [tip.decode()]
    seen = set()
    stack = [commit.tree]
    while stack:
        sha = stack.pop()
        if sha in seen:
            continue
        seen.add(sha)
        out.append(sha.decode())
        for entry in store[sha].iteritems():
            if stat.S_ISDIR(entry.mode):
                stack.append(entry.sha)
            elif entry.sha not in seen:
                seen.add(entry.sha)
                out.append(entry.sha.decode())
    return out


def _write_shallow(path, commits):
    files.replace_file(os.path.join(path, "shallow"), b"".join(c + b"\n" for c in commits))
