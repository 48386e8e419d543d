"""Issue 12: a registered volunteer must not be able to take over the queue.

Every attack here is made as a hostile *registered* worker would make it: with its own key,
logging in to the master's build account through sshd, confined by the forced command that
`gitqueue serve --print-authorized-keys` printed, against the pre-receive hook that `gitqueue
hooks install` put in (tests/farm.py). Each must be refused with one clear line, leaving the queue
and the package tree as they were; and `gitqueue verify` must flag the same commit offline, as
written by a local writer who bypasses the hook.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
from dulwich.objects import Blob, Tree
from dulwich.repo import Repo

from gitqueue import lease, records
from gitqueue.gitstore import build_tree, make_commit
from gitqueue.layout import heartbeat_path, record_path
from gitqueue.signing import sign_commit

from helpers import gitqueue, job
from signed_queue import client_commit

pytestmark = pytest.mark.ssh

JOBS = [job("checkperms-1.12", version="1.12"), job("gmake-4.4.1", version="4.4.1"),
        job("libfoo-1.0", ["gmake-4.4.1"])] + [job(f"p{i}-1.0") for i in range(8)]


@pytest.fixture(scope="module")
def farm(make_farm, tmp_path_factory):
    """The deployed master. w1 built checkperms (success, package uploaded); w2 holds gmake."""
    farm = make_farm(JOBS, lease_ttl=600, limits={"max_leases": 2, "min_heartbeat_seconds": 30})
    tmp = tmp_path_factory.mktemp("takeover")
    farm.tmp = tmp
    with farm.worker_queue("k1", tmp / "cache-w1") as q:
        got = lease.claim(q, "w1")
        while got.job != "checkperms-1.12":
            lease.release(q, "w1", got.job, "not this one")
            got = lease.claim(q, "w1")
        package = {"name": "checkperms-1.12.tgz", "size": 5, "sha256": "ab" * 32}
        lease.report(q, "w1", "checkperms-1.12", "success", packages=[package])
    with farm.worker_queue("k2", tmp / "cache-w2") as q:
        got = lease.claim(q, "w2")
        while got.job != "gmake-4.4.1":
            lease.release(q, "w2", got.job, "not this one")
            got = lease.claim(q, "w2")
        farm.gmake_token = got.lease
    # The attackers' workshop: a repository that sees the queue's objects (as a clone would).
    farm.client = str(tmp / "client.git")
    subprocess.run(["git", "init", "-q", "--bare", farm.client], check=True)
    Path(farm.client, "objects", "info", "alternates").write_text(str(farm.repo / "objects") + "\n")
    return farm


# -- making and pushing hostile commits ------------------------------------------------------------


def craft(farm, who, changes=None, raw_tree=None, message="heartbeat w2\n", parent=None):
    """A commit signed with key `who` on the queue's tip (signed_queue.client_commit)."""
    return client_commit(farm.client, parent or farm.tip(), changes, farm.signers[who], message, "w2 <w2@gitqueue>",
                         raw_tree)


def push(farm, sha, key="k2"):
    env = {"GIT_SSH_COMMAND": farm.ssh_command(key), "PATH": "/usr/bin:/bin", "HOME": str(farm.tmp)}
    return subprocess.run(["git", "-C", farm.client, "push", farm.url, f"{sha.decode()}:refs/heads/main"],
                          capture_output=True, text=True, env=env, timeout=120)


def refused(farm, sha, expected, key="k2", by="hook"):
    """Push `sha` with `key`: git reports the refusal, `expected` is in the one line that says why,
    no traceback reaches the pusher, and neither the queue nor the package tree changed."""
    before, tree_before = farm.tip(), farm.files()
    proc = push(farm, sha, key)
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr and "File \"" not in proc.stderr, proc.stderr
    remote = [ln.removeprefix("remote: ").strip() for ln in proc.stderr.splitlines() if ln.startswith("remote: ")]
    if by == "hook":
        assert remote and remote[0].startswith("gitqueue: push refused"), proc.stderr
        why = [ln for ln in remote[1:] if ln.startswith("gitqueue: ")]
        assert why and expected in why[0], proc.stderr
        assert "pre-receive hook declined" in proc.stderr
    else:  # git's own checks of the objects (receive.fsckObjects, receive.maxInputSize)
        assert any(expected in ln for ln in remote + proc.stderr.splitlines()), proc.stderr
    assert farm.tip() == before and farm.files() == tree_before
    return proc


def verify_flags(farm, sha, expected, tmp_path):
    """A local writer moves a copy's branch to `sha` (no hook runs); verify finds `expected`."""
    copy = tmp_path / "copy.git"
    shutil.copytree(farm.repo, copy, symlinks=True)
    with open(copy / "objects" / "info" / "alternates", "a") as f:
        f.write(str(Path(farm.client) / "objects") + "\n")
    with Repo(str(copy)) as repo:
        repo.refs[b"refs/heads/main"] = sha
    proc = gitqueue("verify", copy, "--admin-key", f"{farm.keys['alice']}.pub",
                    env={"GITQUEUE_CACHE": str(tmp_path / "cache-verify")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"Error: commit {sha.decode()}") and expected in line, line
    return line


def hook_alone(farm):
    """git's own object checks off, so that the push reaches the hook (which must refuse it too)."""
    class Off:
        def __enter__(self):
            farm.as_bulk_git("config", "receive.fsckObjects", "false")

        def __exit__(self, *exc):
            farm.as_bulk_git("config", "receive.fsckObjects", "true")

    return Off()


def _tree(store, sha):
    return Tree.from_raw_string(Tree.type_num, store[sha].as_raw_string())


def _raw_tree(entries):
    """A tree object made of exactly these (mode, name, Blob or Tree) entries, in this order."""
    raw = b"".join(b"%s %s\0" % (mode, name) + bytes.fromhex(obj.id.decode()) for mode, name, obj in entries)
    return Tree.from_raw_string(Tree.type_num, raw)


# -- item 1: tree entries are judged as git stores them ---------------------------------------------


def _decoy_and_real_change(store, base, farm):
    """The review's attack: w1's success of checkperms rewritten to point at a trojan's checksum,
    hidden behind a root entry literally named like that record, holding its old contents."""
    path = record_path("results", "checkperms-1.12")
    shard_name = path.split("/")[1].encode()
    tree = _tree(store, base)
    results = _tree(store, tree[b"results"][1])
    shard = _tree(store, results[shard_name][1])
    old_blob = shard[b"checkperms-1.12.toml"][1]
    forged = Blob.from_string(records.dumps("result", {
        "job": "checkperms-1.12", "version": "1.12", "status": "success", "worker": "w1", "token": "cd" * 16,
        "packages": [{"name": "checkperms-1.12.tgz", "size": 6, "sha256": "ee" * 32}]}))
    shard.add(b"checkperms-1.12.toml", 0o100644, forged.id)
    results.add(shard_name, 0o40000, shard.id)
    tree.add(b"results", 0o40000, results.id)
    tree.add(path.encode(), 0o100644, old_blob)  # the decoy
    return tree.id, [forged, shard, results, tree]


def test_a_tree_entry_named_like_a_path_is_no_decoy(farm, tmp_path):
    sha = craft(farm, "k2", raw_tree=lambda store, base: _decoy_and_real_change(store, base, farm))
    path = record_path("results", "checkperms-1.12")
    refused(farm, sha, "fullPathname", by="git")
    with hook_alone(farm):
        refused(farm, sha, f"{path}: outside the queue layout [layout]")
    verify_flags(farm, sha, f"{path}: outside the queue layout [layout]", tmp_path)


@pytest.mark.parametrize("case", ["zero-padded mode", "duplicate entry", "dot-git", "dot-dot", "executable",
                                  "symlink", "file where a directory belongs"])
def test_every_tree_entry_is_checked_in_its_place(farm, tmp_path, case):
    """A heartbeat of w2 (allowed) wrapped in a tree that breaks the layout in one way."""
    hb = records.dumps("heartbeat", {"worker": "w2", "seq": 99})

    def raw_tree(store, base):
        root = _tree(store, base)
        beats = _tree(store, root[b"heartbeats"][1])
        blob = Blob.from_string(hb)
        entries = sorted((b"%o" % mode if mode != 0o40000 else b"40000", name, store[sha])
                         for name, mode, sha in ((e.path, e.mode, e.sha) for e in beats.iteritems())
                         if name != b"w2.toml")
        extra = {"zero-padded mode": [(b"0100644", b"w2.toml", blob)],
                 "duplicate entry": [(b"100644", b"w2.toml", blob), (b"100644", b"w2.toml", blob)],
                 "dot-git": [(b"100644", b"w2.toml", blob), (b"40000", b".git", _raw_tree([(b"100644", b"x", blob)]))],
                 "dot-dot": [(b"100644", b"..", blob), (b"100644", b"w2.toml", blob)],
                 "executable": [(b"100755", b"w2.toml", blob)],
                 "symlink": [(b"120000", b"w2.toml", blob)],
                 "file where a directory belongs": [(b"100644", b"w2.toml", blob)]}[case]
        objects = [blob] + [obj for _, _, obj in extra]
        listed = sorted(entries + extra, key=lambda e: e[1] + (b"/" if e[0] == b"40000" else b""))
        new_beats = _raw_tree(listed)
        if case == "file where a directory belongs":
            root.add(b"heartbeats", 0o100644, blob.id)
        else:
            root.add(b"heartbeats", 0o40000, new_beats.id)
        return root.id, objects + [new_beats, root]

    sha = craft(farm, "k2", raw_tree=raw_tree)
    why = {"zero-padded mode": "heartbeats/w2.toml: mode 0100644: records are plain files (100644)",
           "duplicate entry": "heartbeats: tree entry b'w2.toml' given twice",
           "dot-git": "heartbeats/.git: mode 40000: records are plain files (100644)",
           "dot-dot": "heartbeats/..: outside the queue layout: not a record name (NAME.toml)",
           "executable": "heartbeats/w2.toml: mode 100755: records are plain files (100644)",
           "symlink": "heartbeats/w2.toml: mode 120000: records are plain files (100644)",
           "file where a directory belongs": "heartbeats: mode 100644: heartbeats is a directory (40000)"}[case]
    git_says = {"zero-padded mode": "zeroPaddedFilemode", "duplicate entry": "duplicateEntries",
                "dot-git": "hasDotgit", "dot-dot": "hasDotdot"}.get(case)
    if git_says:
        refused(farm, sha, git_says, by="git")
    with hook_alone(farm):
        refused(farm, sha, why)
    verify_flags(farm, sha, why, tmp_path)


def test_a_deep_tree_is_one_line_not_a_traceback(farm, tmp_path):
    """3,000 nested directories under a shard: refused at the first place they do not belong."""
    hb = Blob.from_string(b"x")

    def raw_tree(store, base):
        root = _tree(store, base)
        objects = [hb]
        inner = _raw_tree([(b"100644", b"x", hb)])
        objects.append(inner)
        for _ in range(3000):
            inner = _raw_tree([(b"40000", b"d", inner)])
            objects.append(inner)
        jobs = _tree(store, root[b"jobs"][1])
        jobs.add(b"zz", 0o40000, inner.id)
        root.add(b"jobs", 0o40000, jobs.id)
        return root.id, objects + [jobs, root]

    sha = craft(farm, "k2", raw_tree=raw_tree)
    refused(farm, sha, "jobs/zz: outside the queue layout: not a shard directory (two hex digits) [layout]")
    verify_flags(farm, sha, "jobs/zz: outside the queue layout", tmp_path)


# -- item 4: a result names only its own job's packages; late results only for reclaimed leases -----


def test_a_result_may_not_name_another_jobs_package(farm, tmp_path):
    """w2 holds gmake and reports it with a file named like checkperms's package (name squatting)."""
    path = record_path("results", "gmake-4.4.1")
    rec = {"job": "gmake-4.4.1", "version": "4.4.1", "status": "success", "worker": "w2",
           "token": farm.gmake_token, "signer": farm.signers["k2"].fingerprint,
           "packages": [{"name": "checkperms-1.12.tgz", "size": 5, "sha256": "ef" * 32}]}
    sha = craft(farm, "k2", {path: records.dumps("result", rec), record_path("leases", "gmake-4.4.1"): None},
                message="report gmake-4.4.1: success by w2\n")
    why = "checkperms-1.12.tgz is not a package file of gmake-4.4.1 (package_files allow gmake-4.4.1.tgz) [result]"
    refused(farm, sha, why)
    verify_flags(farm, sha, why, tmp_path)


def test_a_late_success_needs_a_reclaimed_lease(farm, tmp_path):
    """A 'late' success for a job nobody ever leased (p7), under a made-up token."""
    path = record_path("results", "p7-1.0")
    rec = {"job": "p7-1.0", "version": "1.0", "status": "success", "worker": "w2", "token": "ab" * 16,
           "late": True, "signer": farm.signers["k2"].fingerprint}
    sha = craft(farm, "k2", {path: records.dumps("result", rec)}, message="report p7-1.0: success by w2 (late)\n")
    why = f"late result for p7-1.0 by w2 under token {'ab' * 16}, which is no lease of theirs that was reclaimed"
    refused(farm, sha, why)
    verify_flags(farm, sha, why, tmp_path)


def test_a_worker_may_not_write_lapsed_leases(farm, tmp_path):
    path = record_path("lapsed", "p6-1.0")
    rec = {"job": "p6-1.0", "lapsed": [{"worker": "w2", "token": "ab" * 16}]}
    sha = craft(farm, "k2", {path: records.dumps("lapsed", rec)})
    why = f"{path}: administrative record added by {farm.signers['k2'].fingerprint} (w2), who is not an administrator"
    refused(farm, sha, why)
    verify_flags(farm, sha, why, tmp_path)


# -- items 2 and 5: names that become paths --------------------------------------------------------


@pytest.mark.parametrize("name", ["/home/gq-bulk/.ssh/reclaim-admin", "../../.ssh/reclaim-admin", "build.html",
                                  "log\x1b[2J.log"])
def test_a_log_name_is_a_plain_text_file_name(farm, tmp_path, name):
    """A failure report whose log name would make html copy (or serve) something else."""
    path = record_path("results", "gmake-4.4.1")
    rec = {"job": "gmake-4.4.1", "version": "4.4.1", "status": "failure", "worker": "w2",
           "token": farm.gmake_token, "signer": farm.signers["k2"].fingerprint,
           "log": {"name": name, "size": 1, "sha256": "ab" * 32}}
    blob = ("\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in rec.items() if k != "log")
            + f'\n[log]\nname = {_toml_string(name)}\nsize = 1\nsha256 = "{"ab" * 32}"\n').encode()
    sha = craft(farm, "k2", {path: blob, record_path("leases", "gmake-4.4.1"): None},
                message="report gmake-4.4.1: failure by w2\n")
    refused(farm, sha, f"{path}: log.name: ")
    verify_flags(farm, sha, "log.name", tmp_path)


def _toml_string(text):
    import json

    return json.dumps(text)


# -- item 6: limits -----------------------------------------------------------------------------


def test_a_huge_record_is_refused_from_its_header(farm, tmp_path):
    """200 MB of zeros as w2's heartbeat: a push of a few hundred KB. The hook refuses it by the size
    the object's header states, without inflating it."""
    data = bytes(200 << 20)
    sha = craft(farm, "k2", {heartbeat_path("w2"): data})
    why = f"heartbeats/w2.toml: {len(data)} bytes, more than max_record_bytes (65536) [size]"
    refused(farm, sha, why)
    verify_flags(farm, sha, why, tmp_path)


def test_an_unused_object_does_not_ride_along(farm):
    """A valid heartbeat plus a 5 MB blob that no tree names: the blob would stay forever."""
    from dulwich.objects import Blob as B

    hb = records.dumps("heartbeat", {"worker": "w2", "seq": 500})
    junk = B.from_string(__import__("os").urandom(5 << 20))
    sha = craft(farm, "k2", {heartbeat_path("w2"): hb})
    with Repo(farm.client) as repo:
        repo.object_store.add_object(junk)
    # git push sends only what the pushed commit reaches: send the junk in a pack of our own.
    proc = _push_with_extra(farm, sha, junk)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"the push brings 1 object(s) that no pushed commit uses (the largest: blob {junk.id.decode()[:12]}" \
        in proc.stderr, proc.stderr
    assert not _has_object(farm, junk.id)


def test_a_push_larger_than_max_input_size(farm):
    """40 MB that do not compress, as w2's heartbeat: git refuses the pack itself (receive.maxInputSize)."""
    data = __import__("os").urandom(40 << 20)
    sha = craft(farm, "k2", {heartbeat_path("w2"): data})
    refused(farm, sha, "pack exceeds maximum allowed size", by="git")
    assert not _has_object(farm, Blob.from_string(data).id)


def _push_with_extra(farm, sha, extra):
    """Push `sha` over the worker's ssh with `extra` packed in, as a hostile client can."""
    from dulwich.client import get_transport_and_path
    from dulwich.pack import pack_objects_to_data

    client, path = get_transport_and_path(farm.url, ssh_command=farm.ssh_command("k2"))
    out = {}

    with Repo(farm.client) as repo:
        store = repo.object_store
        commit = store[sha]
        beats = store[store[commit.tree][b"heartbeats"][1]]
        new = [commit, store[commit.tree], beats, store[beats[b"w2.toml"][1]], extra]

        def update_refs(refs):
            return {b"refs/heads/main": sha}

        def generate(have, want, ofs_delta=False, progress=None):
            return pack_objects_to_data(new, ofs_delta=False)

        said = []
        try:
            result = client.send_pack(path, update_refs, generate, progress=said.append)
            status = (result.ref_status or {}).get(b"refs/heads/main")
            out["stderr"] = b"".join(said).decode(errors="replace") + f"\n{status}"
            out["rc"] = 0 if status is None else 1
        except Exception as e:  # noqa: BLE001 - the server hung up: git's own refusal
            out["stderr"] = b"".join(said).decode(errors="replace") + f"\n{e}"
            out["rc"] = 1
    return subprocess.CompletedProcess([], out["rc"], "", out["stderr"])


def _has_object(farm, sha):
    proc = subprocess.run(["git", "-C", str(farm.repo), "cat-file", "-e", sha.decode()], capture_output=True)
    return proc.returncode == 0


def test_a_long_time_field_is_refused(farm, tmp_path):
    hb = f'worker = "w2"\nseq = 502\nat = "{"2026-12-03T00:00:00Z" * 3000}"\n'.encode()
    sha = craft(farm, "k2", {heartbeat_path("w2"): hb})
    refused(farm, sha, "heartbeats/w2.toml: at: ")
    verify_flags(farm, sha, "heartbeats/w2.toml: at: ", tmp_path)


def test_one_commit_may_not_lease_every_ready_job(farm, tmp_path):
    """max_leases is 2 on this queue; w2 holds gmake, and leases four more in one commit."""
    changes = {}
    for i in range(4):
        name = f"p{i}-1.0"
        changes[record_path("leases", name)] = records.dumps("lease", {
            "job": name, "worker": "w2", "token": f"{i:02d}" * 16, "signer": farm.signers["k2"].fingerprint})
    sha = craft(farm, "k2", changes, message="claim p0-1.0 by w2\n")
    why = "w2 would hold 5 live leases, more than max_leases (2) [lease]"
    refused(farm, sha, why)
    verify_flags(farm, sha, why, tmp_path)


def test_heartbeats_faster_than_the_queue_allows(farm):
    """min_heartbeat_seconds is 30 here: a second heartbeat right after the first is refused, as is
    a chain of heartbeats in one push; a claim or report meanwhile is never held back."""
    first = craft(farm, "k2", {heartbeat_path("w2"): records.dumps("heartbeat", {"worker": "w2", "seq": 600})})
    proc = push(farm, first)
    assert proc.returncode == 0, proc.stderr
    second = craft(farm, "k2", {heartbeat_path("w2"): records.dumps("heartbeat", {"worker": "w2", "seq": 601})})
    refused(farm, second, "heartbeat of w2 ")
    assert "at most one per 30 s (min_heartbeat_seconds)" in push(farm, second).stderr
    # Two in one push, for w1 (who has not heartbeaten yet).
    one = craft(farm, "k1", {heartbeat_path("w1"): records.dumps("heartbeat", {"worker": "w1", "seq": 600})},
                message="heartbeat w1\n")
    two = craft(farm, "k1", {heartbeat_path("w1"): records.dumps("heartbeat", {"worker": "w1", "seq": 601})},
                message="heartbeat w1\n", parent=one)
    refused(farm, two, "two heartbeats of w1 in one push", key="k1")


# -- item 8: signatures on an unsigned queue -------------------------------------------------------


def test_signed_records_on_an_unsigned_queue(tmp_path):
    """A worker that signs on an unsigned queue leaves a history verify accepts; a record that names
    a signer the commit's signature does not match is refused."""
    from gitqueue.queue import Queue
    from gitqueue.signing import Signer

    from farm import keypair
    from helpers import make_queue

    url = make_queue(tmp_path, [job("a-1"), job("b-1")])
    signer = Signer.from_key_file(str(keypair(tmp_path, "k")))
    other = Signer.from_key_file(str(keypair(tmp_path, "o")))
    with Queue(url, str(tmp_path / "cache"), signer=signer) as q:
        got = lease.claim(q, "w1")
        lease.report(q, "w1", got.job, "success")
    proc = gitqueue("verify", url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Queue(url, str(tmp_path / "cache"), signer=signer) as q:
        tip = q.remote.fetch()
        reader = q.remote.reader(tip)
        name = "b-1" if got.job == "a-1" else "a-1"
        rec = {"job": name, "worker": "w1", "token": "ab" * 16, "signer": other.fingerprint}
        tree, objects = build_tree(q.remote.object_store, reader.tree_id,
                                   {record_path("leases", name): records.dumps("lease", rec)})
        c = make_commit(tree, tip, "claim\n", "w1 <w1@gitqueue>")
        sign_commit(c, signer)
        q.remote.push(tip, c, objects)
    proc = gitqueue("verify", url)
    assert proc.returncode == 1
    assert f"records signer {other.fingerprint} but the commit is signed by {signer.fingerprint} [signer]" \
        in proc.stderr


def test_the_report_and_publish_copy_no_file_of_the_master(make_farm, tmp_path):
    """The review's leak: a failure whose log name is the reclaim administrator's private key (written
    by a local writer here: the hook refuses it, see above). The cron html and publish, run as the
    build account that can read that key, must copy it nowhere."""
    from helpers import local_commit

    farm = make_farm([job("a-1")])
    with farm.worker_queue("k1", tmp_path / "c1") as q:
        got = lease.claim(q, "w1")
    secret = farm.cron_key.read_bytes()
    result = (f'job = "a-1"\nversion = "1.0"\nstatus = "failure"\nworker = "w1"\ntoken = "{got.lease}"\n'
              f'[log]\nname = "{farm.cron_key}"\nsize = {len(secret)}\nsha256 = "{"ab" * 32}"\n').encode()
    local_commit(str(farm.repo), {record_path("results", "a-1"): result, record_path("leases", "a-1"): None})
    farm.give_back()
    www = farm.srv / "www"
    html = farm.as_bulk("html", www, "--queue", farm.repo)
    publish = farm.as_bulk("publish", "--queue", farm.repo, "--tree", farm.tree)
    assert html.returncode == 1 and len(html.stderr.splitlines()) == 1, html.stderr
    assert html.stderr.startswith("Error: ") and "log.name" in html.stderr, html.stderr
    assert publish.returncode == 1 and "log.name" in publish.stdout + publish.stderr, publish.stdout + publish.stderr
    for place in (www, farm.tree):
        leaked = [p for p, data in (farm.files(place) if place.exists() else {}).items() if secret in data]
        assert leaked == [], leaked


# -- item 7: escape sequences -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reason", "log_tail", "host"])
def test_terminal_escapes_in_worker_text_are_refused(farm, tmp_path, field):
    """A release reason, a failure's log tail or a heartbeat's host carrying escape sequences (they
    would reach terminals through status, history and the mailed report): refused by the schema."""
    evil = "\x1b]0;owned\x07\x1b[2J\rall clear \u202eevil"
    if field == "reason":
        path = record_path("declines", "gmake-4.4.1")
        files = {path: _toml({"job": "gmake-4.4.1"}) + f"[[declined]]\nworker = \"w2\"\nreason = {_toml_string(evil)}\n"
                 .encode(), record_path("leases", "gmake-4.4.1"): None}
    elif field == "log_tail":
        path = record_path("results", "gmake-4.4.1")
        files = {path: _toml({"job": "gmake-4.4.1", "version": "4.4.1", "status": "failure", "worker": "w2",
                              "token": farm.gmake_token, "log_tail": evil}),
                 record_path("leases", "gmake-4.4.1"): None}
    else:
        path = heartbeat_path("w2")
        files = {path: _toml({"worker": "w2", "seq": 700, "host": evil})}
    sha = craft(farm, "k2", files)
    refused(farm, sha, f"{path}: ")
    line = verify_flags(farm, sha, "is not a valid value [schema]", tmp_path)
    assert "\x1b" not in line and "\u202e" not in line


def _toml(record):
    """TOML text for `record` without any validation (a hostile writer's)."""
    return "".join(f"{key} = {_toml_string(value) if isinstance(value, str) else value}\n"
                   for key, value in record.items()).encode()
