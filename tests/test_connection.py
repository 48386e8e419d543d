"""open_queue and the public names of `gitqueue`: the library as a script uses it."""

import subprocess
import sys

import pytest

import gitqueue
from gitqueue.connection import open_queue

from helpers import REPO, job, make_queue


def test_import_gitqueue_loads_nothing_until_a_name_is_used():
    code = ("import sys, gitqueue; before = sorted(m for m in sys.modules if m.startswith('gitqueue'));"
            "gitqueue.open_queue; gitqueue.LeaseLost;"
            "print(before, 'dulwich' in sys.modules, 'gitqueue.connection' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out == "['gitqueue'] False True\n"


def test_the_public_names_are_the_library_s():
    from gitqueue import client, errors, queue, worker

    assert gitqueue.Queue is client.Queue and issubclass(gitqueue.Queue, queue.Queue)
    assert gitqueue.Worker is worker.Worker
    assert gitqueue.LeaseLost is errors.LeaseLost and gitqueue.open_queue is open_queue
    assert set(gitqueue.__all__) <= set(dir(gitqueue))
    for name in gitqueue.__all__:
        assert getattr(gitqueue, name) is not None
    with pytest.raises(AttributeError):
        _ = gitqueue.NoSuchThing


def test_open_queue_acts_as_its_worker(tmp_path, monkeypatch):
    url = make_queue(tmp_path, [job("a-1")])
    monkeypatch.chdir(tmp_path)
    with open_queue("q.git", worker="w1", cache_dir=str(tmp_path / "cache")) as queue:
        assert queue.url == url  # a relative path is taken from the current directory
        got = queue.claim()
        assert got.job == "a-1" and queue.heartbeat().held == ["a-1"]
        assert queue.report("a-1", "success", duration=1.5)["status"] == "success"
        assert queue.status()["finished"]


def test_open_queue_refuses_what_it_cannot_use(tmp_path):
    url = make_queue(tmp_path, [job("a-1")])
    with pytest.raises(gitqueue.GitqueueError, match="SSH_AUTH_SOCK is not set"):
        open_queue(url, cache_dir=str(tmp_path / "cache"), signing_key="agent")
    with open_queue(url, cache_dir=str(tmp_path / "cache")) as queue:
        with pytest.raises(gitqueue.GitqueueError, match="no worker name: open the queue with worker=NAME$"):
            queue.claim()


def test_connections_are_reused_unless_told_not_to(tmp_path):
    from gitqueue.connection import ssh_with_reuse

    assert ssh_with_reuse("ssh -x", str(tmp_path), reuse=False) == "ssh -x"
    assert ssh_with_reuse("ssh -o ControlMaster=no", str(tmp_path)) == "ssh -o ControlMaster=no"
    shared = ssh_with_reuse(None, str(tmp_path))
    assert shared.startswith("ssh -o ControlMaster=auto -o ControlPath=") and "ServerAliveInterval=15" in shared


def test_the_control_socket_is_named_for_the_destination(tmp_path):
    """gitqueue opens sessions through the master itself, so it names the socket, not ssh's %C."""
    from gitqueue.connection import SOCKET_PATH_MAX, SSH_TEMP_SUFFIX, for_destination, ssh_with_reuse

    shared = ssh_with_reuse("ssh -i /keys/w1", str(tmp_path / ("c" * 200)))
    command, path = for_destination(shared, "bulk", "master.example.org", 2222)
    assert f"-o ControlPath={path} " in command and "%C" not in command and "%C" in shared
    assert len(path) + SSH_TEMP_SUFFIX <= SOCKET_PATH_MAX
    assert for_destination(shared, "bulk", "master.example.org", 2222) == (command, path)
    elsewhere = [(None, "master.example.org", 2222), ("bulk", "other.example.org", 2222),
                 ("bulk", "master.example.org", None)]
    others = {for_destination(shared, *where)[1] for where in elsewhere}
    assert len(others) == 3 and path not in others
    assert for_destination(ssh_with_reuse("ssh -i /keys/w2", str(tmp_path / ("c" * 200))),
                           "bulk", "master.example.org", 2222)[1] != path  # another identity
    assert for_destination("ssh -o ControlMaster=no", "bulk", "h", None) == ("ssh -o ControlMaster=no", None)
    # rsync's ssh to the same place gets the same socket
    from gitqueue.transfer import parse_tree

    assert f"ControlPath={path} " in parse_tree("ssh://bulk@master.example.org:2222/srv/packages").rsh(shared)
