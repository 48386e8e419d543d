"""Attacks on a master deployed as README says: workers' keys run `gitqueue serve` as their forced
command (rrsync for the package tree), the repository and the tree belong to the build account."""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tomli_w

from gitqueue import admin, lease, records, registry
from gitqueue.errors import PushRefused
from gitqueue.layout import record_path
from gitqueue.queue import Change, Queue
from gitqueue.serve import ENTRY_COST
from gitqueue.transfer import TransferError, upload

from farm import BULK
from helpers import job

pytestmark = pytest.mark.ssh

JOBS = [job(f"j{i}-1") for i in range(1, 7)]


@pytest.fixture(scope="module")
def farm(make_farm):
    """One master for the attacks that leave the registry alone (each test claims its own job)."""
    # The tests share it and each claims for w1: more leases than the default four live at once.
    return make_farm(JOBS, limits={"max_leases": len(JOBS)})


def claim(farm, key, worker, tmp_path):
    """A job claimed by `worker` and signed with its key (written on the master, to save the time of
    a claim over ssh): (job, token)."""
    with Queue(str(farm.repo), str(tmp_path / f"cache-{worker}"), signer=farm.signers[key]) as q:
        got = lease.claim(q, worker)
    farm.give_back()
    return got.job, got.lease


def send(farm, key, files, token, **kwargs):
    """gitqueue's upload as the worker holding `key` does it."""
    return upload([str(f) for f in files], farm.packages_url, token, rsh=farm.ssh_command(key), attempts=2,
                  backoff=0.01, **kwargs)


def package(path, size, fill=b"p"):
    path.write_bytes(fill * size)
    return path


def refusals(stderr):
    return [line for line in stderr.splitlines() if line.startswith("gitqueue serve: ")]


def test_a_worker_cannot_write_into_another_workers_upload_directory(farm, tmp_path):
    name, token = claim(farm, "k1", "w1", tmp_path)
    mine = package(tmp_path / f"{name}.tgz", 5000)
    send(farm, "k1", [mine], token)
    before = farm.files()
    assert farm.files(farm.tree / "incoming" / token) == {f"{name}.tgz": mine.read_bytes()}
    # w2 knows the token (it is in the queue) and tries gitqueue's upload and plain rsync.
    (tmp_path / "evil").mkdir()
    evil = package(tmp_path / "evil" / f"{name}.tgz", 5000, b"e")
    with pytest.raises(TransferError) as e:
        send(farm, "k2", [evil], token)
    assert str(e.value).endswith(f"failed after 1 attempt: gitqueue serve: refused: rsync: incoming/{token} is "
                                 "not a lease of w2 (rsync exit 12)")
    proc = farm.rsync("k2", str(evil), f"{{remote}}:{farm.tree}/incoming/{token}/")
    assert proc.returncode != 0
    assert refusals(proc.stderr) == [f"gitqueue serve: refused: rsync: incoming/{token} is not a lease of w2"]
    assert farm.files() == before


def test_an_uploaded_file_is_never_replaced(farm, tmp_path):
    name, token = claim(farm, "k1", "w1", tmp_path)
    first = package(tmp_path / f"{name}.tgz", 20_000)
    described = send(farm, "k1", [first], token)
    # Sent again (a retry after a cut connection): nothing to do, and checked.
    assert send(farm, "k1", [first], token) == described
    # Different bytes under the same name: the master keeps the first, and the worker learns it.
    (tmp_path / "second").mkdir()
    second = package(tmp_path / "second" / f"{name}.tgz", 20_000, b"q")
    with pytest.raises(TransferError) as e:
        send(farm, "k1", [second], token)
    assert str(e.value) == (f"upload to {farm.packages_url} failed after 1 attempt: {name}.tgz: the package tree "
                            "already holds another file under this name and keeps it (an upload never replaces "
                            "a file)")
    assert (farm.tree / "incoming" / token / f"{name}.tgz").read_bytes() == first.read_bytes()
    # Plain rsync writing in place or keeping a backup gets no further.
    for options in (["--inplace"], ["--backup", "--backup-dir=old"]):
        proc = farm.rsync("k1", *options, "-r", f"{tmp_path / 'second'}/", f"{{remote}}:{farm.tree}/incoming/{token}/")
        assert proc.returncode != 0, options
    assert farm.files(farm.tree / "incoming" / token) == {f"{name}.tgz": first.read_bytes()}


def test_a_lease_fenced_by_an_update_gets_no_upload_area(make_farm, tmp_path):
    """w1's lease was reclaimed (it may still upload for a late success), then an administrator's
    update fenced it: the job has no result and no lease, yet incoming/TOKEN is no longer w1's."""
    farm = make_farm([job("f1-1")])
    name, token = claim(farm, "k1", "w1", tmp_path)
    with farm.admin_queue("cron") as q:
        lease.reclaim(q, now=1000.0, ttl=1)
        assert lease.reclaim(q, now=1002.0, ttl=1)[0]["job"] == name
    first = package(tmp_path / f"{name}.tgz", 100)
    send(farm, "k1", [first], token)
    with farm.admin_queue() as q:
        assert admin.update_jobs(q, [job(name, version="1.1")], "scan.jsonl")["rebuilt"] == [name]
    before = farm.files()
    log = package(tmp_path / f"{name}.log", 100)
    with pytest.raises(TransferError) as e:
        send(farm, "k1", [log], token)
    assert str(e.value).endswith(f"failed after 1 attempt: gitqueue serve: refused: rsync: incoming/{token} is "
                                 "not a lease of w1 (rsync exit 12)")
    proc = farm.rsync("k1", str(log), f"{{remote}}:{farm.tree}/incoming/{token}/")
    assert refusals(proc.stderr) == [f"gitqueue serve: refused: rsync: incoming/{token} is not a lease of w1"]
    assert farm.files() == before


def test_hostile_build_fields_pushed_through_the_forced_command(make_farm, tmp_path):
    """Issues 16 and 17's result fields, one hostile value each, in w1's signed report of b-1
    pushed over ssh through `gitqueue serve`: the hook refuses each in one line, the branch stays."""
    farm = make_farm([job("a-1"), job("b-1", ["a-1"]), job("c-1")])
    built = {}
    with Queue(str(farm.repo), str(tmp_path / "cache-w2"), signer=farm.signers["k2"]) as q:
        for got in [lease.claim(q, "w2"), lease.claim(q, "w2")]:  # a-1 and c-1: b-1 waits for a-1
            built[got.job] = {"name": f"{got.job}.tgz", "size": 100, "sha256": got.job[0] * 64}
            lease.report(q, "w2", got.job, "success", token=got.lease, packages=[built[got.job]])
    farm.give_back()
    assert sorted(built) == ["a-1", "c-1"]
    name, token = claim(farm, "k1", "w1", tmp_path)
    assert name == "b-1"
    path = record_path("results", "b-1")
    base = {"job": "b-1", "version": "1.0", "worker": "w1", "token": token, "signer": farm.signers["k1"].fingerprint}
    log = {"size": 10, "sha256": "0" * 64}
    own = {"name": "b-1.tgz", "size": 100, "sha256": "b" * 64}
    cases = [
        ({"status": "failure", "phase_logs": [{"name": "../configure.log", **log}]},
         "phase_logs[0].name: '../configure.log' is not a valid value [schema]"),
        ({"status": "failure", "failed_phase": "c" * 33}, "failed_phase: longer than 32 characters [schema]"),
        ({"status": "success", "packages": [own], "installed": [{"name": "c-1.tgz", "sha256": built["c-1"]["sha256"]}]},
         "b-1 lists c-1.tgz as installed, which no result of its dependencies names with that SHA-256 [result]"),
        ({"status": "success", "packages": [own], "transient": True},
         "a success marked transient: only a failure can be transient [result]"),
        ({"status": "failure", "up_to_date": True},
         "a failure marked up_to_date: only a success can be up to date [result]"),
        ({"status": "success", "packages": [own], "up_to_date": True,
          "reused": {"queue": "/srv/queues/old.git", "token": "ab" * 16}},
         "an up-to-date result for b-1 reused from an earlier build, written by a worker [result]"),
    ]
    tip = farm.tip()
    with farm.worker_queue("k1", tmp_path / "cache-w1") as q:
        for fields, expected in cases:
            # TOML as records.dumps writes it, without its check: the schema's refusals are the hook's.
            data = tomli_w.dumps({**base, **fields}).encode()
            with pytest.raises(PushRefused) as e:
                q.transact(lambda t, r, data=data: Change({path: data, record_path("leases", "b-1"): None},
                                                          "report b-1 by w1"), lease.identity("w1"))
            assert "\n" not in str(e.value) and str(e.value).endswith(f" {path}: {expected}"), str(e.value)
            assert farm.tip() == tip
        # The same report without a hostile value passes the same way.
        fine = records.dumps("result", {**base, "status": "success", "packages": [own],
                                        "installed": [{"name": "a-1.tgz", "sha256": built["a-1"]["sha256"]}]})
        q.transact(lambda t, r: Change({path: fine, record_path("leases", "b-1"): None}, "report b-1 by w1"),
                   lease.identity("w1"))
    assert farm.tip() != tip


def test_hostile_decline_tokens_pushed_through_the_forced_command(make_farm, tmp_path):
    """A decline entry's token is what a retried report finds its requeued outcome by: w1 gives
    back its lease naming another token (w2's live lease's, one an administrator's update fenced,
    one no lease ever had, malformed ones), or its own twice, pushed over ssh through `gitqueue
    serve`. The hook refuses each in one line and the branch stays; the lease's own token passes."""
    farm = make_farm([job("a-1"), job("b-1"), job("c-1")])
    fenced_job, fenced = claim(farm, "k1", "w1", tmp_path)
    with farm.admin_queue() as q:
        jobs = [job(n, version="1.1" if n == fenced_job else "1.0") for n in ("a-1", "b-1", "c-1")]
        assert admin.update_jobs(q, jobs, "scan2.jsonl")["fenced"] == [fenced_job]
        _, reader = q.fetch()
        assert fenced in lease.fenced_tokens(lease.read_job_record(reader, "retries", fenced_job))
    name, token = claim(farm, "k1", "w1", tmp_path)
    other, theirs = claim(farm, "k2", "w2", tmp_path)
    assert name != other and len({token, theirs, fenced}) == 3
    path = record_path("declines", name)
    leases = record_path("leases", name)
    entry = {"worker": "w1", "reason": "transient failure, attempt 1 of 3: No space left on device",
             "at": "2026-01-01T00:00:00Z", "transient": True}
    mismatch = "w1 declines {} under token {}, which is not the token of the lease it gives back [decline]"
    cases = [
        ({**entry, "token": theirs}, mismatch.format(name, theirs)),
        ({**entry, "token": fenced}, mismatch.format(name, fenced)),
        ({**entry, "token": "ab" * 16}, mismatch.format(name, "ab" * 16)),
        ({"worker": "w1", "reason": "not for me", "token": theirs}, mismatch.format(name, theirs)),
        ({**entry, "token": token + "0"}, mismatch.format(name, token + "0")),
        ({**entry, "token": "0" * 65}, f"declined[0].token: {'0' * 65!r} is not a valid value [schema]"),
        ({**entry, "token": token.upper()}, f"declined[0].token: {token.upper()!r} is not a valid value [schema]"),
        ({**entry, "token": "../" + token}, f"declined[0].token: {'../' + token!r} is not a valid value [schema]"),
        ({**entry, "token": token[:8] + "\x1b[2J\n" + token[8:]},
         f"declined[0].token: '{token[:8]}\\x1b[2J\\n{token[8:]}' is not a valid value [schema]"),
        ({**entry, "token": ""}, "declined[0].token: '' is not a valid value [schema]"),
        ({**entry, "token": 12345}, "declined[0].token: expected string, got int [schema]"),
        ({**entry, "worker": "w2", "token": theirs},
         f"decline of w2: signed by {farm.signers['k1'].fingerprint} (w1), not by w2's key [owner]"),
        # Its own token twice: two transient failures counted for one lease given back.
        ([{**entry, "token": token}, {**entry, "token": token}],
         f"declines of {name} gain 2 entries: one is appended per lease given back [decline]"),
    ]
    tip = farm.tip()
    with farm.worker_queue("k1", tmp_path / "cache-w1-ssh") as q:
        for hostile, expected in cases:
            # TOML as a hostile client writes it, without records.dumps's check.
            entries = hostile if isinstance(hostile, list) else [hostile]
            data = tomli_w.dumps({"job": name, "declined": entries}).encode()
            with pytest.raises(PushRefused) as e:
                q.transact(lambda t, r, data=data: Change({path: data, leases: None}, f"release {name} by w1"),
                           lease.identity("w1"))
            said = str(e.value)
            assert "\n" not in said and "\x1b" not in said, said
            assert f" {path}: {expected}" in said, said
            assert farm.tip() == tip
        # The lease's own token passes the same way.
        fine = records.dumps("decline", {"job": name, "declined": [{**entry, "token": token}]})
        q.transact(lambda t, r: Change({path: fine, leases: None}, f"release {name} by w1"), lease.identity("w1"))
    assert farm.tip() != tip


def test_uploads_into_incoming_itself_all_or_the_root_are_refused(farm, tmp_path):
    name, token = claim(farm, "k1", "w1", tmp_path)
    pkg = package(tmp_path / f"{name}.tgz", 100)
    before = farm.files()
    for dest in (f"{farm.tree}/incoming/", f"{farm.tree}/All/", f"{farm.tree}/incoming/{token}/x/", f"{farm.home}/"):
        proc = farm.rsync("k1", str(pkg), f"{{remote}}:{dest}")
        assert proc.returncode != 0
        assert refusals(proc.stderr) == [f"gitqueue serve: refused: rsync: may upload only into incoming/TOKEN of "
                                         f"a lease of w1, not {dest}"], dest
    assert farm.files() == before
    assert not (farm.tree / "All").exists()


def test_symlinks_lead_no_write_or_read_outside(farm, tmp_path):
    name, token = claim(farm, "k1", "w1", tmp_path)
    outside = tempfile.mkdtemp(prefix="gq-outside-", dir="/tmp")
    os.chmod(outside, 0o777)
    try:
        # An uploaded symlink is munged: it points nowhere, and nothing goes through it.
        src = tmp_path / "src"
        src.mkdir()
        (src / "escape").symlink_to(outside)
        proc = farm.rsync("k1", "-rl", f"{src}/", f"{{remote}}:{farm.tree}/incoming/{token}/")
        assert proc.returncode == 0, proc.stderr
        planted = farm.tree / "incoming" / token / "escape"
        assert os.readlink(planted).startswith("/rsyncd-munged/")
        shutil.rmtree(src)
        (src / "escape").mkdir(parents=True)
        (src / "escape" / "owned").write_text("x")
        farm.rsync("k1", "-r", f"{src}/", f"{{remote}}:{farm.tree}/incoming/{token}/")
        assert os.listdir(outside) == []
        # A symlink at incoming/TOKEN itself (left by an older serve, say) is refused, not followed.
        _, token2 = claim(farm, "k1", "w1", tmp_path)
        os.symlink(outside, farm.tree / "incoming" / token2)
        pkg = package(tmp_path / "p.tgz", 100)
        proc = farm.rsync("k1", str(pkg), f"{{remote}}:{farm.tree}/incoming/{token2}/")
        assert refusals(proc.stderr) == [f"gitqueue serve: refused: incoming/{token2} is not a directory"]
        assert os.listdir(outside) == []
        # Reading: a symlink in the tree is not followed out of it, nor is a path outside it read.
        (farm.tree / "All").mkdir(exist_ok=True)
        os.symlink("/etc", farm.tree / "All" / "etc")
        os.symlink("/etc/hostname", farm.tree / "All" / "hostname-1.tgz")
        farm.give_back()
        got = tmp_path / "got"
        for source in (f"{farm.tree}/All/etc/hostname", f"{farm.tree}/All/etc/", "/etc/hostname",
                       f"{farm.tree}/../../../etc/hostname"):
            proc = farm.rsync("k1", "-r", f"{{remote}}:{source}", str(got))
            assert proc.returncode != 0 and not got.exists(), source
        proc = farm.rsync("k1", "-rL", f"{{remote}}:{farm.tree}/All/", f"{got}/")
        assert refusals(proc.stderr) == ["gitqueue serve: refused: rsync: option -L is not allowed"]
        proc = farm.rsync("k1", "-r", f"{{remote}}:{farm.tree}/All/", f"{got}/")
        assert proc.returncode == 0 and os.listdir(got) == []  # the symlinks are skipped, not followed
        # gitqueue's download of a "package" that is a symlink fails with a clear line.
        from gitqueue.transfer import download

        with pytest.raises(TransferError) as e:
            download([{"name": "hostname-1.tgz", "sha256": "0" * 64}], farm.packages_url, str(tmp_path / "dl"),
                     rsh=farm.ssh_command("k1"), attempts=1)
        assert str(e.value) == f"hostname-1.tgz: not downloaded from {farm.packages_url}: not a regular file there"
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_uploads_stop_at_the_workers_upload_quota(make_farm, tmp_path):
    quota = 1 << 20
    farm = make_farm([job("q1-1"), job("q2-1")], limits={"upload_quota": quota})
    name, token = claim(farm, "k1", "w1", tmp_path)
    incoming = farm.tree / "incoming"
    first = package(tmp_path / f"{name}.tgz", 600_000)
    send(farm, "k1", [first], token)
    left = quota - (600_000 + 2 * ENTRY_COST)  # the file and its directory
    refused = (f"upload to {farm.packages_url} failed after 1 attempt: gitqueue serve: refused: upload quota of "
               f"{quota} bytes used up: this upload would exceed it ({left} bytes were left); nothing of it was kept "
               "(rsync exit ")
    # Two files, each below what is left, together above it: nothing of them stays.
    more = [package(tmp_path / f"{n}.tgz", 300_000) for n in ("a", "b")]
    with pytest.raises(TransferError) as e:
        send(farm, "k1", more, token)
    assert str(e.value).startswith(refused), str(e.value)
    assert farm.files(incoming) == {f"{token}/{name}.tgz": first.read_bytes()}
    # One file larger than what is left, under another lease of the same worker: the same.
    _, token2 = claim(farm, "k1", "w1", tmp_path)
    big = package(tmp_path / "big.tgz", left + 1)
    with pytest.raises(TransferError) as e:
        send(farm, "k1", [big], token2)
    assert str(e.value).startswith(refused), str(e.value)
    assert sorted(os.listdir(incoming)) == [token]
    # The quota used up: refused before anything is sent, in one line on the worker's side.
    (incoming / token / ".left-by-a-cut-upload").write_bytes(b"x" * (left - ENTRY_COST))
    farm.give_back()
    small = package(tmp_path / f"{name}.log", 10)
    env = {**os.environ, **farm.worker_env("k1", tmp_path / "cache-report"), "GITQUEUE_WORKER": "w1"}
    proc = subprocess.run([sys.executable, "-m", "gitqueue", "report", name, "--status", "success", "--lease", token,
                           "--package", str(first), "--log", str(small)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: upload to {farm.packages_url} failed after 1 attempt: gitqueue serve: refused: "
                           f"upload quota of {quota} bytes used up: the upload directories of w1's leases hold "
                           f"{quota} bytes (rsync exit 12)\n")
    assert farm.files(incoming) == {f"{token}/{name}.tgz": first.read_bytes(),
                                    f"{token}/.left-by-a-cut-upload": b"x" * (left - ENTRY_COST)}


def test_a_revoked_worker_is_refused_on_the_connection_it_keeps_open(make_farm, tmp_path):
    farm = make_farm([job("r1-1")])
    control = tempfile.mkdtemp(prefix="gqcm-", dir="/tmp")  # a socket path must stay short
    reuse = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}/%C", "-o", "ControlPersist=120"]
    base = [*shlex.split(farm.ssh_command("k2")), *reuse, "-p", str(farm.sshd.port)]
    where = f"{BULK}@{farm.sshd.host}"

    def fetch_refs():
        return subprocess.run([*base, where, "git-upload-pack", f"'{farm.repo}'"], capture_output=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    def master():
        proc = subprocess.run([*base, "-O", "check", where], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr.strip()  # "Master running (pid=N)"

    try:
        assert b"refs/heads/main" in fetch_refs().stdout
        running = master()
        with farm.admin_queue() as q:
            registry.revoke_worker(q, "w2", "stolen")
        # Over the very same connection (authorized_keys still lists the key): refused at once.
        proc = fetch_refs()
        assert master() == running
        assert proc.returncode == 1 and proc.stdout == b""
        assert proc.stderr.decode().startswith("gitqueue serve: refused: w2 was revoked at ")
        proc = subprocess.run(["rsync", "-e", shlex.join([*base]), f"{where}:{farm.tree}/", str(tmp_path / "got")],
                              capture_output=True, text=True, timeout=60)
        assert refusals(proc.stderr)[0].startswith("gitqueue serve: refused: w2 was revoked at "), proc.stderr
    finally:
        subprocess.run([*base, "-O", "exit", where], capture_output=True, timeout=60)
        shutil.rmtree(control, ignore_errors=True)
    # A key whose authorized_keys line names another worker (a stale or wrong line) acts for nobody:
    # sshd tells serve which key the session logged in with (ExposeAuthInfo).
    line = farm.authorize().splitlines()[0].replace(farm.signers["k1"].public_key, farm.signers["stranger"].public_key)
    assert "--worker w1 " in line
    with open(farm.sshd.authorized_keys_of(BULK), "a") as f:
        f.write(line + "\n")
    proc = farm.ssh("stranger", "git-upload-pack", f"'{farm.repo}'")
    assert proc.returncode == 1
    assert proc.stderr == "gitqueue serve: refused: this session's ssh key is not the registered key of w1\n"


def test_dependencies_are_downloaded_through_the_forced_command(make_farm, tmp_path):
    """Issue 13: rrsync refuses -L, and a worker that downloaded with --copy-links never built a job
    with dependencies. b-1 gets a-1's package from incoming/TOKEN (not yet published), c-1 from All/."""
    from test_packages import STAND_IN

    farm = make_farm([job("a-1", pkgpath="cat/a"), job("b-1", ["a-1"], pkgpath="cat/b"),
                      job("c-1", ["a-1"], pkgpath="cat/c")])
    build = tmp_path / "stand-in-package"
    build.write_text(STAND_IN)
    build.chmod(0o755)

    caches = []

    def work(key, worker, max_jobs):
        # One ssh connection for the many sessions of a job (ControlMaster), its socket in the
        # worker's own cache directory (short enough for a socket path: else ssh's sockets of
        # both workers would share /tmp/gitqueue-UID, and w2 would ride on w1's connection).
        cache = tempfile.mkdtemp(prefix=f"gq-{worker}-", dir="/tmp")
        caches.append(cache)
        env = {**os.environ, **farm.worker_env(key, Path(cache)), "GITQUEUE_WORKER": worker, "GITQUEUE_SSH_REUSE": "1"}
        return subprocess.run([sys.executable, "-m", "gitqueue", "work", "--max-jobs", str(max_jobs), "--max-wait",
                               "0.2", "--", str(build)], env=env, capture_output=True, text=True, timeout=120)

    try:
        _build_all_three(farm, work)
    finally:
        for cache in caches:
            for socket in Path(cache).glob("ssh-*"):
                subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "master"], capture_output=True)
            shutil.rmtree(cache, ignore_errors=True)


def _build_all_three(farm, work):
    proc = work("k1", "w1", 2)
    assert proc.returncode == 0, proc.stderr
    assert "released" not in proc.stderr and "missing" not in proc.stderr, proc.stderr
    results = farm_results(farm)
    [second] = set(results) - {"a-1"}
    assert {results["a-1"]["status"], results[second]["status"]} == {"success"}
    assert not (farm.tree / "All").exists()  # so a-1.tgz came from incoming/TOKEN
    # Published by the build account's cron; what incoming/ held is gone.
    pub = farm.as_bulk("publish", "--queue", farm.repo, "--tree", farm.tree)
    assert pub.returncode == 0, pub.stderr
    assert (farm.tree / "All" / "a-1.tgz").exists()
    shutil.rmtree(farm.tree / "incoming")
    proc = work("k2", "w2", 1)
    assert proc.returncode == 0, proc.stderr
    results = farm_results(farm)
    assert all(r["status"] == "success" for r in results.values()) and len(results) == 3
    [(name, rec)] = [(n, r) for n, r in results.items() if r["worker"] == "w2"]
    assert rec["packages"][0]["name"] == f"{name}.tgz"
    assert (farm.tree / "incoming" / rec["token"] / f"{name}.tgz").exists()


def farm_results(farm):
    out = {}
    with Queue(str(farm.repo), str(farm.keys_dir / "cache-results")) as q:
        _, reader = q.fetch()
        for name in ("a-1", "b-1", "c-1"):
            data = reader.read(record_path("results", name))
            if data is not None:
                out[name] = records.load_at("result", data, record_path("results", name))
    return out
