"""Publishing uploads into the package tree: real package files, a real tree, a real queue."""

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import tomli_w

from gitqueue import lease, records
from gitqueue.errors import GitqueueError
from gitqueue.files import sha256_file
from gitqueue.layout import record_path
from gitqueue.pkgsummary import summary_entry
from gitqueue.publish import Snapshot, publish, read_queue

from helpers import gitqueue, job, local_commit, make_package_queue, make_queue, open_queue

TOKEN_A = "a" * 32
TOKEN_B = "b" * 32
TOKEN_C = "c" * 32

BUILD_INFO = ("BUILD_DATE=2026-10-01 12:00:00 +0000\nCATEGORIES={categories}\nMACHINE_ARCH=m68k\nOPSYS=NetBSD\n"
              "OS_VERSION=10.1\nPKGPATH={pkgpath}\nPKGTOOLS_VERSION=20250417\nHOMEPAGE=https://example.org/\n"
              "LICENSE=gnu-gpl-v3\nCC_VERSION=gcc-12.4.0\n")


def make_package(path, pkgname, deps=(), comment=None, desc=None, pkgpath="devel/x", categories="devel",
                 size_pkg=4096, name_line=True):
    """A pkgsrc-style binary package: gzip'ed tar, + files first, then the payload."""
    contents = (f"@name {pkgname}\n" if name_line else "") + "".join(f"@pkgdep {d}\n" for d in deps)
    contents += "@cwd /usr/pkg\nbin/tool\n"
    members = [
        ("+CONTENTS", contents),
        ("+COMMENT", (comment or f"The {pkgname} tool") + "\n"),
        ("+DESC", desc or f"{pkgname} does things.\n\nIt does them well.\n"),
        ("+BUILD_INFO", BUILD_INFO.format(categories=categories, pkgpath=pkgpath)),
        ("+SIZE_PKG", f"{size_pkg}\n"),
        ("bin/tool", "#!/bin/sh\necho " + pkgname + "\n" * 50),
    ]
    with tarfile.open(path, "w:gz") as tf:
        for name, text in members:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return describe(path)


def describe(path):
    data = Path(path).read_bytes()
    return {"name": os.path.basename(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def upload(tree, token, pkgname, **kwargs):
    """A package uploaded to incoming/TOKEN/; returns its {name, size, sha256}."""
    directory = tree / "incoming" / token
    directory.mkdir(parents=True, exist_ok=True)
    return make_package(directory / f"{pkgname}.tgz", pkgname, **kwargs)


def entry(name, token, packages, status="success", **job_extra):
    job_rec = records.validate("job", job(name, pkgpath=job_extra.pop("pkgpath", "devel/x"), **job_extra))
    result = records.validate("result", {"job": name, "version": "1.0", "status": status, "worker": "w1",
                                         "token": token, "packages": packages})
    return job_rec, result


def publish_entries(tree, entries, **options):
    """publish() of a tip that holds these (job, result) pairs and nothing else."""
    return publish(str(tree), Snapshot(entries=list(entries)), **options)


def summary(tree):
    """{PKGNAME: {KEY: [values]}} of All/pkg_summary.gz."""
    text = gzip.decompress((tree / "All" / "pkg_summary.gz").read_bytes()).decode()
    entries = {}
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition("=")
            fields.setdefault(key, []).append(value)
        entries[fields["PKGNAME"][0]] = fields
    return entries


def all_files(tree):
    return sorted(os.listdir(tree / "All"))


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "packages"
    (t / "incoming").mkdir(parents=True)
    return t


def two_packages(tree):
    a = upload(tree, TOKEN_A, "liba-1.0", pkgpath="devel/liba")
    b = upload(tree, TOKEN_B, "tool-2.1", deps=["liba>=1.0"], pkgpath="devel/tool", categories="devel sysutils")
    return [entry("liba-1.0", TOKEN_A, [a], pkgpath="devel/liba"),
            entry("tool-2.1", TOKEN_B, [b], pkgpath="devel/tool", categories="devel  sysutils")], a, b


def test_publish_copies_verified_packages_and_indexes_them(tree):
    entries, a, b = two_packages(tree)
    uploaded = {pkg["name"]: (tree / "incoming" / token / pkg["name"]).read_bytes()
                for pkg, token in ((a, TOKEN_A), (b, TOKEN_B))}
    got = publish_entries(tree, entries)
    assert got["published"] == ["liba-1.0.tgz", "tool-2.1.tgz"]
    assert (got["already"], got["missing"], got["mismatch"], got["restricted"], got["conflict"]) == (0, [], [], [], [])
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz", "tool-2.1.tgz"]
    for name, data in uploaded.items():
        assert (tree / "All" / name).read_bytes() == data
    # Published whole: the upload directories are gone.
    assert got["removed"] == 2 and list((tree / "incoming").iterdir()) == []

    entries_ = summary(tree)
    assert sorted(entries_) == ["liba-1.0", "tool-2.1"]
    tool = entries_["tool-2.1"]
    assert tool["DEPENDS"] == ["liba>=1.0"] and "DEPENDS" not in entries_["liba-1.0"]
    assert tool["COMMENT"] == ["The tool-2.1 tool"]
    assert tool["DESCRIPTION"] == ["tool-2.1 does things.", "", "It does them well."]
    assert tool["FILE_NAME"] == ["tool-2.1.tgz"] and tool["FILE_SIZE"] == [str(b["size"])]
    assert tool["FILE_CKSUM"] == [f"SHA256 {b['sha256']}"]
    assert tool["SIZE_PKG"] == ["4096"] and tool["CATEGORIES"] == ["devel sysutils"]
    assert tool["PKGPATH"] == ["devel/tool"] and tool["MACHINE_ARCH"] == ["m68k"]
    assert tool["OPSYS"] == ["NetBSD"] and tool["OS_VERSION"] == ["10.1"]
    assert tool["BUILD_DATE"] == ["2026-10-01 12:00:00 +0000"] and tool["PKGTOOLS_VERSION"] == ["20250417"]
    assert "CC_VERSION" not in tool  # pkg_info -X copies only the summary variables of +BUILD_INFO
    # pkg_info -X's order: plist, COMMENT, SIZE_PKG, build info, FILE_*, DESCRIPTION last.
    keys = list(dict.fromkeys(line.partition("=")[0] for line in summary_entry(
        str(tree / "All" / "tool-2.1.tgz"), entries[1][0]).splitlines()))
    assert keys[:4] == ["PKGNAME", "DEPENDS", "COMMENT", "SIZE_PKG"] and keys[-1] == "DESCRIPTION"
    assert keys.index("BUILD_DATE") < keys.index("FILE_NAME") < keys.index("FILE_SIZE") < keys.index("FILE_CKSUM")

    lines = (tree / "All" / "SHA512").read_text().splitlines()
    expected = sorted(f"SHA512 (All/{n}) = {hashlib.sha512((tree / 'All' / n).read_bytes()).hexdigest()}"
                      for n in ("liba-1.0.tgz", "pkg_summary.gz", "tool-2.1.tgz"))
    assert lines == expected


def test_a_second_publish_changes_nothing(tree):
    entries, _, _ = two_packages(tree)
    publish_entries(tree, entries)
    before = {n: os.stat(tree / "All" / n) for n in all_files(tree)}
    got = publish_entries(tree, entries)
    assert got["published"] == [] and got["already"] == 2
    after = {n: os.stat(tree / "All" / n) for n in all_files(tree)}
    assert {n: (s.st_ino, s.st_mtime_ns) for n, s in before.items()} == \
        {n: (s.st_ino, s.st_mtime_ns) for n, s in after.items()}
    # Without the digest cache, the files are read again, with the same answer.
    assert publish_entries(tree, entries, cache=False)["already"] == 2


def test_a_corrupted_upload_is_refused_and_left_in_incoming(tree):
    entries, a, b = two_packages(tree)
    path = tree / "incoming" / TOKEN_B / b["name"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    short = upload(tree, TOKEN_C, "short-1.0")
    (tree / "incoming" / TOKEN_C / short["name"]).write_bytes(b"truncated")
    entries.append(entry("short-1.0", TOKEN_C, [short]))
    got = publish_entries(tree, entries)
    assert got["published"] == ["liba-1.0.tgz"] and got["mismatch"] == ["short-1.0.tgz", "tool-2.1.tgz"]
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz"]
    assert path.exists() and sorted(summary(tree)) == ["liba-1.0"]


def test_a_missing_upload_is_reported_and_published_once_it_arrives(tree):
    entries, a, b = two_packages(tree)
    held = tree / "elsewhere.tgz"
    os.rename(tree / "incoming" / TOKEN_B / b["name"], held)
    got = publish_entries(tree, entries)
    assert got["missing"] == ["tool-2.1.tgz"] and got["published"] == ["liba-1.0.tgz"]
    os.rename(held, tree / "incoming" / TOKEN_B / b["name"])
    got = publish_entries(tree, entries)
    assert got["published"] == ["tool-2.1.tgz"] and got["already"] == 1 and got["missing"] == []
    assert sorted(summary(tree)) == ["liba-1.0", "tool-2.1"]


def test_restricted_packages_are_never_published(tree):
    ftp = upload(tree, TOKEN_A, "acroread-9.0")
    lic = upload(tree, TOKEN_B, "jdk-8.0")
    ok = upload(tree, TOKEN_C, "free-1.0")
    entries = [entry("acroread-9.0", TOKEN_A, [ftp], no_bin_on_ftp="${RESTRICTED}"),
               entry("jdk-8.0", TOKEN_B, [lic], restricted="Redistribution not permitted"),
               entry("free-1.0", TOKEN_C, [ok], restricted="")]
    got = publish_entries(tree, entries)
    assert got["restricted"] == ["acroread-9.0.tgz", "jdk-8.0.tgz"] and got["published"] == ["free-1.0.tgz"]
    assert all_files(tree) == ["SHA512", "free-1.0.tgz", "pkg_summary.gz"]
    assert sorted(summary(tree)) == ["free-1.0"]
    # A result without its job record: nothing says the package may be published, so it is not.
    job_rec, result = entry("free-1.0", TOKEN_C, [ok])
    os.unlink(tree / "All" / "free-1.0.tgz")
    assert publish_entries(tree, [(None, result)])["restricted"] == ["free-1.0.tgz"]


def test_only_files_named_by_success_results_are_published(tree):
    entries, a, b = two_packages(tree)
    stray = make_package(tree / "incoming" / TOKEN_A / "stray-1.0.tgz", "stray-1.0")
    failed = upload(tree, TOKEN_C, "broken-1.0")
    entries.append(entry("broken-1.0", TOKEN_C, [failed], status="failure"))
    fake = tree / "incoming" / TOKEN_A / "pkg_summary.gz"
    fake.write_bytes(b"not a summary")
    evil = [{"name": "../../escape.tgz", "size": 1, "sha256": "0" * 64},
            {"name": "pkg_summary.gz", "size": 13, "sha256": sha256_file(fake)}]
    job_rec, result = entries[0]
    entries[0] = (job_rec, dict(result, packages=result["packages"] + evil))  # past the schema: re-checked
    got = publish_entries(tree, entries)
    assert got["published"] == ["liba-1.0.tgz", "tool-2.1.tgz"]
    assert got["invalid"] == ["liba-1.0: '../../escape.tgz' is not a package file name",
                              "liba-1.0: 'pkg_summary.gz' is not a package file name"]
    assert stray["name"] not in all_files(tree) and failed["name"] not in all_files(tree)
    assert sorted(summary(tree)) == ["liba-1.0", "tool-2.1"]
    assert not (tree.parent / "escape.tgz").exists()


def test_another_file_under_the_same_name_is_a_conflict(tree):
    entries, a, b = two_packages(tree)
    (tree / "All").mkdir()
    (tree / "All" / b["name"]).write_bytes(b"someone else's tool-2.1")
    got = publish_entries(tree, entries)
    assert got["conflict"] == ["tool-2.1.tgz"] and got["published"] == ["liba-1.0.tgz"]
    assert (tree / "All" / b["name"]).read_bytes() == b"someone else's tool-2.1"
    assert sorted(summary(tree)) == ["liba-1.0"]
    # Replaced behind publish's back after it remembered the digest: noticed all the same.
    os.unlink(tree / "All" / a["name"])
    (tree / "All" / a["name"]).write_bytes(b"x" * a["size"])
    assert publish_entries(tree, entries)["conflict"] == ["liba-1.0.tgz", "tool-2.1.tgz"]
    assert summary(tree) == {}


def test_a_crash_leaves_all_consistent(tree, monkeypatch):
    entries, a, b = two_packages(tree)
    publish_entries(tree, entries[:1])
    old_summary = (tree / "All" / "pkg_summary.gz").read_bytes()
    old_digests = (tree / "All" / "SHA512").read_bytes()
    real_replace = os.replace

    def failing_after(n):
        calls = []

        def replace(src, dst, **dir_fds):
            calls.append(dst)
            if len(calls) > n:
                raise OSError(28, "No space left on device")
            return real_replace(src, dst, **dir_fds)
        return replace

    # 1. The package's rename fails: no package, no temporary file, the old indexes.
    monkeypatch.setattr(os, "replace", failing_after(0))
    with pytest.raises(OSError):
        publish_entries(tree, entries)
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz"]
    assert (tree / "All" / "pkg_summary.gz").read_bytes() == old_summary
    # 2. The package lands whole, then writing pkg_summary.gz fails: the previous one stays.
    monkeypatch.setattr(os, "replace", failing_after(1))
    with pytest.raises(OSError):
        publish_entries(tree, entries)
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz", "tool-2.1.tgz"]
    assert (tree / "All" / b["name"]).read_bytes() == (tree / "incoming" / TOKEN_B / b["name"]).read_bytes()
    assert (tree / "All" / "pkg_summary.gz").read_bytes() == old_summary
    assert (tree / "All" / "SHA512").read_bytes() == old_digests
    assert sorted(os.listdir(tree / "incoming")) == [TOKEN_B]  # removed only after the indexes
    # 3. A temporary file of a process killed mid-copy is swept; the next run completes.
    (tree / "All" / ".publish-tmp-999-0123456789abcdef").write_bytes(b"half a package")
    monkeypatch.setattr(os, "replace", real_replace)
    # 4. ... but dies removing the upload, one file gone: the copy in All/ is whole, and the run
    # after that removes the rest.
    real_rmtree = shutil.rmtree

    def dies_midway(name, dir_fd=None):
        os.unlink(os.path.join(name, b["name"]), dir_fd=dir_fd)
        raise OSError(5, "Input/output error")

    dies_midway.avoids_symlink_attacks = True
    monkeypatch.setattr(shutil, "rmtree", dies_midway)
    with pytest.raises(OSError):
        publish_entries(tree, entries)
    assert os.listdir(tree / "incoming" / TOKEN_B) == []
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    got = publish_entries(tree, entries)
    assert got["published"] == [] and got["already"] == 2 and got["removed"] == 1
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz", "tool-2.1.tgz"]
    assert sorted(summary(tree)) == ["liba-1.0", "tool-2.1"]
    assert os.listdir(tree / "incoming") == []


def test_an_unreadable_package_gets_what_is_known(tree):
    directory = tree / "incoming" / TOKEN_A
    directory.mkdir()
    (directory / "odd-1.0.tgz").write_bytes(b"\x1f\x8b\x08garbage, not a tarball")
    pkg = describe(directory / "odd-1.0.tgz")
    got = publish_entries(tree, [entry("odd-1.0", TOKEN_A, [pkg], categories="misc", pkgpath="misc/odd")])
    assert got["published"] == ["odd-1.0.tgz"]
    assert summary(tree)["odd-1.0"] == {"PKGNAME": ["odd-1.0"], "PKGPATH": ["misc/odd"], "CATEGORIES": ["misc"],
                                        "FILE_NAME": ["odd-1.0.tgz"], "FILE_SIZE": [str(pkg["size"])],
                                        "FILE_CKSUM": [f"SHA256 {pkg['sha256']}"]}


def test_summary_entry_takes_the_identity_from_the_job_and_reads_signed_packages(tmp_path):
    anon = job("anon-1.0", pkgpath="misc/anon", categories="misc")
    plain = tmp_path / "anon-1.0.tgz"
    make_package(plain, "anon-1.0", name_line=False, pkgpath="devel/elsewhere", categories="devel")
    text = summary_entry(str(plain), anon)
    # A package that does not name itself is only what the queue knows of it.
    assert text.startswith("PKGNAME=anon-1.0\nPKGPATH=misc/anon\nCATEGORIES=misc\nFILE_NAME=anon-1.0.tgz\n")
    assert "COMMENT" not in text and "DESCRIPTION" not in text and text.endswith("\n")
    # A signed package wraps the package after +PKG_HASH and the signature.
    inner = tmp_path / "inner.tgz"
    make_package(inner, "signed-1.0", deps=["liba>=1"])
    signed = tmp_path / "signed-1.0.tgz"
    with tarfile.open(signed, "w") as tf:
        for name, data in (("+PKG_HASH", b"pkgsrc signature\n"), ("+PKG_GPG_SIGNATURE", b"sig\n"),
                           ("signed-1.0.tgz", inner.read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    text = summary_entry(str(signed), job("signed-1.0"))
    assert "PKGNAME=signed-1.0\nDEPENDS=liba>=1\nCOMMENT=The signed-1.0 tool\n" in text
    assert f"FILE_SIZE={signed.stat().st_size}\n" in text
    # PKGPATH and CATEGORIES are the job's, in the package's place for them; without them in the
    # job record, the package's are not used either.
    assert "PKGPATH" not in text and "CATEGORIES" not in text
    text = summary_entry(str(signed), job("signed-1.0", pkgpath="security/signed", categories="security"))
    assert "\nCATEGORIES=security\nMACHINE_ARCH=m68k\n" in text and "\nPKGPATH=security/signed\n" in text


def test_build_logs_are_published_beside_the_packages(tree):
    entries, a, b = two_packages(tree)
    log = tree / "incoming" / TOKEN_A / "liba-1.0-aaaaaaaa.log"
    log.write_text("build output\n")
    job_rec, result = entries[0]
    entries[0] = (job_rec, dict(result, log={"name": log.name, "size": log.stat().st_size,
                                             "sha256": sha256_file(log)}))
    job_rec, result = entries[1]
    entries[1] = (job_rec, dict(result, log={"name": "../../../etc/passwd", "size": 1, "sha256": "0" * 64}))
    got = publish_entries(tree, entries)
    assert got["logs"] == ["logs/liba-1.0/liba-1.0-aaaaaaaa.log"]
    assert got["invalid"] == ["tool-2.1: log '../../../etc/passwd' is not a plain .log or .txt file name"]
    assert (tree / "logs" / "liba-1.0" / log.name).read_text() == "build output\n"
    # liba-1.0's upload is published whole and removed; tool-2.1's stays, for someone to look at.
    assert got["removed"] == 1 and sorted(os.listdir(tree / "incoming")) == [TOKEN_B]
    assert publish_entries(tree, entries)["logs"] == []  # already there
    # A log that differs from its result is refused; one already published is never overwritten.
    log.parent.mkdir()
    log.write_text("other output\n")
    os.unlink(tree / "logs" / "liba-1.0" / log.name)
    got = publish_entries(tree, entries)
    assert got["mismatch"] == ["logs/liba-1.0/liba-1.0-aaaaaaaa.log"] and log.exists()
    (tree / "logs" / "liba-1.0" / log.name).write_text("build output, edited\n")
    got = publish_entries(tree, entries)
    assert got["conflict"] == ["logs/liba-1.0/liba-1.0-aaaaaaaa.log"] and log.exists()


def test_read_queue_and_publishing_what_it_read(tmp_path, tree):
    url = make_queue(tmp_path, [job("liba-1.0", pkgpath="devel/liba", categories="devel"),
                                job("tool-2.1", ["liba-1.0"], pkgpath="devel/tool", no_bin_on_ftp="not allowed"),
                                job("other-1.0", ["liba-1.0"])])
    with open_queue(url, tmp_path) as q:
        snap = read_queue(q)
        assert (snap.entries, snap.leases, snap.lapsed, snap.unreadable) == ([], {}, {}, [])
        assert snap.settings["name"] == "test" and snap.settings["lease_ttl"] == 3600
        claimed = lease.claim(q, "w1")
        assert claimed.job == "liba-1.0"
        token = claimed.lease
        log = tree / "incoming" / token / "build.log"
        log.parent.mkdir(parents=True)
        log.write_text("ok\n")
        pkg = upload(tree, token, "liba-1.0", pkgpath="devel/liba")
        lease.report(q, "w1", "liba-1.0", "success", log=describe(log), packages=[pkg])
        held = {}
        for worker in ("w2", "w3"):
            got = lease.claim(q, worker)
            held[got.job] = (worker, got.lease)
        lease.report(q, held["tool-2.1"][0], "tool-2.1", "failure", log_tail="boom")
        snap = read_queue(q)
    assert [(j["name"], r["status"]) for j, r in snap.entries] == [("liba-1.0", "success"), ("tool-2.1", "failure")]
    assert snap.entries[0][0]["pkgpath"] == "devel/liba" and snap.entries[0][1]["token"] == token
    assert snap.entries[1][0]["no_bin_on_ftp"] == "not allowed"
    assert snap.leases == {held["other-1.0"][1]: "other-1.0"}

    got = publish(str(tree), snap)
    assert got["published"] == ["liba-1.0.tgz"] and got["logs"] == ["logs/liba-1.0/build.log"]
    assert summary(tree)["liba-1.0"]["PKGPATH"] == ["devel/liba"]
    assert summary(tree)["liba-1.0"]["CATEGORIES"] == ["devel"]


def test_publish_follows_no_link(tree, tmp_path):
    """Links a worker (or anyone) left in the tree: an upload, a log, an upload directory, a log
    directory, a name in All/. Nothing is read or written through them."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = os.urandom(16).hex().encode()
    (outside / "secret").write_bytes(secret)
    real = make_package(outside / "a-1.0.tgz", "a-1.0")
    (tree / "incoming" / TOKEN_A).mkdir()
    (tree / "incoming" / TOKEN_A / "a-1.0.tgz").symlink_to(outside / "a-1.0.tgz")  # the right bytes, linked
    (tree / "incoming" / TOKEN_A / "x.log").symlink_to(outside / "secret")
    b = make_package(outside / "b-1.0.tgz", "b-1.0")
    (tree / "incoming" / TOKEN_B).symlink_to(outside)  # the whole upload directory
    c = upload(tree, TOKEN_C, "c-1.0")
    log = tree / "incoming" / TOKEN_C / "c.log"
    log.write_text("c's log\n")
    (tree / "logs").mkdir()
    (tree / "logs" / "c-1.0").symlink_to(outside)  # publishing the log would write into outside/
    secret_log = {"name": "x.log", "size": len(secret), "sha256": hashlib.sha256(secret).hexdigest()}
    entries = [entry("a-1.0", TOKEN_A, [real]), entry("b-1.0", TOKEN_B, [b]), entry("c-1.0", TOKEN_C, [c])]
    entries[0] = (entries[0][0], dict(entries[0][1], log=secret_log))
    entries[2] = (entries[2][0], dict(entries[2][1], log=describe(log)))
    got = publish_entries(tree, entries)
    assert got["published"] == ["c-1.0.tgz"] and got["missing"] == ["a-1.0.tgz", "b-1.0.tgz"]
    assert got["logs"] == [] and got["conflict"] == ["logs/c-1.0/c.log"]
    assert sorted(os.listdir(outside)) == ["a-1.0.tgz", "b-1.0.tgz", "secret"]
    assert sorted(os.listdir(tree / "logs")) == ["c-1.0"]
    for path in tree.rglob("*"):
        assert path.is_symlink() or path.is_dir() or secret not in path.read_bytes(), path

    # A link in All/ under a package's name is not that package.
    (tree / "All" / "a-1.0.tgz").symlink_to(outside / "a-1.0.tgz")
    assert publish_entries(tree, entries)["conflict"] == ["a-1.0.tgz", "logs/c-1.0/c.log"]
    assert sorted(summary(tree)) == ["c-1.0"]
    # All/ itself must be a directory of the tree, not a link to one.
    os.rename(tree / "All", tmp_path / "All")
    (tree / "All").symlink_to(tmp_path / "All")
    with pytest.raises(GitqueueError, match=r"/All is not a directory \(a symbolic link\?\)"):
        publish_entries(tree, entries)


def package_queue(tmp_path, tree, jobs):
    """A real queue whose packages_url is `tree`; returns its path."""
    return make_package_queue(tmp_path, str(tree), jobs)


def claim_as(q, worker, expected):
    got = lease.claim(q, worker)
    assert got.job == expected, got
    return got.lease


def test_a_package_is_published_only_under_its_own_job_s_name(tmp_path, tree):
    """Squatting: x-1.0's worker uploads a trojan as gmake-4.4.1.tgz; y-1.0's uploads one that
    calls itself gmake-4.4.1 in its metadata. Neither is published; the real gmake is, later."""
    url = package_queue(tmp_path, tree, [  # claimed longest first: x, y, gmake
        job("x-1.0", pkgpath="misc/x", est_seconds=300), job("y-1.0", pkgpath="misc/y", est_seconds=200),
        job("gmake-4.4.1", pkgpath="devel/gmake", categories="devel", est_seconds=100)])
    with open_queue(url, tmp_path) as q:
        token_x = claim_as(q, "mallory", "x-1.0")
        trojan = upload(tree, token_x, "gmake-4.4.1", comment="a trojan")
        lease.report(q, "mallory", "x-1.0", "success", packages=[trojan])
        token_y = claim_as(q, "mallory", "y-1.0")
        (tree / "incoming" / token_y).mkdir()
        liar = make_package(tree / "incoming" / token_y / "y-1.0.tgz", "gmake-4.4.1", comment="another trojan")
        lease.report(q, "mallory", "y-1.0", "success", packages=[liar])
        got = publish(str(tree), read_queue(q))
        assert got["published"] == [] and got["conflict"] == []
        assert got["invalid"] == [
            "x-1.0: gmake-4.4.1.tgz is not a package file of x-1.0 (package_files allow x-1.0.tgz)",
            "y-1.0: y-1.0.tgz: the package names itself 'gmake-4.4.1', not y-1.0"]
        assert all_files(tree) == ["SHA512", "pkg_summary.gz"] and summary(tree) == {}
        assert not [p for p in (tree / "All").iterdir() if p.name.startswith(".publish-tmp-")]

        token = claim_as(q, "w1", "gmake-4.4.1")
        real = upload(tree, token, "gmake-4.4.1", comment="GNU make", pkgpath="devel/not-gmake", categories="evil")
        lease.report(q, "w1", "gmake-4.4.1", "success", packages=[real])
        uploaded = (tree / "incoming" / token / real["name"]).read_bytes()
        got = publish(str(tree), read_queue(q))
    assert got["published"] == ["gmake-4.4.1.tgz"] and got["conflict"] == []
    assert (tree / "All" / "gmake-4.4.1.tgz").read_bytes() == uploaded
    gmake = summary(tree)["gmake-4.4.1"]
    assert (gmake["COMMENT"], gmake["PKGPATH"], gmake["CATEGORIES"]) == (["GNU make"], ["devel/gmake"], ["devel"])
    assert sorted(summary(tree)) == ["gmake-4.4.1"]


def test_a_package_already_in_all_that_names_another_is_not_listed(tree):
    """Published before publish looked inside (an older gitqueue): left in All/, not advertised."""
    (tree / "All").mkdir()
    liar = make_package(tree / "All" / "y-1.0.tgz", "gmake-4.4.1")
    got = publish_entries(tree, [entry("y-1.0", TOKEN_A, [liar])])
    assert got["already"] == 0
    assert got["invalid"] == ["y-1.0: All/y-1.0.tgz: the package names itself 'gmake-4.4.1', not y-1.0"]
    assert summary(tree) == {}


def test_a_late_success_is_published_only_for_a_reclaimed_lease(tmp_path, tree):
    url = package_queue(tmp_path, tree, [job("a-1.0"), job("b-1.0")])
    with open_queue(url, tmp_path) as q:
        token_a = claim_as(q, "w1", "a-1.0")
        lease.reclaim(q, now=1000.0, ttl=1)
        assert lease.reclaim(q, now=1002.0, ttl=1) == [{"job": "a-1.0", "worker": "w1", "silent_for": 2}]
        pkg_a = upload(tree, token_a, "a-1.0")
        assert lease.report(q, "w1", "a-1.0", "success", token=token_a, packages=[pkg_a])["late"] is True
    # b-1.0: a late success that no reclaimed lease stands for, as a local writer can commit it.
    token_b = "b" * 32
    pkg_b = upload(tree, token_b, "b-1.0")
    local_commit(url, {record_path("results", "b-1.0"): records.dumps("result", {
        "job": "b-1.0", "version": "1.0", "status": "success", "worker": "w1", "token": token_b, "late": True,
        "packages": [pkg_b]})})
    with open_queue(url, tmp_path) as q:
        snap = read_queue(q)
    assert snap.lapsed["a-1.0"][0]["token"] == token_a
    got = publish(str(tree), snap)
    assert got["published"] == ["a-1.0.tgz"]
    assert got["unproven"] == [f"b-1.0: a late result by w1, but no lease of b-1.0 reclaimed from w1 (lapsed/) "
                               f"has its token {token_b}"]
    assert sorted(summary(tree)) == ["a-1.0"]


def test_a_result_under_another_s_lease_token_is_published_for_neither(tmp_path, tree):
    url = package_queue(tmp_path, tree, [job("a-1.0"), job("b-1.0"), job("c-1.0")])
    with open_queue(url, tmp_path) as q:
        token = claim_as(q, "w1", "a-1.0")
        pkg_a = upload(tree, token, "a-1.0")
        lease.report(q, "w1", "a-1.0", "success", packages=[pkg_a])
        live = claim_as(q, "w2", "b-1.0")
    pkg_b = upload(tree, token, "b-1.0")
    pkg_c = upload(tree, live, "c-1.0")
    local_commit(url, {record_path("results", name): records.dumps("result", {
        "job": name, "version": "1.0", "status": "success", "worker": "w1", "token": tok, "packages": [pkg]})
        for name, tok, pkg in (("b-1.0", token, pkg_b), ("c-1.0", live, pkg_c))})
    with open_queue(url, tmp_path) as q:
        got = publish(str(tree), read_queue(q))
    assert got["published"] == []
    assert got["unproven"] == [
        f"a-1.0: its lease token {token} is another result's or a live lease's too; published for neither",
        f"b-1.0: its lease token {token} is another result's or a live lease's too; published for neither",
        f"c-1.0: its lease token {live} is another result's or a live lease's too; published for neither"]


def test_a_local_writer_s_hostile_record_is_listed_and_the_rest_published(tmp_path, tree):
    """Records the schema refuses (a log named /etc/passwd, a package named ../../x): publish
    reads nothing they name, says so, and publishes the other results."""
    url = package_queue(tmp_path, tree, [job("a-1.0"), job("b-1.0"), job("c-1.0")])
    with open_queue(url, tmp_path) as q:
        token = claim_as(q, "w1", "a-1.0")
        pkg = upload(tree, token, "a-1.0")
        lease.report(q, "w1", "a-1.0", "success", packages=[pkg])
    hostile = {"b-1.0": {"log": {"name": "/etc/passwd", "size": 1, "sha256": "0" * 64}},
               "c-1.0": {"packages": [{"name": "../../x", "size": 1, "sha256": "0" * 64}]}}
    local_commit(url, {record_path("results", name): tomli_w.dumps({
        "job": name, "version": "1.0", "status": "failure" if "log" in extra else "success", "worker": "w1",
        "token": "c" * 32, **extra}).encode() for name, extra in hostile.items()})
    (tree / "incoming" / ("c" * 32)).mkdir()  # their upload: kept for someone to look at
    os.utime(tree / "incoming" / ("c" * 32), (1, 1))
    proc = gitqueue("publish", "--queue", url, env={"GITQUEUE_CACHE": str(tmp_path / "cache-cron")})
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[:4] == [
        "published 1, already 0, missing 0, restricted 0; 1 packages indexed; uploads removed: 1 published, "
        "0 abandoned",
        "  published a-1.0.tgz",
        f"  invalid {record_path('results', 'b-1.0')}: log.name: '/etc/passwd' is not a valid value",
        f"  invalid {record_path('results', 'c-1.0')}: packages[0].name: '../../x' is not a valid value"]
    assert proc.stderr.startswith("Error: 2 upload(s) refused: ") and proc.stderr.count("\n") == 1
    assert sorted(summary(tree)) == ["a-1.0"]
    assert sorted(p.name for p in tree.iterdir()) == [".publish-cache.json", ".publish.lock", "All", "incoming",
                                                      "logs"]
    assert list((tree / "logs").iterdir()) == []
    assert os.listdir(tree / "incoming") == ["c" * 32]


def test_uploads_are_removed_once_published_and_abandoned_ones_too(tmp_path, tree):
    """Published: a success's and a failure's uploads go. Abandoned: a released lease's that a
    publish run saw live. Kept: a live lease's, a restricted package's, a reclaimed lease's (a late
    success may come) until its job has a result, one made after the tip was read, one no record
    of this queue ever named (another queue's, in a shared tree); links and other names."""
    estimates = {"e-1.0": 700, "d-1.0": 650, "a-1.0": 600, "b-1.0": 500, "r-1.0": 400}  # the claims' order
    url = package_queue(tmp_path, tree, [job(n, est_seconds=t, **({"restricted": "license"} if n == "r-1.0" else {}))
                                         for n, t in estimates.items()])
    tokens = {}

    def claim_and_upload(q, worker, name):
        token = claim_as(q, worker, name)
        log = tree / "incoming" / token / f"{name}.log"
        pkg = upload(tree, token, name)
        log.write_text(f"building {name}\n")
        return token, pkg, describe(log)

    with open_queue(url, tmp_path) as q:
        tokens["e-1.0 lapsed"], _, _ = claim_and_upload(q, "w0", "e-1.0")
        lease.reclaim(q, now=1000.0, ttl=1)
        assert [r["job"] for r in lease.reclaim(q, now=1002.0, ttl=1)] == ["e-1.0"]
        tokens["e-1.0"], _, _ = claim_and_upload(q, "w1", "e-1.0")  # a live lease, uploading
        for worker, name in (("w5", "d-1.0"), ("w2", "a-1.0"), ("w3", "b-1.0"), ("w4", "r-1.0")):
            tokens[name], pkg, log = claim_and_upload(q, worker, name)
            if name == "b-1.0":
                lease.report(q, worker, name, "failure", log=log, log_tail="boom")
            elif name == "d-1.0":
                # publish (cron) runs while d's lease is live: that upload is this queue's.
                assert publish(str(tree), read_queue(q))["abandoned"] == 0
            else:
                lease.report(q, worker, name, "success", log=log, packages=[pkg])
        lease.release(q, "w5", "d-1.0", decline=False)
        now = time.time()
        snap = read_queue(q, clock=lambda: now)
    incoming = tree / "incoming"
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (incoming / ("f" * 16)).symlink_to(outside)
    (incoming / "notes").mkdir()
    (incoming / ("0" * 32)).mkdir()  # no lease of this queue's: another queue's, maybe
    for path in incoming.iterdir():
        os.utime(path, (now - 100, now - 100), follow_symlinks=False)
    (incoming / ("1" * 32)).mkdir()  # made after the tip was read: maybe a lease claimed since
    os.utime(incoming / ("1" * 32), (now + 1, now + 1))

    got = publish(str(tree), snap)
    assert got["published"] == ["a-1.0.tgz"] and got["restricted"] == ["r-1.0.tgz"]
    assert got["logs"] == ["logs/a-1.0/a-1.0.log", "logs/b-1.0/b-1.0.log", "logs/r-1.0/r-1.0.log"]
    assert (tree / "logs" / "b-1.0" / "b-1.0.log").read_text() == "building b-1.0\n"
    assert (got["removed"], got["abandoned"]) == (2, 1)  # a's and b's; d's
    assert sorted(os.listdir(incoming)) == sorted([tokens["e-1.0 lapsed"], tokens["e-1.0"], tokens["r-1.0"],
                                                   "f" * 16, "notes", "0" * 32, "1" * 32])
    assert os.listdir(outside) == ["keep"]
    # Once e-1.0 has a result, its reclaimed worker cannot report late any more: its upload goes
    # (w1's, its failure's without a log, is published whole).
    with open_queue(url, tmp_path) as q:
        lease.report(q, "w1", "e-1.0", "failure", log_tail="boom")
        got = publish(str(tree), read_queue(q))
    assert (got["removed"], got["abandoned"]) == (1, 1)
    assert not {tokens["e-1.0 lapsed"], tokens["e-1.0"]} & set(os.listdir(incoming))


def test_a_reclaimed_lease_s_upload_waits_for_its_late_success_however_late(tmp_path, tree):
    """w1 uploads, then goes silent for hours; its lease is reclaimed. publish runs meanwhile and
    keeps the upload: when w1 comes back and reports a late success, its package is published.
    (publish used to drop such uploads after lease_ttl; the late success was then kept without
    its package, which tests/test_faults.py caught.)"""
    url = package_queue(tmp_path, tree, [job("a-1.0")])
    with open_queue(url, tmp_path) as q:
        token = claim_as(q, "w1", "a-1.0")
        pkg = upload(tree, token, "a-1.0")
        assert publish(str(tree), read_queue(q))["abandoned"] == 0  # the lease is live
        lease.reclaim(q, now=1000.0, ttl=1)
        assert [r["job"] for r in lease.reclaim(q, now=1002.0, ttl=1)] == ["a-1.0"]
        hours_ago = time.time() - 5 * 3600  # the queue's lease_ttl is 3600
        os.utime(tree / "incoming" / token, (hours_ago, hours_ago))
        got = publish(str(tree), read_queue(q))
        assert (got["removed"], got["abandoned"]) == (0, 0) and os.listdir(tree / "incoming") == [token]
        assert lease.report(q, "w1", "a-1.0", "success", token=token, packages=[pkg])["late"] is True
        got = publish(str(tree), read_queue(q))
    assert got["published"] == ["a-1.0.tgz"] and got["removed"] == 1
    assert sorted(summary(tree)) == ["a-1.0"]


# -- several queues, one package tree ---------------------------------------------------------------


def build_in(url, cache_root, tree, n, payload=0):
    """n ready jobs of the queue at `url` claimed, built (a package uploaded to incoming/TOKEN/) and
    reported a success; returns their names. `payload` bytes of noise make each package larger."""
    built = []
    with open_queue(url, cache_root, host="builder") as q:
        for _ in range(n):
            got = lease.claim(q, "w1")
            pkg = upload(tree, got.lease, got.job, pkgpath=got.pkgpath,
                         desc=os.urandom(payload).hex() if payload else None)
            lease.report(q, "w1", got.job, "success", packages=[pkg])
            built.append(got.job)
    return built


def assert_indexes_list_all_of(tree, pkgpaths):
    """All/pkg_summary.gz (gunzipped, parsed) and All/SHA512 describe exactly the .tgz files in All/,
    with their checksums, each with its job's PKGPATH (`pkgpaths`: PKGNAME -> PKGPATH)."""
    directory = tree / "All"
    packages = sorted(n for n in os.listdir(directory) if n.endswith(".tgz"))
    data = {n: (directory / n).read_bytes() for n in packages}
    entries = summary(tree)
    assert sorted(e["FILE_NAME"][0] for e in entries.values()) == packages
    for pkgname, e in entries.items():
        content = data[e["FILE_NAME"][0]]
        assert e["FILE_NAME"] == [f"{pkgname}.tgz"] and e["FILE_SIZE"] == [str(len(content))]
        assert e["FILE_CKSUM"] == [f"SHA256 {hashlib.sha256(content).hexdigest()}"]
        assert e["PKGPATH"] == [pkgpaths[pkgname]]
    data["pkg_summary.gz"] = (directory / "pkg_summary.gz").read_bytes()
    assert (directory / "SHA512").read_text().splitlines() == [
        f"SHA512 (All/{n}) = {hashlib.sha512(content).hexdigest()}" for n, content in sorted(data.items())]
    return packages


def two_queues(tmp_path, tree, n):
    """Two queues (two builds) whose packages_url is the one tree; ({name: url}, {PKGNAME: PKGPATH})."""
    urls, pkgpaths = {}, {}
    for name in ("q1", "q2"):
        (tmp_path / name).mkdir()
        jobs = [job(f"{name}p{i}-1.0", pkgpath=f"{name}/p{i}", est_seconds=100 - i) for i in range(n)]
        urls[name] = make_package_queue(tmp_path / name, str(tree), jobs)
        pkgpaths.update({j["name"]: j["pkgpath"] for j in jobs})
    return urls, pkgpaths


def test_queues_sharing_a_tree_each_publish_indexes_every_package_in_all(tmp_path, tree):
    """Queue 2's publish keeps queue 1's packages in pkg_summary.gz and SHA512, and the other way
    round; a package removed from All/ leaves the indexes; one nobody published is not indexed."""
    urls, pkgpaths = two_queues(tmp_path, tree, 4)

    def publish_queue(name):
        with open_queue(urls[name], tmp_path / name, host="master") as q:
            return publish(str(tree), read_queue(q))

    build_in(urls["q1"], tmp_path / "q1", tree, 3)
    build_in(urls["q2"], tmp_path / "q2", tree, 2)
    waiting = sorted(os.listdir(tree / "incoming"))
    got = publish_queue("q1")
    assert got["indexed"] == 3 and (got["removed"], got["abandoned"]) == (3, 0)
    assert assert_indexes_list_all_of(tree, pkgpaths) == ["q1p0-1.0.tgz", "q1p1-1.0.tgz", "q1p2-1.0.tgz"]
    # Queue 2's uploads, which no record of queue 1 names, wait for queue 2's publish.
    assert len(os.listdir(tree / "incoming")) == 2 and set(os.listdir(tree / "incoming")) < set(waiting)
    got = publish_queue("q2")
    assert got["published"] == ["q2p0-1.0.tgz", "q2p1-1.0.tgz"] and got["indexed"] == 5
    assert len(assert_indexes_list_all_of(tree, pkgpaths)) == 5
    # Each queue's run again, with nothing new: the same indexes.
    before = (tree / "All" / "SHA512").read_bytes()
    for name in ("q1", "q2"):
        assert publish_queue(name)["indexed"] == 5
        assert (tree / "All" / "SHA512").read_bytes() == before
    # Without the remembered digests, files are read again; what was published for whom is kept.
    with open_queue(urls["q2"], tmp_path / "q2", host="master") as q:
        assert publish(str(tree), read_queue(q), cache=False)["indexed"] == 5
    assert (tree / "All" / "SHA512").read_bytes() == before
    # The administrator removes a package of queue 1: queue 2's next run drops its entry.
    os.unlink(tree / "All" / "q1p1-1.0.tgz")
    assert publish_queue("q2")["indexed"] == 4
    assert "q1p1-1.0" not in summary(tree) and len(assert_indexes_list_all_of(tree, pkgpaths)) == 4
    # A file that no publish run put there is not indexed (nothing says which job it is), and is
    # named; one of queue 1's rewritten behind publish's back is not the published one any more.
    make_package(tree / "All" / "stray-1.0.tgz", "stray-1.0")
    (tree / "All" / "q1p2-1.0.tgz").write_bytes(b"rewritten")
    got = publish_queue("q2")
    assert got["unlisted"] == ["q1p2-1.0.tgz", "stray-1.0.tgz"] and got["indexed"] == 3
    assert sorted(summary(tree)) == ["q1p0-1.0", "q2p0-1.0", "q2p1-1.0"]
    for path in ("stray-1.0.tgz", "q1p2-1.0.tgz"):
        os.unlink(tree / "All" / path)
    assert publish_queue("q1")["unlisted"] == []
    assert len(assert_indexes_list_all_of(tree, pkgpaths)) == 3


def test_a_package_two_queues_build_is_listed_as_the_first_published_it(tmp_path, tree):
    """Both builds have common-1.0: the second one's bytes differ (a conflict, All/ keeps the
    first), or are the same (already there); either way the entry stays the first queue's."""
    urls = {}
    for name, pkgpath in (("q1", "devel/common"), ("q2", "devel/common-renamed")):
        (tmp_path / name).mkdir()
        urls[name] = make_package_queue(tmp_path / name, str(tree), [job("common-1.0", pkgpath=pkgpath)])
    build_in(urls["q1"], tmp_path / "q1", tree, 1)
    with open_queue(urls["q1"], tmp_path / "q1") as q:
        publish(str(tree), read_queue(q))
    first = (tree / "All" / "common-1.0.tgz").read_bytes()
    build_in(urls["q2"], tmp_path / "q2", tree, 1, payload=16)
    with open_queue(urls["q2"], tmp_path / "q2") as q:
        got = publish(str(tree), read_queue(q))
    assert got["conflict"] == ["common-1.0.tgz"] and got["indexed"] == 1
    assert (tree / "All" / "common-1.0.tgz").read_bytes() == first
    assert assert_indexes_list_all_of(tree, {"common-1.0": "devel/common"}) == ["common-1.0.tgz"]


def test_queues_publishing_into_one_tree_at_once(tmp_path, tree):
    """Two `gitqueue publish` processes, one per queue, started together, round after round: after
    each round the indexes list every package in All/, both queues' (the tree's lock serializes
    the runs; without it, the run that finishes last forgets what the other published)."""
    urls, pkgpaths = two_queues(tmp_path, tree, 12)
    env = {**os.environ, "GITQUEUE_CONFIG": str(tmp_path / "none.toml")}
    for round_ in range(4):
        for name in urls:
            build_in(urls[name], tmp_path / name, tree, 3, payload=200_000)
        procs = [subprocess.Popen([sys.executable, "-m", "gitqueue", "publish", "--queue", url, "--tree", str(tree)],
                                  env={**env, "GITQUEUE_CACHE": str(tmp_path / f"cache-cron-{name}")},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, url in urls.items()]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        assert len(assert_indexes_list_all_of(tree, pkgpaths)) == 6 * (round_ + 1)
    assert os.listdir(tree / "incoming") == []


def test_a_reclaimed_lease_s_upload_goes_once_an_update_fences_it(tmp_path, tree):
    """A reclaimed lease's upload waits for a late success, but not after an administrator's
    update fenced its token: no result under it will ever be accepted. A late result under it
    that a local writer got in anyway is not published."""
    from gitqueue import admin

    url = package_queue(tmp_path, tree, [job("a-1.0"), job("b-1.0")])
    with open_queue(url, tmp_path) as q:
        token = claim_as(q, "w1", "a-1.0")
        pkg = upload(tree, token, "a-1.0")
        lease.reclaim(q, now=1000.0, ttl=1)
        assert [r["job"] for r in lease.reclaim(q, now=1002.0, ttl=1)] == ["a-1.0"]
        assert publish(str(tree), read_queue(q))["abandoned"] == 0  # a late success may come
        assert admin.update_jobs(q, [job("a-1.0", version="1.1"), job("b-1.0")], "scan2")["rebuilt"] == ["a-1.0"]
        now = time.time()
        snap = read_queue(q, clock=lambda: now)
    assert token in snap.fenced
    os.utime(tree / "incoming" / token, (now - 100, now - 100))
    late = {"job": "a-1.0", "version": "1.0", "status": "success", "worker": "w1", "token": token, "late": True,
            "packages": [pkg]}
    got = publish(str(tree), Snapshot(entries=[(records.validate("job", job("a-1.0")), late)],
                                      lapsed=snap.lapsed, fenced=snap.fenced))
    assert got["published"] == [] and got["unproven"] == [f"a-1.0: its lease token {token} was fenced by an "
                                                         "administrator's retry or update"]
    assert publish(str(tree), snap)["abandoned"] == 1
    assert token not in os.listdir(tree / "incoming")
