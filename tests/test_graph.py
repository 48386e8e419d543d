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
