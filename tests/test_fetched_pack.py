"""Fetched packs read in one pass (gitstore.read_fetched_pack): the objects git packed, deltas
resolved, or None for anything else, and the pack stored so that git and dulwich read it."""

import hashlib
import os
import subprocess
import zlib

from dulwich.repo import Repo
from hypothesis import given, settings
from hypothesis import strategies as st

from gitqueue.gitstore import CachingStore, _add_fetched, _pack_entry_header, read_fetched_pack, read_object

TYPES = {"commit": 1, "tree": 2, "blob": 3, "tag": 4}


def _git(repo, *args, data=None):
    return subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True, check=True).stdout


def _history(tmp_path):
    """A repository whose blobs are much alike (records that deltify), two commits."""
    repo = tmp_path / "src"
    _git(tmp_path, "init", "-q", "-b", "main", str(repo))
    for n in range(2):
        for i in range(60):
            (repo / f"r{i:02}.toml").write_text(f'job = "p{i}-1.0"\nstatus = "success"\nworker = "w{n}"\n'
                                                f'duration = {i * 7 + n}\nlog = "{"x" * 200}"\n')
        _git(repo, "add", "-A")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"c{n}")
    return repo


def _objects(repo, revs):
    """{hex sha (bytes, as dulwich names objects): (type number, contents)}"""
    ids = _git(repo, "rev-list", "--objects", *revs).decode().split()
    out = {}
    for sha in {line for line in ids if len(line) == 40}:
        kind = _git(repo, "cat-file", "-t", sha).decode().strip()
        out[sha.encode()] = (TYPES[kind], _git(repo, "cat-file", kind, sha))
    return out


def _pack(repo, revs, *options):
    return _git(repo, "pack-objects", "--stdout", "--revs", *options, data="\n".join(revs).encode() + b"\n")


def test_a_pack_git_writes_reads_as_its_objects_with_either_kind_of_delta(tmp_path):
    repo = _history(tmp_path)
    want = _objects(repo, ["main"])
    for options in ((), ("--delta-base-offset",)):
        data = _pack(repo, ["main"], *options)
        got = read_fetched_pack(data)
        assert got is not None and {sha: v[:2] for sha, v in got.items()} == want
        # and git's own index of that pack puts every object where this one does
        (tmp_path / "p.pack").write_bytes(data)
        _git(tmp_path, "index-pack", "-o", str(tmp_path / "p.idx"), str(tmp_path / "p.pack"))
        shown = _git(tmp_path, "verify-pack", "-v", str(tmp_path / "p.idx")).decode().splitlines()
        offsets = {line.split()[0].encode(): int(line.split()[4]) for line in shown if len(line.split()) >= 5
                   and len(line.split()[0]) == 40}
        assert offsets == {sha: v[2] for sha, v in got.items()}
    # deltas there were: the test means something
    assert " delta " in _git(tmp_path, "verify-pack", "-v", str(tmp_path / "p.idx")).decode() or any(
        "chain length" in line for line in shown)


def test_a_thin_pack_is_left_to_dulwich(tmp_path):
    repo = _history(tmp_path)
    thin = _pack(repo, ["main", "^main~1"], "--thin")
    assert read_fetched_pack(thin) is None


def test_a_stored_pack_is_read_by_git_and_through_the_cache(tmp_path):
    repo = _history(tmp_path)
    data = _pack(repo, ["main"], "--delta-base-offset")
    cache = tmp_path / "cache.git"
    cache.mkdir()
    store = Repo.init_bare(str(cache)).object_store
    kept = _add_fetched(store, data)
    want = _objects(repo, ["main"])
    # the records are kept for the index update; trees and commits are read from the pack
    assert kept == {sha: v for sha, v in want.items() if v[0] == 3}
    packs = [n for n in os.listdir(cache / "objects" / "pack") if n.endswith(".idx")]
    assert len(packs) == 1 and not [n for n in os.listdir(cache / "objects" / "pack") if n.startswith("tmp")]
    _git(cache, "fsck", "--strict", "--no-dangling")
    caching = CachingStore(Repo(str(cache)).object_store)
    for sha, (type_num, raw) in want.items():
        kind = {v: k for k, v in TYPES.items()}[type_num]
        assert read_object(caching, sha, kind, 1 << 20) == raw
    caching.keep_fetched(kept)
    blob = next(iter(kept))
    os.unlink(cache / "objects" / "pack" / packs[0])  # from now on only the kept contents can answer
    assert read_object(caching, blob, "blob", 1 << 20) == kept[blob][1]
    assert read_object(caching, blob, "tree", 1 << 20).startswith("a blob object where a tree belongs")
    assert read_object(caching, blob, "blob", 10).endswith("more than 10")


def _entry(type_num, body, declared=None):
    return _pack_entry_header(type_num, len(body) if declared is None else declared) + zlib.compress(body)


def _whole(entries):
    data = b"PACK" + (2).to_bytes(4, "big") + len(entries).to_bytes(4, "big") + b"".join(entries)
    return data + hashlib.sha1(data).digest()


def test_a_pack_that_is_not_what_it_says_is_refused():
    good = _whole([_entry(3, b"hello\n"), _entry(3, b"world\n")])
    assert set(read_fetched_pack(good)) == {b"ce013625030ba8dba906f756967f9e9ca394464a",
                                            b"cc628ccd10742baea8241c5924df992b5c019f71"}
    assert read_fetched_pack(good[:-1] + bytes([good[-1] ^ 1])) is None  # checksum
    assert read_fetched_pack(_whole([_entry(3, b"hello\n", declared=3)])) is None  # inflates to more
    assert read_fetched_pack(_whole([_entry(3, b"hello\n", declared=9)])) is None  # to less
    assert read_fetched_pack(_whole([_entry(5, b"x")])) is None  # no such type
    assert read_fetched_pack(_whole([_entry(3, b"a")])[:-25] + b"\0" * 5) is None
    # OFS delta pointing before the pack, and a count larger than the entries
    assert read_fetched_pack(_whole([bytes([0x65, 0x7F]) + zlib.compress(b"\x01\x01a")])) is None
    data = b"PACK" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + _entry(3, b"a")
    assert read_fetched_pack(data + hashlib.sha1(data).digest()) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 400), st.integers(0, 255))
def test_any_damage_gives_the_true_objects_or_none(noise, at, value):
    data = bytearray(_whole([_entry(3, b"hello\n"), _entry(2, b""), _entry(3, b"x" * 300)]))
    body = data[:-20]
    if at < len(body):
        body[at] = value
    body += noise[: at % 7]
    data = bytes(body) + hashlib.sha1(bytes(body)).digest()
    got = read_fetched_pack(data)
    if got is not None:  # each object is what its id says
        for sha, (type_num, raw, _, _) in got.items():
            kind = {v: k for k, v in TYPES.items()}[type_num]
            assert hashlib.sha1(f"{kind} {len(raw)}\0".encode() + raw).hexdigest().encode() == sha


def test_packed_objects_are_read_without_mapping_the_pack(tmp_path):
    """A pack of either kind of delta, indexed by git: every object reads true through the cache,
    and none of the pack's pages is left mapped in the process (dulwich maps the whole pack)."""
    import pytest

    from gitqueue.errors import RepositoryDamaged

    repo = _history(tmp_path)
    want = _objects(repo, ["main"])
    for n, options in enumerate(((), ("--delta-base-offset",))):
        cache = tmp_path / f"cache{n}.git"
        Repo.init_bare(str(cache), mkdir=True)
        pack = cache / "objects" / "pack" / "pack-x.pack"
        pack.write_bytes(_pack(repo, ["main"], *options))
        _git(cache, "index-pack", str(pack))
        caching = CachingStore(Repo(str(cache)).object_store)
        for sha, (type_num, raw) in want.items():
            obj = caching[sha]
            assert (obj.type_num, obj.as_raw_string()) == (type_num, raw)
        if os.path.exists("/proc/self/maps"):
            with open("/proc/self/maps") as f:
                assert str(pack) not in f.read()
    # A damaged entry is damage to the cache, said as such.
    data = bytearray(pack.read_bytes())
    blob = next(sha for sha, (type_num, _) in want.items() if type_num == 3)
    shown = _git(cache, "verify-pack", "-v", str(pack.with_suffix(".idx"))).decode().splitlines()
    offset = next(int(line.split()[4]) for line in shown if line.startswith(blob.decode()))
    data[offset + 4] ^= 0xFF
    pack.write_bytes(bytes(data))
    with pytest.raises(RepositoryDamaged, match=blob.decode()):
        CachingStore(Repo(str(cache)).object_store)[blob]
