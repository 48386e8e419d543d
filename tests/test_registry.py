"""Signed queues: the workers registry, signed commits and what plain git says about them."""

import subprocess

import pytest

from gitqueue import records
from gitqueue.gitstore import LocalRemote, TreeReader
from gitqueue.layout import record_path

from helpers import git_log, gitqueue, job, write_jsonl


def keypair(directory, name):
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path


def fingerprint_of(pub):
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


@pytest.fixture
def signed(tmp_path):
    """A signed queue with admin alice and workers w1, w2 sharing host1's key; a, b, c(needs a)."""
    admin = keypair(tmp_path, "alice")
    host = keypair(tmp_path, "host1")
    url = tmp_path / "q.git"
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache-admin")}
    gitqueue("--signing-key", admin, "init", url, "--admin", f"alice={admin}.pub", env=env, check=True)
    graph = write_jsonl(tmp_path / "g.jsonl", [job("a-1.0"), job("b-1.0"), job("c-1.0", ["a-1.0"])])
    gitqueue("--signing-key", admin, "import", url, graph, env=env, check=True)
    for name in ("w1", "w2"):
        gitqueue("--signing-key", admin, "worker", "add", name, "--key", f"{host}.pub", "--queue", url, env=env,
                 check=True)
    return {"url": url, "admin": admin, "host": host, "env": env, "tmp": tmp_path}


def verify_all_with_git(s):
    signers = s["tmp"] / "allowed_signers"
    gitqueue("worker", "allowed-signers", "-o", signers, "--queue", s["url"], env=s["env"], check=True)
    out = subprocess.run(["git", "-C", str(s["url"]), "-c", f"gpg.ssh.allowedSignersFile={signers}", "log",
                          "--format=%H %G? %GS", "main"], capture_output=True, text=True, check=True).stdout
    return [line.split(" ", 2)[1:] for line in out.splitlines()]


def test_every_commit_of_a_signed_queue_is_signed_and_git_agrees(signed):
    w_env = {"GITQUEUE_CACHE": str(signed["tmp"] / "cache-w")}
    key = signed["host"]
    claimed = gitqueue("--signing-key", key, "claim", "--json", "--queue", signed["url"], "--worker", "w1",
                       env=w_env, check=True)
    assert claimed.returncode == 0
    gitqueue("--signing-key", key, "report", "a-1.0", "--status", "success", "--queue", signed["url"],
             "--worker", "w1", env=w_env, check=True)
    verdicts = verify_all_with_git(signed)
    assert len(verdicts) == 6  # init, import, 2 registrations, claim, report
    assert all(v[0] == "G" for v in verdicts), verdicts
    assert [v[1] for v in verdicts] == ["w1", "w1", "alice", "alice", "alice", "alice"]
    # The records name the key that signed them.
    remote = LocalRemote(str(signed["url"]))
    reader = TreeReader(remote.object_store, remote.commit(remote.fetch()).tree)
    result = records.loads("result", reader.read(record_path("results", "a-1.0")), "result")
    assert result["signer"] == fingerprint_of(f"{key}.pub")
    remote.close()


def test_unsigned_and_unregistered_commits_are_refused_by_the_client(signed):
    w_env = {"GITQUEUE_CACHE": str(signed["tmp"] / "cache-w")}
    before = git_log(signed["url"])
    proc = gitqueue("claim", "--queue", signed["url"], "--worker", "w1", env=w_env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Error:")
    assert "requires signed commits" in proc.stderr
    assert git_log(signed["url"]) == before


def test_revocation_keeps_the_past_good_in_git(signed):
    w_env = {"GITQUEUE_CACHE": str(signed["tmp"] / "cache-w")}
    gitqueue("--signing-key", signed["host"], "claim", "--queue", signed["url"], "--worker", "w2", env=w_env,
             check=True)
    proc = gitqueue("--signing-key", signed["admin"], "worker", "revoke", "w2", "--reason", "disk stolen",
                    "--queue", signed["url"], env=signed["env"], check=True)
    assert "revoked worker w2" in proc.stdout
    listed = gitqueue("worker", "list", "--queue", signed["url"], env=signed["env"], check=True).stdout
    assert "revoked" in listed
    text = gitqueue("worker", "allowed-signers", "--queue", signed["url"], env=signed["env"], check=True).stdout
    assert 'w2 namespaces="git",valid-before="' in text and "\nw1 namespaces=\"git\" ssh-ed25519 " in text
    # The claim made by w2 before its revocation is still a good signature for git (w1 shares
    # the key, so git names w1, the first principal listing it).
    assert all(v[0] == "G" for v in verify_all_with_git(signed))
    again = gitqueue("--signing-key", signed["admin"], "worker", "revoke", "w2", "--queue", signed["url"],
                     env=signed["env"])
    assert again.returncode == 1 and "already revoked" in again.stderr


def test_registry_errors_are_one_line(signed, tmp_path):
    env = signed["env"]
    dup = gitqueue("--signing-key", signed["admin"], "worker", "add", "w1", "--key", f"{signed['host']}.pub",
                   "--queue", signed["url"], env=env)
    assert dup.returncode == 1 and dup.stderr.strip() == "Error: worker w1 is already registered; choose another name"
    bad = tmp_path / "bad.pub"
    bad.write_text("garbage\n")
    proc = gitqueue("--signing-key", signed["admin"], "worker", "add", "w3", "--key", bad, "--queue", signed["url"],
                    env=env)
    assert proc.returncode == 1 and proc.stderr.strip().startswith(f"Error: {bad}: not an OpenSSH public key")
    unknown = gitqueue("--signing-key", signed["admin"], "worker", "revoke", "nobody", "--queue", signed["url"],
                       env=env)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "Error: no registered worker nobody"
    hostile = gitqueue("--signing-key", signed["admin"], "worker", "add", "../evil", "--key",
                       f"{signed['host']}.pub", "--queue", signed["url"], env=env)
    assert hostile.returncode == 1 and len(hostile.stderr.strip().splitlines()) == 1


def test_a_signed_queue_needs_an_admin_key_to_start(tmp_path):
    admin = keypair(tmp_path, "alice")
    other = keypair(tmp_path, "mallory")
    env = {"GITQUEUE_CACHE": str(tmp_path / "c")}
    proc = gitqueue("--signing-key", other, "init", tmp_path / "q.git", "--admin", f"alice={admin}.pub", env=env)
    assert proc.returncode == 1 and "signed by one of its admins" in proc.stderr
    assert git_log_missing(tmp_path / "q.git")


def git_log_missing(path):
    proc = subprocess.run(["git", "-C", str(path), "log", "main"], capture_output=True, text=True)
    return proc.returncode != 0


def test_workers_of_one_host_share_a_key_and_a_commit(signed):
    """gitqueue work processes of one host, signed by the host's key, settle together."""
    env = {"GITQUEUE_CACHE": str(signed["tmp"] / "cache-host1"), "GITQUEUE_SIGNING_KEY": str(signed["host"])}
    procs = [subprocess.Popen(["python", "-m", "gitqueue", "work", "--queue", str(signed["url"]), "--worker", w,
                               "--max-wait", "0.2", "--", "true"], env={**__import__("os").environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for w in ("w1", "w2")]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    verdicts = verify_all_with_git(signed)
    assert all(v[0] == "G" for v in verdicts), verdicts
    assert git_log(signed["url"], "%B").count("Gitqueue-Action: report") == 3
