"""Sessions through a running ControlMaster without an ssh process (gitqueue.sshmux), against a
real sshd; ssh runs through a wrapper that logs every time it is started."""

import os
import shlex
import socket
import subprocess
import threading
import time

import pytest

from gitqueue.connection import for_destination, ssh_with_reuse
from gitqueue.errors import RemoteError
from gitqueue.gitstore import PARTIAL_MARKER, CachedRemote
from gitqueue.hook import configure

from helpers import gitqueue, job, make_queue

pytestmark = pytest.mark.ssh

JOBS = [job("a-1"), job("b-1", ["a-1"]), job("c-1")]


@pytest.fixture
def server(master_sshd):
    """The session's sshd deployed as a master (conftest.py)."""
    return master_sshd


class Ssh:
    """gitqueue's ssh command for `server` (connection reuse included), run through a wrapper that
    logs each start of ssh; `started` counts them."""

    def __init__(self, tmp_path, server, key=None):
        self.server = server
        self.log = tmp_path / "ssh-started"
        self.log.write_text("")
        wrapper = tmp_path / "logged-ssh"
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(self.log))}\nexec ssh "$@"\n')
        wrapper.chmod(0o755)
        base = server.ssh_command[len("ssh"):]
        if key is not None:
            base = base.replace(str(server.client_key), str(key))
        self.plain = f"{wrapper}{base}"
        self.cache = tmp_path / "sockets"
        self.command = ssh_with_reuse(self.plain, str(self.cache))
        self.pinned, self.control_path = for_destination(self.command, server.user, server.host, server.port)

    @property
    def started(self) -> int:
        return len(self.log.read_text().splitlines())

    def master(self, operation="check") -> int:
        argv = [*shlex.split(self.pinned), "-O", operation, "-p", str(self.server.port),
                f"{self.server.user}@{self.server.host}"]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode

    def run(self, *command):
        """Run `command` on the server as gitqueue's ssh would (the first one starts the master)."""
        argv = [*shlex.split(self.pinned), "-p", str(self.server.port), f"{self.server.user}@{self.server.host}",
                *command]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)


@pytest.fixture
def ssh(tmp_path, server):
    made = []

    def make(key=None):
        made.append(Ssh(tmp_path, server, key))
        return made[-1]

    yield make
    for one in made:
        one.master("exit")  # rather than lingering for ControlPersist's 60 s
        if os.path.exists(one.control_path):  # a test's stand-in (the sockets may be in /tmp)
            os.unlink(one.control_path)


def remote(server, path, cache, command):
    return CachedRemote(server.url(path), str(cache), ssh_command=command)


def test_a_second_claim_with_a_master_up_starts_no_ssh(tmp_path, server, ssh):
    url = make_queue(tmp_path, JOBS)
    via = ssh()
    env = {"GITQUEUE_CACHE": str(via.cache), "GITQUEUE_SSH_COMMAND": via.plain, "GITQUEUE_SSH_REUSE": "",
           "GITQUEUE_CONFIG": str(tmp_path / "none.toml")}
    first = gitqueue("claim", "--queue", server.url(url), "--worker", "w1", env=env)
    assert first.returncode == 0, first.stderr
    assert via.started >= 1 and via.master() == 0
    started = via.started
    second = gitqueue("claim", "--queue", server.url(url), "--worker", "w2", env=env)
    assert second.returncode == 0, second.stderr
    assert via.started == started  # its fetches and its push went through the master
    assert {first.stdout.split()[0], second.stdout.split()[0]} == {"a-1", "c-1"}


def test_a_fetch_through_the_master_gets_what_ssh_gets(tmp_path, server, ssh):
    url = make_queue(tmp_path, JOBS)
    via = ssh()
    assert via.run("true").returncode == 0 and via.master() == 0  # as an rsync would start it
    started = via.started
    through = remote(server, url, tmp_path / "through.git", via.command)
    tip = through.fetch()
    assert via.started == started and through.client.ssh_vendor.sessions >= 1
    plain = remote(server, url, tmp_path / "plain.git", via.plain)  # no reuse: ssh for each command
    assert plain.fetch() == tip
    assert plain.client.ssh_vendor.sessions == 0 and via.started > started
    files = [sorted(r.reader(tip).walk_files("jobs")) for r in (through, plain)]
    assert files[0] == files[1] and len(files[0]) == len(JOBS)
    assert all(through.reader(tip).read(path) == plain.reader(tip).read(path) for path, _ in files[0])
    started = via.started
    assert through.fetch_commits()[1] == tip and through.fetch_history()[1] == tip  # the timeline's, verify's
    assert via.started == started


def test_protocol_v2_reaches_the_server_through_a_master_that_set_none(tmp_path, server, ssh):
    """A master started by a command that sets no GIT_PROTOCOL (rsync's ssh) still passes the
    session's on: a new worker's first fetch leaves the job records out (tests/test_partial.py)."""
    url = make_queue(tmp_path, JOBS)
    configure(url)
    via = ssh()
    assert via.run("true").returncode == 0
    started = via.started
    through = remote(server, url, tmp_path / "cache.git", via.command)
    tip = through.fetch()
    assert via.started == started
    assert os.path.exists(os.path.join(through.repo.path, PARTIAL_MARKER))
    reader = through.reader(tip)
    assert any(sha not in through.object_store for _, sha in reader.walk_files("jobs"))


def test_a_failing_command_s_status_and_stderr_come_back_through_the_master(tmp_path, server, ssh):
    via = ssh()
    assert via.run("true").returncode == 0
    started = via.started
    vendor = remote(server, tmp_path, tmp_path / "c.git", via.command).client.ssh_vendor
    con = vendor.run_command(server.host, b"echo out; echo oops >&2; exit 3", username=server.user,
                             port=server.port, ssh_command=via.command)
    assert con.read(4) == b"out\n"
    assert con.stderr.read() == b"oops\n"
    con.close()
    assert con.proc.returncode == 3 and vendor.sessions == 1 and via.started == started
    # A missing repository: git's own words, as through ssh.
    missing = str(tmp_path / "missing.git")
    errors = []
    for command in (via.command, via.plain):
        with pytest.raises(RemoteError) as e:
            remote(server, missing, tmp_path / f"cache-{len(errors)}.git", command).fetch()
        errors.append(str(e.value))
    assert errors[0] == errors[1] and f"'{missing}' does not appear to be a git repository" in errors[0]
    assert via.started == started + 1  # the second, without reuse


def test_without_a_master_ssh_starts_and_becomes_it(tmp_path, server, ssh):
    url = make_queue(tmp_path, JOBS)
    via = ssh()
    assert not os.path.exists(via.control_path)
    through = remote(server, url, tmp_path / "cache.git", via.command)
    tip = through.fetch()
    assert tip and via.started >= 1
    assert via.control_path in via.log.read_text()  # ssh was told the socket gitqueue computes
    assert os.path.exists(via.control_path) and via.master() == 0


def test_a_socket_that_refuses_falls_back_to_ssh(tmp_path, server, ssh):
    url = make_queue(tmp_path, JOBS)
    via = ssh()
    with socket.socket(socket.AF_UNIX) as stale:  # a master that died: a socket nobody listens on
        stale.bind(via.control_path)
    assert remote(server, url, tmp_path / "a.git", via.command).fetch()
    assert via.master("exit") == 0
    while os.path.exists(via.control_path):
        time.sleep(0.05)
    with socket.socket(socket.AF_UNIX) as stranger:  # no master of ours: it speaks another version
        stranger.bind(via.control_path)
        stranger.listen()

        def answer():
            while True:
                try:
                    peer, _ = stranger.accept()
                except OSError:
                    return
                peer.sendall(b"\0\0\0\x08\0\0\0\x01\0\0\0\x07")  # MUX_MSG_HELLO, version 7
                peer.close()

        threading.Thread(target=answer, daemon=True).start()
        started = via.started
        through = remote(server, url, tmp_path / "b.git", via.command)
        assert through.fetch() and through.client.ssh_vendor.sessions == 0 and via.started > started


def test_a_stuck_session_through_the_master_is_given_up_at_the_deadline(tmp_path, server, ssh):
    url = make_queue(tmp_path, JOBS)
    stuck = tmp_path / "hangs-sometimes"
    stuck.write_text('#!/bin/sh\ncase "$SSH_ORIGINAL_COMMAND" in *hang-here*) exec sleep 30 ;; esac\n'
                     'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n')
    stuck.chmod(0o755)
    key = server.new_client_key(f"stuck-{tmp_path.name}", f'command="{stuck}"')
    via = ssh(key)
    assert via.run("true").returncode == 0
    started = via.started
    os.symlink(url, tmp_path / "hang-here.git")
    hung = remote(server, str(tmp_path / "hang-here.git"), tmp_path / "c.git", via.command)
    hung.timeout = 2
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="no answer for 2 s; gave up"):
        hung.fetch()
    assert time.monotonic() - t0 < 10
    vendor = hung.client.ssh_vendor
    assert vendor.sessions == 1 and via.started == started and all(p.poll() is not None for p in vendor.procs)
    # The master serves the next command.
    assert remote(server, url, tmp_path / "d.git", via.command).fetch() and via.started == started


def test_a_push_the_hook_refuses_says_why_through_the_master(tmp_path, server, ssh):
    from gitqueue.errors import PushRefused
    from gitqueue.gitstore import build_tree, make_commit

    url = make_queue(tmp_path, JOBS)
    via = ssh()
    assert via.run("true").returncode == 0
    started = via.started
    said: list[str] = []
    for command in (via.command, via.plain):
        pusher = remote(server, url, tmp_path / f"cache-{len(said)}.git", command)
        tip = pusher.fetch()
        if not said:
            tree, objects = build_tree(pusher.object_store, pusher.commit(tip).tree, {"junk.txt": b"hello\n"})
            commit = make_commit(tree, tip, "junk", "mallory <m@gitqueue>")
        with pytest.raises(PushRefused) as e:
            pusher.push(tip, commit, objects)
        said.append(str(e.value))
        assert via.started == started if command == via.command else via.started > started
    assert said[0] == said[1] and "junk.txt: outside the queue layout" in said[0], said


def test_a_master_that_never_opens_the_session_is_given_up_at_the_deadline(tmp_path, server, ssh):
    url = make_queue(tmp_path, JOBS)
    via = ssh()
    done = threading.Event()
    with socket.socket(socket.AF_UNIX) as hung:  # says hello, then never answers the session request
        hung.bind(via.control_path)
        hung.listen()

        def answer():
            peer, _ = hung.accept()
            peer.sendall(b"\0\0\0\x08\0\0\0\x01\0\0\0\x04")  # MUX_MSG_HELLO, version 4
            done.wait(30)
            peer.close()

        threading.Thread(target=answer, daemon=True).start()
        stuck = remote(server, url, tmp_path / "c.git", via.command)
        stuck.timeout = 1
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(RemoteError, match="no answer for 1 s; gave up"):
            stuck.fetch()
        assert len(os.listdir("/proc/self/fd")) == before + 1  # the stand-in's end, nothing of ours
        assert via.started == 0
        done.set()


def test_a_session_that_does_not_end_is_closed_after_the_timeout(tmp_path, server, ssh):
    via = ssh()
    assert via.run("true").returncode == 0
    vendor = remote(server, tmp_path, tmp_path / "c.git", via.command).client.ssh_vendor
    con = vendor.run_command(server.host, b"exec sleep 30", username=server.user, port=server.port,
                             ssh_command=via.command)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="did not end within 1 s; closed it"):
        con.close(timeout=1)
    assert time.monotonic() - t0 < 5 and con.proc.poll() is not None and vendor.sessions == 1
