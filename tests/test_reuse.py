"""Up-to-date reuse: a new queue takes the packages an earlier queue built, when they still fit."""

import hashlib
import json
import os

import pytest

from gitqueue import lease, records
from gitqueue.admin import import_jobs, init_queue
from gitqueue.layout import record_path
from gitqueue.queue import Queue
from gitqueue.reuse import previous_successes, up_to_date

from helpers import gitqueue, open_queue, pkg, write_jsonl

OLD = [pkg("a-1.0"), pkg("b-1.0", ["a-1.0"]), pkg("c-1.0", ["b-1.0"]), pkg("d-1.0"), pkg("f-1.0", ["c-1.0"])]
NEW = [pkg("a-1.0"), pkg("b-1.0", ["a-1.0"]), pkg("c-1.1", ["b-1.0"]), pkg("d-1.0"), pkg("e-1.0", ["a-1.0"]),
       pkg("f-1.0", ["c-1.1"])]


def new_queue(tmp_path, name, tree, jobs=None):
    url = str(tmp_path / name)
    with Queue(url, str(tmp_path / f"cache-admin-{name}")) as q:
        init_queue(q, name, packages_url=str(tree))
        if jobs:
            import_jobs(q, jobs, "g.jsonl")
    return url


@pytest.fixture
def earlier(tmp_path):
    """An old queue that built every job, its packages in the tree's All/."""
    tree = tmp_path / "packages"
    (tree / "All").mkdir(parents=True)
    url = new_queue(tmp_path, "old.git", tree, OLD)
    with open_queue(url, tmp_path, host="old") as q:
        for _ in OLD:
            got = lease.claim(q, "w1")
            data = f"package {got.job}".encode()
            (tree / "All" / f"{got.job}.tgz").write_bytes(data)
            lease.report(q, "w1", got.job, "success", packages=[
                {"name": f"{got.job}.tgz", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}])
    (tree / "All" / "d-1.0.tgz").write_bytes(b"rebuilt by hand since")  # its checksum no longer matches
    return url, tree


def test_only_what_is_still_the_same_is_up_to_date(earlier, tmp_path):
    url, tree = earlier
    with open_queue(url, tmp_path, host="reader") as q:
        successes = previous_successes(q.fetch()[1])
    assert sorted(successes) == ["a-1.0", "b-1.0", "c-1.0", "d-1.0", "f-1.0"]
    # c is bumped (so f, whose dependency changed name, builds again too), d's file changed, e is new.
    assert sorted(up_to_date(NEW, successes, str(tree))) == ["a-1.0", "b-1.0"]
    # A dependency that must build keeps its dependents from being up to date.
    tampered = dict(successes, **{"a-1.0": (successes["a-1.0"][0], {**successes["a-1.0"][1], "packages": [
        {**successes["a-1.0"][1]["packages"][0], "sha256": "0" * 64}]})})
    assert up_to_date(NEW, tampered, str(tree)) == {}


def test_the_site_check_gets_pbulks_arguments_and_may_veto(earlier, tmp_path):
    url, tree = earlier
    calls = tmp_path / "calls"
    check = tmp_path / "pkg-up-to-date"
    check.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" != "b-1.0" ]\n')
    check.chmod(0o755)
    with open_queue(url, tmp_path, host="reader") as q:
        successes = previous_successes(q.fetch()[1])
    assert sorted(up_to_date(NEW, successes, str(tree), [str(check)])) == ["a-1.0"]
    assert calls.read_text().splitlines() == ["a-1.0", "b-1.0 a-1.0"]


def test_import_previous_makes_up_to_date_its_own_state(earlier, tmp_path):
    url, tree = earlier
    new = new_queue(tmp_path, "new.git", tree)
    scan = write_jsonl(tmp_path / "new.jsonl", NEW)
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-cli")}
    proc = gitqueue("import", new, scan, "--up-to-date-command", "true", env=env)
    assert proc.returncode == 2 and "--up-to-date-command goes with --previous" in proc.stderr
    proc = gitqueue("import", new, scan, "--previous", url, env=env)
    assert (proc.returncode, proc.stdout) == (0, "imported 6 jobs (4 dependencies, 0 prefailed, 2 up to date)\n")
    status = json.loads(gitqueue("status", "--queue", new, "--json", env=env).stdout)
    assert status["counts"]["up-to-date"] == 2 and status["counts"]["success"] == 0
    with open_queue(new, tmp_path, host="new") as q:
        _, reader = q.fetch()
        result = lease.read_job_record(reader, "results", "b-1.0")
        old = records.loads("result", open_queue(url, tmp_path, host="r2").fetch()[1].read(
            record_path("results", "b-1.0")), "r")
        assert (result["up_to_date"], result["packages"], result["reused"]) == (
            True, old["packages"], {"queue": url, "token": old["token"]})
        built = []
        while True:
            try:
                got = lease.claim(q, "w2")
            except Exception:  # noqa: BLE001 - nothing left
                break
            lease.report(q, "w2", got.job, "success")
            built.append(got.job)
    assert sorted(built) == ["c-1.1", "d-1.0", "e-1.0", "f-1.0"]
    assert gitqueue("verify", new, env=env).returncode == 0
    # publish takes the reused packages as they are: already in All/ with their checksums.
    proc = gitqueue("publish", "--queue", new, "--json", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    published = json.loads(proc.stdout)
    assert published["mismatch"] == [] and published["unproven"] == [] and published["already"] >= 2
    text = gitqueue("html", str(tmp_path / "html"), "--text", "--queue", new, env=env).stdout
    assert "Up to date (an earlier build's package):" in text


def test_the_tree_must_be_a_directory_here(earlier, tmp_path):
    url, _ = earlier
    new = str(tmp_path / "remote-tree.git")
    with Queue(new, str(tmp_path / "cache-admin-rt")) as q:
        init_queue(q, "rt", packages_url="master:/srv/packages")
    scan = write_jsonl(tmp_path / "new.jsonl", NEW)
    proc = gitqueue("import", new, scan, "--previous", url, env={"GITQUEUE_CACHE": str(tmp_path / "c")})
    assert (proc.returncode, proc.stderr) == (1, "Error: --previous needs the queue's packages_url to be a directory "
                                                 "on this machine (the package tree is checked for each reused "
                                                 "package)\n")
    assert os.path.exists(new)


@pytest.mark.ssh
def test_only_an_admin_writes_a_reused_result(tmp_path, sshd):


    from signed_queue import SignedQueue, push, result_record

    sq = SignedQueue(tmp_path).install_hook()
    url = sshd.url(sq.path)
    package = {"name": "a-1.tgz", "size": 3, "sha256": "ab" * 32}
    reused = {"queue": "/srv/queues/old.git", "token": "cd" * 16}
    path, data = result_record("a-1", "w1", "ef" * 16, up_to_date=True, packages=[package], reused=reused)
    proc = push(sq, url, sq.commit({path: data}, "k1"), sshd.ssh_command)
    assert proc.returncode != 0 and "reused from an earlier build, written by a worker" in proc.stderr
    path, data = result_record("a-1", "gitqueue-admin", "ef" * 16, status="failure", packages=[package],
                               reused=reused)
    proc = push(sq, url, sq.commit({path: data}, "alice"), sshd.ssh_command)
    assert proc.returncode != 0 and "is an up-to-date success naming its packages" in proc.stderr
    path, data = result_record("a-1", "gitqueue-admin", "ef" * 16, up_to_date=True, packages=[package],
                               reused=reused)
    proc = push(sq, url, sq.commit({path: data}, "alice"), sshd.ssh_command)
    assert proc.returncode == 0, proc.stderr
