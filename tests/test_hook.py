"""The pre-receive hook refuses hostile pushes over a real sshd, and lets the protocol through."""

import contextlib
import os
import subprocess

import pytest
from dulwich.objects import Blob, Tree

from gitqueue import lease, records
from gitqueue.errors import GitqueueError
from gitqueue.hook import MARKER, install, script
from gitqueue.layout import record_path, shard

from helpers import REPO, gitqueue
from signed_queue import SignedQueue, heartbeat_record, lease_record, push, result_record

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, sshd):
    """A signed queue with the hook installed, where w1 holds a-1 (claimed over ssh, signed)."""
    sq = SignedQueue(tmp_path_factory.mktemp("hostile"))
    install(sq.path, __import__("sys").executable, package_dir=str(REPO))
    sq.url = sshd.url(sq.path)
    with sq.queue("k1", sq.url, sshd.ssh_command) as q:
        got = lease.claim(q, "w1")
    assert got.job in ("a-1", "b-1")
    if got.job != "a-1":
        with sq.queue("k1", sq.url, sshd.ssh_command) as q:
            lease.release(q, "w1", got.job, decline=False)
            got = lease.claim(q, "w1")
    assert got.job == "a-1"
    sq.a1_token = got.lease
    return sq


def refused(sq, sshd, sha, expected, ref="refs/heads/main", force=False):
    """Push `sha`; assert git reports the refusal and `expected` as a remote: line, and nothing moved."""
    before = sq.tip()
    proc = push(sq, sq.url, sha, sshd.ssh_command, ref, force)
    assert proc.returncode != 0, proc.stderr
    remote = [line for line in proc.stderr.splitlines() if line.startswith("remote: gitqueue: ")]
    assert remote and remote[0].startswith("remote: gitqueue: push refused"), proc.stderr
    assert any(expected in line for line in remote), proc.stderr
    assert "pre-receive hook declined" in proc.stderr
    assert sq.tip() == before
    refs = subprocess.run(["git", "-C", sq.path, "for-each-ref", "--format=%(refname)"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert refs == ["refs/heads/main"]
    return remote


def test_a_good_signed_commit_passes(hostile, sshd):
    path, data = heartbeat_record("w2", seq=7)
    sha = hostile.commit({path: data}, "k2", "heartbeat w2")
    proc = push(hostile, hostile.url, sha, sshd.ssh_command)
    assert proc.returncode == 0, proc.stderr
    assert hostile.tip() == sha


def test_unsigned_commit(hostile, sshd):
    sha = hostile.commit(dict([heartbeat_record("w1", 9)]), None)
    refused(hostile, sshd, sha, "commit is not signed, and every commit of a signed queue must be [signature]")


def test_forged_signature_tampered_after_signing(hostile, sshd):
    from dulwich.repo import Repo

    sha = hostile.commit(dict([heartbeat_record("w1", 9)]), "k1", "heartbeat w1")
    with Repo(hostile.client) as repo:
        c = repo.object_store[sha]
        c.message = b"heartbeat w1, and something else\n"  # the signature stays, the content changed
        repo.object_store.add_object(c)
        forged = c.id
    refused(hostile, sshd, forged, "bad signature by w1")


def test_forged_signature_of_another_key(hostile, sshd):
    """w2's commit carrying a signature that w1's key made over other data."""
    from dulwich.repo import Repo

    donor = hostile.commit(dict([heartbeat_record("w1", 9)]), "k1", "heartbeat w1")
    sha = hostile.commit(dict([heartbeat_record("w1", 10)]), None, "heartbeat w1")
    with Repo(hostile.client) as repo:
        c = repo.object_store[sha]
        c.gpgsig = repo.object_store[donor].gpgsig
        repo.object_store.add_object(c)
        forged = c.id
    refused(hostile, sshd, forged, "bad signature by w1")


def test_unregistered_key(hostile, sshd):
    sha = hostile.commit(dict([heartbeat_record("w1", 9)]), "stranger")
    refused(hostile, sshd, sha, "which is neither an administrator's key nor a registered worker's [signature]")


def test_revoked_key(hostile, sshd):
    sha = hostile.commit(dict([heartbeat_record("w3", 1)]), "k3")
    refused(hostile, sshd, sha, "the revoked key of w3 [signature]")


def test_signer_is_not_the_worker_named(hostile, sshd):
    sha = hostile.commit(dict([heartbeat_record("w1", 9)]), "k2")
    refused(hostile, sshd, sha, "heartbeats/w1.toml: heartbeat of w1: signed by")


def test_overwriting_another_workers_lease(hostile, sshd):
    path, data = lease_record("a-1", "w2")
    sha = hostile.commit({path: data}, "k2")
    refused(hostile, sshd, sha, f"{path}: lease on a-1 rewritten: a lease is only ever added or removed [lease]")


def test_removing_another_workers_lease(hostile, sshd):
    sha = hostile.commit({record_path("leases", "a-1"): None}, "k2")
    refused(hostile, sshd, sha, "lease of w1 on a-1 removed by")


def test_replaying_an_old_commit(hostile, sshd):
    old = subprocess.run(["git", "-C", hostile.path, "rev-parse", "main~1"], capture_output=True, text=True,
                         check=True).stdout.strip().encode()
    refused(hostile, sshd, old, "not a fast-forward", force=True)


def test_replaying_an_old_lease_commit_on_the_new_tip(hostile, sshd):
    """The signed claim commit of a-1, its parent changed to the current tip: the signature breaks."""
    from dulwich.repo import Repo

    claim = subprocess.run(["git", "-C", hostile.path, "log", "--format=%H", "--grep=^claim a-1", "main"],
                           capture_output=True, text=True, check=True).stdout.split()[0].encode()
    with Repo(hostile.client) as repo:
        c = repo.object_store[claim]
        c.parents = [hostile.tip()]
        repo.object_store.add_object(c)
        replayed = c.id
    refused(hostile, sshd, replayed, "bad signature by w1")


def test_force_push(hostile, sshd):
    parent = subprocess.run(["git", "-C", hostile.path, "rev-parse", "main~1"], capture_output=True, text=True,
                            check=True).stdout.strip().encode()
    sha = hostile.commit(dict([heartbeat_record("w2", 99)]), "k2", parent=parent)
    refused(hostile, sshd, sha, "not a fast-forward", force=True)


def test_deleting_the_branch(hostile, sshd):
    refused(hostile, sshd, b"", "deleting the queue branch is refused")


def test_another_ref(hostile, sshd):
    sha = hostile.commit(dict([heartbeat_record("w2", 8)]), "k2")
    refused(hostile, sshd, sha, "refs/heads/evil: only refs/heads/main may be pushed", ref="refs/heads/evil")


def _nested(store, names, leaf_name, blob):
    """A chain of trees names[0]/names[1]/.../leaf_name -> blob; returns (top tree, objects)."""
    objects = [blob]
    sha, mode = blob.id, 0o100644
    name = leaf_name
    for parent in reversed(names):
        t = Tree()
        t.add(name, mode, sha)
        objects.append(t)
        sha, mode, name = t.id, 0o40000, parent
    return name, sha, objects


@contextlib.contextmanager
def fsck_off(sq):
    """Let git's own object checks (receive.fsckObjects, set by hooks install) pass everything, so
    that the hook alone judges the push."""
    subprocess.run(["git", "-C", sq.path, "config", "receive.fsckObjects", "false"], check=True)
    try:
        yield
    finally:
        subprocess.run(["git", "-C", sq.path, "config", "receive.fsckObjects", "true"], check=True)


def test_path_traversal_in_a_job_name(hostile, sshd):
    path, data = lease_record("a-1", "w2")

    def raw_tree(store, base):
        root = Tree.from_raw_string(Tree.type_num, store[base].as_raw_string())
        jobs = Tree.from_raw_string(Tree.type_num, store[root[b"jobs"][1]].as_raw_string())
        name, sha, objects = _nested(store, [b"xx", b"..", b".."], b"x", Blob.from_string(data))
        jobs.add(name, 0o40000, sha)
        root.add(b"jobs", 0o40000, jobs.id)
        return root.id, objects + [jobs, root]

    sha = hostile.commit({}, "alice", raw_tree=raw_tree)
    # git itself refuses the '..' entry (receive.fsckObjects), and the hook does too.
    before = hostile.tip()
    proc = push(hostile, hostile.url, sha, sshd.ssh_command)
    assert proc.returncode != 0 and "hasDotdot: contains '..'" in proc.stderr, proc.stderr
    assert hostile.tip() == before
    with fsck_off(hostile):
        refused(hostile, sshd, sha, "jobs/xx: outside the queue layout: not a shard directory (two hex digits) "
                                    "[layout]")


def test_path_traversal_in_a_lease_name(hostile, sshd):
    bad = f"leases/{shard('.')}/..toml"
    sha = hostile.commit({bad: lease_record("a-1", "w2")[1]}, "k2")
    refused(hostile, sshd, sha, f"{bad}: outside the queue layout: not a valid job name [layout]")


def test_a_job_record_in_the_wrong_shard(hostile, sshd):
    sha = hostile.commit({"jobs/zz/b-1.toml": records.dumps("job", {"name": "b-1", "version": "1", "deps": []})},
                         "alice")
    refused(hostile, sshd, sha, "jobs/zz: outside the queue layout: not a shard directory (two hex digits) "
                                "[layout]")


def test_an_executable_or_symlink_record(hostile, sshd):
    path, data = heartbeat_record("w2", 12)

    def raw_tree(store, base):
        root = Tree.from_raw_string(Tree.type_num, store[base].as_raw_string())
        hb = Tree.from_raw_string(Tree.type_num, store[root[b"heartbeats"][1]].as_raw_string())
        blob = Blob.from_string(b"/etc/passwd")
        hb.add(b"w2.toml", 0o120000, blob.id)
        root.add(b"heartbeats", 0o40000, hb.id)
        return root.id, [blob, hb, root]

    sha = hostile.commit({}, "k2", raw_tree=raw_tree)
    refused(hostile, sshd, sha, "heartbeats/w2.toml: mode 120000: records are plain files (100644) [layout]")


def test_an_oversized_file(hostile, sshd):
    path, data = heartbeat_record("w2", 13)
    big = data + b"# " + b"x" * 70000 + b"\n"
    sha = hostile.commit({path: big}, "k2")
    refused(hostile, sshd, sha, f"{path}: {len(big)} bytes, more than max_record_bytes (65536) [size]")


def test_a_result_without_holding_the_lease(hostile, sshd):
    path, data = result_record("a-1", "w2")
    sha = hostile.commit({path: data, record_path("leases", "a-1"): None}, "k2")
    refused(hostile, sshd, sha, "lease of w1 on a-1 removed by")
    sha = hostile.commit({path: data}, "k2")
    refused(hostile, sshd, sha, "result for a-1 by w2, but the lease is held by w1 [result]")
    path, data = result_record("b-1", "w2", status="failure")
    sha = hostile.commit({path: data}, "k2")
    refused(hostile, sshd, sha, "result for b-1 by w2, who does not hold it")


def test_a_result_whose_dependencies_are_not_built(hostile, sshd):
    path, data = result_record("c-1", "w2", late=True)
    sha = hostile.commit({path: data}, "k2")
    refused(hostile, sshd, sha, "late result for c-1 by w2 under token " + "ab" * 16 + ", which is no lease of "
                                "theirs that was reclaimed [result]")
    path, data = lease_record("c-1", "w2")
    sha = hostile.commit({path: data}, "k2")
    refused(hostile, sshd, sha, "c-1 depends on a-1, which has no success result [lease]")


def test_a_second_lease_on_a_job(hostile, sshd):
    """A lease on a job that has a result is refused too (a second live lease cannot be added: the
    path exists, so it would be a rewrite)."""
    path, data = lease_record("a-1", "w1", token="cd" * 16)
    sha = hostile.commit({path: data}, "k1")
    refused(hostile, sshd, sha, "lease on a-1 rewritten")


def test_a_decline_naming_another_lease_token(hostile, sshd):
    """A transient failure's decline entry names the lease it gives back: a retried report is
    answered by that token, so it must be the released lease's."""
    path = record_path("declines", "a-1")
    entry = {"worker": "w1", "reason": "transient failure, attempt 1 of 3", "transient": True, "token": "cd" * 16}
    declines = records.dumps("decline", {"job": "a-1", "declined": [entry]})
    sha = hostile.commit({path: declines, record_path("leases", "a-1"): None}, "k1", "release a-1")
    refused(hostile, sshd, sha, f"{path}: w1 declines a-1 under token {'cd' * 16}, which is not the token of the "
                                "lease it gives back [decline]")


def test_a_schema_invalid_record(hostile, sshd):
    path = "heartbeats/w2.toml"
    sha = hostile.commit({path: b'worker = "w2"\nseq = "many"\n'}, "k2")
    refused(hostile, sshd, sha, f"{path}: seq: expected an integer, got 'many' [schema]")


def test_an_administrative_record_by_a_worker(hostile, sshd):
    sha = hostile.commit({"priority.toml": records.dumps("priority", {"packages": ["b-1"]})}, "k1")
    refused(hostile, sshd, sha, "priority.toml: administrative record added by")
    rec = {"name": "w1", "key": hostile.signers["stranger"].public_key}
    sha = hostile.commit({"workers/w1.toml": records.dumps("worker", rec)}, "k1")
    refused(hostile, sshd, sha, "workers/w1.toml: administrative record changed by")


def test_the_graph_is_an_administrators_and_must_match_the_records(hostile, sshd):
    from gitqueue import graph

    with hostile.queue("alice") as q:
        reader = q.remote.reader(q.remote.fetch())
        data = reader.read("graph.tsv")
        inputs, rows = graph.parse(data)
    twisted = graph.render([r._replace(deps="") for r in rows], inputs)  # c-1 no longer waits for a-1
    sha = hostile.commit({"graph.tsv": twisted}, "k1")
    refused(hostile, sshd, sha, "graph.tsv: administrative record changed by")
    sha = hostile.commit({"graph.tsv": twisted}, "alice")
    refused(hostile, sshd, sha, "graph.tsv: job c-1 does not match its record")


def test_a_merge_commit(hostile, sshd):
    from dulwich.repo import Repo

    side = hostile.commit(dict([heartbeat_record("w2", 20)]), "k2")
    with Repo(hostile.client) as repo:
        c = repo.object_store[hostile.commit(dict([heartbeat_record("w2", 21)]), None)]
        c.parents = [hostile.tip(), side]
        from gitqueue.signing import sign_commit

        sign_commit(c, hostile.signers["k2"])
        repo.object_store.add_object(c)
        merge = c.id
    refused(hostile, sshd, merge, "merge commit with 2 parents")


def test_the_real_client_sees_why(hostile, sshd, tmp_path):
    """gitqueue itself, pushing with a key that is not registered, gets the hook's reason in its error."""
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_SSH_COMMAND": sshd.ssh_command}
    proc = gitqueue("--signing-key", hostile.keys["stranger"], "heartbeat", "--queue", hostile.url,
                    "--worker", "w2", env=env)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "neither an administrator's key nor a registered worker's" in line, line


# -- a build's fields: phase logs, failed phase, up to date, installed packages -----------------------


def _raw_result(sq, **fields) -> bytes:
    """a-1's result by w1 under its lease, with `fields`, as TOML bytes that no schema checked."""
    import tomli_w

    rec = {"job": "a-1", "version": "1.0", "status": "failure", "worker": "w1", "token": sq.a1_token, **fields}
    return tomli_w.dumps(rec).encode()


_LOG = {"size": 10, "sha256": "0" * 64}


@pytest.mark.parametrize("fields, expected", [
    ({"phase_logs": [{"name": "../configure.log", **_LOG}]},
     "phase_logs[0].name: '../configure.log' is not a valid value [schema]"),
    ({"phase_logs": [{"name": "a/configure.log", **_LOG}]},
     "phase_logs[0].name: 'a/configure.log' is not a valid value [schema]"),
    ({"phase_logs": [{"name": "configure.html", **_LOG}]},
     "phase_logs[0].name: 'configure.html' is not a valid value [schema]"),
    ({"phase_logs": [{"name": f"p{i}.log", **_LOG} for i in range(33)]}, "phase_logs: more than 32 items [schema]"),
    ({"failed_phase": "../configure"}, "failed_phase: '../configure' is not a valid value [schema]"),
    ({"failed_phase": "conf/igure"}, "failed_phase: 'conf/igure' is not a valid value [schema]"),
    ({"failed_phase": "<b>configure</b>"}, "failed_phase: '<b>configure</b>' is not a valid value [schema]"),
    ({"installed": [{"name": f"p{i}-1.tgz", "sha256": "0" * 64} for i in range(513)]},
     "installed: more than 512 items [schema]"),
    ({"installed": [{"name": "../../All/x-1.tgz", "sha256": "0" * 64}]},
     "installed[0].name: '../../All/x-1.tgz' is not a valid value [schema]"),
    ({"up_to_date": True}, "a failure marked up_to_date: only a success can be up to date [result]"),
    ({"installed": [{"name": "b-1.tgz", "sha256": "0" * 64}]},
     "a-1 lists b-1.tgz as installed, which no result of its dependencies names with that SHA-256 [result]"),
    ({"status": "success", "failed_phase": "configure"}, "a success naming the failed phase configure [result]"),
    ({"log": {"name": "configure.log", **_LOG}, "phase_logs": [{"name": "configure.log", **_LOG}]},
     "the result names configure.log twice among its packages and logs [result]"),
])
def test_hostile_build_fields(hostile, sshd, fields, expected):
    path = record_path("results", "a-1")
    sha = hostile.commit({path: _raw_result(hostile, **fields), record_path("leases", "a-1"): None}, "k1",
                         "report a-1")
    refused(hostile, sshd, sha, f"{path}: {expected}")


def test_the_hook_takes_a_failure_in_a_phase_from_a_real_worker(hostile, sshd, tmp_path):
    """gitqueue work over ssh, signed: a build that fails in configure is recorded with its phase
    logs and failed phase, through the hook. (Last in this module: b-1 gets its result.)"""
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-w2"), "GITQUEUE_SIGNING_KEY": str(hostile.keys["k2"]),
           "GITQUEUE_SSH_COMMAND": sshd.ssh_command}
    script = ('cd "$GITQUEUE_LOGS" && echo cleaned > pre-clean.log && echo ok > checksum.log && '
              'echo "configure: error: no libfoo" > configure.log && exit 1')
    proc = gitqueue("work", "--queue", hostile.url, "--worker", "w2", "--once", "--", "sh", "-c", script, env=env,
                    timeout=120)
    assert proc.returncode == 0, proc.stderr
    rec = records.load_at("result", hostile.read(record_path("results", "b-1")), record_path("results", "b-1"))
    assert rec["status"] == "failure" and rec["failed_phase"] == "configure"
    assert [p["name"] for p in rec["phase_logs"]] == ["pre-clean.log", "checksum.log", "configure.log"]
    assert rec["log_tail"] == "configure: error: no libfoo\n"
    log = subprocess.run(["git", "-C", hostile.path, "log", "-1", "--format=%(trailers:key=Gitqueue-Failed-Phase)"],
                         capture_output=True, text=True, check=True).stdout
    assert "Gitqueue-Failed-Phase: configure" in log
    # and `gitqueue verify`, replaying the whole history by the same rules, takes it too.
    proc = gitqueue("verify", hostile.path, "--admin-key", f"{hostile.keys['alice']}.pub",
                    env={"GITQUEUE_CACHE": str(tmp_path / "cache-verify")})
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- installing ------------------------------------------------------------------------------------


def test_install_is_idempotent_and_refuses_a_foreign_hook(tmp_path):
    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    first = install(str(repo), "/usr/bin/python3", package_dir="/opt/gq")
    text = open(first).read()
    assert install(str(repo), "/usr/bin/python3", package_dir="/opt/gq") == first
    assert open(first).read() == text and MARKER in text and os.access(first, os.X_OK)
    assert text.startswith("#!/usr/bin/python3\n") and "sys.path.insert(0, '/opt/gq')" in text
    with open(first, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    with pytest.raises(GitqueueError, match="was not written by gitqueue; move it away or pass --force"):
        install(str(repo), "/usr/bin/python3")
    install(str(repo), "/usr/bin/python3", force=True)
    assert MARKER in open(first).read()
    with pytest.raises(GitqueueError, match="not a bare git repository"):
        install(str(tmp_path), "/usr/bin/python3")


def test_the_shipped_hook_is_the_installed_one():
    assert (REPO / "hooks" / "pre-receive").read_text() == script("/usr/bin/env python3")


def test_hooks_install_command(tmp_path):
    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    proc = gitqueue("hooks", "install", repo)
    assert proc.returncode == 0 and proc.stdout == f"installed {repo}/hooks/pre-receive\n", proc.stderr
    (repo / "hooks" / "pre-receive").write_text("#!/bin/sh\n")
    proc = gitqueue("hooks", "install", repo)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: {repo}/hooks/pre-receive exists and was not written by gitqueue; "
                           "move it away or pass --force\n")


def test_a_revoked_worker_stops_instead_of_retrying_forever(tmp_path, sshd):
    """gitqueue work whose pushes the server keeps refusing gives up with the server's reason."""
    sq = SignedQueue(tmp_path)
    install(sq.path, __import__("sys").executable, package_dir=str(REPO))
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-w3"), "GITQUEUE_SIGNING_KEY": str(sq.keys["k3"]),
           "GITQUEUE_SSH_COMMAND": sshd.ssh_command}
    proc = gitqueue("work", "--queue", sshd.url(sq.path), "--worker", "w3", "--max-wait", "0.2", "--", "true",
                    env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the queue refused 3 pushes in a row; stopping: ")
    assert "the revoked key of w3 [signature]" in last
