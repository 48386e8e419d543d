"""Package transfer with real rsync: a local tree and a tree behind a real sshd."""

import os
import shlex
import shutil
import textwrap

import pytest

from gitqueue.errors import GitqueueError
from gitqueue.transfer import TransferError, TransferStats, describe, download, parse_tree, upload


def make_file(path, size, seed=0):
    data = os.urandom(size) if seed is None else bytes((i * 131 + seed * 7 + (i >> 8)) % 251 for i in range(size))
    path.write_bytes(data)
    return str(path)


def packages(tmp_path, sizes=(70_000, 123_457, 0)):
    d = tmp_path / "built"
    d.mkdir(exist_ok=True)
    return [make_file(d / f"pkg{i}-1.{i}.tgz", size, seed=i) for i, size in enumerate(sizes)]


def publish(root, token, names):
    """What the master does after a success: move incoming/<token>/NAME to All/NAME."""
    os.makedirs(root / "All", exist_ok=True)
    for name in names:
        os.replace(root / "incoming" / token / name, root / "All" / name)


def visible(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def wrapper(tmp_path, name, body, sshd):
    """An rsh command: a shell script running `body` (which execs ssh "$@"), plus the test ssh options."""
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return shlex.join([str(script), *shlex.split(sshd.rsync_rsh)[1:]])


# Passes the first 600,000 bytes of a stream on at once, then stops (`head -c` would hold them in its
# stdio buffer until it exits, and rsync would wait for its peer's answer forever).
CUT = "dd bs=65536 count=600000 iflag=count_bytes status=none"


class FakeSleep:
    def __init__(self):
        self.calls = []

    def __call__(self, seconds):
        self.calls.append(seconds)


def round_trip(tmp_path, tree, root, rsh=None):
    files = packages(tmp_path)
    stats = TransferStats()
    got = upload(files, tree, "lease-0a1b2c", rsh=rsh, stats=stats)
    assert got == [describe(f) for f in files]
    assert visible(root / "incoming" / "lease-0a1b2c") == sorted(os.path.basename(f) for f in files)
    assert stats.bytes_sent > 70_000 + 123_457  # the data went over the wire once
    publish(root, "lease-0a1b2c", [g["name"] for g in got])
    dest = tmp_path / "fetched"
    paths = download(got, tree, str(dest), rsh=rsh)
    assert paths == [str(dest / g["name"]) for g in got]
    for src, path in zip(files, paths):
        assert open(src, "rb").read() == open(path, "rb").read()
    assert visible(dest) == sorted(g["name"] for g in got)
    # A second download with everything present runs no rsync at all.
    stats2 = TransferStats()
    assert download(got, tree, str(dest), rsh=rsh, stats=stats2) == paths
    assert stats2.runs == []
    return got


# ------------------------------------------------------------------------------- local tree

def test_round_trip_local_tree(tmp_path):
    root = tmp_path / "tree"
    round_trip(tmp_path, str(root), root)


def test_upload_again_is_idempotent_and_checked(tmp_path):
    root = tmp_path / "tree"
    files = packages(tmp_path, sizes=(50_000,))
    first = upload(files, str(root), "tok")
    # Someone damaged the uploaded copy but kept its size and mtime: the quick check would miss it.
    target = root / "incoming" / "tok" / first[0]["name"]
    st = os.stat(target)
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    sleep = FakeSleep()
    assert upload(files, str(root), "tok", sleep=sleep) == first
    assert target.read_bytes() == open(files[0], "rb").read()
    assert len(sleep.calls) == 1  # one retry, forced past the quick check


def test_corrupted_download_raises_and_leaves_nothing(tmp_path):
    root = tmp_path / "tree"
    files = packages(tmp_path, sizes=(40_000, 50_000))
    got = upload(files, str(root), "tok")
    publish(root, "tok", [g["name"] for g in got])
    bad = root / "All" / got[1]["name"]
    bad.write_bytes(b"not the package")
    dest = tmp_path / "dl"
    with pytest.raises(TransferError) as e:
        download(got, str(root), str(dest))
    msg = str(e.value)
    assert got[1]["name"] in msg and "sha256" in msg and "\n" not in msg
    assert not (dest / got[1]["name"]).exists()
    assert visible(dest) == [got[0]["name"]]  # the good one is kept


def test_missing_package_fails_after_attempts(tmp_path):
    root = tmp_path / "tree"
    (root / "All").mkdir(parents=True)
    sleep = FakeSleep()
    with pytest.raises(TransferError) as e:
        download([{"name": "nope-1.0.tgz", "sha256": "0" * 64}], str(root), str(tmp_path / "dl"),
                 attempts=2, backoff=0.01, sleep=sleep)
    msg = str(e.value)
    assert "\n" not in msg and "after 2 attempts" in msg and "nope-1.0.tgz" in msg, msg
    assert len(sleep.calls) == 1


@pytest.mark.parametrize("token", ["", "..", "../x", "a/b", ".hidden", "-rf", "a b", "x\n", "tok;rm"])
def test_hostile_token_refused(tmp_path, token):
    files = packages(tmp_path, sizes=(10,))
    with pytest.raises(TransferError, match="invalid lease token"):
        upload(files, str(tmp_path / "tree"), token)
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize("name", ["../evil.tgz", "a/b.tgz", "..", ".x.tgz", "-e.tgz", "", "x y.tgz"])
def test_hostile_download_name_refused(tmp_path, name):
    (tmp_path / "tree" / "All").mkdir(parents=True)
    with pytest.raises(TransferError, match="invalid package name"):
        download([{"name": name, "sha256": "0" * 64}], str(tmp_path / "tree"), str(tmp_path / "dl"))
    assert not (tmp_path / "dl").exists()


def test_hostile_upload_file_name_and_bad_sha_refused(tmp_path):
    (tmp_path / "built").mkdir()
    with pytest.raises(TransferError, match="invalid package file name"):
        upload([make_file(tmp_path / "built" / "-oops.tgz", 10)], str(tmp_path / "tree"), "tok")
    with pytest.raises(TransferError, match="invalid sha256"):
        download([{"name": "a.tgz", "sha256": "xyz"}], str(tmp_path / "tree"), str(tmp_path / "dl"))
    assert isinstance(TransferError("x"), GitqueueError)


@pytest.mark.parametrize("tree", ["host::module", "rsync://host/module", "host:/srv/pk;rm -rf /", "h:/a/../b",
                                  "ssh://h:99999/x", "-e", "ssh://h/a b"])
def test_bad_trees_refused(tree):
    with pytest.raises(TransferError):
        parse_tree(tree)


def test_tree_forms():
    assert parse_tree("u@h:/srv/pk").arg("All") == "u@h:/srv/pk/All"
    loc = parse_tree("ssh://u@h:2222/srv/pk")
    assert (loc.host, loc.port, loc.path) == ("u@h", 2222, "/srv/pk")
    assert loc.rsh("ssh -i k") == "ssh -i k -p 2222" and loc.rsh(None) == "ssh -p 2222"
    assert parse_tree("/srv/a:b").host is None and parse_tree("./a:b").host is None


def remote_shell(tmp_path, name, body):
    """An rsh that runs `body` as if on the master, with SSH_ORIGINAL_COMMAND set (no sshd)."""
    script = tmp_path / name
    script.write_text('#!/bin/sh\nshift\nexport SSH_ORIGINAL_COMMAND="$*"\n' + body + "\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.skipif(shutil.which("rrsync") is None, reason="rrsync not installed")
def test_a_tree_that_keeps_uploaded_files_fails_a_different_one_at_once(tmp_path):
    """Behind rrsync -no-overwrite (as gitqueue serve runs it) an uploaded file is never replaced."""
    root = tmp_path / "tree"
    (root / "incoming" / "tok").mkdir(parents=True)
    rsh = remote_shell(tmp_path, "rrsync-rsh", f"exec rrsync -wo -no-overwrite -no-lock -absolute {root}/incoming/tok")
    files = packages(tmp_path, sizes=(30_000,))
    first = upload(files, f"master:{root}", "tok", rsh=rsh)
    assert upload(files, f"master:{root}", "tok", rsh=rsh) == first  # again (a retry): nothing to do
    original = open(files[0], "rb").read()
    make_file(tmp_path / "built" / first[0]["name"], 30_000, seed=9)
    sleep = FakeSleep()
    with pytest.raises(TransferError) as e:
        upload(files, f"master:{root}", "tok", rsh=rsh, sleep=sleep)
    assert str(e.value) == (f"upload to master:{root} failed after 1 attempt: {first[0]['name']}: the package tree "
                            "already holds another file under this name and keeps it (an upload never replaces a "
                            "file)")
    assert sleep.calls == []
    assert (root / "incoming" / "tok" / first[0]["name"]).read_bytes() == original


def test_a_refusal_of_the_master_is_not_retried(tmp_path):
    rsh = remote_shell(tmp_path, "refusing-rsh", 'echo "gitqueue serve: refused: rsync: no" >&2; exit 1')
    sleep = FakeSleep()
    with pytest.raises(TransferError) as e:
        upload(packages(tmp_path, sizes=(10,)), "master:/srv/packages", "tok", rsh=rsh, attempts=5, sleep=sleep)
    assert str(e.value) == ("upload to master:/srv/packages failed after 1 attempt: gitqueue serve: refused: "
                            "rsync: no (rsync exit 12)")
    assert sleep.calls == []


# ------------------------------------------------------------------------------- over ssh

@pytest.mark.ssh
def test_round_trip_over_ssh(tmp_path, sshd):
    root = tmp_path / "tree"
    round_trip(tmp_path, f"{sshd.user}@{sshd.host}:{root}", root, rsh=sshd.rsync_rsh)


@pytest.mark.ssh
def test_round_trip_over_ssh_url(tmp_path, sshd):
    root = tmp_path / "tree"
    round_trip(tmp_path, sshd.url(root), root, rsh=sshd.ssh_command)


@pytest.mark.ssh
def test_corrupted_download_over_ssh(tmp_path, sshd):
    root = tmp_path / "tree"
    tree = sshd.url(root)
    got = upload(packages(tmp_path, sizes=(30_000,)), tree, "tok", rsh=sshd.ssh_command)
    publish(root, "tok", [got[0]["name"]])
    (root / "All" / got[0]["name"]).write_bytes(b"\0" * 30_000)
    with pytest.raises(TransferError, match=f"{got[0]['name']}: sha256 mismatch"):
        download(got, tree, str(tmp_path / "dl"), rsh=sshd.ssh_command)
    assert visible(tmp_path / "dl") == []


@pytest.mark.ssh
def test_upload_retries_a_transient_failure(tmp_path, sshd):
    root = tmp_path / "tree"
    (root / "incoming").mkdir(parents=True)  # else the first upload into incoming/TOKEN is made again into the root
    count = tmp_path / "count"
    count.write_text("0")
    rsh = wrapper(tmp_path, "flaky-ssh", f"""\
        n=$(cat {count}); echo $((n + 1)) > {count}
        if [ "$n" -lt 2 ]; then echo "ssh: connect to host {sshd.host}: Connection refused" >&2; exit 255; fi
        exec ssh "$@"
        """, sshd)
    files = packages(tmp_path, sizes=(20_000,))
    sleep = FakeSleep()
    got = upload(files, f"{sshd.user}@{sshd.host}:{root}", "tok", rsh=rsh, sleep=sleep, backoff=0.5)
    assert got == [describe(files[0])]
    assert count.read_text().strip() == "4"  # two failures, the transfer, the check
    assert len(sleep.calls) == 2 and 0.5 <= sleep.calls[0] < sleep.calls[1]
    assert (root / "incoming" / "tok" / got[0]["name"]).read_bytes() == open(files[0], "rb").read()


@pytest.mark.ssh
def test_permanent_failure_one_line_growing_delays(tmp_path, sshd):
    rsh = wrapper(tmp_path, "dead-ssh", """\
        echo "ssh: connect to host master port 22: No route to host" >&2
        exit 255
        """, sshd)
    tree = f"{sshd.user}@{sshd.host}:{tmp_path / 'tree'}"
    sleep = FakeSleep()
    with pytest.raises(TransferError) as e:
        upload(packages(tmp_path, sizes=(10,)), tree, "tok", rsh=rsh, attempts=4, backoff=1.0, sleep=sleep)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"upload to {tree} failed after 4 attempts: ")
    assert "No route to host" in msg  # ssh's line, not rsync's closing boilerplate
    assert len(sleep.calls) == 3
    assert all(a < b for a, b in zip(sleep.calls, sleep.calls[1:])), sleep.calls
    assert 1.0 <= sleep.calls[0] <= 1.5 and 4.0 <= sleep.calls[2] <= 6.0
    assert not (tmp_path / "tree").exists()


@pytest.mark.ssh
def test_unreachable_port_fails_in_one_line(tmp_path, sshd):
    sleep = FakeSleep()
    with pytest.raises(TransferError) as e:
        download([{"name": "a-1.tgz", "sha256": "0" * 64}], f"ssh://{sshd.host}:1/srv", str(tmp_path / "dl"),
                 rsh=sshd.ssh_command, attempts=2, sleep=sleep)
    assert "\n" not in str(e.value) and "Connection refused" in str(e.value), str(e.value)
    assert len(sleep.calls) == 1


@pytest.mark.ssh
def test_remote_rsync_path(tmp_path, sshd):
    tree = sshd.url(tmp_path / "tree")
    files = packages(tmp_path, sizes=(1000,))
    with pytest.raises(TransferError) as e:
        upload(files, tree, "tok", rsh=sshd.ssh_command, attempts=1, rsync_path="/nonexistent/rsync")
    assert "\n" not in str(e.value) and "/nonexistent/rsync" in str(e.value), str(e.value)
    assert upload(files, tree, "tok", rsh=sshd.ssh_command, rsync_path=shutil.which("rsync")) == [describe(files[0])]


@pytest.mark.ssh
def test_interrupted_upload_never_shows_a_partial_file_and_is_sent_again(tmp_path, sshd):
    """Uploads keep no partial file (gitqueue serve refuses --partial-dir): the next attempt sends it whole."""
    root = tmp_path / "tree"
    tree = f"{sshd.user}@{sshd.host}:{root}"
    files = [make_file(tmp_path / "big-1.0.tgz", 2_000_000, seed=None)]
    name = os.path.basename(files[0])
    # Cut the rsync stream to the master after 600,000 bytes, as a dropped connection would.
    cut = wrapper(tmp_path, "cut-ssh", f'{CUT} | exec ssh "$@"\n', sshd)
    with pytest.raises(TransferError) as e:
        upload(files, tree, "tok", rsh=cut, attempts=1, io_timeout=4)
    assert "\n" not in str(e.value)
    incoming = root / "incoming" / "tok"
    assert not (incoming / name).exists()
    assert sorted(os.listdir(incoming)) == []  # rsync removed its temporary file
    stats = TransferStats()
    got = upload(files, tree, "tok", rsh=sshd.rsync_rsh, stats=stats)
    assert (incoming / name).read_bytes() == open(files[0], "rb").read()
    assert got[0]["sha256"] == describe(files[0])["sha256"]
    assert stats.runs[0]["sent"] > 2_000_000  # sent whole again
    assert sorted(os.listdir(incoming)) == [name]


@pytest.mark.ssh
def test_interrupted_download_never_shows_a_partial_file(tmp_path, sshd):
    root = tmp_path / "tree"
    (root / "All").mkdir(parents=True)
    src = make_file(root / "All" / "big-1.0.tgz", 2_000_000, seed=None)
    pkg = describe(src)
    # The master's answer is cut after 600,000 bytes.
    cut = wrapper(tmp_path, "cut-ssh", f'ssh "$@" | {CUT}\n', sshd)
    dest = tmp_path / "dl"
    with pytest.raises(TransferError):
        download([pkg], f"{sshd.user}@{sshd.host}:{root}", str(dest), rsh=cut, attempts=1, io_timeout=4)
    assert visible(dest) == []
    assert download([pkg], sshd.url(root), str(dest), rsh=sshd.ssh_command) == [str(dest / pkg["name"])]
    assert (dest / pkg["name"]).read_bytes() == open(src, "rb").read()
    assert visible(dest) == [pkg["name"]]


@pytest.mark.parametrize("remote", [False, True])
def test_in_tree_compares_all_by_checksum_without_sending_data(tmp_path, sshd, remote):
    """Whether the tree's All/ has a package already (an up-to-date build uploads nothing then)."""
    from gitqueue.transfer import TransferStats, in_tree

    root = tmp_path / "tree"
    (root / "All").mkdir(parents=True)
    local = tmp_path / "packages" / "All"
    local.mkdir(parents=True)
    tree = sshd.url(str(root)) if remote else str(root)
    rsh = sshd.ssh_command if remote else None
    same, other, absent = local / "same-1.0.tgz", local / "other-1.0.tgz", local / "absent-1.0.tgz"
    for path in (same, other, absent):
        path.write_bytes(os.urandom(20_000))
    (root / "All" / "same-1.0.tgz").write_bytes(same.read_bytes())
    (root / "All" / "other-1.0.tgz").write_bytes(os.urandom(20_000))  # same size, other bytes
    (root / "All" / "link-1.0.tgz").symlink_to(same)
    (local / "link-1.0.tgz").write_bytes(same.read_bytes())
    assert in_tree(str(same), tree, rsh) is True
    assert in_tree(str(other), tree, rsh) is False
    assert in_tree(str(absent), tree, rsh) is False
    assert in_tree(str(local / "link-1.0.tgz"), tree, rsh) is False
    assert same.read_bytes() == (root / "All" / "same-1.0.tgz").read_bytes()
    assert sorted(p.name for p in local.iterdir()) == ["absent-1.0.tgz", "link-1.0.tgz", "other-1.0.tgz",
                                                       "same-1.0.tgz"]  # a dry run: nothing fetched
    assert TransferStats  # the check goes through the same rsync runner as transfers
