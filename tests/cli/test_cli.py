"""The command line: exit statuses, one-line errors, configuration, and the worker loop.

Most tests drive gitqueue.cli.main.cli in-process with click's CliRunner (fast); a few run the real
`python -m gitqueue` in a new process for the end-to-end path. Every queue is a real bare repository
in tmp_path; the user's own configuration and environment are never read.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
import tomllib

import pytest
from click.testing import CliRunner

from gitqueue.cli.main import cli
from gitqueue.layout import record_path

from helpers import REPO, SUBSET, git_log, gitqueue, job, make_queue, write_jsonl

CHAIN = [job("a-1", pkgpath="cat/a"), job("b-1", ["a-1"], pkgpath="cat/b")]
# Settings a developer's shell may carry; the tests must not see them.
UNSET = ("GITQUEUE_QUEUE", "GITQUEUE_WORKER", "GITQUEUE_SSH_COMMAND", "GITQUEUE_BRANCH")


class Gq:
    """`gitqueue ARGS` in-process, with a private cache and no configuration file."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.config = tmp_path / "none.toml"
        self.env = {"GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_CONFIG": str(self.config),
                    **{name: None for name in UNSET}}
        self.runner = CliRunner()

    def __call__(self, *args, code=0, env=None):
        result = self.runner.invoke(cli, [str(a) for a in args], env={**self.env, **(env or {})},
                                    prog_name="gitqueue", catch_exceptions=False)
        assert result.exit_code == code, (
            f"gitqueue {' '.join(map(str, args))}: exit {result.exit_code}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
        return result

    def error(self, *args, code=1, env=None) -> str:
        """Run a command that must fail with exactly one `Error:` line on stderr; return that line."""
        result = self(*args, code=code, env=env)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        return lines[0]

    def usage_error(self, *args, env=None) -> str:
        """Run a command that must fail as a usage error (exit 2); return its `Error:` line."""
        result = self(*args, code=2, env=env)
        assert result.stdout == ""
        assert result.stderr.startswith("Usage: gitqueue ")
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, result.stderr
        return errors[0]


@pytest.fixture
def gq(tmp_path):
    return Gq(tmp_path)


def subprocess_env(tmp_path):
    """Environment for helpers.gitqueue: like Gq's (empty values count as unset)."""
    return {"GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_CONFIG": str(tmp_path / "none.toml"),
            **{name: "" for name in UNSET}}


def git(*args, cwd=None) -> str:
    return subprocess.run(["git", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=True).stdout


def history(url) -> str:
    """Every commit id and ref of the queue: equal before and after means nothing was written."""
    return git("-C", url, "log", "--all", "--format=%H %s") + git("-C", url, "for-each-ref")


def show(url, path, rev="main") -> dict:
    return tomllib.loads(git("-C", url, "show", f"{rev}:{path}"))


def last_trailers(url) -> dict:
    text = git("-C", url, "log", "-1", "--format=%(trailers:only,unfold)")
    return dict(line.split(": ", 1) for line in text.splitlines() if line)


def claim(gq, url, worker="w1", **kw):
    return json.loads(gq("claim", "--queue", url, "--worker", worker, "--json", **kw).stdout)


# -- init ---------------------------------------------------------------------------------------


def test_init_creates_a_local_bare_repository(gq, tmp_path):
    url = tmp_path / "new" / "q.git"
    out = gq("init", url, "--arch", "m68k", "--os-release", "10.1", "--pkgsrc-branch", "pkgsrc-2026Q4",
             "--lease-ttl", "7200").stdout
    assert out == f"created queue q at {url}\n"
    assert git("-C", url, "rev-parse", "--is-bare-repository").strip() == "true"
    assert git("-C", url, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    settings = show(url, "queue.toml")
    assert settings["name"] == "q" and settings["lease_ttl"] == 7200 and settings["arch"] == "m68k"
    assert settings["os_release"] == "10.1" and settings["pkgsrc_branch"] == "pkgsrc-2026Q4"
    assert git_log(str(url)).splitlines() == ["init queue q"]
    assert last_trailers(url)["Gitqueue-Action"] == "init"


def test_init_json_and_name(gq, tmp_path):
    data = json.loads(gq("init", tmp_path / "q.git", "--name", "2026Q4-m68k", "--json").stdout)
    assert data["name"] == "2026Q4-m68k" and data["format_version"] == 1 and data["lease_ttl"] == 3600


def test_init_relative_path_is_made_absolute(gq, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert gq("init", "rel.git").stdout == f"created queue rel at {tmp_path / 'rel.git'}\n"


def test_init_twice_is_refused(gq, tmp_path):
    url = tmp_path / "q.git"
    gq("init", url)
    before = history(url)
    assert gq.error("init", url) == f"Error: {url}: a queue already exists on branch main"
    assert history(url) == before


def test_init_refuses_a_non_empty_directory_and_a_bad_ttl(gq, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("keep me")
    assert gq.error("init", tmp_path / "full") == f"Error: {tmp_path / 'full'}: exists and is not a git repository"
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["precious.txt"]
    assert gq.error("init", tmp_path / "q.git", "--lease-ttl", "0") == \
        "Error: --lease-ttl must be at least 1 second, not 0"
    assert not (tmp_path / "q.git").exists()


# -- import -------------------------------------------------------------------------------------


def test_import_the_shipped_presolve_subset(gq, tmp_path):
    url = tmp_path / "q.git"
    gq("init", url)
    assert gq("import", url, SUBSET).stdout == "imported 279 jobs (1977 dependencies, 0 prefailed)\n"
    assert git_log(str(url)).splitlines()[0] == "import 279 jobs from pkgsrc-subset.presolve"
    facts = last_trailers(url)
    assert (facts["Gitqueue-Action"], facts["Gitqueue-Jobs"], facts["Gitqueue-Source"]) == \
        ("import", "279", "pkgsrc-subset.presolve")
    assert len(git("-C", url, "ls-tree", "-r", "--name-only", "main", "jobs/").split()) == 279
    status = json.loads(gq("status", "--queue", url, "--json").stdout)
    assert status["total"] == 279 and status["counts"]["ready"] >= 1 and status["leases"] == []


def test_import_jsonl_json_output(gq, tmp_path):
    url = tmp_path / "q.git"
    gq("init", url)
    graph = write_jsonl(tmp_path / "g.jsonl", [job("a-1"), job("b-1", ["a-1"]), job("c-1", prefailed="broken")])
    assert json.loads(gq("import", url, graph, "--json").stdout) == {"jobs": 3, "edges": 1, "prefailed": 1}
    # --format overrides the guess from the file name.
    other = tmp_path / "o.git"
    gq("init", other)
    graph2 = tmp_path / "graph.txt"
    graph2.write_text((tmp_path / "g.jsonl").read_text())
    assert gq("import", other, graph2, "--format", "jsonl").stdout.startswith("imported 3 jobs")


BAD_GRAPHS = {
    "cycle": ([job("a-1", ["b-1"]), job("b-1", ["a-1"])], "{g}: dependency cycle: a-1 -> b-1 -> a-1"),
    "unknown dep": ([job("a-1", ["zz-9"])], "{g}: dependencies on unknown jobs: zz-9 (needed by a-1)"),
    "hostile name": ([job("../../etc/passwd-1")], "{g}:1: invalid job name '../../etc/passwd-1'"),
    "hostile dep": ([job("a-1", ["x/../../y-1"])], "{g}:1: invalid job name 'x/../../y-1'"),
    "duplicate": ([job("a-1"), job("a-1")], "{g}: duplicate job names: a-1"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_import_refusals_write_nothing(gq, tmp_path, case):
    url = tmp_path / "q.git"
    gq("init", url)
    before = history(url)
    jobs, message = BAD_GRAPHS[case]
    graph = write_jsonl(tmp_path / "g.jsonl", jobs)
    assert gq.error("import", url, graph) == "Error: " + message.format(g=graph)
    assert history(url) == before


def test_import_refuses_a_malformed_line(gq, tmp_path):
    url = tmp_path / "q.git"
    gq("init", url)
    before = history(url)
    graph = tmp_path / "g.jsonl"
    graph.write_text('{"name": "a-1", "version": "1", "deps": []}\n{"name": "b-1", "version": \n')
    assert gq.error("import", url, graph) == f"Error: {graph}:2: not valid JSON: Expecting value (column 28)"
    presolve = tmp_path / "presolve"
    presolve.write_text("PKGNAME=a-1\nPKG_LOCATION=cat/a\nthis is not a KEY=value line\n")
    assert gq.error("import", url, presolve) == \
        f"Error: {presolve}:3: not a KEY=value line: 'this is not a KEY=value line'"
    presolve.write_text("PKGNAME=../../evil-1\n")
    assert gq.error("import", url, presolve) == f"Error: {presolve}:1: invalid job name '../../evil-1'"
    missing = tmp_path / "absent.jsonl"
    assert gq.error("import", url, missing) == f"Error: {missing}: cannot read: No such file or directory"
    assert history(url) == before


def test_import_into_a_queue_with_jobs_is_refused(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    before = history(url)
    graph = write_jsonl(tmp_path / "g.jsonl", [job("c-1")])
    assert gq.error("import", url, graph) == f"Error: {url}: the queue already has jobs; one queue holds one build"
    assert history(url) == before


def test_import_needs_an_initialized_queue(gq, tmp_path):
    graph = write_jsonl(tmp_path / "g.jsonl", [job("a-1")])
    bare = tmp_path / "bare.git"
    git("init", "-q", "--bare", bare)
    assert gq.error("import", bare, graph) == f"Error: {bare}: no queue on branch main (run gitqueue init)"
    assert gq.error("import", tmp_path / "nope.git", graph) == f"Error: {tmp_path / 'nope.git'}: no such repository"
    assert not (tmp_path / "nope.git").exists()


# -- claim --------------------------------------------------------------------------------------


def test_claim_prints_job_pkgpath_lease(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN + [job("n-1")])
    first = gq("claim", "--queue", url, "--worker", "w1").stdout
    name, pkgpath, token = first.rstrip("\n").split("\t")
    assert first.count("\n") == 1 and len(token) == 32
    assert (name, pkgpath) in {("a-1", "cat/a"), ("n-1", "-")}  # a job without a pkgpath shows '-'
    assert git_log(url).splitlines()[0] == f"claim {name}{f' ({pkgpath})' if pkgpath != '-' else ''} by w1"
    lease = show(url, record_path("leases", name))
    assert (lease["worker"], lease["token"]) == ("w1", token)
    second = claim(gq, url, "w2")
    assert {second["job"], name} == {"a-1", "n-1"}
    assert second["pkgpath"] == ("cat/a" if second["job"] == "a-1" else None)


def test_claim_json(gq, tmp_path):
    url = make_queue(tmp_path, [job("gmake-4.4.1", version="4.4.1", pkgpath="devel/gmake",
                                    multi_version={"PYTHON_VERSION_REQD": "311"})])
    got = claim(gq, url, "hp300-1")
    assert {"job", "version", "pkgpath", "lease", "deps", "multi_version"} <= set(got)
    assert (got["job"], got["version"], got["pkgpath"]) == ("gmake-4.4.1", "4.4.1", "devel/gmake")
    assert got["deps"] == [] and got["multi_version"] == {"PYTHON_VERSION_REQD": "311"}
    assert last_trailers(url)["Gitqueue-Lease"] == got["lease"]


def test_claim_exit_3_when_nothing_is_ready_and_4_when_finished(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    gq("claim", "--queue", url, "--worker", "w1")
    before = history(url)
    assert gq.error("claim", "--queue", url, "--worker", "w2", code=3) == \
        "Error: nothing ready for w2 now (1 leased, 1 waiting)"
    assert history(url) == before
    assert gq("report", "a-1", "--queue", url, "--worker", "w1", "--status", "failure").stdout == "a-1: failure\n"
    before = history(url)
    assert gq.error("claim", "--queue", url, "--worker", "w2", code=4) == \
        "Error: queue finished: every job has a final state"
    assert history(url) == before
    status = json.loads(gq("status", "--queue", url, "--json").stdout)
    assert status["finished"] and status["counts"]["failed"] == 1 and status["counts"]["indirect-failed"] == 1


def test_claim_refuses_a_bad_worker_name(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    before = history(url)
    assert gq.error("claim", "--queue", url, "--worker", "../w") == \
        "Error: invalid worker name '../w' (letters, digits, '.', '_', '-'; at most 64)"
    assert history(url) == before


# -- report, heartbeat, release ----------------------------------------------------------------


def test_report_success_with_log_and_duration(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    token = claim(gq, url)["lease"]
    log = tmp_path / "build.log"
    log.write_text("compiling\nok\n")
    out = gq("report", "a-1", "--queue", url, "--worker", "w1", "--status", "success", "--log", log,
             "--duration", "312").stdout
    assert out == "a-1: success\n"
    assert git_log(url).splitlines()[0] == "report a-1 (cat/a): success by w1 in 312 s"
    facts = last_trailers(url)
    assert (facts["Gitqueue-Status"], facts["Gitqueue-Lease"], facts["Gitqueue-Duration"]) == \
        ("success", token, "312.0")
    result = show(url, record_path("results", "a-1"))
    # recorded under the job's name, whatever the file is called
    assert result["log"]["name"] == "a-1.log" and result["log"]["size"] == 13 and "log_tail" not in result
    assert git("-C", url, "ls-tree", "-r", "main", "leases/") == ""
    assert claim(gq, url)["job"] == "b-1"


def test_report_with_the_lease_token_from_another_cache(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    token = claim(gq, url)["lease"]
    elsewhere = {"GITQUEUE_CACHE": str(tmp_path / "cache-elsewhere")}
    before = history(url)
    assert gq.error("report", "a-1", "--queue", url, "--worker", "w1", "--status", "success",
                    "--lease", "0" * 32, env=elsewhere, code=5) == \
        "Error: a-1 is leased by w1 under another token; nothing recorded"
    assert history(url) == before
    gq("report", "a-1", "--queue", url, "--worker", "w1", "--status", "failure", "--lease", token, env=elsewhere)
    assert show(url, record_path("results", "a-1"))["status"] == "failure"


def test_report_for_a_job_not_held_exits_5_and_writes_nothing(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN + [job("c-1")])
    held = claim(gq, url)["job"]
    free = ({"a-1", "c-1"} - {held}).pop()
    before = history(url)
    args = ("--queue", url, "--worker", "w2", "--status", "success")
    assert gq.error("report", held, *args, code=5) == f"Error: {held} is leased by w1, not by w2; nothing recorded"
    assert gq.error("report", free, *args, code=5) == f"Error: {free} is not leased by w2"
    assert gq.error("report", "zz-1", *args, code=1) == "Error: unknown job zz-1"
    assert gq.error("report", "../x", *args, code=1) == "Error: invalid job name '../x'"
    assert history(url) == before
    gq("report", held, "--queue", url, "--worker", "w1", "--status", "success")
    before = history(url)
    assert gq.error("report", held, "--queue", url, "--worker", "w1", "--status", "failure", code=5) == \
        f"Error: {held} already has a result (success by w1); nothing recorded"
    assert history(url) == before


def test_report_usage_errors(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    assert "Missing option '--status'" in gq.usage_error("report", "a-1", "--queue", url, "--worker", "w1")
    assert "'maybe' is not one of" in gq.usage_error("report", "a-1", "--queue", url, "--worker", "w1",
                                                     "--status", "maybe")
    assert "does not exist" in gq.usage_error("report", "a-1", "--queue", url, "--worker", "w1",
                                              "--status", "success", "--log", tmp_path / "absent.log")


def test_heartbeat(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    assert gq("heartbeat", "--queue", url, "--worker", "w1").stdout == "alive, no jobs held\n"
    assert show(url, "heartbeats/w1.toml")["seq"] == 0
    claim(gq, url)
    assert gq("heartbeat", "--queue", url, "--worker", "w1").stdout == "held\ta-1\n"
    assert git_log(url).splitlines()[0] == "heartbeat w1 (1 held)"
    facts = last_trailers(url)
    assert (facts["Gitqueue-Action"], facts["Gitqueue-Held"]) == ("heartbeat", "a-1")
    assert json.loads(gq("heartbeat", "--queue", url, "--worker", "w1", "--json").stdout) == \
        {"held": ["a-1"], "lost": []}
    assert show(url, "heartbeats/w1.toml")["seq"] == 3
    # The lease itself is never touched by a heartbeat.
    assert git("-C", url, "diff", "--name-only", "HEAD~1", "HEAD").split() == ["heartbeats/w1.toml"]


def test_heartbeat_exits_5_after_the_lease_was_reclaimed(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN, ttl=1)
    claim(gq, url)
    cron = {"GITQUEUE_CACHE": str(tmp_path / "cache-cron")}
    assert gq("reclaim", "--queue", url, env=cron).stdout == "nothing to reclaim\n"
    time.sleep(1.1)
    out = gq("reclaim", "--queue", url, env=cron).stdout
    assert out.startswith("reclaimed a-1 from w1 (silent ")
    result = gq("heartbeat", "--queue", url, "--worker", "w1", code=5)
    assert result.stdout == "lost\ta-1\n"
    assert git("-C", url, "ls-tree", "-r", "main", "leases/") == ""  # not recreated
    # Once said, the loss is forgotten: the next heartbeat is a plain one.
    assert gq("heartbeat", "--queue", url, "--worker", "w1").stdout == "alive, no jobs held\n"


def test_reclaim_ttl_option_overrides_the_queue_ttl(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN, ttl=3600)
    claim(gq, url)
    gq("reclaim", "--queue", url, "--ttl", "0")
    time.sleep(0.05)
    assert gq("reclaim", "--queue", url, "--ttl", "0").stdout.startswith("reclaimed a-1 from w1")


def test_release_then_that_worker_is_not_offered_the_job_again(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    claim(gq, url)
    reason = "my pkgsrc has gmake-4.3, not 4.4.1"
    assert gq("release", "a-1", "--queue", url, "--worker", "w1", "--reason", reason).stdout == "released a-1\n"
    assert git_log(url).splitlines()[0] == f"release a-1 (cat/a) by w1: {reason}"
    facts = last_trailers(url)
    assert (facts["Gitqueue-Reason"], facts["Gitqueue-Declined"]) == (reason, "true")
    declines = show(url, record_path("declines", "a-1"))
    assert [(d["worker"], d["reason"]) for d in declines["declined"]] == [("w1", reason)]
    before = history(url)
    assert gq.error("claim", "--queue", url, "--worker", "w1", code=3).startswith("Error: nothing ready for w1")
    assert history(url) == before
    assert claim(gq, url, "w2")["job"] == "a-1"


def test_a_release_reason_with_controls_is_recorded_escaped(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    claim(gq, url)
    gq("release", "a-1", "--queue", url, "--worker", "w1", "--reason", "bmake: \x1b[31mno such target\x1b[0m")
    declines = show(url, record_path("declines", "a-1"))
    assert declines["declined"][0]["reason"] == "bmake: \\x1b[31mno such target\\x1b[0m"


def test_release_of_a_job_not_held_exits_5(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    claim(gq, url)
    before = history(url)
    assert gq.error("release", "a-1", "--queue", url, "--worker", "w2", code=5) == \
        "Error: a-1 is leased by w1, not by w2; nothing released"
    assert gq.error("release", "b-1", "--queue", url, "--worker", "w1", code=5) == \
        "Error: b-1 is not leased; nothing released"
    assert gq.error("release", "zz-1", "--queue", url, "--worker", "w1") == "Error: unknown job zz-1"
    assert history(url) == before


# -- status -------------------------------------------------------------------------------------


def test_status_text_and_json(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN + [job("c-1", prefailed="fail: broken"), job("d-1", ["c-1"])])
    claim(gq, url, "w1")
    data = json.loads(gq("status", "--queue", url, "--json").stdout)
    assert {"counts", "total", "leases"} <= set(data)
    counts = data["counts"]
    assert data["total"] == 4 and sum(counts.values()) == 4
    assert (counts["ready"], counts["leased"], counts["waiting"], counts["success"]) == (0, 1, 1, 0)
    assert counts["prefailed"] == 1 and counts["indirect-prefailed"] == 1
    assert [(x["job"], x["worker"]) for x in data["leases"]] == [("a-1", "w1")]
    assert data["leases"][0]["lease"] == show(url, record_path("leases", "a-1"))["token"]
    assert data["commit"] == git("-C", url, "rev-parse", "main").strip()
    assert not data["finished"] and data["done"] == 2
    text = gq("status", "--queue", url).stdout.splitlines()
    assert text[0] == f"queue test: 2/4 done (50.0%), about {data['eta_seconds'] // 60} min to go"
    assert text[1] == "  ".join(f"{state} {n}" for state, n in counts.items())
    assert text[1].startswith("ready 0  waiting 1  leased 1  success 0  up-to-date 0  failed 0  indirect-failed 0  "
                              "prefailed 1  ")
    assert text[2] == "[" + "." * 40 + "] 0/2 buildable built (0.0%)"
    assert text[3].startswith("rate: ") and "packages/h overall, 0 in the last hour; started " in text[3]
    assert text[4] == "workers:" and text[6].split()[:2] == ["w1", "a-1"]
    assert text[7].startswith("leases closest to expiry") and text[8].split()[:2] == ["a-1", "w1"] and len(text) == 9


def test_status_of_an_empty_queue(gq, tmp_path):
    url = make_queue(tmp_path, [])
    assert gq("status", "--queue", url).stdout.splitlines()[0] == "queue test: 0/0 done (100.0%)"


# -- options, configuration, environment ----------------------------------------------------------


def test_missing_queue_or_worker_is_a_usage_error(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    config = gq.config
    for command, tail in ((("claim",), ()), (("heartbeat",), ()), (("report", "a-1", "--status", "success"), ()),
                          (("release", "a-1"), ()), (("work", "--once"), ("--", "true"))):
        assert gq.usage_error(*command, "--worker", "w1", *tail) == \
            f"Error: no queue given: pass --queue URL, set GITQUEUE_QUEUE or 'queue' in {config}"
        assert gq.usage_error(*command, "--queue", url, *tail) == \
            f"Error: no worker name given: pass --worker NAME, set GITQUEUE_WORKER or 'worker' in {config}"
    for command in (("status",), ("reclaim",)):
        assert gq.usage_error(*command).startswith("Error: no queue given")
    assert gq.usage_error("import", url).startswith("Error: Missing argument")
    assert "No such command" in gq.usage_error("frobnicate")
    assert gq.usage_error("work", "--queue", url, "--worker", "w1") == "Error: Missing argument 'COMMAND...'."
    assert not (tmp_path / "cache" / "logs").exists()
    assert git_log(url).splitlines()[0].startswith("import")


def test_queue_that_does_not_exist(gq, tmp_path):
    missing = tmp_path / "missing.git"
    for command in (("claim", "--worker", "w1"), ("status",), ("heartbeat", "--worker", "w1"), ("reclaim",)):
        assert gq.error(*command, "--queue", missing) == f"Error: {missing}: no such repository"
    (tmp_path / "plain").mkdir()
    assert gq.error("status", "--queue", tmp_path / "plain") == f"Error: {tmp_path / 'plain'}: not a git repository"
    assert not missing.exists()


def test_unreachable_git_url_fails_in_one_line(gq):
    line = gq.error("status", "--queue", "git://127.0.0.1:1/q.git")
    assert line.startswith("Error: git://127.0.0.1:1/q.git: fetch failed: ")


def control_path(command, cache_dir, agent="/run/agent-1") -> str:
    """The ControlPath that gitqueue gives ssh for `command` with the cache root `cache_dir`."""
    import shlex

    from gitqueue.connection import ssh_with_reuse

    options = [word.partition("=") for word in shlex.split(ssh_with_reuse(command, str(cache_dir),
                                                                          agent_socket=agent))]
    return next(value for key, _, value in options if key == "ControlPath")


def test_one_ssh_connection_per_identity(tmp_path):
    """ssh's %C names only user, host and port: what picks the key must name the socket too."""
    one = "ssh -F /dev/null -i /keys/w1 -o IdentitiesOnly=yes"
    two = one.replace("/keys/w1", "/keys/w2")
    assert control_path(one, tmp_path) == control_path(one, tmp_path)
    assert control_path(one, tmp_path) != control_path(two, tmp_path)
    assert control_path(one, tmp_path) != control_path(one + " -F /etc/other", tmp_path)
    first = control_path(one, tmp_path)
    assert control_path(one, tmp_path, agent="/run/agent-2") != first  # another agent offers other keys
    import tempfile

    short = tempfile.mkdtemp(prefix="gq", dir="/tmp")
    try:
        for cache in (tmp_path / ("c" * 200), tmp_path, short):
            path = control_path(one, cache)
            # %C becomes 40 hex digits; ssh binds "PATH.XXXXXXXXXXXXXXXX" first; sun_path holds 103 bytes
            assert path.endswith("-%C") and len(path.replace("%C", "f" * 40)) + 17 <= 103, path
            assert os.stat(os.path.dirname(path)).st_uid == os.getuid()
        assert os.path.dirname(control_path(one, short)) == short  # short and plain: the cache itself
    finally:
        os.rmdir(short)
    assert os.path.dirname(control_path(one, tmp_path / ("c" * 200))) == f"/tmp/gitqueue-{os.getuid()}"


def test_config_file_supplies_queue_and_worker(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    config = tmp_path / "config.toml"
    config.write_text(f'queue = "{url}"\nworker = "hp300-1"\n')
    env = {"GITQUEUE_CONFIG": str(config)}
    assert gq("claim", env=env).stdout.startswith("a-1\tcat/a\t")
    assert show(url, record_path("leases", "a-1"))["worker"] == "hp300-1"
    assert gq("heartbeat", env=env).stdout == "held\ta-1\n"
    # The command line and the environment win over the file.
    other = make_queue(tmp_path, [job("z-1")], name="other.git")
    assert json.loads(gq("status", "--json", env={**env, "GITQUEUE_QUEUE": other}).stdout)["total"] == 1
    assert json.loads(gq("status", "--json", "--queue", other, env=env).stdout)["total"] == 1
    gq("heartbeat", env={**env, "GITQUEUE_WORKER": "envw"})
    assert show(url, "heartbeats/envw.toml")["worker"] == "envw"
    gq("heartbeat", "--worker", "optw", env={**env, "GITQUEUE_WORKER": "envw"})
    assert show(url, "heartbeats/optw.toml")["worker"] == "optw"


def test_config_file_host_cache_dir_and_branch(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    config = tmp_path / "config.toml"
    config.write_text(f'queue = "{url}"\nworker = "w1"\nhost = "bench-7"\ncache_dir = "{tmp_path / "cfgcache"}"\n')
    claim(gq, url, env={"GITQUEUE_CONFIG": str(config), "GITQUEUE_CACHE": None})
    assert show(url, record_path("leases", "a-1"))["host"] == "bench-7"
    assert (tmp_path / "cfgcache").is_dir()
    config.write_text(f'queue = "{url}"\nbranch = "other"\n')
    assert gq.error("status", env={"GITQUEUE_CONFIG": str(config)}) == \
        f"Error: {url}: no queue on branch other (run gitqueue init)"


def test_environment_supplies_queue_and_worker(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    env = {"GITQUEUE_QUEUE": url, "GITQUEUE_WORKER": "envworker"}
    assert gq("claim", env=env).stdout.startswith("a-1\tcat/a\t")
    assert show(url, record_path("leases", "a-1"))["worker"] == "envworker"
    assert gq("status", env=env).stdout.startswith("queue test: 0/2 done")
    # --worker beats the environment.
    assert gq("release", "a-1", "--worker", "other", env=env, code=5).stderr == \
        "Error: a-1 is leased by envworker, not by other; nothing released\n"


def test_unknown_key_in_the_config_file_is_an_error(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN)
    config = tmp_path / "config.toml"
    config.write_text(f'queue = "{url}"\nworker = "w1"\nwokrer = "typo"\n')
    before = history(url)
    env = {"GITQUEUE_CONFIG": str(config)}
    assert gq.error("claim", env=env) == f"Error: {config}: unknown setting(s) wokrer"
    # Even when everything is given on the command line: the file is wrong either way.
    assert gq.error("status", "--queue", url, env=env) == f"Error: {config}: unknown setting(s) wokrer"
    config.write_text("queue = \n")
    assert gq.error("status", env=env).startswith(f"Error: {config}: ")
    assert history(url) == before


# -- records committed by hand ------------------------------------------------------------------


def commit_by_hand(url, tmp_path, path, data):
    """Commit `data` at `path` into the queue with the git CLI, as an administrator would."""
    clone = tmp_path / "hand"
    git("clone", "-q", url, clone)
    target = clone / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(data)
    git("add", path, cwd=clone)
    git("-c", "user.name=admin", "-c", "user.email=admin@example.org", "-c", "commit.gpgsign=false",
        "commit", "-q", "-m", f"hand-edit {path}", cwd=clone)
    git("push", "-q", "origin", "HEAD:main", cwd=clone)


BAD_RECORDS = {
    "invalid TOML": ('job = "a-1"\nstatus = \n', "malformed TOML: Invalid value (at line 2, column 10)"),
    "schema": ('job = "a-1"\nstatus = "maybe"\nworker = "w1"\ntoken = "0123456789abcdef"\n',
               "must be one of success, failure, got 'maybe'"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_a_malformed_record_committed_by_hand_is_named(gq, tmp_path, case):
    url = make_queue(tmp_path, CHAIN, hook=False)  # the hook would refuse the hand edit (tests/test_hook.py)
    claim(gq, url, "w1")  # this cache's index now describes the tip before the hand edit
    path = record_path("results", "a-1")
    data, why = BAD_RECORDS[case]
    commit_by_hand(url, tmp_path, path, data)
    before = history(url)
    fresh = {"GITQUEUE_CACHE": str(tmp_path / "cache-fresh")}  # rebuilds its index from the tree
    for env in (None, fresh):
        for command in (("claim", "--worker", "w2"), ("status",), ("heartbeat", "--worker", "w1")):
            line = gq.error(*command, "--queue", url, env=env)
            assert line.startswith(f"Error: {path}") and line.endswith(why), line
    assert history(url) == before
    assert git_log(url).splitlines()[0] == f"hand-edit {path}"


def test_a_record_whose_job_does_not_match_its_path_is_refused(gq, tmp_path):
    # results/XX/n-1.toml claiming to be a-1's result: index rebuild counts a-1 as built (by the
    # record's content) while claim checks the tree by path, so b-1 is "ready" but never claimable.
    url = make_queue(tmp_path, CHAIN + [job("n-1")], hook=False)  # the hook would refuse the hand edit
    path = record_path("results", "n-1")
    commit_by_hand(url, tmp_path, path, 'job = "a-1"\nstatus = "success"\nworker = "w1"\ntoken = "0123456789abcdef"\n')
    line = gq.error("status", "--queue", url)
    assert line.startswith(f"Error: {path}")


def test_a_hostile_path_in_an_error_line_is_escaped(gq, tmp_path):
    url = make_queue(tmp_path, CHAIN, hook=False)
    commit_by_hand(url, tmp_path, "leases/ab/a\x1b]0;owned\x07\x1b[2J\r-1.toml", 'job = "a-1"\n')
    line = gq.error("status", "--queue", url)
    assert line == "Error: leases/ab/a\\x1b]0;owned\\x07\\x1b[2J\\x0d-1.toml: missing required key 'worker'"


def test_every_commands_text_shows_controls_escaped_and_json_keeps_them():
    """emit() is how commands print: whatever a field holds, no raw control reaches the terminal."""
    import click

    from gitqueue.cli.main import emit

    @click.command()
    @click.option("--json", "as_json", is_flag=True)
    def show(as_json):
        emit({"reason": "a\x1b[2J\tb\u202e"}, as_json, lambda: "reason: a\x1b[2J\tb\u202e\nnext")

    assert CliRunner().invoke(show, []).stdout == "reason: a\\x1b[2J\tb\\u202e\nnext\n"
    assert json.loads(CliRunner().invoke(show, ["--json"]).stdout) == {"reason": "a\x1b[2J\tb\u202e"}


def test_a_config_value_of_the_wrong_type_is_one_error_line(gq, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("queue = 5\n")
    assert gq.error("status", env={"GITQUEUE_CONFIG": str(config)}).startswith(f"Error: {config}: ")


# -- the workers registry -----------------------------------------------------------------------


def test_the_registry_of_an_unsigned_queue_is_not_changed(gq, tmp_path):
    """Without admins nothing checks signatures: a registry would only seem to protect the queue."""
    url = tmp_path / "q.git"
    gq("init", url)
    key = tmp_path / "admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    before = history(url)
    refused = (f"Error: {url} is unsigned (no administrators in queue.toml): a worker registry would not be "
               "enforced; create a signed queue with gitqueue init --admin NAME=KEY.pub (docs/trust.md)")
    # With a signing key too: the administrator who forgot --admin at init.
    for signing in ((), ("--signing-key", key)):
        assert gq.error(*signing, "worker", "add", "w1", "--key", f"{key}.pub", "--queue", url) == refused
        assert gq.error(*signing, "worker", "revoke", "w1", "--queue", url) == refused
    assert history(url) == before
    # Reading the (empty) registry still works.
    assert gq("worker", "list", "--queue", url).stdout == \
        "no registered workers and no admins: this queue is not signed\n"
    assert gq("worker", "allowed-signers", "--queue", url).stdout == "# gitqueue allowed signers: q\n"


# -- the worker loop ----------------------------------------------------------------------------


def test_work_once_reports_success(tmp_path):
    url = make_queue(tmp_path, CHAIN)
    proc = gitqueue("work", "--once", "--queue", url, "--worker", "w1", "--", "true", env=subprocess_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "w1: building a-1" in proc.stderr and "w1: a-1 success" in proc.stderr
    subjects = git_log(url).splitlines()
    assert subjects[0].startswith("report a-1 (cat/a): success by w1 in ") and subjects[1] == "claim a-1 (cat/a) by w1"
    facts = git_log(url, "%(trailers:key=Gitqueue-Action,key=Gitqueue-Job,key=Gitqueue-Status,valueonly)")
    assert facts.split("\n\n")[0].split() == ["report", "a-1", "success"]
    result = show(url, record_path("results", "a-1"))
    assert result["status"] == "success" and result["log"]["size"] == 0 and "log_tail" not in result
    assert git("-C", url, "ls-tree", "-r", "main", "leases/") == ""


def test_work_once_reports_failure(tmp_path):
    url = make_queue(tmp_path, CHAIN)
    proc = gitqueue("work", "--once", "--queue", url, "--worker", "w1", "--", "false", env=subprocess_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "w1: a-1 failure" in proc.stderr
    facts = git_log(url, "%(trailers:key=Gitqueue-Action,key=Gitqueue-Job,key=Gitqueue-Status,valueonly)")
    assert facts.split("\n\n")[0].split() == ["report", "a-1", "failure"]
    assert show(url, record_path("results", "a-1"))["status"] == "failure"
    # b-1 depended on a-1: nothing is left.
    proc = gitqueue("claim", "--queue", url, "--worker", "w1", env=subprocess_env(tmp_path))
    assert proc.returncode == 4 and proc.stderr == "Error: queue finished: every job has a final state\n"


def test_a_failure_with_colours_in_its_log_is_reported(tmp_path):
    """Build logs hold colours and carriage returns; results refuse controls: the tail is escaped."""
    url = make_queue(tmp_path, CHAIN + [job("c-1")])
    build = "printf 'cc main.c\\r\\n\\033[31merror:\\033[0m no\\n'; exit 1"
    proc = gitqueue("work", "--once", "--queue", url, "--worker", "w1", "--", "sh", "-c", build,
                    env=subprocess_env(tmp_path))
    assert proc.returncode == 0 and "w1: a-1 failure" in proc.stderr, proc.stderr
    result = show(url, record_path("results", "a-1"))
    assert result["log_tail"] == "cc main.c\\x0d\n\\x1b[31merror:\\x1b[0m no\n"
    assert result["log"]["size"] == len("cc main.c\r\n\x1b[31merror:\x1b[0m no\n")  # the log itself as it was
    # A tail of nothing but controls grows fourfold when escaped: its end is kept, within the limit.
    proc = gitqueue("work", "--once", "--queue", url, "--worker", "w1", "--", "sh", "-c",
                    "head -c 5000 /dev/zero; echo the end; exit 1", env=subprocess_env(tmp_path))
    assert proc.returncode == 0 and "w1: c-1 failure" in proc.stderr, proc.stderr
    tail = show(url, record_path("results", "c-1"))["log_tail"]
    assert tail.endswith("\\x00the end\n") and len(tail) <= 4096


def test_work_build_command_sees_the_job(gq, tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("py311-b-2.5", ["a-1"], version="2.5", pkgpath="lang/py-b",
                                                multi_version={"PYTHON_VERSION_REQD": "311"})])
    gq("work", "--once", "--queue", url, "--worker", "w1", "--", "true")
    out = tmp_path / "env.txt"
    script = ('printf "%s\\n" "$GITQUEUE_JOB" "$GITQUEUE_PKGPATH" "$GITQUEUE_VERSION" "$GITQUEUE_LEASE" '
              f'"$GITQUEUE_DEPS" "$PYTHON_VERSION_REQD" > {out}; echo building; exit 3')
    result = gq("work", "--once", "--queue", url, "--worker", "w1", "--", "sh", "-c", script)
    assert "w1: py311-b-2.5 failure" in result.stderr
    name, pkgpath, version, token, deps, pyver = out.read_text().splitlines()
    assert (name, pkgpath, version, deps, pyver) == ("py311-b-2.5", "lang/py-b", "2.5", "a-1", "311")
    assert token == last_trailers(url)["Gitqueue-Lease"] == show(url, record_path("results", name))["token"]
    assert show(url, record_path("results", name))["log_tail"] == "building\n"


def test_a_job_named_like_a_lock_file_is_imported_and_built(gq, tmp_path):
    """flufl.lock is a real Debian source package: a job name names files only, never a git ref."""
    url = tmp_path / "q.git"
    graph = write_jsonl(tmp_path / "debian.jsonl", [
        {"name": "flufl.lock", "version": "8.1.0-1", "deps": []},
        {"name": "mailman3", "version": "3.3.9-1", "deps": ["flufl.lock"]},
    ])
    gq("init", url)
    assert gq("import", url, graph).stdout.startswith("imported 2 jobs")
    gq("work", "--queue", url, "--worker", "w1", "--", "true")
    for name in ("flufl.lock", "mailman3"):
        assert show(url, record_path("results", name))["status"] == "success"
    assert record_path("results", "flufl.lock").endswith("/flufl.lock.toml")
    assert git_log(url).splitlines()[-3:] == \
        ["claim flufl.lock by w1", "import 2 jobs from debian.jsonl", "init queue q"]
    # The history obeys every rule of the layout, as the server's hook would judge it.
    assert gq("verify", url).exit_code == 0


def test_work_when_the_queue_is_finished(gq, tmp_path):
    url = make_queue(tmp_path, [job("a-1", prefailed="skip: broken")])
    result = gq("work", "--queue", url, "--worker", "w1", "--", "true")
    assert "w1: queue finished (0 jobs built here; 0 pushes, 0 rejected)" in result.stderr
    assert git_log(url).splitlines()[0].startswith("import")


def test_work_shows_what_the_server_says_escaped(tmp_path):
    """A server's (or anyone's) message in the worker's lines and its Error line: no raw control."""
    url = make_queue(tmp_path, CHAIN, hook=False)
    # An "ssh" that runs the git command here the first time, then fails with a hostile message.
    ssh = tmp_path / "ssh"
    ssh.write_text(textwrap.dedent("""\
        #!/bin/sh
        n=$(cat "$0.count" 2>/dev/null || echo 0); echo $((n + 1)) > "$0.count"
        if [ "$n" -ge 1 ]; then printf 'busy \\033]0;owned\\007\\033[2J now\\n' >&2; exit 255; fi
        for last; do :; done
        exec sh -c "$last"
        """))
    ssh.chmod(0o755)
    env = {**subprocess_env(tmp_path), "GITQUEUE_SSH_COMMAND": str(ssh), "GITQUEUE_SSH_REUSE": "0",
           "PYTHONPATH": str(REPO)}
    said = "fetch failed: busy \\x1b]0;owned\\x07\\x1b[2J now"
    worker = subprocess.Popen([sys.executable, "-m", "gitqueue", "work", "--queue", f"ssh://localhost{url}",
                               "--worker", "w1", "--", "true"], env={**os.environ, **env}, stderr=subprocess.PIPE,
                              text=True)
    try:
        line = worker.stderr.readline()  # the first fetch worked; the claim's fetch failed
    finally:
        worker.terminate()
        rest = worker.communicate(timeout=30)[1]
    assert line == f"w1: ssh://localhost{url}: {said}; retrying\n", line + rest
    assert "\x1b" not in rest and "\x07" not in rest
    proc = gitqueue("claim", "--queue", f"ssh://localhost{url}", "--worker", "w1", env=env)
    assert proc.returncode == 1 and proc.stderr == f"Error: ssh://localhost{url}: {said}\n"


def test_end_to_end_in_real_processes(tmp_path):
    env = subprocess_env(tmp_path)
    url = tmp_path / "q.git"
    graph = write_jsonl(tmp_path / "g.jsonl", [job("a-1", pkgpath="cat/a"), job("b-1", ["a-1"], pkgpath="cat/b")])
    assert gitqueue("init", url, env=env, check=True).stdout == f"created queue q at {url}\n"
    assert gitqueue("import", url, graph, env=env, check=True).stdout.startswith("imported 2 jobs")
    proc = gitqueue("claim", "--queue", url, "--worker", "w1", env=env, check=True)
    name, pkgpath, token = proc.stdout.rstrip("\n").split("\t")
    assert (name, pkgpath) == ("a-1", "cat/a")
    proc = gitqueue("report", "a-1", "--queue", url, "--worker", "w2", "--status", "success", env=env)
    assert (proc.returncode, proc.stderr) == (5, "Error: a-1 is leased by w1, not by w2; nothing recorded\n")
    proc = gitqueue("report", "a-1", "--queue", url, "--worker", "w1", "--status", "success", "--lease", token,
                    env=env, check=True)
    assert proc.stdout == "a-1: success\n"
    proc = gitqueue("claim", "--queue", url, env=env)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("Error: no worker name given")
    status = json.loads(gitqueue("status", "--queue", url, "--json", env=env, check=True).stdout)
    assert (status["counts"]["success"], status["counts"]["ready"], status["total"]) == (1, 1, 2)


def test_demo_refuses_an_existing_queue_in_one_error_line(gq, tmp_path):
    (tmp_path / "demo" / "queue.git").mkdir(parents=True)
    assert gq.error("demo", tmp_path / "demo") == \
        f"Error: {tmp_path / 'demo' / 'queue.git'} exists already; give another directory or remove it"
