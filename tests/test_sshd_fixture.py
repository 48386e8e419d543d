"""The sshd fixture really serves ssh, dulwich fetches and rsync."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from dulwich.client import get_transport_and_path
from dulwich.repo import Repo

pytestmark = pytest.mark.ssh

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_ENV}
    r = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
        text=True, stdin=subprocess.DEVNULL,
    )
    return r.stdout.strip()


def test_ssh_runs_a_command(sshd):
    r = subprocess.run(
        sshd.ssh_argv("echo", "hello-from-sshd"),
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello-from-sshd"
    assert r.stderr == ""  # LogLevel=ERROR: no "Permanently added" warning


def test_ssh_command_has_no_port(sshd):
    assert "-p" not in sshd.ssh_command.split()
    assert sshd.url("/srv/q.git") == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}/srv/q.git"
    assert sshd.env()["GIT_SSH_COMMAND"] == sshd.ssh_command
    assert sshd.rsync_rsh.endswith(f"-p {sshd.port}")


@pytest.fixture
def bare_repo(tmp_path: Path) -> tuple[Path, str]:
    bare = tmp_path / "queue.git"
    work = tmp_path / "work"
    git("init", "-q", "--bare", str(bare))
    git("init", "-q", str(work))
    (work / "README").write_text("hello\n")
    git("add", "README", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=work)
    git("--git-dir", str(bare), "symbolic-ref", "HEAD", "refs/heads/main")
    return bare, git("--git-dir", str(bare), "rev-parse", "refs/heads/main")


def test_dulwich_fetches_over_ssh(sshd, bare_repo, tmp_path):
    bare, sha = bare_repo
    client, path = get_transport_and_path(sshd.url(bare), ssh_command=sshd.ssh_command)
    assert type(client).__name__ == "SSHGitClient"
    assert client.port == sshd.port  # dulwich passes it to ssh as "-p PORT"
    assert path == str(bare)
    target = Repo.init_bare(str(tmp_path / "target.git"), mkdir=True)
    try:
        result = client.fetch(path, target)
        assert result.refs[b"refs/heads/main"] == sha.encode()
        assert sha.encode() in target.object_store
        commit = target[sha.encode()]
        assert commit.message == b"first\n"
    finally:
        target.close()


def test_git_cli_clones_with_env(sshd, bare_repo, tmp_path):
    """GIT_SSH_COMMAND from env() plus the URL's port also works for the git CLI."""
    bare, sha = bare_repo
    dest = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", sshd.url(bare), str(dest)],
        env={**sshd.env(), **GIT_ENV}, check=True, capture_output=True,
        stdin=subprocess.DEVNULL, timeout=60,
    )
    assert git("rev-parse", "HEAD", cwd=dest) == sha


def test_rsync_over_ssh(sshd, tmp_path):
    src = tmp_path / "artifact.tar"
    src.write_bytes(os.urandom(4096))
    dest = tmp_path / "remote" / "dir"
    dest.mkdir(parents=True)
    r = subprocess.run(
        ["rsync", "-a", "-e", sshd.rsync_rsh, str(src), f"{sshd.user}@{sshd.host}:{dest}/"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert (dest / "artifact.tar").read_bytes() == src.read_bytes()


def test_forced_command_key(sshd, tmp_path):
    """add_authorized_key with command="..." restricts a second key."""
    key = sshd.new_client_key("forced_key", options='command="echo forced",restrict')
    ssh = sshd.ssh_argv("echo", "not-this")
    ssh[ssh.index(str(sshd.client_key))] = str(key)
    r = subprocess.run(ssh, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "forced"
