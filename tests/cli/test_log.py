"""`gitqueue log`: a build's log from this host's cache or a package tree on this machine, checked."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import tomli_w
from click.testing import CliRunner

from gitqueue import lease
from gitqueue.cli.main import cli
from gitqueue.layout import record_path
from gitqueue.queue import Queue

from helpers import job, local_commit, make_package_queue, open_queue

UNSET = ("GITQUEUE_QUEUE", "GITQUEUE_WORKER", "GITQUEUE_SSH_COMMAND", "GITQUEUE_BRANCH")
# A failing build as a volunteer's machine runs it: colours, a carriage return, then the error.
FAILING = "printf 'checking for cc... \\033[32myes\\033[0m\\r\\nmaking all\\n'; seq 1 300; echo 'Error: boom'; exit 1"


@pytest.fixture
def gq(tmp_path):
    """Run `gitqueue ARGS` in this process, as the host whose cache is `cache` (default tmp_path/cache)."""
    def run(*args, code=0, cache="cache"):
        env = {"GITQUEUE_CACHE": str(tmp_path / cache), "GITQUEUE_CONFIG": str(tmp_path / "none.toml"),
               **{name: None for name in UNSET}}
        result = CliRunner().invoke(cli, [str(a) for a in args], env=env, prog_name="gitqueue",
                                    catch_exceptions=False)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result

    return run


def work_once(tmp_path, url, command, cache="cache"):
    """`gitqueue work --once` as worker w1 of the host whose cache is `cache`, building with `command`."""
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / cache), "GITQUEUE_CONFIG": str(tmp_path / "none.toml")}
    proc = subprocess.run([sys.executable, "-m", "gitqueue", "work", "--once", "--queue", url, "--worker", "w1",
                           "--max-wait", "0.2", "--", "sh", "-c", command], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_log_of_a_failed_build_on_the_worker_and_on_the_master(gq, tmp_path):
    """The worker's `gitqueue work` fails a build: its host reads the log from its cache; the master
    (another cache, the package tree on its disk) from incoming/TOKEN/, then, once published, from
    logs/JOB/; controls escaped unless --raw; bounded by --tail and --max-bytes."""
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job("a-1")])
    work_once(tmp_path, url, FAILING)
    shown = gq("log", "a-1", "--queue", url).stdout
    assert shown.startswith("checking for cc... \\x1b[32myes\\x1b[0m\\x0d\nmaking all\n1\n2\n")
    assert shown.endswith("300\nError: boom\n") and "\x1b" not in shown
    with Queue(url, str(tmp_path / "cache")) as q:
        [cached] = os.listdir(os.path.join(q.cache_dir, "logs"))
        raw = open(os.path.join(q.cache_dir, "logs", cached), "rb").read()
    assert gq("log", "a-1", "--raw", "--queue", url).stdout_bytes == raw
    # The master: no copy in its cache; the upload, checked against the result.
    [token] = os.listdir(tree / "incoming")
    assert (tree / "incoming" / token / cached).read_bytes() == raw
    assert gq("log", "a-1", "--queue", url, cache="cache-master").stdout == shown
    assert json.loads(gq("publish", "--queue", url, "--json", cache="cache-master").stdout)["removed"] == 1
    assert not (tree / "incoming" / token).exists() and (tree / "logs" / "a-1" / cached).exists()
    result = gq("log", "a-1", "--tail", "2", "--queue", url, cache="cache-master")
    assert (result.stdout, result.stderr) == ("300\nError: boom\n", "")
    # The last 20 bytes start a line; of the last 18, the first line is cut: left out.
    assert gq("log", "a-1", "--max-bytes", "20", "--queue", url).stdout == "299\n300\nError: boom\n"
    result = gq("log", "a-1", "--max-bytes", "18", "--queue", url, cache="cache-master")
    assert result.stdout == "300\nError: boom\n"
    assert result.stderr == (f"gitqueue: the first {len(raw) - 16} of the log's {len(raw)} bytes are left out "
                             f"(--max-bytes); {tree / 'logs' / 'a-1' / cached}\n")


def test_attempts_are_numbered_as_history_numbers_them(gq, tmp_path):
    """A released attempt (no log recorded), then a failure: --attempt picks one; a log only this
    host's cache has (the released build's) is shown from there, and nowhere else."""
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job("a-1")])
    with open_queue(url, tmp_path, host="h0") as q:
        first = lease.claim(q, "w0").lease
        lease.release(q, "w0", "a-1", "not today", decline=False)
    work_once(tmp_path, url, "echo second; exit 1")
    rows = json.loads(gq("history", "a-1", "--queue", url, "--json").stdout)
    assert [(r["attempt"], r["worker"], r["result"]) for r in rows] == [(1, "w0", "released"), (2, "w1", "failure")]
    assert gq("history", "a-1", "--queue", url).stdout.splitlines()[1].split()[2:4] == ["1", "w0"]
    assert gq("log", "a-1", "--attempt", "2", "--queue", url, cache="c2").stdout == "second\n"
    assert gq("log", "a-1", "--queue", url, cache="c2").stdout == "second\n"
    result = gq("log", "a-1", "--attempt", "1", "--queue", url, cache="c2", code=1)
    assert (result.stdout, result.stderr) == ("", f"Error: no log of a-1 (lease {first[:8]}, released by w0): only "
                                                  "a reported result names an uploaded log, and this host's cache "
                                                  "has none\n")
    assert gq("log", "a-1", "--attempt", "3", "--queue", url, code=1).stderr == \
        "Error: a-1 has 2 attempts: no attempt 3 (see gitqueue history)\n"
    # w0's host kept its log of the released build: it reads it.
    with Queue(url, str(tmp_path / "cache-h0")) as q:
        os.makedirs(os.path.join(q.cache_dir, "logs"))
        with open(os.path.join(q.cache_dir, "logs", f"a-1-{first[:8]}.log"), "w") as f:
            f.write("first, given back\n")
    assert gq("log", "a-1", "--attempt", "1", "--queue", url, cache="cache-h0").stdout == "first, given back\n"


def test_log_errors_are_one_line(gq, tmp_path):
    url = make_package_queue(tmp_path, str(tmp_path / "tree"), [job("a-1"), job("b-1")])
    with open_queue(url, tmp_path) as q:
        got = lease.claim(q, "w1")  # building: no log anywhere yet
    other = ({"a-1", "b-1"} - {got.job}).pop()
    for name, line in (("zz-1", "unknown job zz-1: the queue has no job of that name (give its PKGNAME)"),
                       ("../x", "invalid job name '../x'"),
                       (other, f"{other} has not been attempted yet: no log"),
                       (got.job, f"no log of {got.job} (lease {got.lease[:8]}, building by w1): only a "
                                    "reported result names an uploaded log, and this host's cache has none")):
        result = gq("log", name, "--queue", url, code=1)
        assert (result.stdout, result.stderr) == ("", f"Error: {line}\n")


def test_a_log_that_is_not_its_result_s_is_not_shown(gq, tmp_path):
    """Hostile: an upload whose bytes are not the result's, a link where the log should be, a
    result (by a local writer) naming a path or a non-log file: one Error line, nothing printed."""
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job("a-1"), job("b-1"), job("c-1"), job("d-1")])
    secret = os.urandom(8).hex().encode() + b"\n"
    (tmp_path / "secret").write_bytes(secret)
    described = {"name": "x.log", "size": len(secret), "sha256": hashlib.sha256(secret).hexdigest()}
    with open_queue(url, tmp_path) as q:
        tokens = {}
        for _ in range(4):
            got = lease.claim(q, "w1")
            tokens[got.job] = got.lease
            (tree / "incoming" / got.lease).mkdir(parents=True)
            if got.job in ("a-1", "b-1"):
                lease.report(q, "w1", got.job, "failure", log=described)
    # a-1: other bytes of the same size; b-1: a link to the file the result describes.
    (tree / "incoming" / tokens["a-1"] / "x.log").write_bytes(b"x" * len(secret))
    (tree / "incoming" / tokens["b-1"] / "x.log").symlink_to(tmp_path / "secret")
    # c-1 and d-1: results the schema refuses, committed by a local writer.
    for name, log_name in (("c-1", "../../secret"), ("d-1", "passwd")):
        (tree / "incoming" / tokens[name] / "passwd").write_bytes(secret)
        local_commit(url, {record_path("leases", name): None, record_path("results", name): tomli_w.dumps({
            "job": name, "version": "1.0", "status": "failure", "worker": "w1", "token": tokens[name],
            "log": dict(described, name=log_name)}).encode()})
    expected = {
        "a-1": f"the log of a-1: {tree}/incoming/{tokens['a-1']}/x.log does not match the size and SHA-256 its "
               "result recorded; not shown",
        "b-1": f"the log of b-1: x.log is in neither logs/b-1/ nor incoming/{tokens['b-1']}/ of {tree}",
        "c-1": f"{record_path('results', 'c-1')}: log.name: '../../secret' is not a valid value",
        "d-1": f"{record_path('results', 'd-1')}: log.name: 'passwd' is not a valid value"}
    for name, line in expected.items():
        result = gq("log", name, "--queue", url, code=1)
        assert (result.stdout, result.stderr) == ("", f"Error: {line}\n")
    # A link in this host's own log directory is not followed either.
    with Queue(url, str(tmp_path / "cache")) as q:
        os.makedirs(os.path.join(q.cache_dir, "logs"))
        os.symlink(tmp_path / "secret", os.path.join(q.cache_dir, "logs", f"a-1-{tokens['a-1'][:8]}.log"))
    result = gq("log", "a-1", "--queue", url, code=1)
    assert result.stdout == "" and secret.decode() not in result.stderr


def test_on_the_master_the_tree_is_given_as_for_publish(gq, tmp_path):
    """packages_url names the tree as workers reach it (host:/path); on the master --tree names it."""
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, "bulk@master.example.org:/srv/packages/m68k", [job("a-1")])
    log = tmp_path / "a.log"
    log.write_text("a-1 failed\n")
    with open_queue(url, tmp_path) as q:
        token = lease.claim(q, "w1").lease
        (tree / "incoming" / token).mkdir(parents=True)
        (tree / "incoming" / token / "a.log").write_bytes(log.read_bytes())
        lease.report(q, "w1", "a-1", "failure", log={"name": "a.log", "size": log.stat().st_size,
                                                     "sha256": hashlib.sha256(log.read_bytes()).hexdigest()})
    assert gq("log", "a-1", "--tree", tree, "--queue", url).stdout == "a-1 failed\n"


def test_html_copies_the_logs_publish_published_without_being_told_where(gq, tmp_path):
    """Item 4b: a failure's log, uploaded by `gitqueue work` and published into a package tree on
    this machine, is found by `gitqueue html` through the queue's packages_url (no --logs)."""
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job("a-1")])
    work_once(tmp_path, url, "echo 'the compiler said <script>'; exit 1")
    gq("publish", "--queue", url, cache="cache-master")
    [name] = os.listdir(tree / "logs" / "a-1")
    site = tmp_path / "site"
    assert gq("html", site, "--queue", url, cache="cache-master").stdout.endswith(", 1 logs copied\n")
    assert (site / "logs" / "a-1.txt").read_bytes() == (tree / "logs" / "a-1" / name).read_bytes()
    page = (site / "index.html").read_text()
    assert '<a href="logs/a-1.txt">log</a>' in page and "<script>" not in page
