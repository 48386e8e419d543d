"""The commands that show a build: status, html, history, diff (on the known build)."""

import hashlib
import json
import os
import re

import pytest
import tomli_w
from click.testing import CliRunner

from gitqueue import lease
from gitqueue.cli.main import cli
from gitqueue.layout import record_path

from helpers import job, local_commit, make_package_queue, make_queue, open_queue
from known_build import COUNTS, make_known_build

UNSET = ("GITQUEUE_QUEUE", "GITQUEUE_WORKER", "GITQUEUE_SSH_COMMAND", "GITQUEUE_BRANCH")


@pytest.fixture
def gq(tmp_path):
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_CONFIG": str(tmp_path / "none.toml"),
           **{name: None for name in UNSET}}

    def run(*args, code=0):
        result = CliRunner().invoke(cli, [str(a) for a in args], env=env, prog_name="gitqueue",
                                    catch_exceptions=False)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result

    return run


@pytest.fixture
def known(tmp_path):
    return make_known_build(tmp_path)[0]


def test_status(gq, known):
    data = json.loads(gq("status", "--queue", known, "--json").stdout)
    assert data["counts"] == COUNTS and data["finished"] and data["built"] == data["buildable"] == 7
    assert {"rate", "workers", "expiring", "blockers", "eta_seconds", "leases", "started"} <= set(data)
    text = gq("status", "--queue", known).stdout.splitlines()
    assert text[0] == "queue test: 11/11 done (100.0%) - finished"
    assert text[2] == "[" + "#" * 40 + "] 7/7 buildable built (100.0%)"
    assert text[3] == "rate: 75 packages/h overall, 0 in the last hour; started 2026-01-01T00:00:00Z, finished in 4 min"
    assert text[4] == "workers:" and text[5].split() == ["worker", "current", "job", "for", "heard", "done",
                                                       "failed", "speed"]
    # worker, job, for, then last heard (against this machine's clock: not compared), done, failed, speed
    rows = [line.split() for line in text[6:9]]
    assert [(r[0], r[1], r[2], r[-3], r[-2]) for r in rows] == [("w1", "-", "-", "3", "1"), ("w2", "-", "-", "2", "0"),
                                                                ("w3", "-", "-", "0", "0")]
    assert rows[2][-1] == "-" and rows[0][-1].endswith("x")
    assert text[9] == "top blockers (failed packages keeping others from building):"
    assert text[10].split() == ["c-3.0", "cat/c", "breaks", "2"]
    # The newest failures, with the phase each failed in when its result names one (not here).
    assert text[11] == "newest failures:" and text[12].split() == ["c-3.0", "cat/c", "failed"]
    assert data["failures"] == [{"job": "c-3.0", "pkgpath": "cat/c", "phase": None, "breaks": 2}]


def test_status_watch_redraws_until_interrupted(gq, known, monkeypatch):
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", sleep)
    out = gq("status", "--queue", known, "--watch", "--interval", "2").stdout
    assert sleeps == [2, 2] and out.count("queue test: 11/11 done") == 2


def test_html(gq, known, tmp_path):
    out = tmp_path / "site"
    line = gq("html", out, "--queue", known).stdout
    assert line == f"wrote {out}/index.html: 11 packages, 7 unsuccessful, 0 logs copied\n"
    assert (out / "index.html").exists() and (out / "report.txt").exists()
    text = gq("html", "--text", "--queue", known).stdout
    assert text == (out / "report.txt").read_text().replace((out / "report.txt").read_text().splitlines()[-1],
                                                             text.splitlines()[-1])
    assert text.startswith("Bulk build report: test (finished)\n")
    data = json.loads(gq("html", "--json", "--queue", known).stdout)
    assert data["counts"] == COUNTS and len(data["attempts"]) == 7


def test_html_needs_somewhere_to_write(gq, known):
    result = gq("html", "--queue", known, code=2)
    assert "Error: give OUTDIR, or --text or --json to print the report" in result.stderr


def test_history(gq, known):
    lines = gq("history", "cat/f", "--queue", known).stdout.splitlines()
    assert lines[0].split() == ["queue", "job", "#", "worker", "started", "took", "result", "log"]
    assert [line.split()[2:4] for line in lines[1:]] == [["1", "w2"], ["2", "w3"], ["3", "w1"]]
    assert lines[1].split()[4:9] == ["2026-01-01", "00:00:10", "10", "s", "released"]
    rows = json.loads(gq("history", "c-3.0", "--queue", known, "--json").stdout)
    assert [(r["worker"], r["result"], r["log"]) for r in rows] == [("w1", "failure", "c-3.0.log")]


def test_history_of_an_unknown_package(gq, known):
    result = gq("history", "zz", "--queue", known, code=1)
    assert result.stdout == ""
    assert result.stderr == "Error: unknown package zz: no job has this PKGNAME, base name or package path\n"


def test_diff(gq, known, tmp_path):
    lines = gq("diff", known, known).stdout.splitlines()
    assert lines[0] == "test -> test: 0 newly failing, 0 newly fixed, 1 still failing, 0 added, 0 removed"
    assert lines[1] == "still failing:" and lines[2].split()[:2] == ["cat/c", "c-3.0"]
    assert lines[3] == "largest build-time changes:"
    data = json.loads(gq("diff", known, known, "--json", "--limit", "1").stdout)
    assert len(data["time_changes"]) == 1 and data["time_changes"][0]["change"] == 0


def test_diff_of_an_unknown_queue(gq, known, tmp_path):
    result = gq("diff", tmp_path / "nowhere.git", known, code=1)
    assert result.stderr == f"Error: {tmp_path / 'nowhere.git'}: no such repository\n"
    empty = make_queue(tmp_path, [], name="empty.git")
    assert gq("diff", empty, known).stdout.startswith("test -> test: 1 newly failing, 0 newly fixed")


# -- hostile text ------------------------------------------------------------------------------

# What a terminal must never receive raw: C0 (but newlines), DEL, C1, line separators, bidi controls.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
EVIL_WORKER = "w\x1b]0;owned\x07"
EVIL_REASON = "\x1b[2J\rall clear \u202eevil\u2069 \x9b31m\u2028end"


def commit_message(url, message):
    """Commit `message` on the queue's tip with the same tree, as a local writer or an old gitqueue could."""
    from dulwich.repo import Repo

    from gitqueue.gitstore import make_commit

    with Repo(url) as repo:
        tip = repo.refs[b"refs/heads/main"]
        commit = make_commit(repo.object_store[tip].tree, tip, message, "mallory <m@example.org>")
        repo.object_store.add_object(commit)
        repo.refs[b"refs/heads/main"] = commit.id


def test_worker_written_text_reaches_no_terminal_raw(gq, known, tmp_path):
    """Trailers are read as the build's history: a hostile worker name and reason come out escaped."""
    lease = "cd" * 16
    commit_message(known, f"claim f-1.0\n\nGitqueue-Action: claim\nGitqueue-Job: f-1.0\n"
                          f"Gitqueue-Worker: {EVIL_WORKER}\nGitqueue-Lease: {lease}\n")
    commit_message(known, f"release f-1.0\n\nGitqueue-Action: release\nGitqueue-Job: f-1.0\n"
                          f"Gitqueue-Worker: {EVIL_WORKER}\nGitqueue-Lease: {lease}\nGitqueue-Reason: {EVIL_REASON}\n")
    site = tmp_path / "site"
    gq("html", site, "--queue", known)
    shown = {
        "status": gq("status", "--queue", known).stdout,
        "history": gq("history", "cat/f", "--queue", known).stdout,
        "html --text": gq("html", "--text", "--queue", known).stdout,
        "report.txt": (site / "report.txt").read_text(),
        "diff": gq("diff", known, known).stdout,
    }
    for command, out in shown.items():
        assert not RAW_CONTROL.search(out), (command, out)
    for command in ("status", "history", "html --text", "report.txt"):
        assert "w\\x1b]0;owned\\x07" in shown[command], (command, shown[command])
    released = [line for line in shown["history"].splitlines() if "released" in line][-1]
    assert released.endswith("released           \\x1b[2J\\x0dall clear \\u202eevil\\u2069 \\x9b31m\\u2028end")
    # --json keeps the data exact; JSON escapes the controls itself.
    raw = gq("history", "cat/f", "--queue", known, "--json").stdout
    assert not RAW_CONTROL.search(raw)
    assert (EVIL_WORKER, "released", EVIL_REASON) in [(r["worker"], r["result"], r["reason"]) for r in json.loads(raw)]


def test_trailers_gitqueue_cannot_have_written_are_left_out(gq, known, tmp_path):
    """A report with a made-up status, an action naming no worker, an infinite duration: no traceback."""
    before = json.loads(gq("history", "cat/f", "--queue", known, "--json").stdout)
    lease = "ef" * 16
    for trailers in (f"Action: claim\nGitqueue-Job: f-1.0\nGitqueue-Lease: {lease}",  # whose claim?
                     f"Action: report\nGitqueue-Job: f-1.0\nGitqueue-Worker: w1\nGitqueue-Lease: {lease}\n"
                     f"Gitqueue-Status: \x1b[31mbogus",
                     "Action: heartbeat\nGitqueue-Held: f-1.0",
                     f"Action: report\nGitqueue-Worker: w1\nGitqueue-Lease: {lease}\nGitqueue-Status: success"):
        commit_message(known, f"made up\n\nGitqueue-{trailers}\n")
    assert json.loads(gq("history", "cat/f", "--queue", known, "--json").stdout) == before
    commit_message(known, f"claim\n\nGitqueue-Action: claim\nGitqueue-Job: f-1.0\nGitqueue-Worker: w9\n"
                          f"Gitqueue-Lease: {lease}\n")
    commit_message(known, f"report\n\nGitqueue-Action: report\nGitqueue-Job: f-1.0\nGitqueue-Worker: w9\n"
                          f"Gitqueue-Lease: {lease}\nGitqueue-Status: success\nGitqueue-Duration: inf\n")
    rows = json.loads(gq("history", "cat/f", "--queue", known, "--json").stdout)
    assert rows[:-1] == before and (rows[-1]["worker"], rows[-1]["result"]) == ("w9", "success")
    assert 0 <= rows[-1]["duration"] < 60  # measured from the commit times, not "inf"
    assert gq("history", "cat/f", "--queue", known).stdout.splitlines()[-1].split()[3] == "w9"
    gq("status", "--queue", known)
    gq("html", tmp_path / "site", "--queue", known)
    workers = [w["worker"] for w in json.loads(gq("html", "--json", "--queue", known).stdout)["workers"]]
    assert workers == ["w1", "w2", "w3", "w9"]
def test_html_copies_the_logs_of_a_local_package_tree_and_never_through_a_link(gq, tmp_path):
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job("a-1"), job("b-1")])
    secret = os.urandom(16).hex().encode()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.log").write_bytes(secret)
    with open_queue(url, tmp_path) as q:
        for _ in range(2):
            got = lease.claim(q, "w1")
            lease.report(q, "w1", got.job, "failure", log={"name": "x.log", "size": 1, "sha256": "0" * 64})
    (tree / "logs" / "a-1").mkdir(parents=True)
    (tree / "logs" / "a-1" / "x.log").symlink_to(tmp_path / "elsewhere" / "x.log")
    (tree / "logs" / "b-1").symlink_to(tmp_path / "elsewhere")
    out = tmp_path / "site"
    assert gq("html", out, "--queue", url).stdout.endswith(", 0 logs copied\n")
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "report.txt"]
    assert secret not in (out / "index.html").read_bytes() and "log</a>" not in (out / "index.html").read_text()
    # Real files are copied, from logs/ of the queue's packages_url, as text.
    (tree / "logs" / "a-1" / "x.log").unlink()
    (tree / "logs" / "a-1" / "x.log").write_text("a-1 failed\n")
    assert gq("html", out, "--queue", url).stdout.endswith(", 1 logs copied\n")
    assert (out / "logs" / "a-1.txt").read_text() == "a-1 failed\n"
    assert '<a href="logs/a-1.txt">log</a>' in (out / "index.html").read_text()


def test_html_refuses_a_result_with_a_path_for_a_log_name(gq, tmp_path):
    """A local writer's result naming /etc/passwd as its log: one line, nothing written."""
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job("a-1")])
    with open_queue(url, tmp_path) as q:
        token = lease.claim(q, "w1").lease
    (tree / "logs" / "a-1").mkdir(parents=True)
    hostile = tomli_w.dumps({"job": "a-1", "version": "1.0", "status": "failure", "worker": "w1", "token": token,
                             "log": {"name": "/etc/passwd", "size": 1, "sha256": "0" * 64}}).encode()
    local_commit(url, {record_path("results", "a-1"): hostile, record_path("leases", "a-1"): None})
    out = tmp_path / "site"
    result = gq("html", out, "--queue", url, code=1)
    assert result.stderr == f"Error: {record_path('results', 'a-1')}: log.name: '/etc/passwd' is not a valid value\n"
    assert not out.exists()


def test_a_linked_log_goes_neither_into_logs_nor_into_the_report(gq, tmp_path):
    """A failure whose uploaded log is a link to a secret: publish leaves it unread (and removes
    the upload), html has nothing to copy; the secret is nowhere in the tree's logs or the site."""
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job("a-1")])
    secret = os.urandom(16).hex().encode()
    (tmp_path / "secret").write_bytes(secret)
    with open_queue(url, tmp_path) as q:
        token = lease.claim(q, "w1").lease
        (tree / "incoming" / token).mkdir(parents=True)
        (tree / "incoming" / token / "x.log").symlink_to(tmp_path / "secret")
        lease.report(q, "w1", "a-1", "failure", log={"name": "x.log", "size": len(secret),
                                                     "sha256": hashlib.sha256(secret).hexdigest()})
    out = json.loads(gq("publish", "--queue", url, "--json").stdout)
    assert (out["logs"], out["removed"], out["abandoned"]) == ([], 1, 0)
    assert os.listdir(tree / "incoming") == [] and os.listdir(tree / "logs") == []
    assert (tmp_path / "secret").read_bytes() == secret
    site = tmp_path / "site"
    assert gq("html", site, "--queue", url).stdout.endswith(", 0 logs copied\n")
    for path in site.rglob("*"):
        assert secret not in path.read_bytes(), path


def test_status_shows_churn_instead_of_an_estimate(gq, tmp_path):
    """A worker that keeps giving jobs back (its transfer is broken, say): status names it and the
    jobs going round, and gives no estimate of the time to go."""
    url = make_queue(tmp_path, [job(f"j{i}-1") for i in range(4)])
    with open_queue(url, tmp_path) as q:
        got = lease.claim(q, "good")
        lease.report(q, "good", got.job, "success")
        for _ in range(4):
            got = lease.claim(q, "stuck")
            lease.release(q, "stuck", got.job, "cannot fetch the packages of x-1", decline=False)
    data = json.loads(gq("status", "--queue", url, "--json").stdout)
    assert data["churn"]["workers"] == [{"worker": "stuck", "given_back": 4}]
    assert data["churn"]["released_last_hour"] == 4 and data["churn"]["built_last_hour"] == 1
    text = gq("status", "--queue", url).stdout.splitlines()
    assert text[0] == ("queue test: 1/4 done (25.0%), no estimate: 4 jobs given back and 1 built in the last hour "
                       "(see churn below)")
    churn = text.index("churn (jobs given back instead of built):")
    assert text[churn + 1].split()[:6] == ["worker", "stuck", "gave", "back", "4", "jobs"]
    assert all("given back" in line for line in text[churn + 2:churn + 2 + len(data["churn"]["jobs"])])
