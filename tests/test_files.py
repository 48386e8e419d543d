"""Opening, writing and removing inside a tree that workers write to: real files, links and FIFOs."""

import os

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
