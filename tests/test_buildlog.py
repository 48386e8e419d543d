"""Build logs (buildlog.py): bounded and checked reads, and `gitqueue log` over ssh through the deployed master."""

import hashlib

import pytest

from gitqueue import lease
from gitqueue.buildlog import attempt_name, parse_attempt_name, read_log
from gitqueue.errors import NoLog
from gitqueue.transfer import upload

from helpers import gitqueue, job, make_package_queue, open_queue


def describe(path):
    data = path.read_bytes()
    return {"name": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_attempt_names_round_trip():
    assert attempt_name("gtk3+-3.24.51", "0123456789abcdef" * 2) == "gtk3+-3.24.51-01234567"
    assert parse_attempt_name("gtk3+-3.24.51-01234567") == ("gtk3+-3.24.51", "01234567")
    for name in ("gtk3-0123456", "gtk3-0123456G", ".x-01234567", "-01234567", "a/b-01234567"):
        assert parse_attempt_name(name) is None, name


def test_a_long_log_is_read_in_bounded_memory_and_checked_whole(tmp_path):
    """A 12 MiB log: the whole file is checked against the result, only its end is returned."""
    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job("a-1")])
    line = b"x" * 99 + b"\n"
    data = line * ((12 << 20) // 100) + b"the end\n"
    with open_queue(url, tmp_path) as q:
        token = lease.claim(q, "w1").lease
        log = tree / "incoming" / token / "a.log"
        log.parent.mkdir(parents=True)
        log.write_bytes(data)
        lease.report(q, "w1", "a-1", "failure", log=describe(log))
        got = read_log(q, "a-1", max_bytes=1 << 20)
        assert got["source"] == "tree" and got["where"] == str(log) and got["size"] == len(data)
        assert got["data"].endswith(b"x\nthe end\n") and len(got["data"]) <= 1 << 20
        assert got["data"].startswith(b"x" * 99 + b"\n") and got["skipped"] + len(got["data"]) == len(data)
        assert got["cut"] == "max_bytes"
        assert read_log(q, "a-1", tail=1)["data"] == b"the end\n"
        # One byte changed at the start, outside what would be shown: refused all the same.
        with open(log, "r+b") as f:
            f.write(b"y")
        with pytest.raises(NoLog, match="does not match the size and SHA-256 its result recorded"):
            read_log(q, "a-1", max_bytes=1 << 20)


@pytest.mark.ssh
def test_a_worker_reads_a_failure_s_log_through_the_forced_command(make_farm, tmp_path):
    """A failure whose log w1 uploaded through its forced command; w2's host (its own key, an
    empty cache) prints it with `gitqueue log`, fetched by rsync through its forced command, as
    the result's checksum says. A log whose bytes are not its result's: one Error line, nothing
    printed, no copy left."""
    farm = make_farm([job("a-1"), job("b-1")])
    rsh = farm.ssh_command("k1")
    logs = {}
    with farm.worker_queue("k1", tmp_path / "cache-w1") as q:
        for _ in range(2):
            got = lease.claim(q, "w1")
            log = tmp_path / got.job / "build.log"
            log.parent.mkdir()
            log.write_bytes(f"building {got.job}\n\x1b[31merror\x1b[0m: boom\n".encode())
            upload([str(log)], farm.packages_url, got.lease, rsh=rsh, attempts=1)
            described = describe(log)
            if got.job == "b-1":  # the result describes other bytes of the same size
                described["sha256"] = hashlib.sha256(b"x" * described["size"]).hexdigest()
            lease.report(q, "w1", got.job, "failure", log=described, log_tail="boom")
            logs[got.job] = (got.lease, log.read_bytes())
    env = farm.worker_env("k2", tmp_path / "cache-w2")
    proc = gitqueue("log", "a-1", env=env)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout == "building a-1\n\\x1b[31merror\\x1b[0m: boom\n"
    proc = gitqueue("log", "b-1", env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"Error: cannot fetch the log of b-1 from {farm.packages_url}: ")
    assert f"incoming/{logs['b-1'][0]}: build.log: sha256 mismatch in " in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not [p for p in (tmp_path / "cache-w2").rglob("build.log")]

    # Published: a-1's upload is gone from incoming/, its log is in logs/a-1/.
    farm.as_bulk("publish", "--queue", farm.repo, "--tree", farm.tree)
    assert not (farm.tree / "incoming" / logs["a-1"][0]).exists()
    assert (farm.tree / "logs" / "a-1" / "build.log").read_bytes() == logs["a-1"][1]
    proc = gitqueue("log", "a-1", env=farm.worker_env("k2", tmp_path / "cache-w2b"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "building a-1\n\\x1b[31merror\\x1b[0m: boom\n", "")
