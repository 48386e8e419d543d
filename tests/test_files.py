"""Writing files crash-safely, and opening, writing and removing inside a tree that workers write to:
real files, links, FIFOs, a file size limit and a process killed in the middle of a write."""

import hashlib
import os
import signal
import stat
import subprocess
import sys

import pytest

from gitqueue import files


def read(fd):
    with os.fdopen(fd, "rb") as f:
        return f.read()


@pytest.fixture
def tree(tmp_path):
    """ROOT/incoming/TOKEN/ holding a file, and a secret outside ROOT."""
    root = tmp_path / "root"
    (root / "incoming" / "tok").mkdir(parents=True)
    (root / "incoming" / "tok" / "a.tgz").write_bytes(b"package")
    (tmp_path / "secret").write_bytes(b"SECRET")
    return root


def test_a_regular_file_inside_is_opened(tree):
    assert read(files.open_file(str(tree), "incoming", "tok", "a.tgz")) == b"package"
    with_fd = files.open_dir(str(tree), "incoming")
    try:
        assert read(files.open_file(with_fd, "tok", "a.tgz")) == b"package"
    finally:
        os.close(with_fd)


@pytest.mark.parametrize("names", [("incoming", "tok", "../../../secret"), ("incoming", "..", "..", "secret"),
                                   ("incoming", "tok", "/etc/passwd"), ("incoming", "tok", ".hidden"),
                                   ("incoming", "tok", ""), ("incoming", "tok/a.tgz"), ()])
def test_a_name_that_is_not_plain_is_refused(tree, names):
    (tree / "incoming" / "tok" / ".hidden").write_bytes(b"dot file")
    assert files.open_file(str(tree), *names) is None


def test_links_are_never_followed(tree, tmp_path):
    secret = tmp_path / "secret"
    (tree / "incoming" / "tok" / "x.log").symlink_to(secret)
    (tree / "incoming" / "linked").symlink_to(tmp_path)
    (tree / "logs").symlink_to(tmp_path)
    assert files.open_file(str(tree), "incoming", "tok", "x.log") is None  # the last name
    assert files.open_file(str(tree), "incoming", "linked", "secret") is None  # a directory on the way
    assert files.open_file(str(tree), "logs", "secret") is None
    assert files.open_dir(str(tree), "logs") is None
    assert files.open_dir(str(tree), "logs", create=True) is None
    # The root is the administrator's: a link there is followed.
    (tmp_path / "root-link").symlink_to(tree)
    assert read(files.open_file(str(tmp_path / "root-link"), "incoming", "tok", "a.tgz")) == b"package"


def test_only_regular_files_are_opened(tree):
    os.mkfifo(tree / "incoming" / "tok" / "fifo.log")  # would block a plain open() forever
    assert files.open_file(str(tree), "incoming", "tok", "fifo.log") is None
    assert files.open_file(str(tree), "incoming", "tok") is None  # a directory
    assert files.open_file(str(tree), "incoming", "none", "a.tgz") is None
    assert files.open_dir(str(tree), "incoming", "tok", "a.tgz") is None  # a file where a directory should be


def test_open_dir_creates_what_is_missing(tree):
    fd = files.open_dir(str(tree), "logs", "gmake-4.4.1", create=True)
    os.close(fd)
    assert (tree / "logs" / "gmake-4.4.1").is_dir()
    assert files.open_dir(str(tree), "logs", "../x", create=True) is None and not (tree / "x").exists()


def test_write_atomic_replaces_a_link_instead_of_writing_through_it(tree, tmp_path):
    fd = files.open_dir(str(tree), "incoming")
    try:
        (tree / "incoming" / "out.txt").symlink_to(tmp_path / "secret")
        files.write_atomic(fd, "out.txt", b"new")
        assert (tree / "incoming" / "out.txt").read_bytes() == b"new"
        assert not (tree / "incoming" / "out.txt").is_symlink()
        assert (tmp_path / "secret").read_bytes() == b"SECRET"
        (tree / "incoming" / f"{files.TMP_PREFIX}1-dead").write_bytes(b"left by a crash")
        files.sweep(fd)
        assert sorted(os.listdir(fd)) == ["out.txt", "tok"]
    finally:
        os.close(fd)


def test_remove_tree_removes_a_directory_and_never_what_a_link_points_to(tree, tmp_path):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_bytes(b"keep me")
    (tree / "incoming" / "tok" / "sub").mkdir()
    (tree / "incoming" / "tok" / "sub" / "link").symlink_to(outside / "keep")
    (tree / "incoming" / "tok" / "linkdir").symlink_to(outside)
    (tree / "incoming" / "dirlink").symlink_to(outside)
    fd = files.open_dir(str(tree), "incoming")
    try:
        assert files.remove_tree(fd, "dirlink") is False  # a link to a directory: left alone
        assert files.remove_tree(fd, "tok") is True
        assert files.remove_tree(fd, "tok") is False
    finally:
        os.close(fd)
    assert sorted(os.listdir(tree / "incoming")) == ["dirlink"]
    assert (outside / "keep" / "file").read_bytes() == b"keep me"


# A child process that replaces `path` with 4 MiB under a 1 MiB file size limit: the kernel stops
# the write part way, as a full disk would (EFBIG), or kills the writer there (SIGXFSZ, which
# Python ignores unless told otherwise).
WRITE_OVER_LIMIT = """
import resource, signal, sys
from gitqueue import files
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
if sys.argv[2] == "killed":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
files.replace_file(sys.argv[1], bytes(4 << 20))
"""


def write_over_limit(path, how):
    return subprocess.run([sys.executable, "-c", WRITE_OVER_LIMIT, str(path), how], capture_output=True, text=True)


def test_a_write_stopped_part_way_leaves_the_old_file_whole_and_nothing_else(tmp_path):
    (tmp_path / "cache.json").write_bytes(b"old")
    done = write_over_limit(tmp_path / "cache.json", "refused")
    assert done.returncode == 1 and "OSError: [Errno 27] File too large" in done.stderr
    assert (tmp_path / "cache.json").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["cache.json"]


def test_a_writer_killed_part_way_leaves_the_old_file_whole(tmp_path):
    (tmp_path / "cache.json").write_bytes(b"old")
    done = write_over_limit(tmp_path / "cache.json", "killed")
    assert done.returncode == -signal.SIGXFSZ
    assert (tmp_path / "cache.json").read_bytes() == b"old"
    left = [name for name in os.listdir(tmp_path) if name != "cache.json"]
    assert len(left) == 1 and left[0].startswith(files.TMP_PREFIX)
    assert (tmp_path / left[0]).stat().st_size == 1 << 20  # the part written before the kill
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        files.sweep(fd)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["cache.json"]


def test_replace_file_writes_text_and_bytes_with_the_mode_asked(tmp_path):
    hook = tmp_path / "pre-receive"
    files.replace_file(str(hook), "#!/bin/sh\nexit 0\n", mode=0o755)
    assert hook.read_text() == "#!/bin/sh\nexit 0\n"
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    files.replace_file(str(hook), b"\xff\x00", durable=False)
    assert hook.read_bytes() == b"\xff\x00"
    assert os.listdir(tmp_path) == ["pre-receive"]


def test_replace_file_replaces_a_link_instead_of_writing_through_it(tmp_path):
    (tmp_path / "secret").write_bytes(b"SECRET")
    (tmp_path / "out").symlink_to(tmp_path / "secret")
    files.replace_file(str(tmp_path / "out"), b"new")
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out").read_bytes() == b"new"
    assert (tmp_path / "secret").read_bytes() == b"SECRET"


def test_replace_file_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files.replace_file("signers", "a line\n")
    assert (tmp_path / "signers").read_text() == "a line\n"


def test_write_json_round_trips(tmp_path):
    files.write_json(str(tmp_path / "state.json"), {"w1": ["abc", 1.5]}, separators=(",", ":"))
    assert (tmp_path / "state.json").read_text() == '{"w1":["abc",1.5]}'


def test_unlink_says_whether_there_was_a_file(tmp_path):
    (tmp_path / "a").write_bytes(b"")
    assert files.unlink(str(tmp_path / "a")) is True
    assert files.unlink(str(tmp_path / "a")) is False
    (tmp_path / "b").write_bytes(b"")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert files.unlink("b", fd) is True and files.unlink("b", fd) is False
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []


def test_fsync_dir_is_best_effort(tmp_path):
    files.fsync_dir(str(tmp_path))
    files.fsync_dir(str(tmp_path / "missing"))  # nothing to make durable: no error


def test_sha256_file_over_several_reads(tmp_path):
    data = os.urandom(3 << 20 | 17)
    (tmp_path / "pkg.tgz").write_bytes(data)
    assert files.sha256_file(str(tmp_path / "pkg.tgz")) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert files.sha256_file(str(tmp_path / "empty")) == hashlib.sha256(b"").hexdigest()
