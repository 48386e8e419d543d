"""The server's rules against random and crafted commits: a verdict every time, never a crash.

Each example builds one commit on top of a real queue (a signed one and an unsigned one) that
adds, rewrites or deletes random paths, layout paths and hostile ones, with valid, mangled or
garbage contents, then asks rules.check_commit for its verdict, as the hook does for a push.
"""

import pytest
import tomli_w
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gitqueue import lease, rules
from gitqueue.layout import record_path

from helpers import job, make_queue, open_queue
from signed_queue import SignedQueue
from test_layout import FULL

LAYOUT = [record_path(kind, name) for kind in ("jobs", "leases", "results", "declines")
          for name in ("a-1", "b-1", "c-1", "zz-9")] + [
    "queue.toml", "priority.toml", "noway.toml", "heartbeats/w1.toml", "heartbeats/w9.toml",
    "workers/w1.toml", "workers/evil.toml"]
HOSTILE = ["jobs/00/../../x.toml", "leases/..toml", "..", ".git/config", "jobs/a-1.toml", "results/zz/a-1.toml",
           "heartbeats/.toml", "heartbeats/-w.toml", "x", "jobs/ab", "workers/w1.toml/inner.toml", "queue.toml/x"]
KINDS = {"jobs": "job", "leases": "lease", "results": "result", "declines": "decline", "heartbeats": "heartbeat",
         "workers": "worker", "queue.toml": "queue", "priority.toml": "priority", "noway.toml": "noway"}


def content_for(path, how, junk):
    kind = KINDS.get(path.split("/", 1)[0], "job")
    rec = dict(FULL[kind])
    name = path.rsplit("/", 1)[-1].removesuffix(".toml")
    for key in ("job", "name", "worker"):
        if key in rec and kind != "queue":
            rec[key] = name
    text = tomli_w.dumps(rec).encode()  # unvalidated: the name may be hostile too
    if how == "valid":
        return text
    if how == "mangled":
        return text[: len(junk)] + junk + text[len(junk):]
    if how == "huge":
        return text + b"#" * 70000
    return junk


changes = st.dictionaries(
    st.sampled_from(LAYOUT + HOSTILE),
    st.one_of(st.none(), st.tuples(st.sampled_from(["valid", "mangled", "garbage", "huge"]), st.binary(max_size=40))),
    min_size=1, max_size=4)


def commit_on(repo, parent_id, files, mode=0o100644):
    """A commit on `parent_id` whose tree has `files` changed (None deletes), built without checks."""
    store = repo.object_store

    def rebuild(tree_id, spec):
        tree = Tree() if tree_id is None else Tree.from_raw_string(Tree.type_num, store[tree_id].as_raw_string())
        for name, sub in spec.items():
            key = name.encode()
            if isinstance(sub, dict):
                old = tree[key][1] if key in tree and tree[key][0] == 0o40000 else None
                tree.add(key, 0o40000, rebuild(old, sub))
            elif sub is None:
                if key in tree:
                    del tree[key]
            else:
                blob = Blob.from_string(sub)
                store.add_object(blob)
                tree.add(key, mode, blob.id)
        store.add_object(tree)
        return tree.id

    spec = {}
    for path, data in files.items():
        parts = path.split("/")
        node = spec
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = data
    parent = store[parent_id]
    c = Commit()
    c.tree = rebuild(parent.tree, spec)
    c.parents = [parent_id]
    c.author = c.committer = b"fuzz <fuzz@gitqueue>"
    c.author_time = c.commit_time = 1_800_000_000
    c.author_timezone = c.commit_timezone = 0
    c.message = b"fuzz"
    store.add_object(c)
    return c


@pytest.fixture(scope="module")
def queues(tmp_path_factory):
    plain = make_queue(tmp_path_factory.mktemp("plain"), [job("a-1"), job("b-1"), job("c-1", ["a-1"])], hook=False)
    tmp = tmp_path_factory.mktemp("plainw")
    with open_queue(plain, tmp) as q:
        lease.claim(q, "w1")
    signed = SignedQueue(tmp_path_factory.mktemp("signed"))
    return {"plain": plain, "signed": signed.path}


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


@FUZZ
@given(which=st.sampled_from(["plain", "signed"]), spec=changes, executable=st.booleans())
def test_any_commit_gets_a_verdict(queues, which, spec, executable):
    with Repo(queues[which]) as repo:
        tip = repo.refs[b"refs/heads/main"]
        files = {path: (None if v is None else content_for(path, v[0], v[1])) for path, v in spec.items()}
        commit = commit_on(repo, tip, files, 0o100755 if executable else 0o100644)
        state = rules.State(repo.object_store, repo.object_store[tip].tree)
        verdict = rules.check_commit(repo.object_store, state, commit)
    for v in verdict.violations:
        assert "\n" not in str(v)
    if which == "signed":
        assert verdict.violations, "an unsigned commit on a signed queue is refused"
    if any(path in HOSTILE for path, v in spec.items() if v is not None) or executable and any(
            v is not None for v in spec.values()):
        assert verdict.violations, f"{sorted(spec)} passed"


# -- trees as git stores them ------------------------------------------------------------------------

MODES = [b"100644", b"0100644", b"40000", b"040000", b"100755", b"120000", b"160000", b"644", b"x"]
NAMES = [b"w1.toml", b"w2.toml", b"w9.toml", b"results/63/a-1.toml", b"a-1.toml", b".", b"..", b".git", b".GIT",
         b"w1.toml\x00x", b"w 1.toml", b"\xff.toml", b""]
raw_entries = st.lists(st.tuples(st.sampled_from(MODES), st.one_of(st.sampled_from(NAMES), st.binary(max_size=10))),
                       min_size=1, max_size=5)


@FUZZ
@given(which=st.sampled_from(["plain", "signed"]), entries=raw_entries, where=st.sampled_from(["heartbeats", "root"]))
@example(which="plain", entries=[(b"100644", b"\n")], where="heartbeats")  # a violation once showed the raw newline
def test_any_raw_tree_gets_a_verdict(queues, which, entries, where):
    """Entries with any mode and name bytes, in any order, duplicates included, in the heartbeats/
    directory or the root: a verdict every time, and a refusal unless the tree is exactly what git
    and the layout allow there."""
    from gitqueue import layout

    with Repo(queues[which]) as repo:
        store = repo.object_store
        tip = repo.refs[b"refs/heads/main"]
        blob = Blob.from_string(b'worker = "w1"\nseq = 7\n')
        store.add_object(blob)
        raw = b"".join(b"%s %s\0" % (mode, name) + bytes.fromhex(blob.id.decode()) for mode, name in entries)
        base = store[store[tip].tree]
        if where == "heartbeats":
            tree = _store_raw(queues[which], b"tree", raw)
            root = Tree.from_raw_string(Tree.type_num, base.as_raw_string())
            root.add(b"heartbeats", 0o40000, tree)
            store.add_object(root)
            root = root.id
            place = ("workers", "heartbeats")
        else:
            root = _store_raw(queues[which], b"tree", base.as_raw_string() + raw)
            entries = [(b"%o" % e.mode if e.mode != 0o40000 else b"40000", e.path) for e in base.iteritems()] + entries
            place = layout.ROOT
        c = Commit()
        c.tree, c.parents = root, [tip]
        c.author = c.committer = b"fuzz <fuzz@gitqueue>"
        c.author_time = c.commit_time = 1_800_000_000
        c.author_timezone = c.commit_timezone = 0
        c.message = b"heartbeat w1"
        store.add_object(c)
        state = rules.State(store, base.id)
        verdict = rules.check_commit(store, state, c)
    keys = [name + (b"/" if mode == b"40000" else b"") for mode, name in entries]
    canonical = keys == sorted(set(keys)) and all(
        layout.entry_problem(place, name, mode) is None and b"\0" not in name and b" " not in mode
        for mode, name in entries)
    if not canonical:
        assert verdict.violations, f"{entries!r} at {where} passed"
    for v in verdict.violations:
        assert "\n" not in str(v)


def _store_raw(repo_path, kind: bytes, raw: bytes) -> bytes:
    """Write an object of `kind` with exactly the bytes `raw` (no parser in the way); its id."""
    import hashlib
    import os
    import zlib

    data = kind + b" %d\0" % len(raw) + raw
    sha = hashlib.sha1(data).hexdigest()
    directory = os.path.join(repo_path, "objects", sha[:2])
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, sha[2:])
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(zlib.compress(data))
    return sha.encode()
