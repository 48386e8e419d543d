"""What a worker is: the OS release from os-release on Linux, uname elsewhere, and overrides."""

import os

import pytest

from gitqueue.platform import PinMismatch, check, describe, linux_release

DEBIAN = '''PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
'''


def uname(sysname="Linux", release="6.1.0-18-amd64", machine="x86_64"):
    return os.uname_result((sysname, "host", release, "#1 SMP", machine))


def os_release(tmp_path, text, name="os-release"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_linux_worker_is_its_distribution_and_release_not_its_kernel(tmp_path):
    files = (os_release(tmp_path, DEBIAN),)
    assert describe(os_release_files=files, uname=uname()) == {"arch": "x86_64", "os_release": "debian-12"}
    # What a queue pinned with `gitqueue init --os-release debian-12` asks for.
    check({"os_release": "debian-12", "arch": "x86_64"}, describe(os_release_files=files, uname=uname()))
    with pytest.raises(PinMismatch, match="os_release is debian-12, the queue needs ubuntu-24.04"):
        check({"os_release": "ubuntu-24.04"}, describe(os_release_files=files, uname=uname()))


@pytest.mark.parametrize("text, expected", [
    ("NAME=\"Ubuntu\"\nVERSION_ID='24.04'\nID=ubuntu\nID_LIKE=debian\n", "ubuntu-24.04"),
    ("ID=alpine\nVERSION_ID=3.20.3\n", "alpine-3.20.3"),
    ("# a comment\n\nID=\"rocky\"  \nVERSION_ID=\"9.4\"\nBROKEN LINE\nNAME=\"unbalanced\n", "rocky-9.4"),
    ("ID=debian\nVERSION_CODENAME=trixie\n", "debian-trixie"),  # testing: no VERSION_ID yet
    ("ID=arch\nBUILD_ID=rolling\n", "arch"),
    ("VERSION_ID=1.0\n", "linux-1.0"),  # os-release(5): ID defaults to "linux"
])
def test_the_release_from_os_release(tmp_path, text, expected):
    assert linux_release((os_release(tmp_path, text),)) == expected


def test_usr_lib_os_release_when_etc_has_none(tmp_path):
    files = (str(tmp_path / "etc-os-release"), os_release(tmp_path, DEBIAN, "usr-lib-os-release"))
    assert linux_release(files) == "debian-12"


@pytest.mark.parametrize("text", [
    "ID=debian\nVERSION_ID=\"12\x1b[2J\"\n",
    "ID=\"deb ian\"\nVERSION_ID=12\n",
    "ID=debian\nVERSION_ID=" + "1" * 100 + "\n",
    "ID=../../etc\nVERSION_ID=12\n",
])
def test_an_os_release_of_no_plain_words_leaves_uname(tmp_path, text):
    files = (os_release(tmp_path, text),)
    assert linux_release(files) is None
    assert describe(os_release_files=files, uname=uname())["os_release"] == "6.1.0-18-amd64"


def test_without_os_release_and_on_other_systems_uname_r(tmp_path):
    assert describe(os_release_files=(str(tmp_path / "none"),), uname=uname())["os_release"] == "6.1.0-18-amd64"
    # NetBSD has no os-release; FreeBSD's would not count: there uname -r is the system's release.
    netbsd = uname("NetBSD", "10.1", "m68k")
    files = (os_release(tmp_path, "ID=freebsd\nVERSION_ID=14.1\n"),)
    assert describe(os_release_files=files, uname=netbsd) == {"arch": "m68k", "os_release": "10.1"}


def test_the_config_file_wins(tmp_path):
    files = (os_release(tmp_path, DEBIAN),)
    found = describe({"os_release": "12", "arch": "amd64"}, os_release_files=files, uname=uname())
    assert found == {"arch": "amd64", "os_release": "12"}
