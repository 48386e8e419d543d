"""A new worker's first fetch leaves the job records out (protocol v2, blob:none) and reads the
job graph from graph.tsv; the records it claims come when it reads them."""

import os
import subprocess

import pytest

from gitqueue import graph, lease
from gitqueue.errors import RemoteError
from gitqueue.gitstore import PARTIAL_MARKER
from gitqueue.hook import configure
from gitqueue.layout import GRAPH, record_path

from helpers import job, local_commit, make_queue, open_queue
from test_index import _view

JOBS = [job("a-1", pkgpath="cat/a"), job("b-1", ["a-1"], pkgpath="cat/b"), job("c-1", pkgpath="cat/c"),
        job("d-1", ["b-1", "c-1"])]


def _queue(tmp_path, jobs=JOBS):
    url = make_queue(tmp_path, jobs)
    configure(url)  # what `gitqueue hooks install` sets, uploadpack.allowFilter among it
    return url


def _has(cache_repo, sha):
    from dulwich.repo import Repo

    with Repo(cache_repo) as repo:
        return sha in repo.object_store


def test_a_first_fetch_leaves_the_job_records_out(tmp_path, master_sshd):
    url = _queue(tmp_path)
    with open_queue(master_sshd.url(url), tmp_path, host="new", ssh_command=master_sshd.ssh_command) as q:
        claim = lease.claim(q, "w1")
        assert claim.job in ("a-1", "c-1") and claim.pkgpath == f"cat/{claim.job[0]}"
        cache = q.remote.repo.path
        assert os.path.exists(os.path.join(cache, PARTIAL_MARKER))
        reader = q.remote.reader(q.remote.fetch())
        other = "c-1" if claim.job == "a-1" else "a-1"
        assert _has(cache, reader.blob_id(record_path("jobs", claim.job)))  # fetched when claimed
        assert not _has(cache, reader.blob_id(record_path("jobs", other)))  # never read
        assert _has(cache, reader.blob_id(GRAPH))
        built = [claim.job]
        lease.report(q, "w1", claim.job, "success")
        for _ in range(3):
            built.append(lease.claim(q, "w1").job)
            lease.report(q, "w1", built[-1], "success")
        assert sorted(built) == ["a-1", "b-1", "c-1", "d-1"] and built[-1] == "d-1"
        # What the partial cache's index says is what the whole tree says.
        full = tmp_path / "full"
        with open_queue(url, full, host="local") as local:
            with local.lock():
                local.sync()
            with q.lock():
                q.sync()
            assert _view(q.index) == _view(local.index)


def test_a_server_that_cannot_filter_sends_everything(tmp_path, sshd):
    """A stock sshd drops GIT_PROTOCOL: protocol v0, no filter, a whole cache as before."""
    url = _queue(tmp_path)
    with open_queue(sshd.url(url), tmp_path, host="old", ssh_command=sshd.ssh_command) as q:
        assert lease.claim(q, "w1").job in ("a-1", "c-1")
        cache = q.remote.repo.path
        assert not os.path.exists(os.path.join(cache, PARTIAL_MARKER))
        reader = q.remote.reader(q.remote.fetch())
        assert all(_has(cache, sha) for _, sha in reader.walk_files("jobs"))


def test_a_partial_cache_without_a_usable_graph_fetches_the_records_at_once(tmp_path, master_sshd):
    url = make_queue(tmp_path, JOBS, hook=False)
    configure(url)
    local_commit(url, {GRAPH: None})  # a queue whose admin's gitqueue wrote no graph
    with open_queue(master_sshd.url(url), tmp_path, host="new", ssh_command=master_sshd.ssh_command) as q:
        asked = []
        fetch_objects = q.remote.fetch_objects
        q.remote.fetch_objects = lambda ids: (asked.append(len(ids)), fetch_objects(ids))
        claim = lease.claim(q, "w1")
        assert claim.job in ("a-1", "c-1")
        reader = q.remote.reader(q.remote.fetch())
        assert graph.current_rows(reader) is None
        assert all(_has(q.remote.repo.path, sha) for _, sha in reader.walk_files("jobs"))
        assert len(JOBS) in asked and len(asked) <= 2  # one request for all the records
        assert sorted(s[1] for s in q.index.states()) == ["a-1", "b-1", "c-1", "d-1"]


def test_the_cli_claims_from_a_partial_cache(tmp_path, master_sshd):
    url = _queue(tmp_path)
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_SSH_COMMAND": master_sshd.ssh_command}
    out = subprocess.run(["python", "-m", "gitqueue", "claim", "--queue", master_sshd.url(url), "--worker", "w1",
                          "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"pkgpath": "cat/' in out.stdout


@pytest.mark.ssh
def test_a_new_worker_of_a_deployed_master_fetches_through_the_forced_command_without_the_records(
        make_farm, tmp_path):
    """As README deploys it: `gitqueue serve` as the forced command, the hook installed by `gitqueue
    hooks install`, sshd with AcceptEnv GIT_PROTOCOL (tests/conftest.py)."""
    farm = make_farm(JOBS)
    with farm.worker_queue("k1", tmp_path / "cache") as q:
        claim = lease.claim(q, "w1")
        cache = q.remote.repo.path
        assert os.path.exists(os.path.join(cache, PARTIAL_MARKER))
        reader = q.remote.reader(q.remote.fetch())
        unread = [sha for path, sha in reader.walk_files("jobs") if not path.endswith(f"/{claim.job}.toml")]
        assert unread and not any(_has(cache, sha) for sha in unread)
        lease.report(q, "w1", claim.job, "success")
    with farm.worker_queue("k1", tmp_path / "cache") as q:
        assert lease.claim(q, "w1").job != claim.job


def test_the_timeline_fetches_the_commits_only(tmp_path, master_sshd):
    from gitqueue import timeline
    from gitqueue.gitstore import COMMITS_DIR, HISTORY_DIR

    url = _queue(tmp_path)
    with open_queue(url, tmp_path, host="builder") as q:
        for _ in range(2):
            lease.report(q, "w1", lease.claim(q, "w1").job, "success")
    with open_queue(master_sshd.url(url), tmp_path, host="viewer", ssh_command=master_sshd.ssh_command) as q:
        events = timeline.load(q).events
        assert [e.action for e in events if e.action in ("claim", "report")] == ["claim", "report"] * 2
        beside = os.path.dirname(q.remote.repo.path)
        assert os.path.isdir(os.path.join(beside, COMMITS_DIR))
        assert not os.path.exists(os.path.join(beside, HISTORY_DIR))
        store, tip = q.remote.fetch_commits()
        tree = store[tip].tree
        assert tree not in store  # commits only


@pytest.mark.parametrize("far", [True, False])
def test_a_worker_far_behind_fetches_the_tip_not_every_commit_since(tmp_path, master_sshd, far):
    """Back from an absence, a partial cache catches up with the tip's trees and the changed
    records (one request), not with the trees of every commit since; close behind, it fetches
    as always. Either way its index is the one the whole tree gives."""
    from dulwich.repo import Repo

    url = _queue(tmp_path, [job(f"p{i}-1") for i in range(12)])
    with open_queue(master_sshd.url(url), tmp_path, host="absent", ssh_command=master_sshd.ssh_command) as away:
        with away.lock():
            away.sync()
        with open_queue(url, tmp_path, host="busy") as busy:
            for _ in range(8):
                lease.report(busy, "w2", lease.claim(busy, "w2").job, "success")
        with Repo(url) as master:
            passed = master[master[master.refs[b"refs/heads/main"]].parents[0]].parents[0]  # two commits back
            passed_tree = master[passed].tree
        if far:
            away.remote.catch_up_objects = 20  # 16 commits since: about 100 objects
        asked = []
        fetch_objects = away.remote.fetch_objects

        def cut_once(ids):
            if ids and not asked:
                asked.append("cut")
                raise RemoteError("the connection dropped")
            asked.append(len(ids))
            return fetch_objects(ids)

        away.remote.fetch_objects = cut_once
        if far:  # the connection drops after the trees came: the branch stays where it was
            with pytest.raises(RemoteError):
                lease.claim(away, "w1")
            assert away.remote._local_tip() == away.index.commit_id()
        claim = lease.claim(away, "w1")
        assert _has(away.remote.repo.path, passed_tree) is not far
        # The eight results and w2's record, in one request; no job record.
        assert [n for n in asked if n] == (["cut", 8 + 1] if far else [])
        lease.release(away, "w1", claim.job, decline=False)
        with open_queue(url, tmp_path, host="local") as local:
            with local.lock():
                local.sync()
            with away.lock():
                away.sync()
            assert _view(away.index) == _view(local.index)


def test_the_report_reads_the_records_of_a_partial_cache_in_one_request(tmp_path, master_sshd):
    from gitqueue import outcome

    jobs = [job(f"p{i}-1", prefailed="broken", maintainer=f"m{i}@example.org") for i in range(6)] + JOBS
    url = _queue(tmp_path, jobs)
    with open_queue(master_sshd.url(url), tmp_path, host="viewer", ssh_command=master_sshd.ssh_command) as q:
        with q.lock():
            tip, reader = q.sync()
        store = q.remote.object_store
        asked = []
        fetch = store.fetch_missing
        store.fetch_missing = lambda ids: (asked.append(len(ids)), fetch(ids))
        names = [f"p{i}-1" for i in range(6)] + ["nothing-1"]
        got = outcome.details(reader, names)
        assert asked == [6]
        assert {n: r["maintainer"] for n, r in got.items()} == {f"p{i}-1": f"m{i}@example.org" for i in range(6)}
