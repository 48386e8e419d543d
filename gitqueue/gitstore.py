"""Plumbing, and the one module that talks to dulwich: read objects and trees, build commits from a
few changed paths, fetch and push the queue branch, mirror its whole history, write packs, set up
bare repositories and open what git-receive-pack shows its pre-receive hook.

No retries and no policy here (that is the queue's transaction). Every network operation runs
under a deadline (`CachedRemote.timeout`). Two ways to reach a queue:

- `LocalRemote`: the queue is a bare repository on this file system. Objects are written into it
  directly and the branch moves with a compare-and-swap on the ref (dulwich's lock file), the
  fastest and simplest path, and no history walk (dulwich's local transport negotiates over the
  whole history: seconds per fetch on a long build).
- `CachedRemote`: ssh:// or git:// (or file://). A bare cache repository per queue holds the
  objects; fetches offer only the cached tip as "have" and pushes send exactly the new objects.
  The whole history, for those that read it (verify, the timeline), is mirrored beside it.
"""

import io
import os
import stat
import time
from collections.abc import Callable
from contextlib import contextmanager

# Only this module imports dulwich (tests/test_gitstore.py): the rest of gitqueue takes the
# names it annotates with (Commit, ObjectID) from here.
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.pack import PackFileDisappeared
from dulwich.refs import Ref
from dulwich.repo import Repo

from .errors import GitqueueError, PushRefused, PushRejected, QueueNotFound, RemoteError, RepositoryDamaged
from .files import fsync_dir

ZERO_SHA = ObjectID(b"0" * 40)
STALE_REF_LOCK = 30  # seconds after which a ref's lock file is a dead process's
PARTIAL_MARKER = "gitqueue-partial"  # in a cache repository that left out the job records
HISTORY_DIR = "history.git"  # beside a remote queue's cache: the whole history, for verify and the timeline
COMMITS_DIR = "commits.git"  # beside it: the commits only, for the timeline, from a server that can filter
_DIR = stat.S_IFDIR
_FILE = 0o100644


def _split(path: str) -> list[bytes]:
    return [p.encode() for p in path.split("/")]


# -- objects as git stores them -----------------------------------------------------------------------

TYPE_NAMES = {1: "commit", 2: "tree", 3: "blob", 4: "tag"}
_OFS_DELTA, _REF_DELTA = 6, 7
_MAX_DELTA_CHAIN = 64


class ObjectFormatError(GitqueueError):
    """An object that is not what git would store (malformed, unsorted or duplicate tree entries)."""


def _stores(store) -> list:
    base = getattr(store, "_store", store)  # a CachingStore
    return [base, *(getattr(base, "alternates", None) or [])]


def _loose_path(s, sha: bytes) -> str | None:
    root = getattr(s, "path", None)
    if not isinstance(root, str):
        return None
    hexsha = sha.decode("ascii")
    return os.path.join(root, hexsha[:2], hexsha[2:])


def read_object(store, sha: bytes, kind: str, limit: int) -> bytes | str:
    """The contents of object `sha` exactly as stored (never parsed: dulwich parses a loose object
    as it loads it, and raises on, say, a tree with a malformed mode), if its header says it is a
    `kind` of at most `limit` bytes; else a one-line reason (str). Reads nothing more than the
    header of an object it refuses.
    """
    import zlib

    fetched = getattr(store, "fetched", None)
    found = fetched(sha) if fetched is not None else None
    if found is not None:  # inflated as its pack was fetched, for this very read
        return _mismatch(TYPE_NAMES[found[0]], len(found[1]), kind, limit) or found[1]
    cached = getattr(store, "cached", None)
    obj = cached(sha) if cached is not None else None
    if obj is not None:
        # Parsed from these very bytes (dulwich keeps an object's raw text) or made here: no
        # need to open the file again. A worker's own new trees and records come this way.
        raw = obj.as_raw_string()
        return _mismatch(obj.type_name.decode(), len(raw), kind, limit) or raw
    for s in _stores(store):
        path = _loose_path(s, sha)
        if path is None:
            continue
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            continue
        with f:
            inflate = zlib.decompressobj()
            try:
                found, size, body = _inflate_header(f, inflate, sha)
                problem = _mismatch(found, size, kind, limit)
                if problem:
                    return problem
                body += inflate.decompress(inflate.unconsumed_tail + f.read(), size + 1 - len(body))
            except (zlib.error, ObjectFormatError) as e:
                return str(e) if isinstance(e, ObjectFormatError) else f"object {sha.decode()}: damaged loose object"
            return body
    try:
        found = _packed(store, sha)
        if found is not None:
            pack, offset = found
            # The type of a delta against another pack's object (a fetched pack's bases) is that
            # object's: known once resolved. Its size is in its own header, checked first.
            with open(_pack_path(pack), "rb", buffering=0) as entry:
                found_kind, size = _packed_header(entry, offset, lambda ref: (kind, 0), 0)
                problem = _mismatch(found_kind, size, kind, limit)
                if problem:
                    return problem
                # From the entry the header came from: dulwich's get_raw would look for it
                # again, listing the pack directory to do so.
                try:
                    type_num, body = _read_entry(store, entry.fileno(), offset, 0)
                except KeyError:
                    return f"object {sha.decode()}: delta base missing"
            return _mismatch(TYPE_NAMES.get(type_num, "object"), 0, kind, limit) or body
    except (PackFileDisappeared, FileNotFoundError):
        pass  # `gitqueue gc` replaced the pack: ask again below, through a fresh listing
    header = object_header(store, sha, loose=False)
    if header is None:
        return f"object {sha.decode()} is missing"
    problem = _mismatch(header[0], header[1], kind, limit)
    if problem:
        return problem
    return store.get_raw(sha)[1]


def _pack_path(pack) -> str:
    """The path of a dulwich Pack's data file, without opening (and mapping) its PackData."""
    path = getattr(pack, "_data_path", None)
    return path if isinstance(path, str) else pack.data.path


def read_packed(store, pack, offset: int) -> tuple[int, bytes]:
    """(type number, contents) of the entry at `offset` of `pack` (a pack of `store`), deltas
    resolved. Raises ObjectFormatError or zlib.error when it is damaged, KeyError when a delta
    base is missing, FileNotFoundError when gc removed the pack."""
    with open(_pack_path(pack), "rb", buffering=0) as f:
        return _read_entry(store, f.fileno(), offset, 0)


def _read_entry(store, fd: int, offset: int, depth: int) -> tuple[int, bytes]:
    """read_packed from the open pack `fd`, with pread. dulwich maps the whole pack: the pages
    a report and a claim read through that map stay resident until the pack is closed (0.5 MB
    of a new worker's first pack, in a worker that must stay within 32 MB between builds); what
    is read here is freed with the bytes."""
    from dulwich.pack import apply_delta

    if depth > _MAX_DELTA_CHAIN:
        raise ObjectFormatError(f"pack entry at {offset}: delta chain longer than {_MAX_DELTA_CHAIN}")
    head = os.pread(fd, 64, offset)
    try:
        type_num, size, at, distance = _entry_header(head, 0)
    except IndexError:
        raise ObjectFormatError(f"pack entry at {offset}: truncated header") from None
    ref = None
    if distance is None and type_num == _REF_DELTA:
        ref = head[at:at + 20]
        at += 20
        if len(ref) != 20:
            raise ObjectFormatError(f"pack entry at {offset}: truncated header")
    elif distance is None and type_num not in TYPE_NAMES:
        raise ObjectFormatError(f"pack entry at {offset}: unknown type {type_num}")
    body, _ = _inflate_exactly(lambda pos, n: os.pread(fd, n, pos), offset + at, size,
                               f"pack entry at {offset}")
    if ref is None and distance is None:
        return type_num, body
    if distance is not None:
        if not 0 < distance <= offset:
            raise ObjectFormatError(f"pack entry at {offset}: delta base outside the pack")
        base_type, base = _read_entry(store, fd, offset - distance, depth + 1)
    else:
        from binascii import hexlify

        hexsha = hexlify(ref)  # type: ignore[arg-type]
        found = _packed(store, hexsha)
        if found is None:
            base_type, base = store.get_raw(hexsha)  # loose, or KeyError
        else:
            with open(_pack_path(found[0]), "rb", buffering=0) as f:
                base_type, base = _read_entry(store, f.fileno(), found[1], depth + 1)
    return base_type, b"".join(apply_delta(base, body))


def _mismatch(found: str, size: int, kind: str, limit: int) -> str | None:
    if found != kind:
        return f"a {found} object where a {kind} belongs"
    if size > limit:
        return f"{size} bytes, more than {limit}"
    return None


def object_header(store, sha: bytes, loose: bool = True) -> tuple[str, int] | None:
    """(type, size) of object `sha` read from its header only, never its contents; None if absent.

    Loose objects give both in their first inflated bytes; packed ones in the entry header (a
    delta's size in the first bytes of its delta). So a huge object costs nothing to refuse.
    `loose=False`: the caller found no loose file.
    """
    stores = _stores(store)
    base = stores[0]
    for s in stores if loose else ():
        path = _loose_path(s, sha)
        if path is not None:
            try:
                with open(path, "rb") as f:
                    import zlib

                    return _inflate_header(f, zlib.decompressobj(), sha)[:2]
            except FileNotFoundError:
                pass
    try:
        found = _packed(store, sha)
        if found is not None:
            pack, offset = found
            with open(pack.data.path, "rb", buffering=0) as f:
                return _packed_header(f, offset, lambda ref: object_header(store, ref), 0)
    except (PackFileDisappeared, FileNotFoundError):
        return _whole_object_header(store, sha)
    if not stores or getattr(base, "path", None) is None:
        # Not on disk (a memory store): the object itself is all there is to ask.
        try:
            obj = store[sha]
        except KeyError:
            return None
        return obj.type_name.decode(), len(obj.as_raw_string())
    return None


def _packed(store, sha: bytes, rescan: bool = True):
    """(pack, offset) of object `sha` in a pack of `store`, searching the packs already open
    first and (`rescan`) then the pack directory; None when no pack holds it."""
    for again in (False, True) if rescan else (False,):
        for s in _stores(store):
            for pack in _packs(s, again):
                try:
                    return pack, pack.index.object_offset(sha)
                except KeyError:
                    continue
    return None


def lacking(store, ids) -> list:
    """The ids among `ids` that `store` holds neither loose nor packed, in their order.

    Lists the pack directory once, not once an object as dulwich's `in` does (3,000 objects
    asked after a long absence: 3,000 listings)."""
    stores = _stores(store)
    if not stores or any(getattr(s, "path", None) is None for s in stores):
        return [sha for sha in ids if sha not in store]  # a memory store: nothing to list
    cached = getattr(store, "cached", None)
    for s in stores:
        _packs(s, True)  # one listing: new packs open
    loose = []  # (store, the fan-out directories it has): most of 256 are absent after a gc
    for s in stores:
        try:
            loose.append((s, {d.encode() for d in os.listdir(s.path) if len(d) == 2}))
        except OSError:
            loose.append((s, set()))
    out = []
    for sha in ids:
        if cached is not None and cached(sha) is not None:
            continue
        if _packed(store, sha, rescan=False) is not None:
            continue
        if any(sha[:2] in dirs and os.path.exists(_loose_path(s, sha) or "") for s, dirs in loose):
            continue
        out.append(sha)
    return out


def _packs(s, rescan: bool) -> list:
    """The packs of store `s`: those it has open, or (`rescan`) after listing its pack directory
    for new ones. dulwich's `packs` lists the directory every time, and reading the records of
    a catch-up (3,000 objects, each with a delta base or two) listed it 15,000 times."""
    if not rescan:
        cached = getattr(s, "_iter_cached_packs", None)
        return list(cached()) if cached is not None else []
    return list(getattr(s, "packs", ()))


def _whole_object_header(store, sha: bytes) -> tuple[str, int] | None:
    """(type, size) of object `sha` read whole through dulwich: for a pack that `gitqueue gc`
    removed after this store listed it, since dulwich then rescans the pack directory."""
    try:
        type_num, raw = store.get_raw(sha)
    except KeyError:
        return None
    return TYPE_NAMES.get(type_num, "object"), len(raw)


def _inflate_header(f, inflate, sha: bytes) -> tuple[str, int, bytes]:
    """(type, size, the contents inflated so far) from the start of a loose object's file."""
    data = b""
    while b"\0" not in data and len(data) < 64:
        chunk = f.read(256)
        if not chunk and not inflate.unconsumed_tail:
            break
        data += inflate.decompress(inflate.unconsumed_tail + chunk, 64 - len(data))
    head, sep, body = data.partition(b"\0")
    found, _, size = head.partition(b" ")
    type_name = found.decode("ascii", "replace")
    if not sep or type_name not in TYPE_NAMES.values() or not size.isdigit():
        raise ObjectFormatError(f"object {sha.decode()}: malformed loose object header")
    return type_name, int(size), body


def _varint_delta_sizes(data: bytes) -> list[int]:
    sizes: list[int] = []
    i = 0
    for _ in range(2):
        size = shift = 0
        while True:
            if i >= len(data):
                return sizes
            c = data[i]
            i += 1
            size |= (c & 0x7F) << shift
            shift += 7
            if not c & 0x80:
                break
        sizes.append(size)
    return sizes


def _entry_header(buf, at: int) -> tuple[int, int, int, int | None]:
    """(type number, size, where the entry's data starts, and for an OFS delta how far back its
    base is, else None) of the pack entry whose header starts at buf[at]; IndexError when `buf`
    ends inside the header."""
    c = buf[at]
    at += 1
    type_num, size, shift = (c >> 4) & 7, c & 15, 4
    while c & 0x80:
        c = buf[at]
        at += 1
        size |= (c & 0x7F) << shift
        shift += 7
    distance = None
    if type_num == _OFS_DELTA:
        c = buf[at]
        at += 1
        distance = c & 0x7F
        while c & 0x80:
            c = buf[at]
            at += 1
            distance = ((distance + 1) << 7) | (c & 0x7F)
    return type_num, size, at, distance


def _packed_header(f, offset: int, lookup, depth: int) -> tuple[str, int]:
    import zlib

    if depth > _MAX_DELTA_CHAIN:
        raise ObjectFormatError(f"pack entry at {offset}: delta chain longer than {_MAX_DELTA_CHAIN}")
    f.seek(offset)
    head = f.read(64)
    if not head:
        raise ObjectFormatError(f"pack entry at {offset}: beyond the end of the pack")
    try:
        type_num, size, i, distance = _entry_header(head, 0)
    except IndexError:
        raise ObjectFormatError(f"pack entry at {offset}: truncated header") from None
    if type_num in TYPE_NAMES:
        return TYPE_NAMES[type_num], size
    if distance is not None:
        base = _packed_header(f, offset - distance, lookup, depth + 1)
    elif type_num == _REF_DELTA:
        from binascii import hexlify

        found = lookup(hexlify(head[i:i + 20]))
        i += 20
        if found is None:
            raise ObjectFormatError(f"pack entry at {offset}: delta base missing")
        base = found
    else:
        raise ObjectFormatError(f"pack entry at {offset}: unknown type {type_num}")
    f.seek(offset + i)
    inflate = zlib.decompressobj()
    delta = b""
    while len(delta) < 20:
        chunk = f.read(256)
        if not chunk:
            break
        delta += inflate.decompress(chunk, 32 - len(delta))
        if inflate.eof:
            break
    sizes = _varint_delta_sizes(delta)
    if len(sizes) < 2:
        raise ObjectFormatError(f"pack entry at {offset}: malformed delta")
    return base[0], sizes[1]


def parse_tree_entries(raw: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(mode, name, hex sha) of each entry of a tree object, exactly as git stores them.

    Unlike dulwich's parser this keeps what a tree really says: a mode written "0100644" stays
    that, and a name given twice is two entries (dulwich keeps the last). Raises
    ObjectFormatError for a malformed tree, and for entries out of git's order (which is how
    duplicates show).
    """
    from binascii import hexlify

    entries = []
    i, n = 0, len(raw)
    previous = None
    while i < n:
        space = raw.find(b" ", i, i + 16)
        nul = raw.find(b"\0", space + 1) if space >= 0 else -1
        if space < 0 or nul < 0 or nul + 21 > n:
            raise ObjectFormatError("malformed tree entry")
        mode, name, sha = raw[i:space], raw[space + 1:nul], raw[nul + 1:nul + 21]
        if not mode.isdigit() or not name:
            raise ObjectFormatError(f"malformed tree entry {name[:60]!r}")
        key = name + b"/" if mode == b"40000" else name
        if previous is not None and key <= previous:
            raise ObjectFormatError(f"tree entry {name[:60]!r} {'given twice' if key == previous else 'out of order'}")
        previous = key
        entries.append((mode, name, hexlify(sha)))
        i = nul + 21
    return entries


class TreeReader:
    """Read files and directories of one tree in an object store."""

    def __init__(self, object_store, tree_id: bytes | None):
        self.store = object_store
        self.tree_id = tree_id

    def _lookup(self, path: str):
        sha = self.tree_id
        if sha is None:
            return None, None
        mode = _DIR
        if path == "":
            return mode, sha
        for part in _split(path):
            if not stat.S_ISDIR(mode):
                return None, None
            tree = self.store[sha]
            try:
                mode, sha = tree[part]
            except KeyError:
                return None, None
        return mode, sha

    def read(self, path: str) -> bytes | None:
        """Contents of the file at `path`, or None if there is none."""
        mode, sha = self._lookup(path)
        if sha is None or stat.S_ISDIR(mode):
            return None
        return self.store[sha].as_raw_string()

    def read_many(self, paths) -> dict[str, bytes]:
        """{path: contents} of those of `paths` that are files; a partial cache fetches the ones
        it lacks in one request, not one each as `read` would."""
        ids = {path: self.blob_id(path) for path in paths}
        fetch = getattr(self.store, "fetch_missing", None)
        missing = lacking(self.store, [sha for sha in ids.values() if sha is not None])
        if missing and fetch is not None:
            fetch(missing)
        return {path: self.store[sha].as_raw_string() for path, sha in ids.items() if sha is not None}

    def blob_id(self, path: str) -> bytes | None:
        """Object id of the file at `path`, or None."""
        mode, sha = self._lookup(path)
        if sha is None or stat.S_ISDIR(mode):
            return None
        return sha

    def tree_id_of(self, path: str) -> bytes | None:
        """Object id of the directory at `path`, or None."""
        mode, sha = self._lookup(path)
        if sha is None or not stat.S_ISDIR(mode):
            return None
        return sha

    def entries(self, path: str) -> list[tuple[str, int, bytes]]:
        """(name, mode, sha) of each entry of the directory at `path`; [] if absent."""
        sha = self.tree_id_of(path)
        if sha is None:
            return []
        return [(e.path.decode(), e.mode, e.sha) for e in self.store[sha].iteritems()]

    def walk_files(self, path: str):
        """Yield (relative path, blob id) of every file below directory `path`."""
        sha = self.tree_id_of(path)
        if sha is None:
            return
        stack = [(path, sha)]
        while stack:
            prefix, tree_sha = stack.pop()
            for e in self.store[tree_sha].iteritems():
                sub = f"{prefix}/{e.path.decode()}" if prefix else e.path.decode()
                if stat.S_ISDIR(e.mode):
                    stack.append((sub, e.sha))
                else:
                    yield sub, e.sha


# build_tree's changes as a tree: {name: subtree, new contents, or None to delete}
_Nested = dict[bytes, "_Nested | bytes | None"]


def build_tree(object_store, base_tree_id: bytes | None, changes: dict[str, bytes | None]):
    """Apply `changes` ({path: new contents, or None to delete}) to a tree.

    Returns (new root tree id, new objects); only the rewritten trees and new blobs are made,
    and nothing is written to the store.
    """
    new_objects: dict[bytes, ShaFile] = {}

    nested: _Nested = {}
    for path, data in changes.items():
        node = nested
        parts = _split(path)
        for part in parts[:-1]:
            inner = node.setdefault(part, {})
            if not isinstance(inner, dict):
                raise ValueError(f"path {path!r} runs through a file")
            node = inner
        node[parts[-1]] = data

    def rebuild(tree_id, spec) -> bytes | None:
        if tree_id is not None:
            tree = object_store[tree_id]
            tree = Tree.from_raw_string(Tree.type_num, tree.as_raw_string())
        else:
            tree = Tree()
        for name, sub in spec.items():
            if isinstance(sub, dict):
                try:
                    mode, old = tree[name]
                    old = old if stat.S_ISDIR(mode) else None
                except KeyError:
                    old = None
                new = rebuild(old, sub)
                if new is None:
                    if name in tree:
                        del tree[name]
                else:
                    tree[name] = (_DIR, new)
            elif sub is None:
                if name in tree:
                    del tree[name]
            else:
                blob = Blob.from_string(sub)
                new_objects[blob.id] = blob
                tree[name] = (_FILE, blob.id)
        if len(tree) == 0:
            return None
        new_objects[tree.id] = tree
        return tree.id

    root = rebuild(base_tree_id, nested)
    if root is None:
        empty = Tree()
        new_objects[empty.id] = empty
        root = empty.id
    return root, list(new_objects.values())


def blob_id(data: bytes) -> bytes:
    """The object id git gives a file holding `data`."""
    return Blob.from_string(data).id


def make_commit(tree_id: bytes, parent: bytes | None, message: str, identity: str, now: float | None = None) -> Commit:
    """A commit object (not stored) with `identity` ("Name <email>") as author and committer."""
    c = Commit()
    c.tree = ObjectID(tree_id)
    c.parents = [ObjectID(parent)] if parent else []
    c.author = c.committer = identity.encode()
    c.author_time = c.commit_time = int(now if now is not None else time.time())
    c.author_timezone = c.commit_timezone = 0
    c.encoding = b"UTF-8"
    c.message = message.encode()
    return c


def _add_objects(object_store, objects):
    """Write objects into a store: loose for a few, one pack for many."""
    if len(objects) > 64:
        object_store.add_objects([(o, None) for o in objects])
        return
    _write_all_loose(object_store, objects)


def _write_all_loose(object_store, objects) -> None:
    root = getattr(object_store, "path", None)
    for o in objects:
        if root is None:
            object_store.add_object(o)
        else:
            _write_loose(root, o)


UNPACK_LIMIT = 100  # objects; as git's fetch.unpackLimit
# ... or bytes: a loose object is compressed again as it is written, and a new worker's first
# fetch brings graph.tsv (3.3 MB on the 29k queue, 0.13 s to compress) among a few records.
UNPACK_LIMIT_BYTES = 256 << 10
# Larger fetched packs go to dulwich's indexer, which holds less than their inflated contents
# (a first fetch from a server that cannot filter is 8.6 MB of 29k job records).
_MAX_READ_PACK = 2 << 20


def _add_fetched(object_store, data: bytes) -> dict | None:
    """Store a fetched (thin) pack: as loose objects when it is small, else as a pack. Returns
    {hex sha: (type number, contents)} of a pack read here (see read_fetched_pack), else None.

    A worker fetches a handful of objects for every claim and heartbeat. Kept as packs, each
    fetch left one more pack, and dulwich keeps every pack of a store open: a `gitqueue work`
    that ran for days died of "Too many open files". Loose objects hold no descriptor, and
    `gitqueue gc --cache` packs them.
    """
    from io import BytesIO

    count = int.from_bytes(data[8:12], "big") if data[:4] == b"PACK" and len(data) >= 12 else UNPACK_LIMIT
    if count >= UNPACK_LIMIT or len(data) >= UNPACK_LIMIT_BYTES:
        path = getattr(object_store, "path", None)
        read = read_fetched_pack(data) if isinstance(path, str) and len(data) <= _MAX_READ_PACK else None
        if read is None or not isinstance(path, str):  # thin, or not one read here: dulwich indexes it
            object_store.add_thin_pack(BytesIO(data).read, None)
            return None
        _move_in_pack(os.path.join(path, "pack"), data, read)
        # The records (and graph.tsv), for the index update that reads them next; not the
        # trees (the 29k queue's jobs/ trees are most of a catch-up's 1.8 MB, and the update
        # skips them).
        return {sha: (type_num, body) for sha, (type_num, body, _, _) in read.items() if type_num == 3}
    from dulwich.object_format import SHA1
    from dulwich.pack import PackData, PackInflater

    pack = PackData.from_file(BytesIO(data), SHA1, len(data))
    try:
        objects = list(PackInflater.for_pack_data(pack, resolve_ext_ref=object_store.get_raw))
    finally:
        pack.close()
    _write_all_loose(object_store, objects)
    return None


def read_fetched_pack(data: bytes) -> dict | None:
    """{hex sha: (type number, contents, offset, crc32)} of every object of the pack `data`,
    deltas resolved; None when it is thin (a delta against an object it does not hold) or not a
    version 2 pack with a good checksum.

    dulwich indexes a fetched pack in Python at about 60 us an object (a worker back from a
    long absence fetches 3,000 records and 540 trees: 0.3 s), and the index then reads each one
    back out of it. One pass here inflates each entry once, and the caller keeps the contents
    for those reads. Sizes are checked as entries are inflated: an entry that inflates to more
    than its header says, or a delta chain longer than _MAX_DELTA_CHAIN, makes it None.
    """
    import hashlib
    import zlib
    from binascii import hexlify

    from dulwich.pack import apply_delta

    if len(data) < 32 or data[:4] != b"PACK" or data[4:8] != (2).to_bytes(4, "big"):
        return None
    if hashlib.sha1(memoryview(data)[:-20]).digest() != data[-20:]:
        return None
    view = memoryview(data)
    end = len(data) - 20
    count = int.from_bytes(data[8:12], "big")
    at = 12
    whole: dict[int, tuple[int, bytes, bytes, int]] = {}  # offset -> (type, contents, sha, crc)
    deltas: list[tuple[int, int | bytes, bytes, int]] = []  # (offset, base offset or sha, delta, crc)
    try:
        for _ in range(count):
            start = at
            type_num, size, at, distance = _entry_header(data, at)
            base: int | bytes | None = None
            if distance is not None:
                base = start - distance
            elif type_num == _REF_DELTA:
                base = bytes(data[at:at + 20])
                at += 20
            elif type_num not in TYPE_NAMES:
                return None
            body, at = _inflate_exactly(lambda pos, n: view[pos:min(pos + n, end)], at, size, "entry")
            crc = zlib.crc32(view[start:at])
            if base is None:
                whole[start] = (type_num, body, _object_id(type_num, body), crc)
            else:
                deltas.append((start, base, body, crc))
        if at != end:
            return None
        by_sha = {sha: start for start, (_, _, sha, _) in whole.items()}
        # OFS deltas name an earlier entry, REF deltas any entry: resolve until nothing moves.
        for _ in range(_MAX_DELTA_CHAIN + 1):
            if not deltas:
                break
            left = []
            for start, base, delta, crc in deltas:
                at_base = base if isinstance(base, int) else by_sha.get(base)
                if at_base is None or at_base not in whole:
                    left.append((start, base, delta, crc))
                    continue
                type_num, source, _, _ = whole[at_base]
                body = b"".join(apply_delta(source, delta))
                sha = _object_id(type_num, body)
                whole[start] = (type_num, body, sha, crc)
                by_sha[sha] = start
            if len(left) == len(deltas):
                return None  # thin, or a chain that loops
            deltas = left
        if deltas:
            return None
    except (IndexError, zlib.error, ValueError, TypeError, ObjectFormatError):
        return None
    return {hexlify(sha): (type_num, body, start, crc) for start, (type_num, body, sha, crc) in whole.items()}


def _inflate_exactly(read, pos: int, size: int, where: str) -> tuple[bytes, int]:
    """(the zlib stream at `pos` inflated, where the stream ends); `read(pos, n)` gives up to n
    bytes from pos, nothing at the end. The stream must inflate to exactly `size` bytes, and
    never more than size + 1 are inflated: else ObjectFormatError (zlib.error when it is not
    zlib). Reads double from size + 64 bytes, up to 1 MiB at a time."""
    import zlib

    inflate = zlib.decompressobj()
    pieces = []
    got = 0
    step = min(size + 64, 1 << 20)
    while not inflate.eof:
        chunk = read(pos, step)
        if not chunk:
            raise ObjectFormatError(f"{where}: truncated")
        piece = inflate.decompress(chunk, size + 1 - got)
        got += len(piece)
        pieces.append(piece)
        if got > size or (inflate.unconsumed_tail and not piece):
            raise ObjectFormatError(f"{where}: more data than its header says")
        pos += len(chunk) - len(inflate.unused_data) - len(inflate.unconsumed_tail)
        step = min(step * 2, 1 << 20)
    if got != size:
        raise ObjectFormatError(f"{where}: less data than its header says")
    return b"".join(pieces), pos


def _object_id(type_num: int, body: bytes) -> bytes:
    """The binary id git gives an object of this type and contents."""
    import hashlib

    return hashlib.sha1(f"{TYPE_NAMES[type_num]} {len(body)}\0".encode() + body).digest()


def _move_in_pack(packdir: str, data: bytes, objects: dict) -> None:
    """Write the pack `data` (read by read_fetched_pack into `objects`) and its index into
    `packdir` as write_pack does."""
    from binascii import unhexlify

    entries = sorted((unhexlify(sha), start, crc) for sha, (_, _, start, crc) in objects.items())
    base = os.path.join(packdir, "pack-" + data[-20:].hex())
    if os.path.exists(base + ".idx"):
        return
    tmp_pack = os.path.join(packdir, f"tmp_fetch_{os.getpid()}_{time.monotonic_ns()}_pack")
    try:
        with open(tmp_pack, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(tmp_pack)
        raise
    _install_pack(tmp_pack, entries, data[-20:], base)


def _install_pack(tmp_pack: str, entries: list, checksum: bytes, base: str) -> None:
    """Index the complete pack at `tmp_pack` (its `entries`, sorted (sha, offset, crc)) and move
    both to `base`.pack and .idx: fsynced, the pack first, its index last (git and dulwich use
    a pack only once its index exists). Nothing is left under a temporary name."""
    from dulwich.pack import write_pack_index

    tmp_idx = tmp_pack.removesuffix("_pack") + "_idx"
    try:
        with open(tmp_idx, "wb") as f:
            write_pack_index(f, entries, checksum, version=2)
            f.flush()
            os.fsync(f.fileno())
        for name in (tmp_pack, tmp_idx):
            os.chmod(name, 0o444)
        os.replace(tmp_pack, base + ".pack")
        os.replace(tmp_idx, base + ".idx")
        fsync_dir(os.path.dirname(base))
    finally:
        _unlink_quietly(tmp_pack, tmp_idx)


def _unlink_quietly(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _write_loose(root: str, obj) -> None:
    """Write one loose object as git does: a private temporary file renamed into place.

    Cheaper than dulwich's add_object (a lock file per object): on this machine's ext4 each
    created file costs ~0.15 ms, and a claim writes about seven objects.
    """
    hexsha = obj.id.decode()
    directory = os.path.join(root, hexsha[:2])
    path = os.path.join(directory, hexsha[2:])
    if os.path.exists(path):
        return  # content-addressed: whoever wrote it wrote the same bytes
    tmp = os.path.join(directory, f"tmp_obj_{os.getpid()}_{hexsha[2:10]}")
    data = obj.as_legacy_object()
    for attempt in range(8):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
            break
        except FileNotFoundError:
            # A concurrent `git prune-packed` (gitqueue gc) removes fan-out directories it has
            # emptied, possibly right after we made ours: make it again, as git does.
            if attempt == 7:
                raise
            os.makedirs(directory, exist_ok=True)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_pack(packdir: str, objects) -> list[str]:
    """Stream `objects` ((hex sha, type number, raw data) tuples) into a new pack in `packdir`,
    each stored whole (no deltas); return the hex shas written.

    For hosts without git (a worker trimming its cache). The pack and its index are written under
    temporary names, fsynced, and renamed: the pack first, its index last (git and dulwich only
    use a pack whose index exists). The object count is patched into the pack's header once
    known, so `objects` may be a generator: only (sha, offset, crc) per object stays in memory.
    """
    import hashlib
    import zlib

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
            for hexsha, type_num, data in objects:
                if hexsha in seen:
                    continue
                seen.add(hexsha)
                record = _pack_entry_header(type_num, len(data)) + zlib.compress(data, 1 if len(data) > 1 << 20 else 6)
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
        _install_pack(tmp_pack, entries, checksum,
                      os.path.join(packdir, "pack-" + hashlib.sha1(b"".join(e[0] for e in entries)).hexdigest()))
    finally:
        _unlink_quietly(tmp_pack, tmp_idx)
    return [e[0].hex() for e in entries]


def _pack_entry_header(type_num: int, size: int) -> bytes:
    out = bytearray()
    c = (type_num << 4) | (size & 0x0F)
    size >>= 4
    while size:
        out.append(c | 0x80)
        c = size & 0x7F
        size >>= 7
    out.append(c)
    return bytes(out)


_MAX_CACHED_BLOB = 1 << 18  # graph.tsv (2.3 MB on pkgsrc) is read once per rebuild: not kept


class CachingStore:
    """An object store wrapper that remembers parsed objects and reads loose objects first.

    Objects are immutable by id, so the cache is always right. dulwich looks in every pack
    first and rescans the pack directory on a miss, for each read; a queue's recent objects are
    loose, so asking the loose store first saves a directory scan per read.
    """

    def __init__(self, store, size: int = 4096):
        self._store = store
        self._cache: dict = {}
        self._size = size
        self._loose = getattr(store, "_get_loose_object", None)
        self._recent: dict = {}
        self._fetched: dict = {}  # hex sha -> (type number, contents): see keep_fetched
        # Set for a partial cache (CachedRemote): fetches objects by id that were left out.
        self.fetch_missing: Callable[[list], None] | None = None

    def __getitem__(self, sha):
        obj = self._cache.get(sha)
        if obj is None and sha in self._fetched:
            type_num, raw = self._fetched[sha]
            return ShaFile.from_raw_string(type_num, raw, sha)
        if obj is None:
            try:
                obj = self._loose(sha) if self._loose is not None and len(sha) == 40 else None
                if obj is None:
                    obj = self._packed(sha)
                if obj is None:
                    obj = self._store[sha]
            except KeyError:
                if self.fetch_missing is None:
                    raise RepositoryDamaged(f"{self._where()}: object {_hex(sha)} is missing") from None
                self.fetch_missing([sha])
                self.fetch_missing, fetch = None, self.fetch_missing
                try:
                    return self[sha]  # once: what the server does not send is damage
                finally:
                    self.fetch_missing = fetch
            except Exception as e:  # a truncated pack, a damaged loose object: zlib, checksum, format
                if isinstance(e, GitqueueError):
                    raise
                raise RepositoryDamaged(f"{self._where()}: object {_hex(sha)} is unreadable "
                                        f"({type(e).__name__}: {_one_line(e)})") from None
            if len(self._cache) >= self._size:
                self._cache.clear()
            if obj.type_num != 3 or obj.raw_length() <= _MAX_CACHED_BLOB:
                self._cache[sha] = obj
        return obj

    def __contains__(self, sha):
        return sha in self._cache or sha in self._store

    def _packed(self, sha):
        """The packed object `sha` read with pread (see read_packed), or None when no pack of
        this store holds it or its pack went meanwhile (dulwich then looks again)."""
        if len(sha) != 40 or getattr(self._store, "path", None) is None:
            return None
        try:
            found = _packed(self._store, sha)
            if found is None:
                return None
            type_num, raw = read_packed(self._store, *found)
        except (PackFileDisappeared, FileNotFoundError):
            return None
        except ObjectFormatError as e:
            raise RepositoryDamaged(f"{self._where()}: object {_hex(sha)} is unreadable ({e})") from None
        return ShaFile.from_raw_string(type_num, raw, sha)

    def cached(self, sha):
        """The parsed object `sha` if this cache holds it, else None (reads nothing)."""
        obj = self._recent.get(sha)
        return obj if obj is not None else self._cache.get(sha)

    def fetched(self, sha):
        """(type number, contents) of object `sha` if the last fetches brought it, else None."""
        return self._fetched.get(sha)

    def keep_fetched(self, objects: dict) -> None:
        """Hold the contents of fetched objects ({hex sha: (type number, contents)}) for the
        index update that reads them right after the fetch (its records and trees: a worker
        back from a long absence reads 3,000 records), until forget_fetched."""
        self._fetched.update(objects)

    def forget_fetched(self) -> None:
        self._fetched = {}

    def remember(self, objects) -> None:
        """Hold the objects just written (a commit's new trees and records) until the next
        write, for the index update that reads them right after. Only those: a results/ tree
        of 256 entries per commit, kept for thousands of commits, was tens of MB."""
        self._recent = {o.id: o for o in objects}

    def _where(self):
        path = getattr(self._store, "path", "")
        return os.path.dirname(path) if path.endswith("objects") else path or "object store"

    def __getattr__(self, name):
        return getattr(self._store, name)


class Remote:
    """The queue repository as seen by this process; subclasses say how it is reached."""

    ref: Ref
    object_store: "CachingStore"

    def fetch(self) -> bytes | None:
        """Bring the branch tip's objects within reach; return its commit id (None: no branch)."""
        raise NotImplementedError

    def push(self, old: bytes | None, commit: Commit, objects: list) -> None:
        """Move the branch from `old` to `commit` if it is still at `old`, else PushRejected."""
        raise NotImplementedError

    def fetch_history(self):
        """(an object store holding the whole history of the branch, its tip; None: no branch).

        The branch's cache may be shallow (a worker needs only the tip): what reads the whole
        history (verify, the timeline) asks for it here.
        """
        raise NotImplementedError

    def fetch_commits(self):
        """(an object store holding at least every commit of the branch, its tip): for the timeline."""
        return self.fetch_history()

    def writer_lock(self):
        """A lock that writers on this host take around fetch-decide-push (may do nothing)."""
        from contextlib import nullcontext

        return nullcontext()

    def ensure(self, ids) -> None:
        """Have the objects `ids` at hand before reading many of them (a partial cache fetches
        those it left out, in one request)."""

    def reader(self, commit_id: bytes | None) -> TreeReader:
        """A TreeReader over the tree of `commit_id`."""
        if commit_id is None:
            return TreeReader(self.object_store, None)
        return TreeReader(self.object_store, self.object_store[commit_id].tree)

    def commit(self, commit_id: bytes) -> Commit:
        return self.object_store[commit_id]

    def close(self) -> None:
        pass


class LocalRemote(Remote):
    """A bare repository on this file system, written directly with a ref compare-and-swap."""

    _writer_lock = None

    def __init__(self, path: str, branch: str = "main"):
        self.path = path
        self.ref = Ref(b"refs/heads/" + branch.encode())
        try:
            self.repo = Repo(path)
        except NotGitRepository:
            raise QueueNotFound(f"{path}: not a git repository") from None
        self.object_store = CachingStore(self.repo.object_store)

    def fetch(self) -> bytes | None:
        try:
            return self.repo.refs[self.ref]
        except KeyError:
            return None

    def fetch_history(self):
        return self.object_store, self.fetch()

    fetch_commits = fetch_history

    def writer_lock(self):
        # Every writer of a local queue is on this host: queueing on a lock beats racing to the
        # ref and redoing the work after a rejection. The compare-and-swap still decides.
        if self._writer_lock is None:
            from .locking import FileLock

            self._writer_lock = FileLock(os.path.join(self.repo.controldir(), "gitqueue.lock"))
        return self._writer_lock

    def push(self, old, commit, objects):
        from dulwich.file import FileLocked

        _add_objects(self.object_store, objects + [commit])
        self.object_store.remember(objects + [commit])
        lock = os.path.join(self.repo.controldir(), self.ref.decode() + ".lock")
        try:
            ok = self.repo.refs.set_if_equals(self.ref, ObjectID(old) if old else ZERO_SHA, commit.id)
        except FileLocked:
            try:
                age = time.time() - os.stat(lock).st_mtime
            except OSError:
                age = 0
            if age > STALE_REF_LOCK:
                # git and dulwich hold a ref's lock for the milliseconds of an update: one this
                # old was left by a process killed meanwhile (a worker's machine crashing, the
                # OOM killer). Every writer of the queue would stop on it; take it away and retry.
                try:
                    os.unlink(lock)
                except FileNotFoundError:
                    pass
                raise PushRejected(f"removed {lock}, left {age:.0f} s ago by a process that died") from None
            raise PushRejected("branch is being updated by another process") from None
        if not ok:
            raise PushRejected("branch moved")

    def close(self):
        self.repo.close()


class TipWalker:
    """Offer only our tip as common ground: the queue branch only ever fast-forwards."""

    def __init__(self, tip, shallow):
        self.heads = [tip] if tip else []
        self.shallow = shallow

    def ack(self, sha):
        self.heads = []

    def nak(self):
        pass

    def next(self):
        return self.heads.pop() if self.heads else None

    __next__ = next


class _Deadline:
    """Raise RemoteError from a fetch or push that has not finished after `seconds`.

    A connection can hang without dying (a NAT box that drops state, a stuck server process);
    ssh keepalives catch only the first. SIGALRM interrupts the blocking read; dulwich then
    closes the ssh process. Only in the main thread, where signals are delivered.
    """

    def __init__(self, seconds, what, client=None):
        self.seconds = seconds
        self.what = what
        self.old = None
        self.client = client

    def _fire(self, signum, frame):
        # Kill the transport first: dulwich would otherwise wait up to a minute for it to exit.
        vendor = getattr(self.client, "ssh_vendor", None)
        for proc in getattr(vendor, "procs", ()):
            if proc.poll() is None:
                proc.kill()
        raise RemoteError(f"{self.what}: no answer for {self.seconds:g} s; gave up")

    def __enter__(self):
        import signal
        import threading

        if self.seconds and threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)


@contextmanager
def _filter_may_be_ignored(filter_spec: bytes | None):
    """Around a fetch that asks for a filter: dulwich logs a warning when the server cannot
    filter, and then sends everything, which is correct here (only slower)."""
    if filter_spec is None:
        yield
        return
    import logging

    log = logging.getLogger("dulwich.client")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _TrackingVendor():
    """dulwich's ssh vendor, remembering its processes so a deadline can kill them, and opening
    sessions through a running ControlMaster itself (gitqueue.sshmux) instead of starting ssh."""
    from dulwich.client import DEFAULT_GIT_PROTOCOL_VERSION_FETCH, SubprocessSSHVendor, SubprocessWrapper

    from . import sshmux
    from .connection import for_destination

    class TrackingVendor(SubprocessSSHVendor):
        procs: list = []
        sessions = 0  # opened through the master (the rest started ssh)

        def run_command(self, host, command, username=None, port=None, password=None, key_filename=None,
                        ssh_command=None, protocol_version=None):
            con: sshmux.Session | SubprocessWrapper | None = None
            control = None
            if ssh_command:
                ssh_command, control = for_destination(ssh_command, username, host, port)
            if control and password is None and key_filename is None:
                # as dulwich asks ssh for it (its default for pushes too)
                version = DEFAULT_GIT_PROTOCOL_VERSION_FETCH if protocol_version is None else protocol_version
                try:
                    con = sshmux.open_session(control, command, [f"GIT_PROTOCOL=version={version}"] if version else [])
                    self.sessions += 1
                except sshmux.Refused:
                    pass  # no master yet (this ssh becomes it) or one that would not: start ssh
            if con is None:
                con = super().run_command(host, command, username=username, port=port, password=password,
                                          key_filename=key_filename, ssh_command=ssh_command,
                                          protocol_version=protocol_version)
            self.procs = [p for p in self.procs if p.poll() is None] + [con.proc]
            return con

    return TrackingVendor()


class _FarBehind(Exception):
    """The server's pack for a fetch holds more objects than the fetch would take."""


def changed_blobs(store, old_tree: bytes, new_tree: bytes, skip: tuple = ()) -> list:
    """Ids of the files of `new_tree` that differ from `old_tree` and that `store` lacks.

    Compares trees only (equal subtrees are skipped by id), so it reads no file; top-level
    directories named in `skip` are left out.
    """
    changed: list = []
    pending: list[tuple[bytes | None, bytes, bool]] = [(old_tree, new_tree, True)]
    while pending:
        old_id, new_id, top = pending.pop()
        old = {name: (mode, sha) for name, mode, sha in store[old_id].iteritems()} if old_id else {}
        for name, mode, sha in store[new_id].iteritems():
            before = old.get(name)
            if before is not None and before[1] == sha:
                continue
            if stat.S_ISDIR(mode):
                if not (top and name in skip):
                    pending.append((before[1] if before and stat.S_ISDIR(before[0]) else None, sha, False))
            else:
                changed.append(sha)
    return lacking(store, changed)


def _client(url: str, ssh_command: str | None, **options):
    """dulwich's client for `url` and the path on the server; over ssh, with _TrackingVendor."""
    from dulwich.client import get_transport_and_path

    client, path = get_transport_and_path(url, ssh_command=ssh_command or None, **options)
    if hasattr(client, "ssh_vendor"):
        client.ssh_vendor = _TrackingVendor()
    return client, path


class CachedRemote(Remote):
    """A remote repository (ssh://, git://, file://) mirrored into a bare cache repository."""

    timeout = 600.0  # seconds a fetch or push may take before it is abandoned
    # A partial cache further behind than this many objects (about ten a commit) catches up
    # with the tip's trees instead of every commit's (see fetch).
    catch_up_objects = 2000

    def __init__(self, url: str, cache_path: str, branch: str = "main", ssh_command: str | None = None):
        self.url = url
        self.ssh_command = ssh_command
        self.ref = Ref(b"refs/heads/" + branch.encode())
        try:
            self.client, self.remote_path = _client(url, ssh_command)
        except ValueError as e:
            raise QueueNotFound(f"{url}: {e}") from None
        self.repo = _open_cache_repo(cache_path)
        self.object_store = CachingStore(self.repo.object_store)
        if self.partial:
            self._go_partial()
        self.history_path = os.path.join(os.path.dirname(os.path.abspath(cache_path)), HISTORY_DIR)
        self._history: Repo | None = None
        self._commits: Repo | None = None

    def _local_tip(self):
        try:
            return self.repo.refs[self.ref]
        except KeyError:
            return None

    @property
    def _partial_marker(self) -> str:
        return os.path.join(self.repo.controldir(), PARTIAL_MARKER)

    @property
    def partial(self) -> bool:
        """Whether this cache left out the job records (see `fetch`)."""
        return os.path.exists(self._partial_marker)

    def _go_partial(self):
        # The server takes the cache to hold everything its commits reach, so a thin pack may
        # send a new file as a delta against a job record this cache never got: ask for packs
        # that carry their own bases.
        self.client, self.remote_path = _client(self.url, self.ssh_command, thin_packs=False)
        self.object_store.fetch_missing = self.fetch_objects

    def _keep(self, objects: dict | None) -> None:
        if objects:
            self.object_store.keep_fetched(objects)

    def ensure(self, ids) -> None:
        if self.object_store.fetch_missing is not None:
            self.fetch_objects(ids)

    def fetch_objects(self, ids) -> None:
        """Fetch the objects `ids` (ones a partial cache left out) by id, in one request."""
        wanted = lacking(self.object_store, list(dict.fromkeys(ids)))
        if not wanted:
            return
        pack = io.BytesIO()
        try:
            with _Deadline(self.timeout, f"{self.url}: fetch", self.client):
                self.client.fetch_pack(self.remote_path, lambda refs, depth=None: wanted, TipWalker(None, set()),
                                       pack.write)
        except (HangupException, GitProtocolError, OSError) as e:
            raise RemoteError(f"{self.url}: fetch of {len(wanted)} objects failed: {_one_line(e)}") from None
        if pack.tell():
            self._keep(_add_fetched(self.repo.object_store, pack.getvalue()))

    def fetch(self) -> bytes | None:
        local = self._local_tip()
        if local is None:
            return self._first_fetch()
        if not self.partial:
            return self._fetch(local)
        # A worker back from a long absence would get every commit since with its rewritten
        # trees (about ten objects a commit: 30k objects for 3,000 results, seconds of dulwich's
        # pack indexing and tens of MiB), when it needs only the tip. So when the server's pack
        # announces more than catch_up_objects, the fetch is dropped for a depth-1 one without
        # files: the tip's trees (about 540 on the 29k queue, 1.2 MB; the server sends them all,
        # the cache being shallow).
        try:
            tip = self._fetch(local, max_objects=self.catch_up_objects, move_ref=False)
        except _FarBehind:
            tip = self._fetch(local, filter_spec=b"blob:none", depth=1, move_ref=False)
        if tip is None or tip == local:
            return tip
        # The files that differ from the cache's tip (none after a whole fetch; the changed
        # records after a catch-up), in one request, before the ref moves: a process stopped
        # in between fetches them next time, not one by one as the index reads them.
        self.fetch_objects(changed_blobs(self.object_store, self.object_store[local].tree,
                                         self.object_store[tip].tree, skip=(b"jobs",)))
        _in_cache(lambda: self.repo.refs.__setitem__(self.ref, ObjectID(tip)))
        return tip

    def _first_fetch(self) -> bytes | None:
        """Fetch the tip into an empty cache without the job records, when the server can.

        A new worker needs the tree and the few records that are not jobs (leases, results,
        settings, graph.tsv); the 29k job records of a pkgsrc queue are most of the bytes and
        seconds of a first fetch, and a worker reads only those it claims (fetched then, one
        by one). Needs protocol v2 (sshd's `AcceptEnv GIT_PROTOCOL`) and `uploadpack.allowFilter`
        (`gitqueue hooks install` sets it); else the server sends everything, as before.
        """
        # Marked partial first: a process killed after the fetch leaves a cache that knows to
        # fetch what it lacks.
        with open(self._partial_marker, "w") as f:
            f.write("job records are fetched when read (gitstore.CachedRemote._first_fetch)\n")
        self._go_partial()
        tip = self._fetch(None, filter_spec=b"blob:none")
        if tip is None:
            return None
        files = []
        left_out_jobs = False
        reader = TreeReader(self.object_store, self.object_store[tip].tree)
        for _, mode, sha in reader.entries(""):
            if not stat.S_ISDIR(mode):
                files.append(sha)
        for top, _, _ in reader.entries(""):
            if top == "jobs":
                first = next(reader.walk_files("jobs"), None)
                left_out_jobs = first is not None and bool(lacking(self.object_store, [first[1]]))
                continue
            files.extend(sha for _, sha in reader.walk_files(top))
        missing = lacking(self.object_store, files)
        if not missing and not left_out_jobs:  # the server sent everything
            os.unlink(self._partial_marker)
            self.object_store.fetch_missing = None
            return tip
        self.fetch_objects(missing)
        return tip

    def _fetch(self, local, filter_spec: bytes | None = None, depth: int | None = None,
               max_objects: int | None = None, move_ref: bool = True) -> bytes | None:
        """Fetch the tip into the cache (`local`: the cache's tip, None for a first, shallow
        fetch) and, with `move_ref`, point the cache's branch at it. With `max_objects`, raises
        _FarBehind as soon as the server's pack announces more."""
        seen = {}

        def determine_wants(refs, depth=None):
            tip = refs.get(self.ref)
            seen["tip"] = tip
            if tip is None or tip == local or tip in self.object_store:
                return []
            return [tip]

        walker = TipWalker(local, self.repo.get_shallow())
        pack = io.BytesIO()
        limit = max_objects if max_objects is not None else -1
        head = b"" if limit >= 0 else None  # the pack's header: "PACK", version, object count

        def write(data):
            nonlocal head
            pack.write(data)
            if head is not None and len(head) < 12:
                head += data[:12 - len(head)]
                if len(head) == 12 and head[:4] == b"PACK" and int.from_bytes(head[8:], "big") > limit:
                    raise _FarBehind()
        try:
            with _Deadline(self.timeout, f"{self.url}: fetch", self.client), _filter_may_be_ignored(filter_spec):
                result = self.client.fetch_pack(
                    self.remote_path,
                    determine_wants,
                    walker,
                    write,
                    depth=depth if local else 1,
                    filter_spec=filter_spec,
                )
        except (HangupException, GitProtocolError, OSError) as e:
            raise RemoteError(f"{self.url}: fetch failed: {_one_line(e)}") from None
        if pack.tell():
            self._keep(_add_fetched(self.repo.object_store, pack.getvalue()))
        if result.new_shallow or result.new_unshallow:
            _in_cache(lambda: self.repo.update_shallow(result.new_shallow, result.new_unshallow))
        tip = seen.get("tip")
        if tip is None:
            return None
        # dulwich re-reads refs after the transfer; trust only the tip we asked for.
        if tip != local and move_ref:
            _in_cache(lambda: self.repo.refs.__setitem__(self.ref, tip))
        return tip

    def push(self, old, commit, objects):
        from dulwich.pack import pack_objects_to_data

        new = commit.id
        outcome = {}

        def update_refs(refs):
            current = refs.get(self.ref)
            outcome["remote"] = current
            if (current or None) != (old or None) and not (current == ZERO_SHA and old is None):
                raise _Moved()
            return {self.ref: new}

        def generate_pack_data(have, want, ofs_delta=False, progress=None):
            return pack_objects_to_data(objects + [commit], ofs_delta=False)

        said: list[bytes] = []  # what the server's hooks printed (git shows it as "remote: ...")
        try:
            with _Deadline(self.timeout, f"{self.url}: push", self.client):
                # send_pack takes the path as bytes (dulwich's porcelain encodes it likewise)
                result = self.client.send_pack(self.remote_path.encode(), update_refs, generate_pack_data,
                                               progress=said.append)
        except _Moved:
            raise PushRejected("branch moved") from None
        except (HangupException, GitProtocolError, OSError) as e:
            raise RemoteError(f"{self.url}: push failed: {_one_line(e)}") from None
        status = (result.ref_status or {}).get(self.ref)
        if status is not None:
            # git's receive-pack says "failed to update ref" (or "failed to lock") when another
            # push holds the ref's lock or moved it first: the compare-and-swap lost, retry.
            if any(s in status for s in ("non-fast-forward", "fetch first", "stale", "failed to update ref",
                                         "failed to lock")):
                raise PushRejected(status)
            reason = _hook_reason(b"".join(said))
            raise PushRefused(f"{self.url}: push refused: {_one_line(status)}{': ' + reason if reason else ''}")
        # Keep what we sent, so the next operation need not fetch it back.
        _add_objects(self.object_store, objects + [commit])
        self.object_store.remember(objects + [commit])
        _in_cache(lambda: self.repo.refs.__setitem__(self.ref, new))

    def fetch_history(self):
        """Fetch the whole history of the branch into `history_path` (beside the cache, never
        shallow), offering its tip as common ground, within the network timeout."""
        if self._history is None:
            self._history = _open_cache_repo(self.history_path)
        return self._mirror(self._history, "fetch history", None)

    def fetch_commits(self):
        """(an object store holding every commit of the branch, its tip): what the timeline
        reads. From a server that can filter, commits only (`tree:0`, a few hundred bytes per
        commit) into `commits.git`; else, or when the whole history is here anyway, fetch_history."""
        if os.path.isdir(os.path.join(self.history_path, "objects")):
            return self.fetch_history()
        if self._commits is None:
            self._commits = _open_cache_repo(os.path.join(os.path.dirname(self.history_path), COMMITS_DIR))
        return self._mirror(self._commits, "fetch commits", b"tree:0")

    def _mirror(self, repo, what: str, filter_spec: bytes | None):
        local = repo.refs[self.ref] if self.ref in repo.refs else None
        seen = {}

        def determine_wants(refs, depth=None):
            tip = seen["tip"] = refs.get(self.ref)
            return [] if tip is None or tip == local or tip in repo.object_store else [tip]

        import tempfile

        client = self.client
        if filter_spec is not None:
            # A filtered mirror lacks what the server takes it to have: no deltas against it.
            client, _ = _client(self.url, self.ssh_command, thin_packs=False)
        # A whole build's history is a pack of tens of MB: held in memory only while small.
        with tempfile.SpooledTemporaryFile(16 << 20, dir=repo.path) as pack:
            try:
                with _Deadline(self.timeout, f"{self.url}: {what}", client), _filter_may_be_ignored(filter_spec):
                    client.fetch_pack(self.remote_path, determine_wants, TipWalker(local, set()), pack.write,
                                      filter_spec=filter_spec)
            except (HangupException, GitProtocolError, OSError) as e:
                raise RemoteError(f"{self.url}: fetch failed: {_one_line(e)}") from None
            if pack.tell():
                pack.seek(0)
                repo.object_store.add_thin_pack(pack.read, None)
        tip = seen.get("tip")
        if tip is not None and tip != local:
            _in_cache(lambda: repo.refs.__setitem__(self.ref, tip))
        return repo.object_store, tip

    def close(self):
        self.repo.close()
        for mirror in (self._history, self._commits):
            if mirror is not None:
                mirror.close()


def _open_cache_repo(path: str) -> Repo:
    """The bare repository at `path`, made first if missing."""
    if not os.path.isdir(os.path.join(path, "objects")):
        # Made aside and renamed into place: another process may be doing the same.
        tmp = f"{path}.new-{os.getpid()}"
        Repo.init_bare(tmp, mkdir=True).close()
        try:
            os.rename(tmp, path)
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return Repo(path)


def _hook_reason(output: bytes) -> str:
    """The first rule the server's gitqueue hook names in its output ('' if none)."""
    lines = [ln.strip() for ln in output.decode("utf-8", "replace").replace("\r", "\n").splitlines()]
    reasons = [ln[len("gitqueue: "):] for ln in lines
               if ln.startswith("gitqueue: ") and not ln.startswith("gitqueue: push refused")]
    return reasons[0] if reasons else ""


def _in_cache(write):
    """Run a write to the cache repository (its ref, its shallow file), clearing a stale lock.

    Every writer of a cache holds the host's lock on it (Queue.lock), so a `.lock` file found
    there was left by a process that died mid-write: without this, one worker killed at that
    moment stopped every later process on the host.
    """
    from dulwich.file import FileLocked

    try:
        write()
    except FileLocked as e:
        lock = e.lockfilename.decode() if isinstance(e.lockfilename, bytes) else e.lockfilename
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        write()


class _Moved(Exception):
    pass


def _hex(sha) -> str:
    return sha.decode() if isinstance(sha, bytes) and len(sha) == 40 else repr(sha)


def _one_line(e) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def is_local_path(url: str) -> bool:
    """True when `url` names a directory on this machine rather than a network location."""
    return "://" not in url and not (":" in url.split("/")[0] and not url.startswith("/"))


def init_bare(path: str, branch: str = "main") -> None:
    """Create a bare repository whose HEAD names `branch`, refusing non-fast-forward pushes."""
    os.makedirs(path, exist_ok=True)
    with Repo.init_bare(path) as repo:
        repo.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(b"refs/heads/" + branch.encode()))
    # No automatic `git gc` after a push: it packs refs, prunes, and writes bitmaps that dulwich
    # readers trip over (see gitqueue.gc); `gitqueue gc` from cron does the packing instead.
    set_config(path, {"receive.denyNonFastForwards": True, "receive.denyDeletes": True,
                      "receive.autogc": False, "gc.auto": 0})


def point_head_at(path: str, branch: str) -> None:
    """Make HEAD of the bare repository at `path` name `branch`, unless HEAD names a branch that
    exists (so plain `git log` in a repository made by `git init --bare` shows the queue)."""
    with Repo(path) as repo:
        ref = Ref(b"refs/heads/" + branch.encode())
        if repo.refs.read_ref(Ref(b"HEAD")) != b"ref: " + ref and ref not in repo.refs:
            head = repo.refs.read_ref(Ref(b"HEAD")) or b""
            if head.startswith(b"ref: ") and Ref(head[5:]) not in repo.refs:
                repo.refs.set_symbolic_ref(Ref(b"HEAD"), ref)


def set_config(path: str, values: dict) -> None:
    """Set `values` ({"section.name" or "section.subsection.name": value}, as `git config` names
    them) in the config file of the repository at `path`."""
    from dulwich.config import ConfigFile

    config_path = os.path.join(path, "config")
    config = ConfigFile.from_path(config_path)
    for key, value in values.items():
        section, *subsection, name = key.split(".")
        where = (section.encode(), ".".join(subsection).encode()) if subsection else (section.encode(),)
        config.set(where, name.encode(), value if isinstance(value, bool) else str(value).encode())
    config.write_to_path(config_path)


# -- what git-receive-pack shows its pre-receive hook ----------------------------------------------------

def receive_store(git_dir: str, environ: dict):
    """The object store git-receive-pack shows its hook: the quarantine directory
    (GIT_OBJECT_DIRECTORY) with the repository's own object directory and any alternates
    (GIT_ALTERNATE_OBJECT_DIRECTORIES) behind it, or the repository's when not quarantined."""
    from dulwich.object_store import DiskObjectStore

    main = os.path.join(git_dir, "objects")
    objects = environ.get("GIT_OBJECT_DIRECTORY") or main
    alternates = [p for p in (environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES") or "").split(os.pathsep) if p]
    if os.path.abspath(objects) != os.path.abspath(main) and main not in alternates:
        alternates.append(main)
    return DiskObjectStore(objects, alternates=[p.strip('"') for p in alternates])


class Quarantine:
    """The objects a push brought, which git-receive-pack holds apart until its hook accepts them.

    Iterating gives their ids; `in_repository` says whether the repository already has one.
    """

    def __init__(self, path: str, git_dir: str):
        from dulwich.object_store import DiskObjectStore

        self.brought = DiskObjectStore(path)
        self.main = DiskObjectStore(os.path.join(git_dir, "objects"))

    def __iter__(self):
        return iter(self.brought)

    def in_repository(self, sha: bytes) -> bool:
        return ObjectID(sha) in self.main

    def header(self, sha: bytes) -> tuple[str, int] | None:
        """(type, size) of a brought object, read from its header only (see object_header)."""
        return object_header(self.brought, sha)

    def close(self) -> None:
        self.brought.close()
        self.main.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_quarantine(git_dir: str, environ: dict) -> Quarantine | None:
    """The push's quarantine (GIT_QUARANTINE_PATH), None when receive-pack uses none."""
    path = environ.get("GIT_QUARANTINE_PATH")
    if not path or not os.path.isdir(path):
        return None
    return Quarantine(path, git_dir)
