"""graph.tsv: the job graph the queue carries, so that a new worker reads one file, not every record."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitqueue import admin, graph
from gitqueue.errors import RecordInvalid
from gitqueue.index import Index
from gitqueue.layout import GRAPH

from helpers import job, local_commit, make_queue, open_queue
from known_build import make_known_build
from test_index import _view

_NAME = st.from_regex(r"[a-z0-9][a-z0-9._+~-]{0,20}", fullmatch=True)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_NUMBER = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)


@st.composite
def _rows(draw):
    names = sorted(draw(st.sets(_NAME, min_size=1, max_size=12)))
    rows = []
    for i, name in enumerate(names, 1):
        others = [n for n in range(1, len(names) + 1) if n != i]
        deps = " ".join(map(str, draw(st.lists(st.sampled_from(others), unique=True, max_size=4)))) if others else ""
        kind = draw(st.sampled_from([None, "p", "s"]))
        skip = draw(_TEXT.filter(bool)) if kind else None
        rows.append(graph.Row(name, draw(_TEXT), draw(st.one_of(st.none(), _TEXT.filter(bool))), kind, skip,
                              draw(_NUMBER), draw(_TEXT), draw(_NUMBER), deps))
    return rows


_INPUTS = {"jobs": "a" * 40, "queue.toml": "b" * 40, "priority.toml": "-", "noway.toml": "-"}


@settings(max_examples=150, deadline=None)
@given(_rows())
def test_a_graph_reads_back_as_written(rows):
    inputs, back = graph.parse(graph.render(rows, _INPUTS))
    assert inputs == _INPUTS and back == rows


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_graph_or_one_line_error(data):
    try:
        graph.parse(graph.MAGIC + b"\n" + b"".join(f"# {k} -\n".encode() for k in graph.INPUTS) + data)
    except RecordInvalid as e:
        assert "\n" not in str(e) and str(e).startswith("graph.tsv")


@pytest.mark.parametrize("line, says", [
    ("a-1\t1\t\t\t\t1.0\tdefault\t1.0\t2", "not another line"),
    ("a-1\t1\t\t\t\t1.0\tdefault\t1.0\t1", "not another line"),
    ("a-1\t1\t\t\t\tnan\tdefault\t1.0\t", "finite"),
    ("a-1\t1\t\tx\twhy\t1.0\tdefault\t1.0\t", "skip kind"),
    ("a-1\t1\t\tp\t\t1.0\tdefault\t1.0\t", "skip kind"),
    ("../a\t1\t\t\t\t1.0\tdefault\t1.0\t", "invalid job name"),
    ("a-1\t1\t\t\t\t1.0\tdefault\t1.0", "8 fields"),
    ("a-1\t1\\q\t\t\t\t1.0\tdefault\t1.0\t", "unknown escape"),
    ("a-1\t1\t\t\t\t1.0\tdefault\t1.0\t01", "line numbers"),
])
def test_a_bad_line_is_named_with_its_number(line, says):
    data = graph.render([], _INPUTS) + line.encode() + b"\n"
    with pytest.raises(RecordInvalid, match=says) as e:
        graph.parse(data)
    assert str(e.value).startswith("graph.tsv:6:")  # the first line after the header


def test_lines_out_of_order_or_twice_are_refused():
    rows = [graph.Row("b-1", "1", None, None, None, 1.0, "default", 1.0, ""),
            graph.Row("a-1", "1", None, None, None, 1.0, "default", 1.0, "")]
    with pytest.raises(RecordInvalid, match="out of order"):
        graph.parse(graph.render(rows, _INPUTS))
    with pytest.raises(RecordInvalid, match="out of order or given twice"):
        graph.parse(graph.render([rows[1], rows[1]], _INPUTS))


def _records_only(queue, path):
    """An index rebuilt as if the queue carried no graph.tsv."""
    index = Index(str(path))
    tip = queue.remote.fetch()
    reader = queue.remote.reader(tip)
    index._load(reader, iter(graph.graph_rows(reader)), tip)
    return index


def test_the_index_from_the_graph_is_the_index_from_the_records(tmp_path):
    url, clock = make_known_build(tmp_path)  # prefailed, no-way, priority list, results, leases
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        with q.lock():
            q.sync()
            tip = q.remote.fetch()
            assert graph.current_rows(q.remote.reader(tip)) is not None  # the fast path was taken
        slow = _records_only(q, tmp_path / "slow.sqlite")
        try:
            assert _view(q.index) == _view(slow)
        finally:
            slow.close()


def test_admin_commands_rewrite_the_graph(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1", ["a-1"]), job("c-1")])
    with open_queue(url, tmp_path) as q:
        def rows():
            reader = q.remote.reader(q.remote.fetch())
            inputs, rows = graph.parse(reader.read(GRAPH))
            assert inputs == graph.inputs_of(reader)
            return {r.name: r for r in rows}

        assert rows()["b-1"].deps == "1" and rows()["c-1"].skip is None
        admin.change_noway(q, add=[{"pattern": "c-1", "arch": "", "reason": "needs rust"}])
        assert rows()["c-1"].skip == "no way on any arch: needs rust" and rows()["c-1"].skip_kind == "s"
        before = rows()["c-1"].priority
        admin.change_priority(q, add=["c-1"])
        assert rows()["c-1"].priority > before


def test_a_stale_or_broken_graph_is_not_used(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1", ["a-1"])], hook=False)
    with open_queue(url, tmp_path) as q:
        reader = q.remote.reader(q.remote.fetch())
        good = reader.read(GRAPH)
    # A local writer adds a job without rewriting the graph: the graph names the old jobs/ tree.
    local_commit(url, {"jobs/" + job_path("c-1"): b'name = "c-1"\nversion = "1.0"\ndeps = []\n'})
    with open_queue(url, tmp_path, host="h2") as q:
        reader = q.remote.reader(q.remote.fetch())
        assert graph.current_rows(reader) is None
        with q.lock():
            q.sync()
        assert sorted(s[1] for s in q.index.states()) == ["a-1", "b-1", "c-1"]
    # A graph that names its own tree but whose lines do not read: the records decide.
    broken = good.replace(b"\t1\n", b"\t9\n")
    local_commit(url, {GRAPH: broken})
    with open_queue(url, tmp_path, host="h3") as q:
        with q.lock():
            q.sync()
        assert sorted(s[1] for s in q.index.states()) == ["a-1", "b-1", "c-1"]


def job_path(name):
    from gitqueue.layout import shard

    return f"{shard(name)}/{name}.toml"


def test_a_cycle_or_an_unknown_dependency_is_refused_with_its_names():
    jobs = [job("a-1", ["b-1"]), job("b-1", ["c-1"]), job("c-1", ["a-1"]), job("d-1", ["c-1"])]
    with pytest.raises(RecordInvalid, match=r"^jobs: dependency cycle a-1 -> b-1 -> c-1 -> a-1$"):
        graph.derive(jobs, {}, [], [])
    # A job on the priority list that needs an unknown one: the unknown job is named.
    with pytest.raises(RecordInvalid, match=r"^jobs: a-1 depends on unknown job z-1$"):
        graph.derive([job("a-1", ["z-1"])], {}, ["a-1"], [])


# -- the check of a commit's graph.tsv from its parent's ----------------------------------------------

_POOL = [f"p{i}-1" for i in range(7)]
_NOWAY = {"entries": [{"pattern": "p1-*", "arch": "", "reason": "needs rust"}]}


def _job_strategy(name, candidates):
    return st.builds(lambda version, pkgpath, prefailed, deps: {
        "name": name, "version": version, "deps": deps,
        **({"pkgpath": pkgpath} if pkgpath else {}), **({"prefailed": prefailed} if prefailed else {})},
        st.sampled_from(["1", "2"]), st.sampled_from([None, "x/a", "x/b"]), st.sampled_from([None, "broken"]),
        st.lists(st.sampled_from(candidates), unique=True, max_size=3) if candidates else st.just([]))


@st.composite
def _update(draw):
    """(parent's jobs, child's jobs, noway of parent, noway of child): the parent's deps point
    only at earlier names (a graph that derives); the child's anywhere in the pool (unknown
    jobs, cycles)."""
    parent = {}
    for i, name in enumerate(_POOL):
        if draw(st.booleans()):
            parent[name] = draw(_job_strategy(name, [n for n in _POOL[:i] if n in parent]))
    child = {}
    for name in _POOL:
        choice = draw(st.sampled_from(["keep", "keep", "drop", "change"]))
        if choice == "keep" and name in parent:
            child[name] = parent[name]
        elif choice == "change":
            child[name] = draw(_job_strategy(name, [n for n in _POOL if n != name]))
    noway = draw(st.sampled_from([None, _NOWAY]))
    return parent, child, noway, draw(st.sampled_from([noway, noway, None, _NOWAY]))


def _tree(store, jobs, noway):
    from gitqueue import records
    from gitqueue.gitstore import TreeReader, build_tree
    from gitqueue.layout import NOWAY, record_path

    files = {record_path("jobs", n): records.dumps("job", j) for n, j in jobs.items()}
    files["queue.toml"] = b'format_version = 1\nname = "t"\nlease_ttl = 3600\n'
    if noway is not None:
        files[NOWAY] = records.dumps("noway", noway)
    tree, objects = build_tree(store, None, files)
    for o in objects:
        store.add_object(o)
    return TreeReader(store, tree)


def _graph_of(reader, jobs, noway):
    return graph.render(graph.derive(list(jobs.values()), {}, [], (noway or {"entries": []})["entries"]),
                        graph.inputs_of(reader))


@settings(max_examples=300, deadline=None)
@given(_update(), st.integers(0, 3), st.data())
def test_the_check_from_the_parents_graph_says_what_the_whole_check_says(update, which, data):
    """A commit's graph.tsv judged from the parent's (known to match the parent's records) and
    the changed records alone gets the verdict of the check that reads every record."""
    from dulwich.object_store import MemoryObjectStore

    parent_jobs, child_jobs, parent_noway, child_noway = update
    store = MemoryObjectStore()
    parent = _tree(store, parent_jobs, parent_noway)
    child = _tree(store, child_jobs, child_noway)
    # What an admin (or a local writer) might write: the child's own graph when it derives, the
    # parent's left as it was, or the parent's under the child's inputs (stale rows).
    try:
        candidates = [_graph_of(child, child_jobs, child_noway)]
    except RecordInvalid:
        candidates = []
    candidates += [_graph_of(parent, parent_jobs, parent_noway)]
    stale = graph.parse(_graph_of(parent, parent_jobs, parent_noway))[1]
    candidates += [graph.render(stale, graph.inputs_of(child))]
    if stale:
        shuffled = [r._replace(skip_kind=None, skip=None) if i == data.draw(st.integers(0, len(stale) - 1)) else r
                    for i, r in enumerate(stale)]
        candidates += [graph.render(shuffled, graph.inputs_of(child))]
    chosen = candidates[which % len(candidates)]
    changed = {n: child_jobs.get(n) for n in set(parent_jobs) | set(child_jobs)
               if parent_jobs.get(n) != child_jobs.get(n)}
    old = _graph_of(parent, parent_jobs, parent_noway) if parent_jobs or data.draw(st.booleans()) else None
    assert graph.problem(child, chosen, (parent, old, changed)) == graph.problem(child, chosen)


def test_the_check_from_the_parents_graph_reads_no_unchanged_record():
    from dulwich.object_store import MemoryObjectStore

    from gitqueue.gitstore import TreeReader
    from gitqueue.layout import record_path

    jobs = {n: job(n, [_POOL[0]] if n != _POOL[0] else []) for n in _POOL}
    full = MemoryObjectStore()
    parent = _tree(full, jobs, None)
    bumped = {**jobs, _POOL[3]: job(_POOL[3], [_POOL[0]], version="2")}
    child = _tree(full, bumped, None)
    data = _graph_of(child, bumped, None)
    old = _graph_of(parent, jobs, None)
    # The same trees in a store without the records the commit leaves alone.
    unchanged = {child.blob_id(record_path("jobs", n)) for n in _POOL if n != _POOL[3]}
    bare = MemoryObjectStore()
    for sha in full:
        if sha not in unchanged:
            bare.add_object(full[sha])
    parent, child = TreeReader(bare, parent.tree_id), TreeReader(bare, child.tree_id)
    with pytest.raises(KeyError):
        graph.problem(child, data)  # the whole check reads them
    assert graph.problem(child, data, (parent, old, {_POOL[3]: bumped[_POOL[3]]})) is None
    wrong = data.replace(b"\t2\t", b"\t1\t")
    assert graph.problem(child, wrong, (parent, old, {_POOL[3]: bumped[_POOL[3]]})) == \
        f"job {_POOL[3]} does not match its record (version, package path, skip or dependencies)"


def _by_name(rows):
    """{name: (the line's facts but its dependencies, the names of those)} of graph rows."""
    return {r.name: (r[1:-1], sorted(rows[int(d) - 1].name for d in r.deps.split())) for r in rows}


@st.composite
def _two_graphs(draw):
    """Two graphs over one pool of names: some jobs stay as they were, some change, come or go."""
    pool = sorted(draw(st.sets(_NAME, min_size=1, max_size=10)))
    old_names = draw(st.sets(st.sampled_from(pool), min_size=1))
    new_names = draw(st.sets(st.sampled_from(pool), min_size=1))
    facts = {name: graph.Row(name, "1", None, None, None, 1.0, "default", 1.0, "") for name in pool}
    deps = {name: draw(st.sets(st.sampled_from(pool))) - {name} for name in pool}

    def rows(names, changed):
        names = sorted(names)
        out = []
        for name in names:
            row = facts[name]
            row_deps = deps[name]
            if name in changed:
                row = row._replace(version=draw(st.sampled_from(["1", "2"])), priority=draw(_NUMBER))
                row_deps = draw(st.sets(st.sampled_from(pool))) - {name}
            out.append(row._replace(deps=" ".join(str(names.index(d) + 1) for d in sorted(row_deps) if d in names)))
        return out

    return rows(old_names, set()), rows(new_names, draw(st.sets(st.sampled_from(pool))))


@settings(max_examples=300, deadline=None)
@given(_two_graphs())
def test_the_difference_of_two_graphs_is_what_changed_by_name(graphs):
    old, new = graphs
    diff = graph.difference(graph.render(old, _INPUTS), graph.render(new, _INPUTS))
    before, after = _by_name(old), _by_name(new)
    assert diff.jobs == len(new)
    assert diff.gone == sorted(set(before) - set(after))
    # every job added or changed, each once, and none that only moved to another line
    assert [row.name for row, _ in diff.rows] == sorted(n for n in after if before.get(n) != after[n])
    for row, dep_names in diff.rows:
        assert (row[1:-1], sorted(dep_names)) == after[row.name]


def test_a_changed_line_that_does_not_read_is_refused_by_the_difference():
    old = [graph.Row("a-1", "1", None, None, None, 1.0, "default", 1.0, ""),
           graph.Row("b-1", "1", None, None, None, 1.0, "default", 1.0, "1")]
    good = graph.render(old, _INPUTS)
    for bad, says in ((good.replace(b"\t1\n", b"\t9\n"), "graph.tsv:7: a dependency that is not another line"),
                      (good.replace(b"b-1\t", b"a-1\t"), "graph.tsv:7: job 'a-1' out of order or given twice"),
                      (good.replace(b"b-1\t1\t", b"b-1\t2\t\t\t\tnan\t"), "graph.tsv:7: 13 fields, not 9")):
        with pytest.raises(RecordInvalid) as e:
            graph.difference(good, bad)
        assert str(e.value).startswith(says)


def test_a_worker_back_at_a_broken_graph_takes_the_records(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1", ["a-1"])], hook=False)
    with open_queue(url, tmp_path) as q:
        with q.lock():
            q.sync()
        good = q.remote.reader(q.remote.fetch()).read(GRAPH)
        # a local writer rewrites b-1's line, naming a line that is not there
        local_commit(url, {GRAPH: good.replace(b"\t1\n", b"\t9\n")})
        with q.lock():
            q.sync()
        assert q.index.dependencies() and sorted(s[1] for s in q.index.states()) == ["a-1", "b-1"]
        assert [c.name for c in q.index.ready("w", 10)] == ["a-1"]
