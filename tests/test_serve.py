"""gitqueue serve as the ssh forced command of each worker's key: identity for the hook, rrsync uploads."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from gitqueue import lease, records
from gitqueue.hook import install
from gitqueue.layout import record_path
from gitqueue.transfer import TransferError, upload

from helpers import REPO, gitqueue
from signed_queue import SignedQueue, heartbeat_record, push

pytestmark = pytest.mark.ssh


def serve_command(*args):
    return f"env PYTHONPATH={REPO} {sys.executable} -m gitqueue serve " + " ".join(shlex.quote(str(a)) for a in args)


@pytest.fixture(scope="module")
def served(tmp_path_factory, sshd):
    """A signed queue with the hook; ssh keys for w1 (forced command) and w1-ro (no downloads)."""
    tmp = tmp_path_factory.mktemp("served")
    sq = SignedQueue(tmp).install_hook()
    sq.tree = tmp / "packages"
    (sq.tree / "All").mkdir(parents=True)
    (sq.tree / "All" / "public-1.tgz").write_bytes(b"public\n")
    sq.url = sshd.url(sq.path)
    with sq.queue("k1") as q:
        sq.lease = lease.claim(q, "w1").lease  # w1 may upload into incoming/ of this lease
    sq.ssh = {}
    for name, extra in (("w1", ()), ("w1-ro", ("--no-downloads",))):
        command = serve_command("--worker", "w1", "--repo", sq.path, "--packages", sq.tree, *extra)
        key = sshd.new_client_key(f"ssh-{name}-{os.getpid()}", f'command="{command}",restrict')
        sq.ssh[name] = sshd.ssh_command.replace(str(sshd.client_key), str(key))
    return sq


def run_ssh(sq, sshd, who, *command):
    argv = [*shlex.split(sq.ssh[who]), "-p", str(sshd.port), f"{sshd.user}@{sshd.host}", *command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_worker_claims_and_pushes_through_its_forced_command(served, sshd):
    with served.queue("k1", served.url, served.ssh["w1"]) as q:
        got = lease.claim(q, "w1")
    assert served.read(record_path("leases", got.job)) is not None


def test_a_worker_pushing_another_workers_records_with_its_key_is_refused(served, sshd):
    """w2's signing key is known to the pusher (a stolen or shared file), but the ssh key is w1's."""
    before = served.tip()
    sha = served.commit(dict([heartbeat_record("w2", 5)]), "k2", "heartbeat w2")
    proc = push(served, served.url, sha, served.ssh["w1"])
    assert proc.returncode != 0
    assert (f"remote: gitqueue: {sha.decode()[:12]} pushed with the ssh key of w1 but signed by "
            f"{served.signers['k2'].fingerprint} (w2) [pusher]") in proc.stderr
    assert served.tip() == before


def test_anything_else_is_refused_in_one_line(served, sshd):
    proc = run_ssh(served, sshd, "w1", "ls", "/")
    assert proc.returncode == 1
    assert proc.stderr == "gitqueue serve: refused: ls: not allowed for this key (git for the queue, rsync " \
                          "uploads into incoming/ of its leases)\n"
    proc = run_ssh(served, sshd, "w1", "git-receive-pack", "'/srv/other.git'")
    assert proc.returncode == 1
    assert proc.stderr == f"gitqueue serve: refused: git-receive-pack: only {served.path} is served to this key\n"
    proc = run_ssh(served, sshd, "w1")
    assert proc.returncode == 1 and "no interactive login" in proc.stderr


def test_uploads_land_in_incoming_of_the_workers_lease_only(served, sshd, tmp_path):
    package = tmp_path / "p-1.tgz"
    package.write_bytes(b"package\n" * 100)
    tree = f"{sshd.user}@{sshd.host}:{served.tree}"
    rsh = f"{served.ssh['w1']} -p {sshd.port}"
    got = upload([str(package)], tree, served.lease, rsh=rsh, attempts=1)
    assert (served.tree / "incoming" / served.lease / "p-1.tgz").read_bytes() == package.read_bytes()
    assert got[0]["name"] == "p-1.tgz"
    # Writing anywhere else in the tree (All/, incoming/ itself, a token that is no lease of w1),
    # or outside it, is refused.
    for dest, expected in (
        (f"{served.tree}/All/", f"may upload only into incoming/TOKEN of a lease of w1, not {served.tree}/All/"),
        (f"{served.tree}/incoming/", f"may upload only into incoming/TOKEN of a lease of w1, not "
                                     f"{served.tree}/incoming/"),
        (f"{served.tree}/incoming/{'ab' * 16}/", f"incoming/{'ab' * 16} is not a lease of w1"),
        ("/tmp/", "may upload only into incoming/TOKEN of a lease of w1, not /tmp/"),
    ):
        proc = subprocess.run(["rsync", "-e", rsh, str(package), f"{sshd.user}@{sshd.host}:{dest}"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert f"gitqueue serve: refused: rsync: {expected}\n" in proc.stderr, proc.stderr
    assert sorted(os.listdir(served.tree / "All")) == ["public-1.tgz"]
    assert sorted(os.listdir(served.tree / "incoming")) == [served.lease]


def test_reading_is_refused_outside_the_tree_and_for_upload_only_keys(served, sshd, tmp_path):
    for who, src, expected in (
        ("w1", "/etc/hostname", f"rsync: may read only in {served.tree}/, not /etc/hostname"),
        ("w1-ro", f"{served.tree}/All/public-1.tgz", "rsync: reading the package tree is not allowed for this key"),
    ):
        rsh = f"{served.ssh[who]} -p {sshd.port}"
        proc = subprocess.run(["rsync", "-e", rsh, f"{sshd.user}@{sshd.host}:{src}", str(tmp_path / "got")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and f"gitqueue serve: refused: {expected}" in proc.stderr, proc.stderr
    assert not (tmp_path / "got").exists()
    # Dependencies are downloaded read-only by workers with the default key.
    rsh = f"{served.ssh['w1']} -p {sshd.port}"
    proc = subprocess.run(["rsync", "-e", rsh, f"{sshd.user}@{sshd.host}:{served.tree}/All/public-1.tgz",
                           str(tmp_path / "got")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "got").read_bytes() == b"public\n"


def test_authorized_keys_lines_from_the_registry(served):
    proc = gitqueue("serve", "--print-authorized-keys", "--repo", served.path, "--packages", served.tree,
                    "--command", "/usr/local/bin/gitqueue")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["gitqueue-w1", "gitqueue-w2"]  # w3 is revoked
    assert lines[0] == (f'command="/usr/local/bin/gitqueue serve --worker w1 --repo {served.path} '
                        f'--packages {served.tree}",restrict {served.signers["k1"].public_key} gitqueue-w1')


def test_serve_needs_a_worker(served):
    proc = gitqueue("serve", "--repo", served.path, env={"SSH_ORIGINAL_COMMAND": "git-upload-pack 'x'"})
    assert proc.returncode == 2 and "--worker NAME is required" in proc.stderr


def test_upload_refused_is_a_transfer_error_and_not_retried(served, sshd, tmp_path):
    package = tmp_path / "q-1.tgz"
    package.write_bytes(b"q\n")
    tree = f"{sshd.user}@{sshd.host}:/tmp/elsewhere"
    slept = []
    with pytest.raises(TransferError) as e:
        upload([str(package)], tree, "cd" * 16, rsh=f"{served.ssh['w1']} -p {sshd.port}", attempts=3,
               sleep=slept.append)
    assert str(e.value) == (f"upload to {tree} failed after 1 attempt: gitqueue serve: refused: rsync: may upload "
                            f"only into incoming/TOKEN of a lease of w1, not /tmp/elsewhere/incoming/{'cd' * 16}/ "
                            "(rsync exit 12)")
    assert slept == []


# -- two identities on one machine -------------------------------------------------------------


class Identities:
    """Workers w1 and w2 of one machine: one cache root, ssh commands differing only in -i."""

    def __init__(self, tmp_path, sshd):
        self.sshd = sshd
        self.tree = tmp_path / "packages"
        self.tree.mkdir()
        self.sq = SignedQueue(tmp_path, packages_url=f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{self.tree}")
        install(self.sq.path, sys.executable, package_dir=str(REPO))
        self.cache = tmp_path / "cache"
        self.env = {}
        self.ssh = {}
        # w1's key may not upload (no --packages): an upload through its connection is refused.
        for name, signing, extra in (("w1", "k1", ()), ("w2", "k2", ("--packages", self.tree))):
            command = serve_command("--worker", name, "--repo", self.sq.path, *extra)
            key = sshd.new_client_key(f"id-{name}-{tmp_path.name}-{os.getpid()}", f'command="{command}",restrict')
            self.ssh[name] = sshd.ssh_command.replace(str(sshd.client_key), str(key))
            self.env[name] = {"GITQUEUE_CACHE": str(self.cache), "GITQUEUE_CONFIG": str(tmp_path / "none.toml"),
                              "GITQUEUE_SSH_COMMAND": self.ssh[name], "GITQUEUE_SSH_REUSE": "",
                              "GITQUEUE_SIGNING_KEY": str(self.sq.keys[signing]), "GITQUEUE_WORKER": name,
                              "GITQUEUE_QUEUE": sshd.url(self.sq.path)}

    def master(self, name, operation="check") -> int:
        """`ssh -O check` (or exit) on the shared connection gitqueue gives `name`'s ssh command."""
        from gitqueue.connection import for_destination, ssh_with_reuse

        command = ssh_with_reuse(self.ssh[name], str(self.cache), agent_socket=os.environ.get("SSH_AUTH_SOCK"))
        command, _ = for_destination(command, self.sshd.user, self.sshd.host, self.sshd.port)
        argv = [*shlex.split(command), "-O", operation,
                "-p", str(self.sshd.port), f"{self.sshd.user}@{self.sshd.host}"]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode


@pytest.fixture
def identities(tmp_path, sshd, monkeypatch):
    monkeypatch.delenv("GITQUEUE_SSH_REUSE", raising=False)
    ids = Identities(tmp_path, sshd)
    yield ids
    for name in ids.ssh:
        ids.master(name, "exit")  # rather than lingering for ControlPersist's 60 s


def test_two_identities_of_one_machine_push_through_their_own_connections(identities):
    """ssh's %C names user, host and port only: w2 must not push through w1's authenticated connection."""
    first = gitqueue("claim", "--json", env=identities.env["w1"])
    assert first.returncode == 0, first.stderr
    assert identities.master("w1") == 0  # w1's connection stays up for the next command
    second = gitqueue("claim", "--json", env=identities.env["w2"])
    # Through w1's connection the hook would see w1's ssh key: "pushed with the ssh key of w1" [pusher]
    assert second.returncode == 0, second.stderr
    got = json.loads(second.stdout)
    lease_record = records.loads("lease", identities.sq.read(record_path("leases", got["job"])), "lease")
    assert lease_record["worker"] == "w2" and lease_record["token"] == got["lease"]
    assert identities.master("w2") == 0


def test_uploads_go_through_the_uploading_identitys_own_connection(identities, tmp_path):
    """rsync's ssh gets the same treatment: w2's upload is not refused by w1's forced command."""
    w2 = identities.env["w2"]
    got = json.loads(gitqueue("claim", "--json", env={**w2, "GITQUEUE_SSH_REUSE": "0"}, check=True).stdout)
    gitqueue("status", env=identities.env["w1"], check=True)
    assert identities.master("w1") == 0
    package = tmp_path / f"{got['job']}.tgz"
    package.write_bytes(b"built by w2\n")
    proc = gitqueue("report", got["job"], "--status", "success", "--package", package, "--lease", got["lease"],
                    env=w2)
    assert proc.returncode == 0, proc.stderr
    assert (identities.tree / "incoming" / got["lease"] / package.name).read_bytes() == b"built by w2\n"
    result = records.loads("result", identities.sq.read(record_path("results", got["job"])), "result")
    assert result["worker"] == "w2" and result["signer"] == identities.sq.signers["k2"].fingerprint
