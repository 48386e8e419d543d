"""The report page, rendered by a real headless Chromium: it loads without errors or network,
and its tables hold the numbers of a known build. The screenshot is kept as a test artifact
(in $GITQUEUE_ARTIFACTS, default tests/artifacts/)."""

import os
import re
from html import escape

import pytest

from gitqueue import bulkreport, files, htmlreport

import chromium
from helpers import REPO, open_queue
from known_build import LOG, make_known_build

# Every table's cells as text, by table id.
TABLES = """Object.fromEntries([...document.querySelectorAll('table')].map(t =>
  [t.id, [...t.querySelectorAll('tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim()))]))"""
PAGE_FACTS = """({title: document.title, svgs: document.querySelectorAll('svg').length,
  bars: document.querySelectorAll('svg rect').length, links: [...document.links].map(a => a.getAttribute('href')),
  width: document.documentElement.scrollWidth, tables: """ + TABLES + "})"


def artifacts():
    path = os.environ.get("GITQUEUE_ARTIFACTS") or str(REPO / "tests" / "artifacts")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser():
    binary = chromium.find()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium unavailable under CI (scripts/test installs it)", pytrace=False)
        pytest.skip("chromium unavailable: apt-get install chromium (scripts/test does)")
    return binary


def write_site(tmp_path):
    url, clock = make_known_build(tmp_path)
    logs = tmp_path / "tree" / "logs" / "c-3.0"
    logs.mkdir(parents=True)
    (logs / LOG["name"]).write_text("cc -c main.c\n*** Error code 1\n")
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        data = bulkreport.build(q)
    out = tmp_path / "site"
    written = htmlreport.write(str(out), data, logs_dir=str(tmp_path / "tree" / "logs"))
    return out, data, written


def test_the_page_in_a_real_browser(tmp_path, browser):
    out, data, _ = write_site(tmp_path)
    page = chromium.load((out / "index.html").as_uri(), PAGE_FACTS, binary=browser)
    with open(os.path.join(artifacts(), "report-known-build.png"), "wb") as f:
        f.write(page.png)
    assert page.errors == []
    assert page.requests == [(out / "index.html").as_uri()], "the page must fetch nothing"
    facts = page.values
    assert facts["title"] == "Bulk build report: test" and facts["svgs"] == 2
    assert facts["bars"] == 7  # one per attempt in the timeline
    tables = facts["tables"]
    # No pkgsrc branch, no "pkgsrc branch" row: the queue may build any package system.
    assert tables["summary"] == [["Platform", "any platform"], ["Started", "2026-01-01 00:00:00 UTC"],
                                 ["Ended", "2026-01-01 00:04:00 UTC"], ["Duration", "4 min"]]
    assert tables["counts"] == [["Total", "11"], ["Successfully built", "4"], ["Failed to build", "1"],
                                ["Depending on failed package", "2"],
                                ["Explicitly broken or masked (prefailed)", "1"],
                                ["Depending on masked package", "1"],
                                ["Never built on this architecture (no way)", "1"],
                                ["Depending on a no-way package", "1"]]
    assert tables["breakage"] == [["cat/c", "c-3.0", "2", "failed", "carol@example.org"],
                                  ["cat/p", "p-1.0", "1", "prefailed", "pat@example.org"]]
    assert [row[:3] + row[4:] for row in tables["unsuccessful"]] == [
        ["cat/c", "c-3.0", "failed", "2", "carol@example.org", "log"],
        ["cat/d", "d-1.0", "indirect-failed", "", "", ""],
        ["cat/e", "e-1.0", "indirect-failed", "", "", ""],
        ["cat/p", "p-1.0", "prefailed", "1", "pat@example.org", ""],
        ["cat/q", "q-1.0", "indirect-prefailed", "", "", ""],
        ["cat/n", "n-1.0", "skipped", "1", "", ""],
        ["cat/m", "m-1.0", "indirect-skipped", "", "", ""]]
    assert tables["unsuccessful"][1][3] == "depends on c-3.0 (failed)"
    assert [row[:6] for row in tables["workers"]] == [["w1", "2", "1", "0", "0", "0"], ["w2", "2", "0", "1", "0", "0"],
                                                      ["w3", "0", "0", "0", "1", "0"]]
    assert "logs/c-3.0.txt" in facts["links"] and "report.txt" in facts["links"]
    assert facts["width"] <= 1100, "the page should not scroll sideways"


def test_the_checker_sees_errors_and_network(tmp_path, browser):
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="missing.png"><script>undefined_function()</script>'
                   '<link rel="stylesheet" href="https://fonts.example.invalid/x.css"></body></html>')
    page = chromium.load(bad.as_uri(), "1 + 1", screenshot=False, binary=browser)
    assert page.values == 2
    assert any("undefined_function" in e for e in page.errors)
    assert any("load failed" in e for e in page.errors)
    assert "https://fonts.example.invalid/x.css" in page.requests


def test_the_site_files(tmp_path):
    out, data, written = write_site(tmp_path)
    assert sorted(os.path.relpath(p, out) for p in written) == ["index.html", "logs/c-3.0.txt", "report.txt"]
    assert (out / "logs" / "c-3.0.txt").read_text() == "cc -c main.c\n*** Error code 1\n"
    assert (out / "report.txt").read_text() == bulkreport.text(data)
    html = (out / "index.html").read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    # Regenerating copies no log again and leaves no temporary file behind.
    again = htmlreport.write(str(out), data, logs_dir=str(tmp_path / "tree" / "logs"))
    assert sorted(os.path.relpath(p, out) for p in again) == ["index.html", "report.txt"]
    assert not [p for p in out.rglob(f"{files.TMP_PREFIX}*")]
    # A log that changed is copied again.
    log = tmp_path / "tree" / "logs" / "c-3.0" / LOG["name"]
    log.write_text("cc -c main.c\n*** Error code 2\n")
    os.utime(log, ns=(0, 10**9))
    again = htmlreport.write(str(out), data, logs_dir=str(tmp_path / "tree" / "logs"))
    assert sorted(os.path.relpath(p, out) for p in again) == ["index.html", "logs/c-3.0.txt", "report.txt"]
    assert (out / "logs" / "c-3.0.txt").read_text() == "cc -c main.c\n*** Error code 2\n"


def test_logs_elsewhere_are_linked_by_url(tmp_path):
    url, clock = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        data = bulkreport.build(q)
    htmlreport.write(str(tmp_path / "site"), data, log_url="https://pkgs.example.org/m68k/logs/")
    html = (tmp_path / "site" / "index.html").read_text()
    assert '<a href="https://pkgs.example.org/m68k/logs/c-3.0/c-3.0.log">log</a>' in html


def test_the_pkgsrc_branch_is_shown_only_when_the_queue_has_one(tmp_path):
    url, clock = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        data = bulkreport.build(q)
    assert "pkgsrc" not in htmlreport.page(data)
    data["settings"] = dict(data["settings"], pkgsrc_branch="pkgsrc-2026Q4")
    assert "<tr><td>pkgsrc branch</td><td>pkgsrc-2026Q4</td></tr>" in htmlreport.page(data)


def test_every_cell_is_escaped_unless_it_is_markup(tmp_path):
    url, clock = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        data = bulkreport.build(q)
    hostile = '<img src=x onerror="alert(1)">'
    data["settings"] = dict(data["settings"], arch=hostile, pkgsrc_branch=hostile)
    data["workers"][0]["worker"] = hostile
    data["breakage"][0] = dict(data["breakage"][0], maintainer=hostile, pkgpath=hostile)
    data["unsuccessful"][0] = dict(data["unsuccessful"][0], reason=hostile, log_tail=hostile, maintainer=hostile)
    data["unsuccessful"][1] = dict(data["unsuccessful"][1], reason=hostile, job=hostile)
    html = htmlreport.page(data, links={"c-3.0": 'logs/c-3.0.txt"><script>'})
    assert "<img" not in html and "<script>" not in html
    assert escape(hostile) in html
    assert '<a href="logs/c-3.0.txt&quot;&gt;&lt;script&gt;">log</a>' in html
    # Markup is shown as it is: the page's own links and spans.
    assert '<span class="state-failed">failed</span>' in html


def test_a_workers_text_is_escaped_wherever_it_reaches(tmp_path):
    """Job, worker and log names, reasons, log tails, the queue's name: in tables, the timeline's
    labels and tooltips, the title and links, each comes out as text."""
    url, clock = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        data = bulkreport.build(q)
    hostile = """"'><script>alert('x')</script>"""
    data["queue"] = hostile
    for row in data["breakage"]:
        row.update(job=hostile + row["job"], pkgpath=None, maintainer=hostile)
    for u in data["unsuccessful"]:
        u.update(job=hostile + u["job"], pkgpath=None, reason=hostile, log=hostile + ".log", log_tail=hostile,
                 maintainer=hostile)
    for w in data["workers"]:
        w["worker"] = hostile + w["worker"]
    for a in data["attempts"]:
        a.update(job=hostile + a["job"], worker=hostile + a["worker"])
    links = {u["job"]: f"https://pkgs.example.org/logs/{u['job']}/{u['log']}" for u in data["unsuccessful"]}
    html = htmlreport.page(data, links)
    assert "<script" not in html and "alert('x')" not in html
    shown = escape(hostile)
    assert f"<title>Bulk build report: {shown}</title>" in html
    assert f'<text x="124" y="23" text-anchor="end">{shown}w1</text>' in html  # a lane of the timeline
    assert f"<title>{shown}a-1.0: success, 100 s</title>" in html  # a bar's tooltip
    assert f"<tr><td>{shown}w1</td><td class=n>2</td>" in html
    assert f"<details><summary>{shown}</summary><pre>{shown}</pre></details>" in html
    assert f'<a href="https://pkgs.example.org/logs/{shown}c-3.0/{shown}.log">log</a>' in html
    # The whole writer: the same data, logs linked by URL (a hostile log name is not linked at all).
    htmlreport.write(str(tmp_path / "site"), data, log_url="https://pkgs.example.org/logs")
    written = (tmp_path / "site" / "index.html").read_text()
    assert "<script" not in written and shown in written and "pkgs.example.org" not in written


def test_a_hostile_log_name_or_link_copies_nothing_from_outside(tmp_path):
    """Log names from results made before the schema refused them, or by a local writer: an absolute
    path, a way up, a page; a log that is a link, a job directory that is a link."""
    url, clock = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        data = bulkreport.build(q)
    secret = os.urandom(16).hex().encode()
    logs = tmp_path / "tree" / "logs"
    for place in (tmp_path / "secret", tmp_path / "tree" / "secret", tmp_path / "elsewhere" / "x.log"):
        place.parent.mkdir(parents=True, exist_ok=True)
        place.write_bytes(secret)
    for job in ("c-3.0", "d-1.0", "e-1.0", "p-1.0"):
        (logs / job).mkdir(parents=True)
    (logs / "c-3.0" / "c-3.0.log").write_text("the real log\n")
    (logs / "e-1.0" / "build.html").write_text("<script>alert(document.cookie)</script>\n")
    (logs / "p-1.0" / "x.log").symlink_to(tmp_path / "secret")
    (logs / "q-1.0").symlink_to(tmp_path / "elsewhere")
    names = {"c-3.0": "c-3.0.log", "d-1.0": str(tmp_path / "secret"), "e-1.0": "build.html",
             "n-1.0": "../../secret", "p-1.0": "x.log", "q-1.0": "x.log"}
    data["unsuccessful"] = [dict(u, log=names.get(u["job"])) for u in data["unsuccessful"]]

    out = tmp_path / "site"
    written = htmlreport.write(str(out), data, logs_dir=str(logs))
    assert sorted(os.path.relpath(p, out) for p in written) == ["index.html", "logs/c-3.0.txt", "report.txt"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["index.html", "logs", "logs/c-3.0.txt",
                                                                      "report.txt"]
    for path in out.rglob("*"):
        assert path.is_dir() or secret not in path.read_bytes(), path
    html = (out / "index.html").read_text()
    assert re.findall(r'<a href="([^"]*)">log</a>', html) == ["logs/c-3.0.txt"]

    # Linked elsewhere: only plain .log and .txt names, under URL/JOB/.
    htmlreport.write(str(tmp_path / "linked"), data, log_url="https://pkgs.example.org/logs")
    html = (tmp_path / "linked" / "index.html").read_text()
    assert re.findall(r'<a href="([^"]*)">log</a>', html) == [
        "https://pkgs.example.org/logs/c-3.0/c-3.0.log", "https://pkgs.example.org/logs/p-1.0/x.log",
        "https://pkgs.example.org/logs/q-1.0/x.log"]


def test_a_long_log_is_cut_to_its_end_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(htmlreport, "MAX_LOG_BYTES", 1000)
    url, clock = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        data = bulkreport.build(q)
    (tmp_path / "logs" / "c-3.0").mkdir(parents=True)
    body = b"".join(b"line %04d\n" % i for i in range(300))  # 3000 bytes
    (tmp_path / "logs" / "c-3.0" / LOG["name"]).write_bytes(body)
    htmlreport.write(str(tmp_path / "site"), data, logs_dir=str(tmp_path / "logs"))
    copied = (tmp_path / "site" / "logs" / "c-3.0.txt").read_bytes()
    note, _, rest = copied.partition(b"\n\n")
    assert note == b"[gitqueue: the first 2000 of the log's 3000 bytes are left out here; this is its last 1000 bytes]"
    assert rest == body[-1000:] and rest.endswith(b"line 0299\n")


def test_a_logs_directory_not_made_yet_is_no_log(tmp_path):
    url, clock = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        data = bulkreport.build(q)
    written = htmlreport.write(str(tmp_path / "site"), data, logs_dir=str(tmp_path / "no-publish-yet" / "logs"),
                               log_url="https://pkgs.example.org/logs")
    assert sorted(os.path.relpath(p, tmp_path / "site") for p in written) == ["index.html", "report.txt"]
    page = (tmp_path / "site" / "index.html").read_text()
    assert '<a href="https://pkgs.example.org/logs/c-3.0/c-3.0.log">log</a>' in page


def test_hostile_phase_log_names_copy_nothing_from_outside(tmp_path):
    """Phase logs named by results from before the schema refused such names, or by a local writer:
    a way up, a page, markup, a link. Only plain phase names are copied (phases/JOB/PHASE.txt) and
    linked, in pbulk's order of phases."""
    url, clock = make_known_build(tmp_path)
    with open_queue(url, tmp_path, host="viewer", clock=clock) as q:
        data = bulkreport.build(q)
    secret = os.urandom(16).hex().encode()
    (tmp_path / "secret.log").write_bytes(secret)
    logs = tmp_path / "tree" / "logs"
    (logs / "c-3.0").mkdir(parents=True)
    for name in ("configure.log", "checksum.log", "build.html", "a<b>.log"):
        (logs / "c-3.0" / name).write_text(f"{name}: checking for cc... no\n")
    (logs / "c-3.0" / "install.log").symlink_to(tmp_path / "secret.log")
    names = ["configure.log", "../../secret.log", "build.html", "a<b>.log", "install.log", "checksum.log",
             str(tmp_path / "secret.log")]
    data["unsuccessful"] = [dict(u, phase_logs=names if u["job"] == "c-3.0" else [], log=None)
                            for u in data["unsuccessful"]]
    out = tmp_path / "site"
    written = htmlreport.write(str(out), data, logs_dir=str(logs))
    assert sorted(os.path.relpath(p, out) for p in written) == [
        "index.html", "phases/c-3.0/checksum.txt", "phases/c-3.0/configure.txt", "report.txt"]
    for path in out.rglob("*"):
        assert path.is_dir() or secret not in path.read_bytes(), path
    html = (out / "index.html").read_text()
    assert re.findall(r'<a href="(phases/[^"]*)">([^<]*)</a>', html) == [
        ("phases/c-3.0/checksum.txt", "checksum"), ("phases/c-3.0/configure.txt", "configure")]
    assert "<b>" not in html
    # Linked elsewhere: the same names only.
    htmlreport.write(str(tmp_path / "linked"), data, log_url="https://pkgs.example.org/logs")
    html = (tmp_path / "linked" / "index.html").read_text()
    assert re.findall(r'<a href="(https://[^"]*)">([a-z-]+)</a>', html) == [
        ("https://pkgs.example.org/logs/c-3.0/checksum.log", "checksum"),
        ("https://pkgs.example.org/logs/c-3.0/configure.log", "configure"),
        ("https://pkgs.example.org/logs/c-3.0/install.log", "install")]
