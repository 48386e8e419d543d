"""The one diff of two queue trees: every file that differs, read as git stores it and judged
entry by entry against the layout on the way.

The server's hook and `gitqueue verify` judge each commit by it (rules.check_commit), and a
worker's index is brought forward by it (index.Index.update), so what the rules accept and what
the index reads are the same files.
"""

from dataclasses import dataclass

from . import layout
from .gitstore import ObjectFormatError, parse_tree_entries, read_object
from .layout import FILE_MODE, ROOT, TREE_MODE

MAX_TREE_BYTES = 1 << 20  # a new tree: a shard of a queue of a million jobs is about 250 KB
MAX_OLD_TREE_BYTES = 1 << 24  # a tree of the parent, read only to compare with


@dataclass
class FileChange:
    """One file a commit adds, rewrites or removes, judged allowed in its place (kind known), or
    the removal of an entry that the layout does not allow (kind None: what a local writer left)."""

    path: str
    kind: str | None
    name: str | None
    old: tuple | None  # (mode, hex sha) before, None if added
    new: tuple | None  # (mode, hex sha) after, None if removed
    data: bytes | None = None  # the new contents, read once by the walk


class TreeWalk:
    """The files that differ between two trees, with every new tree and file checked on the way.

    Every entry of every tree the new side brings is checked, as git stores it, against the
    layout (name and mode for its place); each object's type and size come from its header
    before it is read. Unchanged subtrees are skipped by id, so the cost follows the change.
    `objects` holds the ids of the new trees and files reached (the hook compares them with
    what a push brought).
    """

    def __init__(self, store, max_record_bytes: int, parsed: dict | None = None, unread: frozenset = frozenset(),
                 skip: frozenset = frozenset()):
        self.store = store
        # Top-level directories (names as bytes) the walk does not enter (a worker's index skips
        # jobs/ when graph.tsv changed too: it reloads that). The hook and verify never pass any.
        self.skip = skip
        self.max_record_bytes = max_record_bytes
        # Kinds whose new files the caller does not read (a worker's index skips the job records
        # of an update: it reloads graph.tsv): their changes come without data, their files
        # unchecked. The hook and verify never pass any.
        self.unread = unread
        # Trees already parsed (id -> entries), given by the caller: the new trees of the last
        # commit are the old trees of this one.
        self.parsed = {} if parsed is None else parsed
        # The new trees this walk parsed: the old side of the next commit's walk. A caller keeps
        # these (not everything ever parsed: a long-lived worker's results/ trees of 256 entries
        # each grew its memory by tens of MB over a few hundred jobs).
        self.new_trees: dict = {}
        self.changes: list[FileChange] = []
        self.problems: list[tuple[str, str, str]] = []  # (path, rule, message)
        self.objects: set[bytes] = set()

    def run(self, old_tree, new_tree) -> "TreeWalk":
        """Walk from `old_tree` to `new_tree` (ids, None for no tree), keeping every change in `changes`."""
        self.changes.extend(self.changes_between(old_tree, new_tree))
        return self

    def changes_between(self, old_tree, new_tree):
        """Yield each FileChange from `old_tree` to `new_tree` as the walk finds it, so that a
        caller may stop early; `problems` and `objects` fill up on the way."""
        yield from self._walk(old_tree, new_tree, ROOT, "")

    def _fail(self, path, rule, message):
        self.problems.append((path, rule, message))

    def _new_entries(self, sha, path):
        where = path.rstrip("/") or "the root tree"
        raw = read_object(self.store, sha, "tree", MAX_TREE_BYTES)
        if isinstance(raw, str):
            self._fail(path, "size" if "bytes, more than" in raw else "layout", f"{where}: {raw}")
            return None
        try:
            entries = parse_tree_entries(raw)
        except ObjectFormatError as e:
            self._fail(path, "layout", f"{where}: {e}")
            return None
        self.objects.add(sha)
        if len(self.parsed) >= 4096:
            self.parsed.clear()
        self.parsed[sha] = self.new_trees[sha] = entries
        return entries

    def _old_entries(self, sha):
        if sha is None:
            return []
        if sha in self.parsed:
            return self.parsed[sha]
        raw = read_object(self.store, sha, "tree", MAX_OLD_TREE_BYTES)
        try:
            if isinstance(raw, str):
                raise ObjectFormatError(raw)
            return parse_tree_entries(raw)
        except ObjectFormatError:  # a tree a local writer left: dulwich's reading of it will do
            return [(b"%o" % e.mode, e.path, e.sha) for e in self.store[sha].iteritems()]

    def _walk(self, old, new, place, prefix):
        if old == new:
            return
        new_entries = [] if new is None else self._new_entries(new, prefix)
        if new_entries is None:
            return
        if new is not None and not new_entries and place != ROOT:
            self._fail(prefix, "layout", f"{prefix}: an empty directory")
            return
        before = {name: (mode, sha) for mode, name, sha in self._old_entries(old)}
        after = {name: (mode, sha) for mode, name, sha in new_entries}
        for name in sorted(before.keys() | after.keys()):
            o, n = before.get(name), after.get(name)
            if o == n:
                continue
            path = prefix + name.decode("utf-8", "replace")
            if n is not None:
                problem = layout.entry_problem(place, name, n[0])
                if problem is not None:
                    self._fail(path, "layout", f"{layout.shown(path)}: {problem}")
                    continue
            if place == ROOT and name in self.skip:
                continue
            o_tree = o[1] if o is not None and o[0] == TREE_MODE else None  # the old entry's, if a tree
            if n is not None and n[0] == TREE_MODE:
                yield from self._walk(o_tree, n[1], layout.child_place(place, name), path + "/")
                if o is not None and o_tree is None:
                    yield self._removed(place, name, path, o)
            elif n is not None:
                if o_tree is not None:
                    yield from self._removed_tree(o_tree, path + "/", self._old_place(place, name))
                change = self._file(place, name, path, None if o_tree is not None else o, n)
                if change is not None:
                    yield change
            elif o_tree is not None:
                yield from self._removed_tree(o_tree, path + "/", self._old_place(place, name))
            else:
                yield self._removed(place, name, path, o)

    def _file(self, place, name, path, old, new):
        kind, who = layout.kind_of(place, name)
        if kind in self.unread:
            return FileChange(path, kind, who, old, new)
        limit = layout.MAX_GRAPH_BYTES if kind == "graph" else self.max_record_bytes
        data = read_object(self.store, new[1], "blob", limit)
        if isinstance(data, str):
            if "bytes, more than" in data:
                if kind != "graph":
                    data = data.replace(f"more than {self.max_record_bytes}",
                                        f"more than max_record_bytes ({self.max_record_bytes})")
                self._fail(path, "size", f"{path}: {data}")
            else:
                self._fail(path, "layout", f"{path}: {data}")
            return None
        self.objects.add(new[1])
        return FileChange(path, kind, who, old, new, data)

    @staticmethod
    def _old_place(place, name):
        """The place of an old directory `name` in `place`, None if the layout has no such one."""
        return layout.child_place(place, name) if layout.entry_problem(place, name, TREE_MODE) is None else None

    def _removed(self, place, name, path, old):
        if old[0] == FILE_MODE and place is not None and layout.entry_problem(place, name, old[0]) is None:
            kind, who = layout.kind_of(place, name)
            return FileChange(path, kind, who, old, None)
        return FileChange(path, None, None, old, None)

    def _removed_tree(self, sha, prefix, place):
        """Every file below an old directory (at `place`, None outside the layout) that the new
        tree no longer has, each judged by its own name in its own place, as in _walk."""
        stack = [(sha, prefix, place, 0)]
        while stack:
            tree, at, where, depth = stack.pop()
            for mode, name, sub in self._old_entries(tree):
                path = at + name.decode("utf-8", "replace")
                allowed = where is not None and layout.entry_problem(where, name, mode) is None
                if mode == TREE_MODE and depth < 8:
                    stack.append((sub, path + "/", layout.child_place(where, name) if allowed else None, depth + 1))
                elif allowed:
                    yield FileChange(path, *layout.kind_of(where, name), (mode, sub), None)
                else:
                    yield FileChange(path, None, None, (mode, sub), None)
