"""Tests of gitqueue.importers: presolve and JSONL graph files to jobs."""

import json
import lzma

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitqueue.errors import ImportRefused
from gitqueue.importers import check_graph, guess_format, load_graph
from gitqueue.layout import check_job_name

from helpers import BULK_JSONL, FULL_SCAN, SUBSET

fixture_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


def assert_topological(jobs):
    seen = set()
    for job in jobs:
        missing = [d for d in job["deps"] if d not in seen]
        assert not missing, f"{job['name']} comes before its dependencies {missing}"
        seen.add(job["name"])


def refused(path, fmt=None) -> str:
    with pytest.raises(ImportRefused) as e:
        load_graph(str(path), fmt)
    message = str(e.value)
    assert "\n" not in message
    return message


def record(name, deps=(), location="cat/x", **fields):
    """One presolve record in the order pbulk writes it."""
    values = {
        "PKG_LOCATION": location,
        "ALL_DEPENDS": " ".join(f"{d.rsplit('-', 1)[0]}>=0:../../cat/{d}" for d in deps),
        "PKG_SKIP_REASON": "",
        "PKG_FAIL_REASON": "",
        "NO_BIN_ON_FTP": "",
        "RESTRICTED": "",
        "CATEGORIES": "cat",
        "MAINTAINER": "pkgsrc-users@NetBSD.org",
        "USE_DESTDIR": "user-destdir",
        "BOOTSTRAP_PKG": "",
        "USERGROUP_PHASE": "",
        "SCAN_DEPENDS": "",
    }
    values.update(fields)
    lines = [f"PKGNAME={name}"] + [f"{k}={v}" for k, v in values.items()]
    if deps:
        lines.append("DEPENDS=" + " ".join(deps))
    return "".join(line + "\n" for line in lines)


def write(tmp_path, text, name="graph.presolve"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def jsonl(tmp_path, *objects, name="graph.jsonl"):
    return write(tmp_path, "".join(json.dumps(o) + "\n" for o in objects), name)


# --- real pkgsrc data -------------------------------------------------------------


def test_subset_parses_to_279_jobs_in_build_order():
    jobs = load_graph(str(SUBSET))
    assert len(jobs) == 279
    assert sum(len(j["deps"]) for j in jobs) == 1977
    assert_topological(jobs)
    by_name = {j["name"]: j for j in jobs}
    gtk3 = by_name["gtk3+-3.24.51"]
    assert gtk3["version"] == "3.24.51"
    assert gtk3["pkgpath"] == "x11/gtk3"
    assert gtk3["multi_version"] == {"PYTHON_VERSION_REQD": "313"}
    assert gtk3["categories"] == "x11 gnome"
    assert gtk3["maintainer"] == "pkgsrc-users@NetBSD.org"
    assert "glib2-2.86.3" in gtk3["deps"] and len(gtk3["deps"]) == 38
    assert sum("multi_version" in j for j in jobs) == 76
    # The subset is the closure of packages that all build on SmartOS: nothing prefailed.
    assert not [j for j in jobs if "prefailed" in j]
    # Every field of the scan reaches the job, for the build command's build info.
    assert set().union(*jobs) == {"name", "version", "pkgpath", "deps", "multi_version", "categories", "maintainer",
                                  "all_depends", "use_destdir", "bootstrap_pkg"}
    assert gtk3["use_destdir"] == "user-destdir"
    assert [j["name"] for j in jobs if j.get("bootstrap_pkg") == "yes"] == ["pax-20210219"]
    assert gtk3["all_depends"].startswith("  gettext-tools>=0.19.4nb1:../../devel/gettext-tools gtk-doc>=1.32:")


@pytest.mark.slow
def test_full_scan_parses_to_29022_jobs():
    jobs = load_graph(str(FULL_SCAN))
    assert len(jobs) == 29022
    assert sum(len(j["deps"]) for j in jobs) == 209317
    assert sum("multi_version" in j for j in jobs) == 13378
    assert len({j["pkgpath"] for j in jobs}) == 20206
    assert_topological(jobs)
    prefailed = {j["name"] for j in jobs if "prefailed" in j}
    assert len(prefailed) == 1329
    indirect = set()
    for job in jobs:  # dependencies first, so one pass finds the whole closure
        if job["name"] not in prefailed and any(d in prefailed or d in indirect for d in job["deps"]):
            indirect.add(job["name"])
    assert len(indirect) == 323
    by_name = {j["name"]: j for j in jobs}
    assert by_name["tinyx-wscons-0.8"]["prefailed"] == (
        "skip: [bsd.pkg.mk] tinyx-wscons-0.8 is not available for SunOS-5.11-x86_64; "
        'fail: Do not include x11.buildlink3.mk for X11_TYPE != "native".'
    )
    assert by_name["py311-buildbot-badges-2.6.0nb1"]["prefailed"] == (
        'fail: could not resolve dependency "py311-buildbot-[0-9]*"'
    )


def test_bulk_jsonl_sample_loads():
    jobs = load_graph(str(BULK_JSONL))
    assert len(jobs) == 1669
    assert sum(len(j["deps"]) for j in jobs) == 15918
    assert all(isinstance(j["est_seconds"], int) for j in jobs)
    assert_topological(jobs)


# --- presolve details -------------------------------------------------------------


def test_prefailed_reasons_are_unquoted_and_labelled(tmp_path):
    path = write(
        tmp_path,
        record("a-1", PKG_SKIP_REASON='"a-1 is not available for SunOS"')
        + record("b-1", PKG_FAIL_REASON='"marked as broken:" "needs \\"X\\""')
        + record("c-1", PKG_SKIP_REASON='"not here"', PKG_FAIL_REASON="unquoted text")
        + record("d-1", ["a-1"]),
    )
    by_name = {j["name"]: j for j in load_graph(str(path))}
    assert by_name["a-1"]["prefailed"] == "skip: a-1 is not available for SunOS"
    assert by_name["b-1"]["prefailed"] == 'fail: marked as broken: needs "X"'
    assert by_name["c-1"]["prefailed"] == "skip: not here; fail: unquoted text"
    assert "prefailed" not in by_name["d-1"]


def test_presolve_optional_fields(tmp_path):
    path = write(
        tmp_path,
        record(
            "py313-foo-2.0nb1",
            location="devel/py-foo",
            MULTI_VERSION=" PYTHON_VERSION_REQD=313 PKG_APACHE=apache24",
            PBULK_WEIGHT="250",
            NO_BIN_ON_FTP="no redistribution",
            RESTRICTED="no redistribution",
            CATEGORIES="",
            MAINTAINER="",
            SOME_FUTURE_KEY="whatever",
        ),
    )
    [job] = load_graph(str(path))
    assert job == {
        "name": "py313-foo-2.0nb1",
        "version": "2.0nb1",
        "deps": [],
        "pkgpath": "devel/py-foo",
        "multi_version": {"PYTHON_VERSION_REQD": "313", "PKG_APACHE": "apache24"},
        "weight": 250,
        "no_bin_on_ftp": "no redistribution",
        "restricted": "no redistribution",
        "use_destdir": "user-destdir",
        "build_info": {"SOME_FUTURE_KEY": "whatever"},
    }


@pytest.mark.parametrize("fields, expected", [
    ({"X_FUTURE": "y" * 5000}, "build_info.X_FUTURE: longer than 4096 characters"),
    ({"ALL_DEPENDS": "a>=1:../../x/a " * 3000}, "all_depends: longer than 32768 characters"),
    ({"USERGROUP_PHASE": "pre\x1binstall"}, "usergroup_phase: 'pre\\x1binstall' is not a valid value"),
    ({f"X{i}": "v" for i in range(33)}, "build_info: more than 32 keys"),
])
def test_the_kept_fields_of_a_scan_are_bounded(tmp_path, fields, expected):
    path = write(tmp_path, record("a-1", **fields))
    assert refused(path) == f"{path}:1: {expected}"


def test_presolve_xz_is_decompressed(tmp_path):
    path = tmp_path / "scan.xz"
    path.write_bytes(lzma.compress((record("a-1") + record("b-1", ["a-1"])).encode()))
    assert [j["name"] for j in load_graph(str(path))] == ["a-1", "b-1"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("PKG_LOCATION=cat/a\n" + record("a-1"), "1: expected PKGNAME= to start a record, got 'PKG_LOCATION=cat/a'"),
        (record("a-1") + "garbage\n", "14: not a KEY=value line: 'garbage'"),
        (record("a-1") + "\n", "14: not a KEY=value line: ''"),
        (record("a-1") + "NOT A KEY=1\n", "14: not a KEY=value line: 'NOT A KEY=1'"),
        (record("a-1") + "PKG_LOCATION=cat/b\n", "14: second PKG_LOCATION= in the record of a-1"),
        (record("../x-1"), "1: invalid job name '../x-1'"),
        (record("a-1") + record(".hidden-1"), "14: invalid job name '.hidden-1'"),
        (record("a-1", ["-rf"]), "14: invalid job name '-rf'"),
        (record("nodash"), "1: PKGNAME 'nodash' has no version (expected NAME-VERSION)"),
        (record("a-1", MULTI_VERSION=" PYTHON_VERSION_REQD"),
         "14: MULTI_VERSION entry 'PYTHON_VERSION_REQD' is not VAR=value"),
        (record("a-1", PBULK_WEIGHT="-5"), "14: PBULK_WEIGHT '-5' is not a whole number"),
        (record("a-1", location="../../etc"), "1: pkgpath: '../../etc' is not a valid value"),
        (record("a-1").encode() + b"PBULK_WEIGHT=\xff\n", "14: not UTF-8 text: 'PBULK_WEIGHT=\ufffd'"),
    ],
)
def test_malformed_presolve_is_refused_with_its_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert refused(path) == f"{path}:{expected}"


# --- graph checks -----------------------------------------------------------------


def test_duplicates_are_refused(tmp_path):
    path = write(tmp_path, record("a-1") + record("b-1") + record("a-1"))
    assert refused(path) == f"{path}: duplicate job names: a-1"


def test_many_offenders_are_cut_short(tmp_path):
    text = "".join(record(f"p{i}-1") * 2 for i in range(8))
    path = write(tmp_path, text)
    assert refused(path) == f"{path}: duplicate job names: p0-1, p1-1, p2-1, p3-1, p4-1 and 3 more"


def test_unknown_dependencies_are_refused(tmp_path):
    path = jsonl(
        tmp_path,
        {"name": "a-1", "version": "1", "deps": ["zz-9"]},
        {"name": "b-1", "version": "1", "deps": ["a-1", "zz-9", "yy-2"]},
    )
    assert refused(path) == f"{path}: dependencies on unknown jobs: zz-9 (needed by a-1), yy-2 (needed by b-1)"


def test_cycle_is_refused_naming_its_jobs(tmp_path):
    path = write(tmp_path, record("a-1", ["b-1"]) + record("b-1", ["a-1"]) + record("c-1"))
    assert refused(path) == f"{path}: dependency cycle: a-1 -> b-1 -> a-1"


def test_self_dependency_is_a_cycle(tmp_path):
    path = jsonl(tmp_path, {"name": "a-1", "version": "1", "deps": ["a-1"]})
    assert refused(path) == f"{path}: dependency cycle: a-1 -> a-1"


def test_cycle_reports_jobs_stuck_behind_it(tmp_path):
    path = write(
        tmp_path,
        record("top-1", ["x-1"]) + record("x-1", ["y-1"]) + record("y-1", ["z-1"]) + record("z-1", ["y-1"]),
    )
    assert refused(path) == f"{path}: dependency cycle: y-1 -> z-1 -> y-1 (4 jobs cannot be ordered)"


def test_long_cycle_is_cut_short(tmp_path):
    names = [f"n{i}-1" for i in range(9)]
    objs = [{"name": n, "version": "1", "deps": [names[(i + 1) % 9]]} for i, n in enumerate(names)]
    path = jsonl(tmp_path, *objs)
    assert refused(path) == (
        f"{path}: dependency cycle: n0-1 -> n1-1 -> n2-1 -> n3-1 -> n4-1 -> ... (4 more) -> n0-1"
    )


def test_check_graph_orders_dependencies_first():
    jobs = [
        {"name": "c-1", "version": "1", "deps": ["b-1", "a-1"]},
        {"name": "b-1", "version": "1", "deps": ["a-1"]},
        {"name": "a-1", "version": "1", "deps": []},
        {"name": "d-1", "version": "1", "deps": []},
    ]
    assert [j["name"] for j in check_graph(jobs, "x")] == ["a-1", "d-1", "b-1", "c-1"]


# --- JSONL ------------------------------------------------------------------------


def test_jsonl_keeps_optional_keys_and_skips_blank_lines(tmp_path):
    a = {"name": "a-1", "version": "1", "deps": [], "est_seconds": 12.5, "priority": -3, "pkgpath": "cat/a"}
    b = {"name": "b-2", "version": "2", "deps": ["a-1"], "prefailed": "no compiler\nfor this"}
    path = write(tmp_path, "\n" + json.dumps(b) + "\n   \n" + json.dumps(a) + "\n", "g.json")
    assert load_graph(str(path)) == [a, b]


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"name": "a-1", "version": "1", "deps": []', "not valid JSON: Expecting ',' delimiter (column 43)"),
        ("not json", "not valid JSON: Expecting value (column 1)"),
        ('["a-1"]', "expected a JSON object, got array"),
        ('{"name": "a-1", "deps": []}', "missing key 'version'"),
        ('{"name": "a-1", "version": "1"}', "missing key 'deps'"),
        ('{"name": 7, "version": "1", "deps": []}', "'name' must be a string, got number"),
        ('{"name": "a-1", "version": 1, "deps": []}', "'version' must be a string, got number"),
        ('{"name": "a-1", "version": "1\\n", "deps": []}', "'version' holds control characters: '1\\n'"),
        ('{"name": "a-1", "version": "1", "deps": "b-1"}', "'deps' must be a list of job names, got string"),
        ('{"name": "a-1", "version": "1", "deps": [null]}', "'deps' must be a list of job names, holds null"),
        ('{"name": "a-1", "version": "1", "deps": ["../b"]}', "invalid job name '../b'"),
        ('{"name": "a/b", "version": "1", "deps": []}', "invalid job name 'a/b'"),
        ('{"name": "a-1", "version": "1", "deps": [], "est_seconds": -1}',
         "'est_seconds' must not be negative, got -1"),
        ('{"name": "a-1", "version": "1", "deps": [], "est_seconds": true}',
         "'est_seconds' must be a finite number, got boolean True"),
        ('{"name": "a-1", "version": "1", "deps": [], "priority": "high"}',
         "'priority' must be a finite number, got string 'high'"),
        ('{"name": "a-1", "version": "1", "deps": [], "priority": 1e999}',
         "'priority' must be a finite number, got number inf"),
        ('{"name": "a-1", "version": "1", "deps": [], "priority": NaN}',
         "not valid JSON: NaN is not a number gitqueue accepts"),
        ('{"name": "a-1", "version": "1", "deps": [], "weight": 3}',
         "unknown key 'weight' (allowed: name, version, deps, est_seconds, priority, pkgpath, prefailed)"),
        ('{"name": "a-1", "version": "1", "deps": [], "pkgpath": "nocat"}', "pkgpath: 'nocat' is not a valid value"),
        ('{"name": "a-1", "version": "1", "deps": [], "prefailed": "\\ud800"}',
         "'prefailed' holds an unpaired surrogate"),
    ],
)
def test_malformed_jsonl_is_refused_with_its_line(tmp_path, line, expected):
    good = json.dumps({"name": "z-1", "version": "1", "deps": []})
    path = write(tmp_path, f"{good}\n\n{line}\n", "g.jsonl")
    assert refused(path) == f"{path}:3: {expected}"


# --- files and formats ------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fmt",
    [("g.jsonl", "jsonl"), ("g.JSON", "jsonl"), ("g.jsonl.xz", "jsonl"), ("scan.xz", "presolve"),
     ("presolve", "presolve")],
)
def test_guess_format(name, fmt):
    assert guess_format(name) == fmt


def test_jsonl_xz(tmp_path):
    path = tmp_path / "g.jsonl.xz"
    path.write_bytes(lzma.compress(b'{"name": "a-1", "version": "1", "deps": []}\n'))
    assert load_graph(str(path)) == [{"name": "a-1", "version": "1", "deps": []}]


def test_unreadable_and_empty_files_are_refused(tmp_path):
    missing = tmp_path / "missing.jsonl"
    assert refused(missing) == f"{missing}: cannot read: No such file or directory"
    corrupt = write(tmp_path, b"not xz at all", "scan.xz")
    assert refused(corrupt) == f"{corrupt}: corrupt xz data: Input format not supported by decoder"
    truncated = write(tmp_path, lzma.compress(record("a-1").encode())[:-20], "cut.xz")
    assert refused(truncated).startswith(f"{truncated}: corrupt xz data: ")
    empty = write(tmp_path, "\n\n", "empty.jsonl")
    assert refused(empty) == f"{empty}: no jobs in the file"
    assert refused(empty, "yaml") == "unknown graph format 'yaml' (expected one of: presolve, jsonl)"


# --- properties -------------------------------------------------------------------

job_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,40}", fullmatch=True)
printable = st.text(st.characters(codec="utf-8"), max_size=20).filter(str.isprintable)
pkgpaths = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,10}/[A-Za-z0-9][A-Za-z0-9._+-]{0,10}", fullmatch=True)
numbers = st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def dags(draw):
    names = draw(st.lists(job_names, min_size=1, max_size=30, unique=True))
    jobs = []
    for i, name in enumerate(names):
        job = {"name": name, "version": draw(printable), "deps": []}
        if i:
            job["deps"] = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=min(i, 6)))
        optional = {
            "est_seconds": numbers.map(abs),
            "priority": numbers,
            "pkgpath": pkgpaths,
            "prefailed": st.text(st.characters(codec="utf-8"), max_size=60).filter(
                lambda s: s.replace("\n", "").replace("\t", "").isprintable()),
        }
        for key, values in optional.items():
            if draw(st.booleans()):
                job[key] = draw(values)
        jobs.append(job)
    return draw(st.permutations(jobs))


@fixture_settings
@given(jobs=dags())
def test_random_dags_round_trip_through_jsonl(tmp_path, jobs):
    path = jsonl(tmp_path, *jobs)
    loaded = load_graph(str(path))
    assert_topological(loaded)
    assert {j["name"]: j for j in loaded} == {j["name"]: j for j in jobs}
    assert len(loaded) == len(jobs)


presolve_lines = st.sampled_from(
    [
        "PKGNAME=a-1",
        "PKGNAME=b-2",
        "PKGNAME=a-1",
        "PKG_LOCATION=cat/a",
        "PKG_LOCATION=bad",
        "DEPENDS=a-1",
        "DEPENDS=b-2 c-3",
        "DEPENDS=",
        "MULTI_VERSION= PYTHON_VERSION_REQD=313",
        "MULTI_VERSION= X",
        "PBULK_WEIGHT=7",
        "PBULK_WEIGHT=x",
        'PKG_FAIL_REASON="a \\"b\\"" "c"',
        'PKG_SKIP_REASON="',
        "SCAN_DEPENDS=x",
        "=",
        "",
    ]
) | st.text(max_size=30)


@fixture_settings
@given(
    data=st.binary(max_size=300)
    | st.lists(presolve_lines, max_size=20).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))
    | st.lists(st.text(max_size=40), max_size=5).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    fmt=st.sampled_from(["presolve", "jsonl"]),
)
def test_random_input_raises_only_import_refused(tmp_path, data, fmt):
    path = write(tmp_path, data, "random")
    try:
        jobs = load_graph(str(path), fmt)
    except ImportRefused as e:
        assert "\n" not in str(e)
    else:
        assert_topological(jobs)


hostile_names = st.sampled_from(
    ["../x", "a/b", ".hidden", "-opt", "a b", "a\nb", "a\x00b", "", "a\\b", "/abs", "~user", "é-1"]
) | st.text(max_size=30).filter(
    lambda s: not s[:1].isascii() or not s[:1].isalnum() or any(c in s for c in "/ \t\n\x00"))


@fixture_settings
@given(name=hostile_names, as_dep=st.booleans())
def test_hostile_names_are_refused(tmp_path, name, as_dep):
    obj = {"name": "ok-1", "version": "1", "deps": [name]} if as_dep else {"name": name, "version": "1", "deps": []}
    path = jsonl(tmp_path, obj)
    assert refused(path).startswith(f"{path}:1: invalid job name ")
    # In presolve text, whitespace separates names and newlines end lines, so a hostile
    # string may become other (safe) tokens; it must never become a job or dependency name.
    presolve = write(tmp_path, record("ok-1", [name]) if as_dep else record(name))
    try:
        jobs = load_graph(str(presolve), "presolve")
    except ImportRefused as e:
        assert "\n" not in str(e)
    else:
        for job in jobs:
            for n in [job["name"], *job["deps"]]:
                assert n != name and check_job_name(n) == n
