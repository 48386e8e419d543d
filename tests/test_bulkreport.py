"""The bulk build report of a known build: exact numbers, as data and as mailable text."""

from gitqueue import bulkreport, outcome

from helpers import open_queue
from known_build import COUNTS, FAIL_TAIL, T0, make_known_build


def report_of(tmp_path, **kwargs):
    url, clock = make_known_build(tmp_path, **kwargs)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        return bulkreport.build(q), q


def test_the_summary_of_a_known_build(tmp_path):
    data, _ = report_of(tmp_path)
    assert data["counts"] == COUNTS and data["total"] == 11 and data["finished"]
    assert (data["started"], data["ended"], data["duration"]) == (T0, T0 + 240, 240)
    assert data["progress"][0] == [T0, 0, 0] and data["progress"][-1] == [T0 + 240, 4, 1]
    assert len(data["progress"]) == 6


def test_the_packages_causing_the_most_breakage(tmp_path):
    data, _ = report_of(tmp_path)
    assert [(r["pkgpath"], r["job"], r["breaks"], r["state"], r["maintainer"]) for r in data["breakage"]] == [
        ("cat/c", "c-3.0", 2, "failed", "carol@example.org"),
        ("cat/p", "p-1.0", 1, "prefailed", "pat@example.org"),
    ]


def test_every_unsuccessful_package_with_its_reason(tmp_path):
    data, _ = report_of(tmp_path)
    rows = [(u["job"], u["state"], u["reason"], u["breaks"], u["log"]) for u in data["unsuccessful"]]
    assert rows == [
        ("c-3.0", "failed", "*** Error code 1", 2, "c-3.0.log"),
        ("d-1.0", "indirect-failed", "depends on c-3.0 (failed)", 0, None),
        ("e-1.0", "indirect-failed", "depends on c-3.0 (failed)", 0, None),
        ("p-1.0", "prefailed", "broken on this platform", 1, None),
        ("q-1.0", "indirect-prefailed", "depends on p-1.0 (prefailed)", 0, None),
        ("n-1.0", "skipped", "no way on any arch: needs rust", 1, None),
        ("m-1.0", "indirect-skipped", "depends on n-1.0 (skipped)", 0, None),
    ]
    assert data["unsuccessful"][0]["log_tail"] == FAIL_TAIL and data["unsuccessful"][0]["worker"] == "w1"


def test_the_workers(tmp_path):
    data, _ = report_of(tmp_path)
    rows = {w["worker"]: (w["success"], w["failure"], w["released"], w["reclaimed"], w["building"], w["busy"],
                          w["first"] - T0, w["last"] - T0) for w in data["workers"]}
    assert rows == {"w1": (2, 1, 0, 0, 0, 175.0, 0, 240), "w2": (2, 0, 1, 0, 0, 35.0, 10, 215),
                    "w3": (0, 0, 0, 1, 0, 0.0, 30, 200)}
    speeds = {w["worker"]: w["speed"] for w in data["workers"]}
    assert speeds["w3"] is None and speeds["w1"] > 0 and speeds["w2"] > 0
    assert len(data["attempts"]) == 7


def test_the_states_agree_with_the_index(tmp_path):
    url, clock = make_known_build(tmp_path, until=8)  # mid-build: leases and waiting jobs
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        q.sync()
        assert outcome.from_index(q.index).counts() == q.index.counts()
        data = bulkreport.build(q)
    assert not data["finished"] and data["ended"] is None and data["counts"]["leased"] == 3
    assert data["duration"] == 120


def test_the_text_report(tmp_path):
    data, _ = report_of(tmp_path)
    text = bulkreport.text(data)
    lines = text.splitlines()
    assert lines[0] == "Bulk build report: test (finished)"  # no pkgsrc branch: any package system
    assert "Platform:   any platform" in lines and "pkgsrc" not in text
    assert "Started:    2026-01-01 00:00:00 UTC" in lines and "Duration:   4 min" in lines
    assert "Total number of packages:                           11" in lines
    assert "  Successfully built:                               4" in lines
    assert "  Depending on failed package:                      2" in lines
    assert "cat/c                                         2  failed     carol@example.org" in lines
    assert "    c-3.0: *** Error code 1" in lines
    assert any(line.startswith("w1 ") and line.split()[1:5] == ["2", "1", "0", "0"] for line in lines)
    assert "Being built now" not in text and text.endswith(f"Queue commit {data['commit']}\n")


def test_a_pkgsrc_queue_says_so_with_its_branch(tmp_path):
    data, _ = report_of(tmp_path)
    data["settings"] = dict(data["settings"], arch="m68k", os_release="10.1", pkgsrc_branch="pkgsrc-2026Q4")
    lines = bulkreport.text(data).splitlines()
    assert lines[0] == "pkgsrc bulk build report: test (finished)"
    assert "Platform:   10.1/m68k, pkgsrc-2026Q4" in lines
