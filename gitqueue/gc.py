"""Maintenance: pack a queue repository's loose objects and trim a worker's cache, in bounded memory.

A queue gains a dozen loose objects per commit (a full pkgsrc build: about 30,000 commits and
400,000 files). Two kinds of repository are kept small here:

- a local-path queue (the master's bare repository): its loose objects are packed. With a git
  binary, `git repack -d` (incremental, with deltas) does it; without one, gitqueue's own pack
  writer does, with deltas between versions of a file or directory, in chunks, keeping a few
  hundred bytes per loose object in memory and never the objects themselves. Either way a
  new pack is complete (fsynced, its index renamed into place last) before any loose object it
  holds is removed, no reachable object ever disappears, and refs are never touched: it is safe
  while workers claim and report.
- a worker's cache (the shallow mirror of an ssh:// or git:// queue): workers need the current
  tree only, so the objects reachable from the cached tip are written into one pack, the tip
  becomes the shallow boundary, and every other pack and loose object is removed, under the
  cache's lock, which every gitqueue process of the host takes around its transactions.

A worker's cache also keeps what `gitqueue work` leaves of each build: its output directory
(build/JOB-LEASE8, uploaded, then no longer needed) and its log (logs/JOB-LEASE8.log). gc
--cache removes the output directories of the jobs this host no longer holds, and all but the
newest logs of those (see gc_outputs).
"""

import collections
import hashlib
import os
import re
import shutil
import stat
import subprocess
import time
import zlib

from dulwich.objects import parse_tree
from dulwich.pack import create_delta as _delta_chunks

from . import files
from .errors import GitqueueError

# Objects per pack written by the git-less path (a pack's index entries are held until it is written).
CHUNK = 20_000
# Objects a tree or blob is compared with for a delta, and the longest delta chain (as git's defaults).
WINDOW = 10
MAX_DEPTH = 50
# Larger objects are stored whole: a queue's records and trees are far smaller.
MAX_DELTA_SIZE = 1 << 20
OFS_DELTA = 6
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
_TYPES = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}
_NAMES = {v: k for k, v in _TYPES.items()}


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

def gc_repository(path: str, use_git: bool | None = None, chunk: int = CHUNK, max_packs: int = MAX_PACKS,
                  git: str = "git", window: int = WINDOW) -> dict:
    """Pack the loose objects of the bare repository at `path` (a local-path queue).

    Args:
      path: the bare repository.
      use_git: True to require the git binary, False never to use it, None to use it if found.
      chunk: objects per pack on the git-less path (bounds its memory).
      max_packs: on the git path, more packs than this are merged into one.
      git: the git program.
      window: on the git-less path, how many neighbours an object is tried as a delta of (0: none).

    Returns {"before", "after" (see measure), "method" ("git" or "dulwich"), "packed", "seconds"}.

    Raises GcError when `path` is not a bare repository or git fails.
    """
    if not os.path.isdir(path):
        raise GcError(f"{path}: no such repository")
    if not os.path.isdir(os.path.join(path, "objects")) or not os.path.isdir(os.path.join(path, "refs")):
        raise GcError(f"{path}: not a bare git repository")
    t0 = time.monotonic()
    before = measure(path)
    found = shutil.which(git) if use_git is not False else None
    if use_git and found is None:
        raise GcError(f"{git}: not found")
    if found:
        _git_repack(path, found, before["packs"] >= max_packs)
        method, packed = "git", None
    else:
        method, packed = "dulwich", pack_loose_objects(path, chunk, window)
    after = measure(path)
    if packed is None:
        packed = max(0, before["loose"] - after["loose"])
    return {"before": before, "after": after, "method": method, "packed": packed,
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


def pack_loose_objects(path: str, chunk: int = CHUNK, window: int = WINDOW) -> int:
    """Pack every loose object of the repository at `path`, `chunk` objects per pack; no git needed.

    Two passes, as git's pack-objects does. The first reads each loose object once and keeps
    only its type, its file's time and the name it has in the trees that refer to it (one int
    in a dict: 60 MB for the 288k loose objects of a whole 29k-job build). The second writes
    the objects sorted so that versions of one file or directory sit side by side, each
    stored as a delta against one of the `window` objects before it when that halves it (0:
    no deltas). Only a window of objects is held at a time. A chunk's loose files are removed
    only after its pack and index are written, fsynced and renamed into place. Returns the
    number of objects packed.
    """
    objects = os.path.join(path, "objects")
    info = _scan_loose(objects)
    # Commits first (never deltified), then trees and blobs, each grouped by the name they are
    # filed under and newest first (by the loose file's time): consecutive versions of one
    # directory or record then sit side by side, the newest stored whole.
    order = [sha for sha, facts in info.items() if facts & 7]
    order.sort(key=lambda sha: _sort_key(info[sha]))
    packed = 0
    for start in range(0, len(order), chunk):
        shas = order[start:start + chunk]
        names = [(info[sha] >> 4) & 0xFFFFFFFF if info[sha] & _NAMED else None for sha in shas]
        packed += _pack_loose_batch(objects, shas, names, window)
    return packed


# What the scan keeps of an object, in one int: bits 0-2 its type (0: not loose, only named by
# a loose tree), bit 3 whether a tree or commit names it, bits 4-35 that name's hash, above
# them the loose file's mtime in ns. One dict of ints: about 150 bytes an object.
_NAMED = 8
_TIME_SHIFT = 36


def _sort_key(facts: int) -> int:
    type_num = facts & 7
    rank = 0 if type_num == 1 else type_num
    name = (facts >> 3) & 0x1FFFFFFFF
    return (rank << 100) | (name << 64) | ((1 << 64) - 1 - (facts >> _TIME_SHIFT))


def _scan_loose(objects) -> dict:
    """{raw sha: facts (see _NAMED)} of the loose objects and of what their trees name."""
    info = {}
    for fan in _fanout(objects):
        for entry in _scandir(os.path.join(objects, fan)):
            if len(entry.name) != 38:
                continue
            hexsha = fan + entry.name
            got = _read_loose(objects, hexsha)
            if got is None:
                continue
            type_num, body = got
            try:
                mtime = entry.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            sha = bytes.fromhex(hexsha)
            info[sha] = mtime << _TIME_SHIFT | (info.get(sha, 0) & 0xFFFFFFFF8) | type_num
            if type_num == 2:
                for name, _mode, child in parse_tree(body, 20):
                    _name(info, bytes.fromhex(child.decode()), name)
            elif type_num == 1 and body.startswith(b"tree "):
                _name(info, bytes.fromhex(body[5:45].decode()), b"/")
    return info


def _name(info, sha, name):
    facts = info.get(sha, 0)
    if not facts & _NAMED:
        info[sha] = facts | _NAMED | _name_hash(name) << 4


def _name_hash(name: bytes) -> int:
    """git's pack name hash: files of one name (whatever their directory) sort together."""
    h = 0
    for c in name:
        if c > 32:
            h = ((h >> 2) + (c << 24)) & 0xFFFFFFFF
    return h


def _loose_path(objects, hexsha):
    return os.path.join(objects, hexsha[:2], hexsha[2:])


def _read_loose(objects, hexsha):
    """(type number, raw data) of a loose object, or None if it vanished or is damaged."""
    try:
        with open(_loose_path(objects, hexsha), "rb") as f:
            data = zlib.decompress(f.read())
    except (FileNotFoundError, zlib.error):
        return None
    head, _, body = data.partition(b"\0")
    kind, _, size = head.partition(b" ")
    if kind not in _TYPES or not size.isdigit() or int(size) != len(body):
        return None
    if hashlib.sha1(data).hexdigest() != hexsha:
        return None  # a damaged file is left alone, for git fsck to name
    return _TYPES[kind], body


def _pack_loose_batch(objects, shas, names, window=0):
    def read_all():
        for sha, name in zip(shas, names):
            hexsha = sha.hex()
            got = _read_loose(objects, hexsha)
            if got is not None:
                yield hexsha, got[0], got[1], name

    written = write_pack(os.path.join(objects, "pack"), read_all(), window=window)
    for hexsha in written:
        try:
            os.unlink(_loose_path(objects, hexsha))
        except FileNotFoundError:
            pass
    return len(written)


# -- the pack writer ----------------------------------------------------------------------------

def _header(type_num: int, size: int) -> bytes:
    out = bytearray()
    c = (type_num << 4) | (size & 0x0F)
    size >>= 4
    while size:
        out.append(c | 0x80)
        c = size & 0x7F
        size >>= 7
    out.append(c)
    return bytes(out)


class _HashingFile:
    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha1()
        self.offset = 0

    def write(self, data):
        self.f.write(data)
        self.sha.update(data)
        self.offset += len(data)


def write_pack(packdir: str, objects, window: int = 0) -> list[str]:
    """Stream `objects` ((hex sha, type number, raw data) tuples) into a new pack in `packdir`.

    The pack and its index are written under temporary names, fsynced, and renamed: the pack
    first, its index last (git and dulwich only use a pack whose index exists). The pack's
    object count is patched into its header once known, so `objects` may be a generator and
    only (sha, offset, crc) per object stays in memory. With `window`, an object yielded with a
    fourth item, its name (any hashable but None), is stored as a delta against one of the
    `window` objects written just before it with the same type and name, when that saves at
    least half (chains at most MAX_DEPTH long). Returns the hex shas written.
    """
    from dulwich.pack import write_pack_index

    os.makedirs(packdir, exist_ok=True)
    # No ".pack"/".idx" suffix while incomplete: dulwich takes any X.pack beside an X.idx for a pack.
    tmp = os.path.join(packdir, f"tmp_gc_{os.getpid()}_{time.monotonic_ns()}")
    tmp_pack, tmp_idx = tmp + "_pack", tmp + "_idx"
    entries = []
    try:
        with open(tmp_pack, "w+b") as f:
            # The header's count is patched afterwards, so the checksum is computed in a second
            # pass over the file (read back in blocks: memory stays flat).
            f.write(b"PACK" + (2).to_bytes(4, "big") + (0).to_bytes(4, "big"))
            offset = 12
            seen = set()
            recent = collections.deque(maxlen=window) if window else None
            for hexsha, type_num, data, *name in objects:
                if hexsha in seen:
                    continue
                seen.add(hexsha)
                record = None
                if recent is not None and name and name[0] is not None:
                    record = _delta_record(recent, offset, (type_num, name[0]), data)
                    recent.append((offset, (type_num, name[0]), data, record[1] if record else 0))
                    record = record and record[0]
                if record is None:
                    record = _header(type_num, len(data)) + zlib.compress(data, 1 if len(data) > 1 << 20 else 6)
                f.write(record)
                entries.append((bytes.fromhex(hexsha), offset, zlib.crc32(record) & 0xFFFFFFFF))
                offset += len(record)
            f.seek(8)
            f.write(len(entries).to_bytes(4, "big"))
            f.flush()
            f.seek(0)
            sha = hashlib.sha1()
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                sha.update(block)
            checksum = sha.digest()
            f.seek(0, os.SEEK_END)
            f.write(checksum)
            f.flush()
            os.fsync(f.fileno())
        if not entries:
            os.unlink(tmp_pack)
            return []
        entries.sort()
        with open(tmp_idx, "wb") as f:
            write_pack_index(f, entries, checksum, version=2)
            f.flush()
            os.fsync(f.fileno())
        name = "pack-" + hashlib.sha1(b"".join(e[0] for e in entries)).hexdigest()
        base = os.path.join(packdir, name)
        for name_ in (tmp_pack, tmp_idx):
            os.chmod(name_, 0o444)
        os.replace(tmp_pack, base + ".pack")
        os.replace(tmp_idx, base + ".idx")
        files.fsync_dir(packdir)
    finally:
        for name_ in (tmp_pack, tmp_idx):
            try:
                os.unlink(name_)
            except FileNotFoundError:
                pass
    return [e[0].hex() for e in entries]


def _delta_record(recent, offset, kind, data):
    """(pack record, chain depth) storing `data` as a delta against one of `recent`, or None.

    `recent` holds (offset, kind, data, depth) of the objects written just before; among
    those of the same kind (type and name) the one giving the smallest delta wins, if it is
    under half the object's size. Versions of a queue's trees and records differ in one or
    two places, so the cheap splice delta is tried on every candidate and the general one
    (dulwich's) only on the nearest tree, when splicing did not do.
    """
    if len(data) < 64 or len(data) > MAX_DELTA_SIZE:
        return None
    best, best_at = None, None
    limit = len(data) // 2
    nearest = None
    for at in range(len(recent) - 1, -1, -1):
        _, base_kind, base, depth = recent[at]
        if base_kind != kind or depth >= MAX_DEPTH or not len(data) // 4 <= len(base) <= len(data) * 4:
            continue
        if nearest is None:
            nearest = at
        delta = splice_delta(base, data)
        if len(delta) < limit:
            best, best_at, limit = delta, at, len(delta)
            if limit < len(data) // 16:
                break
    if best is None and nearest is not None and kind[0] == 2:  # records rarely gain: measured
        delta = create_delta(recent[nearest][2], data)
        if len(delta) < limit:
            best, best_at = delta, nearest
    if best is None:
        return None
    base_offset, _, _, depth = recent[best_at]
    return (_header(OFS_DELTA, len(best)) + _encode_offset(offset - base_offset)
            + zlib.compress(best, 6)), depth + 1


def create_delta(base: bytes, target: bytes) -> bytes:
    """A git delta turning `base` into `target` (dulwich's, in Rust when it is built with it)."""
    return b"".join(_delta_chunks(base, target))


def splice_delta(base: bytes, target: bytes) -> bytes:
    """A git delta turning `base` into `target` by copying the ends they share and inserting the rest.

    Linear time, with the comparing done by memcmp: a tree or record that changed in one
    place (a job's entry added, a lease's expiry moved) becomes a delta of a few dozen bytes.
    """
    n = min(len(base), len(target))
    head = _common_length(base, target, n, 1)
    tail = _common_length(base, target, n - head, -1)
    out = bytearray(_delta_size(len(base)) + _delta_size(len(target)))
    _copy_op(out, 0, head)
    middle = target[head:len(target) - tail]
    for at in range(0, len(middle), 127):
        piece = middle[at:at + 127]
        out.append(len(piece))
        out += piece
    _copy_op(out, len(base) - tail, tail)
    return bytes(out)


def _common_length(a: bytes, b: bytes, most: int, direction: int) -> int:
    """How many bytes `a` and `b` share at their start (direction 1) or end (-1), at most `most`."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if direction > 0:
            same = a[lo:mid] == b[lo:mid]
        else:
            same = a[len(a) - mid:len(a) - lo] == b[len(b) - mid:len(b) - lo]
        if same:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _delta_size(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _copy_op(out: bytearray, offset: int, size: int):
    """Append git delta copy instructions for base[offset:offset + size] (64 KiB each at most)."""
    while size:
        n = min(size, 0x10000)
        op, args = 0x80, bytearray()
        for i in range(4):
            byte = (offset >> (8 * i)) & 0xFF
            if byte:
                op |= 1 << i
                args.append(byte)
        if n != 0x10000:  # no size bytes means 0x10000
            for i in range(3):
                byte = (n >> (8 * i)) & 0xFF
                if byte:
                    op |= 0x10 << i
                    args.append(byte)
        out.append(op)
        out += args
        offset += n
        size -= n


def _encode_offset(distance: int) -> bytes:
    """The base's distance back from an OFS_DELTA record, in git's offset encoding."""
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.append(0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(reversed(out))


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
        removed = 0
        for name, since in list(pending.items()):
            if since <= now - grace:
                removed += files.unlink(os.path.join(path, "objects", name))
                del pending[name]
        try:
            tip = repo.refs[remote.ref]
        except KeyError:
            tip = None
        kept = 0
        objects_dir = os.path.join(path, "objects")
        if tip is not None:
            store = repo.object_store
            names = _reachable(store, tip)

            def read_all():
                for hexsha in names:
                    type_num, data = store.get_raw(hexsha.encode())
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
            if not grace:
                for name in list(pending):
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
    from .buildlog import BUILDS, LOGS

    out = {"builds": 0, "build_bytes": 0, "logs": 0, "log_bytes": 0}
    builds = files.open_dir(queue.cache_dir, BUILDS)
    logs = files.open_dir(queue.cache_dir, LOGS)
    try:
        with queue.lock():
            remote = queue.remote
            try:
                tip = remote.repo.refs[remote.ref]  # as cached: no network
            except KeyError:
                return out
            held = _held(remote.reader(tip))
            if builds is not None:
                _set_aside(builds, held)
            if logs is not None:
                out["logs"], out["log_bytes"] = _trim_logs(logs, held, keep_logs)
        # Outside the lock (removing a large build takes a while): these names are no one's now,
        # and those a crashed run left behind go too.
        for name in sorted(os.listdir(builds)) if builds is not None else ():
            if name.startswith(ASIDE):
                size = _tree_bytes(builds, name)
                if files.remove_tree(builds, name):
                    out["builds"] += 1
                    out["build_bytes"] += size
    finally:
        for fd in (builds, logs):
            if fd is not None:
                os.close(fd)
    return out


def _held(reader) -> set:
    """{(job, LEASE8)} of the attempts the tip still holds: live leases, and reclaimed leases of
    jobs without a result. Tokens are read from the records' bytes, so a record that fails its
    schema still counts (keeping too much is harmless; removing a live build's files is not)."""
    from .names import name_from_path, record_path
    from .publish import TOKENS_IN_RECORD

    held = set()
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
    files.replace_file(target, "".join(f"{since:.0f} {name}\n" for name, since in sorted(pending.items())))


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
