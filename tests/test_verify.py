"""gitqueue verify replays a whole history; real workers over ssh with the hook leave one that passes."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from gitqueue import lease, records
from gitqueue.layout import record_path

from helpers import git_log, gitqueue, job, local_commit, make_queue, open_queue
from signed_queue import SignedQueue


@pytest.mark.ssh
def test_real_workers_over_ssh_with_the_hook_then_verify_and_git_agree(tmp_path, sshd):
    jobs = [job(f"p{i}-1", [f"p{i - 1}-1"] if i % 3 else []) for i in range(9)]
    sq = SignedQueue(tmp_path, jobs).install_hook()
    url = sshd.url(sq.path)
    procs = []
    for worker, key in (("w1", "k1"), ("w2", "k2")):
        env = dict(os.environ, GITQUEUE_CACHE=str(tmp_path / f"cache-{worker}"),
                   GITQUEUE_SSH_COMMAND=sshd.ssh_command, GITQUEUE_SIGNING_KEY=str(sq.keys[key]))
        procs.append(subprocess.Popen([sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", worker,
                                       "--max-wait", "0.2", "--", "true"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert git_log(sq.path, "%B").count("Gitqueue-Action: report") == len(jobs)

    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-verify"), "GITQUEUE_SSH_COMMAND": sshd.ssh_command}
    proc = gitqueue("verify", url, "--admin-key", f"{sq.keys['alice']}.pub", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(f"{len(jobs)} claims, {len(jobs)} results (0 late), 0 reclaims")
    assert lines[1].startswith("signed commits: ") and "alice 6" in lines[1] and "; unsigned: 0" in lines[1]
    assert lines[-1] == "violations: 0"

    # Plain git agrees: every commit has a good signature.
    signers = tmp_path / "allowed_signers"
    gitqueue("worker", "allowed-signers", "-o", signers, "--queue", sq.path, env=env, check=True)
    shown = subprocess.run(["git", "-C", sq.path, "-c", f"gpg.ssh.allowedSignersFile={signers}", "log",
                            "--show-signature", "main"], capture_output=True, text=True, check=True).stdout
    commits = shown.count("\ncommit ") + 1
    assert shown.count('Good "git" signature for ') == commits, shown[:2000]

    # Pinning another administrator key fails on the first commit.
    proc = gitqueue("verify", sq.path, "--admin-key", f"{sq.keys['k1']}.pub", env=env)
    assert proc.returncode == 1
    root = subprocess.run(["git", "-C", sq.path, "rev-list", "--max-parents=0", "main"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert proc.stderr == (f"Error: commit {root}: the first commit is not signed by the pinned administrator "
                           f"key {sq.signers['k1'].fingerprint} [signature]\n")


def test_verify_names_the_first_violation_and_its_commit(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1")])
    with open_queue(url, tmp_path) as q:
        assert lease.claim(q, "w1").job in ("a-1", "b-1")
    with open_queue(url, tmp_path) as q:
        held = next(iter(q.index.my_claims("w1")))
    bad = local_commit(url, {record_path("results", held): records.dumps(
        "result", {"job": held, "version": "1.0", "status": "success", "worker": "w2", "token": "ef" * 16})})
    local_commit(url, {"junk.txt": b"x"})
    proc = gitqueue("verify", url)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1] == "violations: 2"
    assert proc.stderr == (f"Error: commit {bad} {record_path('results', held)}: result for {held} by w2, "
                           "but the lease is held by w1 [result]\n")
    data = json.loads(gitqueue("verify", url, "--json").stdout)
    assert data["first_violation"] == {"commit": bad, "path": record_path("results", held), "rule": "result",
                                       "message": f"result for {held} by w2, but the lease is held by w1"}
    assert data["violations"][1].endswith("junk.txt: outside the queue layout [layout]")


def test_verify_finds_a_reused_lease_token(tmp_path):
    url = make_queue(tmp_path, [job("a-1")])
    with open_queue(url, tmp_path) as q:
        token = lease.claim(q, "w1").lease
        lease.release(q, "w1", "a-1", decline=False)
    again = local_commit(url, {record_path("leases", "a-1"): records.dumps(
        "lease", {"job": "a-1", "worker": "w1", "token": token})})
    proc = gitqueue("verify", url)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: commit {again} {record_path('leases', 'a-1')}: lease token {token} was used "
                           "before (by w1) [token]\n")


def test_verify_checks_packages_against_the_tree(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("b-1")])
    content = b"a package\n"
    package = {"name": "a-1.tgz", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    other = {"name": "b-1.tgz", "size": 3, "sha256": "0" * 64}
    with open_queue(url, tmp_path) as q:
        for _ in range(2):
            got = lease.claim(q, "w1")
            lease.report(q, "w1", got.job, "success", packages=[package if got.job == "a-1" else other])
    tree = tmp_path / "packages"
    (tree / "All").mkdir(parents=True)
    (tree / "All" / "a-1.tgz").write_bytes(content)
    proc = gitqueue("verify", url, "--packages", tree)
    assert proc.returncode == 0, proc.stderr
    assert "packages: 1 match their results, 1 not reachable" in proc.stdout
    (tree / "All" / "a-1.tgz").write_bytes(b"a package, changed\n")
    proc = gitqueue("verify", url, "--packages", tree)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: commit ") and "a-1: " in proc.stderr and "[package]" in proc.stderr
    assert "bytes, the result says 10" in proc.stderr


def test_an_unsigned_queue_verifies_without_signatures(tmp_path):
    url = make_queue(tmp_path, [job("a-1")])
    with open_queue(url, tmp_path) as q:
        got = lease.claim(q, "w1")
        lease.report(q, "w1", got.job, "success")
    proc = gitqueue("verify", "--queue", url)
    assert proc.returncode == 0
    assert proc.stdout == ("4 commits: 1 claims, 1 results (0 late), 0 reclaims\n"
                           "unsigned queue: no signatures to check (4 unsigned commits)\nviolations: 0\n")


def test_verify_refuses_a_lease_on_a_prefailed_job(tmp_path):
    url = make_queue(tmp_path, [job("a-1"), job("broken-1", prefailed="broken: needs rust")])
    bad = local_commit(url, {record_path("leases", "broken-1"): records.dumps(
        "lease", {"job": "broken-1", "worker": "w1", "token": "ab" * 16})})
    proc = gitqueue("verify", url)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: commit {bad} {record_path('leases', 'broken-1')}: lease on broken-1, which is "
                           "prefailed (broken: needs rust) [lease]\n")


def test_verify_packages_follows_no_link(tmp_path):
    """A link where a package should be is not the package: not reachable, never read (a FIFO
    behind it would hang verify, a file outside would be checked in its place)."""
    url = make_queue(tmp_path, [job("a-1"), job("b-1")])
    contents = {"a-1": b"package a\n", "b-1": b"package b\n"}
    tokens = {}
    with open_queue(url, tmp_path) as q:
        for _ in range(2):
            got = lease.claim(q, "w1")
            data = contents[got.job]
            tokens[got.job] = got.lease
            lease.report(q, "w1", got.job, "success", packages=[
                {"name": f"{got.job}.tgz", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}])
    tree = tmp_path / "packages"
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, data in contents.items():
        (outside / f"{name}.tgz").write_bytes(data)
    (tree / "All").mkdir(parents=True)
    (tree / "All" / "a-1.tgz").symlink_to(outside / "a-1.tgz")  # the right bytes, behind a link
    (tree / "incoming").mkdir()
    (tree / "incoming" / tokens["b-1"]).symlink_to(outside)  # the upload directory is a link
    os.mkfifo(tree / "All" / "b-1.tgz")
    proc = gitqueue("verify", url, "--packages", tree, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "packages: 0 match their results, 2 not reachable" in proc.stdout
    data = json.loads(gitqueue("verify", url, "--packages", tree, "--json", timeout=60).stdout)
    assert sorted(data["packages_unreachable"]) == ["a-1: a-1.tgz", "b-1: b-1.tgz"]


def test_a_removed_directory_is_judged_entry_by_entry(tmp_path):
    """Removing a whole directory removes each record in it, judged by its own name in its place:
    heartbeats are never removed; what a local writer left outside the layout an admin may clear."""
    url = make_queue(tmp_path, [job("a-1")])
    with open_queue(url, tmp_path) as q:
        lease.claim(q, "w1")
    local_commit(url, {"heartbeats": None})
    proc = gitqueue("verify", url)
    assert proc.returncode == 1 and "heartbeats/w1.toml: heartbeat removed" in proc.stderr, proc.stderr


def test_an_admin_may_clear_what_a_local_writer_left(tmp_path):
    url = make_queue(tmp_path, [job("a-1")])
    from dulwich.objects import Blob, Tree
    from dulwich.repo import Repo

    from gitqueue.gitstore import make_commit

    with Repo(url) as repo:  # a local writer's junk: a directory with a name that is a path
        tip = repo.refs[b"refs/heads/main"]
        blob = Blob.from_string(b"junk")
        inner = Tree()
        inner.add(b"leases/00/x.toml", 0o100644, blob.id)
        root = Tree.from_raw_string(Tree.type_num, repo.object_store[repo.object_store[tip].tree].as_raw_string())
        root.add(b"junk", 0o40000, inner.id)
        for o in (blob, inner, root):
            repo.object_store.add_object(o)
        c = make_commit(root.id, tip, "junk", "mallory <m@gitqueue>")
        repo.object_store.add_object(c)
        repo.refs[b"refs/heads/main"] = c.id
    local_commit(url, {"junk": None})
    proc = gitqueue("verify", url, "--json")
    data = json.loads(proc.stdout)
    # The junk commit is the one violation; clearing it (an unsigned queue: anyone is an admin) is not.
    assert len(data["violations"]) == 1 and data["violations"][0].endswith("junk: outside the queue layout [layout]")


def test_verify_judges_each_graph_from_the_last_one_it_checked(tmp_path):
    """The import's graph.tsv is checked against every record; a later one is judged from it and
    the job records its own commit changes, and still found wrong: a line left stale for a
    changed job, or records that make a dependency cycle."""
    from gitqueue import graph
    from gitqueue.layout import GRAPH

    def stale_commit(name, changes):
        """A local writer's commit of `changes` with the import's graph.tsv naming the new tree."""
        url = make_queue(tmp_path, [job("a-1"), job("b-1", ["a-1"]), job("c-1", ["b-1"])], name=name, hook=False)
        with open_queue(url, tmp_path) as q:
            reader = q.remote.reader(q.remote.fetch())
            rows = graph.parse(reader.read(GRAPH))[1]
            changes[GRAPH] = graph.render(rows, graph.inputs_of(reader, changes))
        return url, local_commit(url, changes)

    url, bad = stale_commit("q1.git", {record_path("jobs", "b-1"): records.dumps("job", job("b-1", ["a-1"], "2.0"))})
    proc = gitqueue("verify", url)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: commit {bad} graph.tsv: job b-1 does not match its record (version, package "
                           "path, skip or dependencies) [graph]\n")

    url, bad = stale_commit("q2.git", {record_path("jobs", "a-1"): records.dumps("job", job("a-1", ["c-1"]))})
    proc = gitqueue("verify", url)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: commit {bad} graph.tsv: the records it describes are invalid: jobs: dependency "
                           "cycle a-1 -> c-1 -> b-1 -> a-1 [graph]\n")


def test_a_state_carried_through_a_history_judges_as_one_made_from_the_parent(tmp_path):
    """What a State keeps from commit to commit (parsed records and trees, live leases, the
    graph.tsv it checked) changes no verdict: each commit of a history with claims, reports,
    declines, an update and a local writer's bad commits gets the violations that a State made
    from its parent's tree alone finds."""
    from dulwich.repo import Repo

    from gitqueue import admin, rules
    from gitqueue.errors import NothingReady, QueueFinished

    jobs = [job("a-1"), job("b-1", ["a-1"]), job("c-1", ["b-1"]), job("d-1"), job("e-1", ["d-1"])]
    url = make_queue(tmp_path, jobs, hook=False)
    with open_queue(url, tmp_path) as q:
        first = lease.claim(q, "w1")
        lease.release(q, "w1", first.job, decline=True)
        for _ in range(3):
            try:
                got = lease.claim(q, "w2")
            except (NothingReady, QueueFinished):
                break
            lease.report(q, "w2", got.job, "success", duration=1)
        lease.claim(q, "w3")  # fenced by the update
        admin.update_jobs(q, [dict(j, version="2.0") if j["name"] == "a-1" else j for j in jobs], "scan2")
        q.sync()  # claim by the new graph's priorities, not by the old index's (Index.defer_graph)
        while (got := lease.claim(q, "w2")).job != "a-1":
            lease.report(q, "w2", got.job, "success", duration=1)
        lease.report(q, "w2", "a-1", "failure", duration=1)  # where the update took a success away
    # A result nobody holds; a claim of a job whose dependency failed, after its success was set
    # aside (same path, another record); a lease given back by a local writer.
    local_commit(url, {record_path("results", "c-1"): records.dumps(
        "result", {"job": "c-1", "version": "1.0", "status": "success", "worker": "w9", "token": "ab" * 16})})
    local_commit(url, {record_path("leases", "b-1"): records.dumps(
        "lease", {"job": "b-1", "worker": "w1", "token": "cd" * 16})})
    local_commit(url, {record_path("leases", "b-1"): None})
    # A success rewritten into garbage, then a claim that needs it.
    local_commit(url, {record_path("results", "d-1"): b'job = "d-1"\nstatus = 7\n'})
    local_commit(url, {record_path("leases", "e-1"): records.dumps(
        "lease", {"job": "e-1", "worker": "w1", "token": "ef" * 16})})
    with Repo(url) as repo:
        store = repo.object_store
        chain = rules.first_parent_chain(store, None, repo.refs[b"refs/heads/main"])
        carried = rules.State(store, None)
        judged = []
        for commit in chain:
            verdict = rules.check_commit(store, carried, commit)
            fresh = rules.State(store, store[commit.parents[0]].tree if commit.parents else None)
            assert [str(v) for v in verdict.violations] == \
                [str(v) for v in rules.check_commit(store, fresh, commit).violations], commit.message
            judged.append([f"{v.path}: {v.message}" for v in verdict.violations])
            carried.advance(commit, verdict)
    assert not any(judged[:-5])
    assert judged[-5:] == [
        [f"{record_path('results', 'c-1')}: result for c-1 by w9, who does not hold it (without a lease only a "
         "success marked late = true is kept)"],
        [f"{record_path('leases', 'b-1')}: b-1 depends on a-1, which has no success result"],
        [],
        [f"{record_path('results', 'd-1')}: missing required key 'worker'"],
        [f"{record_path('leases', 'e-1')}: e-1 depends on d-1, which has no success result"]], judged[-5:]
