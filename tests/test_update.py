"""import --update: a new scan applied to a live queue, on real queues (and through the real hook)."""

import json

import pytest

from gitqueue import admin, lease
from gitqueue.errors import LeaseLost, QueueFinished, UnknownJob

from helpers import gitqueue, index_view, job, make_queue, open_queue, pkg, write_jsonl

CHAIN = [pkg("a-1.0"), pkg("b-2.0", ["a-1.0"]), pkg("c-3.0", ["b-2.0"]), pkg("d-1.0", ["c-3.0"]),
         pkg("x-1.0"), pkg("y-1.0", ["x-1.0"])]


def states(q):
    """The states in `q`'s index, brought forward by its diff, after checking that they are those
    of an index built from nothing at the same commit."""
    q.sync()
    got = {name: (state, worker) for _, name, _, _, _, state, worker in q.index.states()}
    from gitqueue.index import Index

    fresh = Index(q.index.path + ".fresh")
    try:
        fresh.rebuild(q.remote, q.index.commit_id())
        assert {name: (state, worker) for _, name, _, _, _, state, worker in fresh.states()} == got
        assert index_view(fresh) == index_view(q.index)
        assert [c.name for c in fresh.ready("w-any", 100)] == [c.name for c in q.index.ready("w-any", 100)]
    finally:
        fresh.close()
    return {name: state for name, (state, _) in got.items()}


def build_all(q, worker="w1"):
    built = []
    while True:
        try:
            got = lease.claim(q, worker)
        except Exception:  # noqa: BLE001 - NothingReady or QueueFinished: nothing left here
            return built
        lease.report(q, worker, got.job, "success", duration=1)
        built.append(got.job)


def test_a_version_bump_in_the_middle_of_a_chain_rebuilds_exactly_it_and_its_dependents(tmp_path):
    url = make_queue(tmp_path, CHAIN, hook=False)
    with open_queue(url, tmp_path) as q:
        assert len(build_all(q)) == 6
        bumped = [pkg("a-1.0"), pkg("b-2.1", ["a-1.0"]), pkg("c-3.0", ["b-2.1"]), pkg("d-1.0", ["c-3.0"]),
                  pkg("x-1.0"), pkg("y-1.0", ["x-1.0"])]
        done = admin.update_jobs(q, bumped, "presolve-2")
        assert {k: done[k] for k in ("added", "retired", "changed", "rebuilt", "kept", "set_aside", "fenced")} == {
            "added": ["b-2.1"], "retired": ["b-2.0"], "changed": ["c-3.0"], "rebuilt": ["c-3.0", "d-1.0"],
            "kept": ["a-1.0", "x-1.0", "y-1.0"], "set_aside": ["c-3.0", "d-1.0"], "fenced": []}
        assert states(q) == {"a-1.0": "success", "b-2.1": "ready", "c-3.0": "waiting", "d-1.0": "waiting",
                             "x-1.0": "success", "y-1.0": "success"}
        assert build_all(q, "w2") == ["b-2.1", "c-3.0", "d-1.0"]
        # Applying the same scan again changes nothing.
        assert admin.update_jobs(q, bumped, "presolve-2")["committed"] is False
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-cli")}
    proc = gitqueue("verify", url, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    history = gitqueue("history", "c", "--queue", url, env=env).stdout
    rows = [line.split() for line in history.splitlines()[1:]]
    # The result before the update and the one after it, both kept in the history.
    assert [(r[1], r[2], r[3], r[-1]) for r in rows] == [("c-3.0", "1", "w1", "success"),
                                                         ("c-3.0", "2", "w2", "success")], history


def test_a_worker_follows_an_update_that_renumbers_every_line_job_by_job(tmp_path):
    url = make_queue(tmp_path, CHAIN, hook=False)
    with open_queue(url, tmp_path) as q:
        build_all(q)
        ids = {name: job_id for job_id, name, *_ in q.index.states()}
        # "0lib-1.0" sorts first: every line of graph.tsv gets another number, and c-3.0 with it
        # depends on it now.
        update = [pkg("0lib-1.0"), *CHAIN[:2], pkg("c-3.0", ["b-2.0", "0lib-1.0"]), *CHAIN[3:]]
        admin.update_jobs(q, update, "presolve-2")
        assert states(q) == {"0lib-1.0": "ready", "a-1.0": "success", "b-2.0": "success", "c-3.0": "waiting",
                             "d-1.0": "waiting", "x-1.0": "success", "y-1.0": "success"}
        after = {name: job_id for job_id, name, *_ in q.index.states()}
        # the index changed the jobs the update changed, not all of them (it kept their ids)
        assert {n: after[n] for n in ids} == ids and after["0lib-1.0"] not in ids.values()
        assert build_all(q, "w2") == ["0lib-1.0", "c-3.0", "d-1.0"]


def test_in_flight_and_reclaimed_leases_of_changed_jobs_are_fenced(tmp_path):
    t = [1_767_225_600.0]
    jobs = [job("lib"), job("app", ["lib"]), job("tool")]
    url = make_queue(tmp_path, jobs, ttl=60, hook=False)
    with open_queue(url, tmp_path, clock=lambda: t[0]) as q, \
            open_queue(url, tmp_path, host="cron", clock=lambda: t[0]) as cron:
        lease.report(q, "w1", lease.claim(q, "w1").job, "success")  # lib
        slow = lease.claim(q, "slow")
        assert slow.job in ("app", "tool")
        lease.reclaim(cron)
        t[0] += 120
        lease.reclaim(cron)
        busy = lease.claim(q, "w2")
        if busy.job == slow.job:  # leave the reclaimed job unleased: only fencing stops a late success
            lease.release(q, "w2", busy.job, "not this one")
            busy = lease.claim(q, "w2")
        assert {slow.job, busy.job} == {"app", "tool"}
        changed = [job("lib", version="1.1"), job("app", ["lib"]), job("tool", version="2.0")]
        done = admin.update_jobs(q, changed, "g2.jsonl")
        assert done["rebuilt"] == ["app", "lib", "tool"] and done["set_aside"] == ["lib"]
        assert done["fenced"] == [busy.job]
        with pytest.raises(LeaseLost):
            lease.report(q, "w2", busy.job, "success", token=busy.lease)
        with pytest.raises(LeaseLost, match="fenced"):
            lease.report(q, "slow", slow.job, "success", token=slow.lease)
        assert states(q) == {"lib": "ready", "app": "waiting", "tool": "ready"}
        assert sorted(build_all(q, "w3")) == ["app", "lib", "tool"]
    proc = gitqueue("verify", url, env={"GITQUEUE_CACHE": str(tmp_path / "cache-v")})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_claim_after_an_update_leaves_the_index_to_catch_up_once_and_trusts_the_tree(tmp_path):
    """The first claim of a warm worker after an update takes a job the index already offered,
    checked against the new tree, and leaves the index where it was; the next one brings it over."""
    url = make_queue(tmp_path, CHAIN, hook=False)
    with open_queue(url, tmp_path, host="admin") as admin_q, open_queue(url, tmp_path, host="far") as q:
        for name in ("a-1.0", "b-2.0", "c-3.0", "x-1.0"):
            got = lease.claim(q, "w1")
            assert got.job == name or got.job in ("a-1.0", "x-1.0")
            lease.report(q, "w1", got.job, "success")
        assert states(q)["d-1.0"] == "ready" and states(q)["y-1.0"] == "ready"
        before = q.index.commit_id()
        # Bump x: y-1.0, which the index offers, now waits on x-1.1; d-1.0 stays ready.
        admin.update_jobs(admin_q, [*CHAIN[:4], pkg("x-1.1"), pkg("y-1.0", ["x-1.1"])], "presolve-2")
        got = lease.claim(q, "w2")
        assert got.job == "d-1.0"
        assert q.index.commit_id() == before  # the update waits for the index's next update
        assert not q.index.defer_graph(q.remote, q.fetch()[0])
        # Once only: this claim brings the index over the update (and over the claim above).
        assert lease.claim(q, "w3").job == "x-1.1"
        assert q.index.commit_id() == q.fetch()[0]
        assert states(q) == {"a-1.0": "success", "b-2.0": "success", "c-3.0": "success", "d-1.0": "leased",
                             "x-1.1": "leased", "y-1.0": "waiting"}


def test_a_claim_the_old_index_cannot_decide_waits_for_the_index(tmp_path):
    """Nothing the index offered is still ready after the update, or the index thinks the queue
    finished: the claim brings the index over the update and decides again."""
    url = make_queue(tmp_path, CHAIN, hook=False)
    with open_queue(url, tmp_path, host="admin") as admin_q, open_queue(url, tmp_path, host="far") as q:
        build_all(q)
        with pytest.raises(QueueFinished):
            lease.claim(q, "w1")
        # Only new work: a job the old index has never seen.
        admin.update_jobs(admin_q, [*CHAIN, pkg("z-1.0", ["y-1.0"])], "presolve-2")
        assert lease.claim(q, "w1").job == "z-1.0"
    # The jobs the old index offers (d-1.0, y-1.0) both wait after the update.
    url = make_queue(tmp_path, CHAIN, hook=False, name="q2.git")
    with open_queue(url, tmp_path, host="admin") as admin_q, open_queue(url, tmp_path, host="far") as q:
        for _ in range(4):
            got = lease.claim(q, "w1")
            assert got.job in ("a-1.0", "b-2.0", "c-3.0", "x-1.0")
            lease.report(q, "w1", got.job, "success")
        admin.update_jobs(admin_q, [*CHAIN[:2], pkg("c-3.1", ["b-2.0"]), pkg("d-1.0", ["c-3.1"]),
                                    pkg("x-1.1"), pkg("y-1.0", ["x-1.1"])], "presolve-2")
        assert lease.claim(q, "w1").job in ("c-3.1", "x-1.1")
        assert q.index.commit_id() == q.fetch()[0]
        assert states(q)["d-1.0"] == states(q)["y-1.0"] == "waiting"


def test_import_update_dry_run_and_json(tmp_path):
    url = make_queue(tmp_path, [job("p"), job("q", ["p"]), job("r")], hook=False)
    with open_queue(url, tmp_path) as q:
        build_all(q)
    scan = write_jsonl(tmp_path / "g2.jsonl", [job("p", version="2"), job("q", ["p"]), job("s")])
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-cli")}
    tip = gitqueue("verify", url, "--json", env=env).stdout
    proc = gitqueue("import", url, scan, "--update", "--dry-run", env=env)
    assert (proc.returncode, proc.stdout) == (0, "would update: 1 added, 1 retired, 2 rebuilt (1 changed, 2 results "
                                                 "set aside, 0 leases fenced), 0 kept\n")
    assert gitqueue("verify", url, "--json", env=env).stdout == tip  # nothing written
    proc = gitqueue("import", url, scan, "--dry-run", env=env)
    assert proc.returncode == 2 and "--dry-run goes with --update" in proc.stderr
    proc = gitqueue("import", url, scan, "--update", "--json", env=env)
    data = json.loads(proc.stdout)
    assert (data["added"], data["retired"], data["rebuilt"], data["kept"], data["committed"]) == (
        ["s"], ["r"], ["p", "q"], [], True)
    proc = gitqueue("import", url, scan, env=env)
    assert proc.returncode == 1 and "already has jobs" in proc.stderr
    assert gitqueue("verify", url, env=env).returncode == 0


def test_plan_update_marks_the_dependents_closure():
    old = [job("a"), job("b", ["a"]), job("c", ["b"]), job("d"), job("e", ["d", "c"])]
    new = [job("a", version="2"), job("b", ["a"]), job("c", ["b"]), job("d", est_seconds=5), job("e", ["d", "c"])]
    plan = admin.plan_update(old, new)
    assert plan["changed"] == ["a"] and plan["rebuilt"] == ["a", "b", "c", "e"] and plan["kept"] == ["d"]


@pytest.mark.ssh
def test_an_update_through_the_hook_retires_fences_and_verifies(tmp_path, sshd):

    from gitqueue.layout import record_path

    from signed_queue import SignedQueue, push

    sq = SignedQueue(tmp_path).install_hook()
    url = sshd.url(sq.path)
    with sq.queue("k1", url, sshd.ssh_command) as q:
        built = []
        while len(built) < 2:
            got = lease.claim(q, "w1")
            if got.job == "b-1":
                lease.release(q, "w1", got.job, "later")
                continue
            lease.report(q, "w1", got.job, "success")
            built.append(got.job)
    with sq.queue("k2", url, sshd.ssh_command) as q:
        inflight = lease.claim(q, "w2")
        assert inflight.job == "b-1"
    # A worker may not retire a job, nor take its records with it.
    sha = sq.commit({record_path("jobs", "b-1"): None, record_path("declines", "b-1"): None}, "k1")
    proc = push(sq, url, sha, sshd.ssh_command)
    assert proc.returncode != 0 and "who is not an administrator [admin]" in proc.stderr
    with sq.queue("alice", url, sshd.ssh_command) as q:
        done = admin.update_jobs(q, [job("a-1", version="2"), job("c-1", ["a-1"]), job("n-1")], "g2.jsonl")
    assert (done["added"], done["retired"], done["rebuilt"], done["set_aside"]) == (
        ["n-1"], ["b-1"], ["a-1", "c-1"], ["a-1", "c-1"])
    assert sq.read(record_path("declines", "b-1")) is None and sq.read(record_path("leases", "b-1")) is None
    with sq.queue("k2", url, sshd.ssh_command) as q:
        with pytest.raises(UnknownJob):  # retired: no result of it is ever accepted
            lease.report(q, "w2", "b-1", "success", token=inflight.lease)
        assert sorted(build_all(q, "w2")) == ["a-1", "c-1", "n-1"]
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-verify"), "GITQUEUE_SSH_COMMAND": sshd.ssh_command}
    proc = gitqueue("verify", url, "--admin-key", f"{sq.keys['alice']}.pub", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
