"""The git layer: gitstore is the one module that talks to dulwich."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gitqueue"
GIT_LAYER = {"gitstore.py"}


def dulwich_imports(path: Path) -> list[int]:
    """Lines of `path` that import dulwich (at any depth: inside functions too)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "dulwich" or name.startswith("dulwich.") for name in names):
            lines.append(node.lineno)
    return lines


def test_only_the_git_layer_imports_dulwich():
    found = {str(path.relative_to(PACKAGE)): dulwich_imports(path) for path in sorted(PACKAGE.rglob("*.py"))}
    assert found["gitstore.py"], "the checker finds gitstore's own imports"
    assert {name: lines for name, lines in found.items() if lines and name not in GIT_LAYER} == {}


def test_a_worker_cache_does_not_gather_a_pack_per_fetch(tmp_path):
    """Claims and heartbeats fetch a few objects at a time; they must not pile up open packs."""
    from dulwich.objects import Blob, Commit, Tree
    from dulwich.repo import Repo

    from gitqueue.gitstore import UNPACK_LIMIT, CachedRemote

    origin = Repo.init_bare(str(tmp_path / "origin.git"), mkdir=True)
    cache = CachedRemote(f"file://{tmp_path / 'origin.git'}", str(tmp_path / "cache.git"))
    parent = None

    def commit(blobs):
        nonlocal parent
        tree = Tree()
        for i, blob in enumerate(blobs):
            origin.object_store.add_object(blob)
            tree.add(f"f{i}".encode(), 0o100644, blob.id)
        origin.object_store.add_object(tree)
        c = Commit()
        c.tree, c.parents = tree.id, [parent] if parent else []
        c.author = c.committer = b"t <t@t>"
        c.author_time = c.commit_time = 1_700_000_000
        c.author_timezone = c.commit_timezone = 0
        c.message = b"m"
        origin.object_store.add_object(c)
        origin.refs[b"refs/heads/main"] = c.id
        parent = c.id
        return c.id

    big = [Blob.from_string(f"start {i}".encode()) for i in range(UNPACK_LIMIT + 5)]
    assert cache.fetch() is None
    tip = commit(big)
    assert cache.fetch() == tip
    packs_dir = tmp_path / "cache.git" / "objects" / "pack"
    packs = {p.name for p in packs_dir.glob("*.pack")}
    assert packs, "a large first fetch is kept as a pack"
    for n in range(40):
        tip = commit(big[:UNPACK_LIMIT - 5] + [Blob.from_string(f"heartbeat {n}".encode())])
        assert cache.fetch() == tip
    assert {p.name for p in packs_dir.glob("*.pack")} == packs
    reader = cache.reader(tip)
    assert reader.read("f95") == b"heartbeat 39"
    cache.close()
