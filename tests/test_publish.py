"""Publishing uploads into the package tree: real package files, a real tree, a real queue."""

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from gitqueue import lease, records
from gitqueue.errors import GitqueueError
from gitqueue.pkgsummary import sha256_file, summary_entry
from gitqueue.publish import publish, results_of

from helpers import job, make_queue, open_queue

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
            entry("tool-2.1", TOKEN_B, [b], pkgpath="devel/tool")], a, b


def test_publish_copies_verified_packages_and_indexes_them(tree):
    entries, a, b = two_packages(tree)
    got = publish(str(tree), entries)
    assert got["published"] == ["liba-1.0.tgz", "tool-2.1.tgz"]
    assert (got["already"], got["missing"], got["mismatch"], got["restricted"], got["conflict"]) == (0, [], [], [], [])
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz", "tool-2.1.tgz"]
    for pkg, token in ((a, TOKEN_A), (b, TOKEN_B)):
        assert (tree / "All" / pkg["name"]).read_bytes() == (tree / "incoming" / token / pkg["name"]).read_bytes()
        assert (tree / "incoming" / token / pkg["name"]).exists()  # incoming is left alone

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
    publish(str(tree), entries)
    before = {n: os.stat(tree / "All" / n) for n in all_files(tree)}
    got = publish(str(tree), entries)
    assert got["published"] == [] and got["already"] == 2
    after = {n: os.stat(tree / "All" / n) for n in all_files(tree)}
    assert {n: (s.st_ino, s.st_mtime_ns) for n, s in before.items()} == \
        {n: (s.st_ino, s.st_mtime_ns) for n, s in after.items()}
    # Without the digest cache, the files are read again, with the same answer.
    assert publish(str(tree), entries, cache=False)["already"] == 2


def test_a_corrupted_upload_is_refused_and_left_in_incoming(tree):
    entries, a, b = two_packages(tree)
    path = tree / "incoming" / TOKEN_B / b["name"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    short = upload(tree, TOKEN_C, "short-1.0")
    (tree / "incoming" / TOKEN_C / short["name"]).write_bytes(b"truncated")
    entries.append(entry("short-1.0", TOKEN_C, [short]))
    got = publish(str(tree), entries)
    assert got["published"] == ["liba-1.0.tgz"] and got["mismatch"] == ["short-1.0.tgz", "tool-2.1.tgz"]
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz"]
    assert path.exists() and sorted(summary(tree)) == ["liba-1.0"]


def test_a_missing_upload_is_reported_and_published_once_it_arrives(tree):
    entries, a, b = two_packages(tree)
    held = tree / "elsewhere.tgz"
    os.rename(tree / "incoming" / TOKEN_B / b["name"], held)
    got = publish(str(tree), entries)
    assert got["missing"] == ["tool-2.1.tgz"] and got["published"] == ["liba-1.0.tgz"]
    os.rename(held, tree / "incoming" / TOKEN_B / b["name"])
    got = publish(str(tree), entries)
    assert got["published"] == ["tool-2.1.tgz"] and got["already"] == 1 and got["missing"] == []
    assert sorted(summary(tree)) == ["liba-1.0", "tool-2.1"]


def test_restricted_packages_are_never_published(tree):
    ftp = upload(tree, TOKEN_A, "acroread-9.0")
    lic = upload(tree, TOKEN_B, "jdk-8.0")
    ok = upload(tree, TOKEN_C, "free-1.0")
    entries = [entry("acroread-9.0", TOKEN_A, [ftp], no_bin_on_ftp="${RESTRICTED}"),
               entry("jdk-8.0", TOKEN_B, [lic], restricted="Redistribution not permitted"),
               entry("free-1.0", TOKEN_C, [ok], restricted="")]
    got = publish(str(tree), entries)
    assert got["restricted"] == ["acroread-9.0.tgz", "jdk-8.0.tgz"] and got["published"] == ["free-1.0.tgz"]
    assert all_files(tree) == ["SHA512", "free-1.0.tgz", "pkg_summary.gz"]
    assert sorted(summary(tree)) == ["free-1.0"]
    # A result without its job record: nothing says the package may be published, so it is not.
    job_rec, result = entry("free-1.0", TOKEN_C, [ok])
    os.unlink(tree / "All" / "free-1.0.tgz")
    assert publish(str(tree), [(None, result)])["restricted"] == ["free-1.0.tgz"]


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
    got = publish(str(tree), entries)
    assert got["published"] == ["liba-1.0.tgz", "tool-2.1.tgz"]
    assert got["invalid"] == ["../../escape.tgz", "pkg_summary.gz"]
    assert stray["name"] not in all_files(tree) and failed["name"] not in all_files(tree)
    assert sorted(summary(tree)) == ["liba-1.0", "tool-2.1"]
    assert not (tree.parent / "escape.tgz").exists()


def test_another_file_under_the_same_name_is_a_conflict(tree):
    entries, a, b = two_packages(tree)
    (tree / "All").mkdir()
    (tree / "All" / b["name"]).write_bytes(b"someone else's tool-2.1")
    got = publish(str(tree), entries)
    assert got["conflict"] == ["tool-2.1.tgz"] and got["published"] == ["liba-1.0.tgz"]
    assert (tree / "All" / b["name"]).read_bytes() == b"someone else's tool-2.1"
    assert sorted(summary(tree)) == ["liba-1.0"]
    # Replaced behind publish's back after it remembered the digest: noticed all the same.
    os.unlink(tree / "All" / a["name"])
    (tree / "All" / a["name"]).write_bytes(b"x" * a["size"])
    assert publish(str(tree), entries)["conflict"] == ["liba-1.0.tgz", "tool-2.1.tgz"]
    assert summary(tree) == {}


def test_a_crash_leaves_all_consistent(tree, monkeypatch):
    entries, a, b = two_packages(tree)
    publish(str(tree), entries[:1])
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
        publish(str(tree), entries)
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz"]
    assert (tree / "All" / "pkg_summary.gz").read_bytes() == old_summary
    # 2. The package lands whole, then writing pkg_summary.gz fails: the previous one stays.
    monkeypatch.setattr(os, "replace", failing_after(1))
    with pytest.raises(OSError):
        publish(str(tree), entries)
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz", "tool-2.1.tgz"]
    assert (tree / "All" / b["name"]).read_bytes() == (tree / "incoming" / TOKEN_B / b["name"]).read_bytes()
    assert (tree / "All" / "pkg_summary.gz").read_bytes() == old_summary
    assert (tree / "All" / "SHA512").read_bytes() == old_digests
    # 3. A temporary file of a process killed mid-copy is swept; the next run completes.
    (tree / "All" / ".publish-tmp-999-0123456789abcdef").write_bytes(b"half a package")
    monkeypatch.setattr(os, "replace", real_replace)
    got = publish(str(tree), entries)
    assert got["published"] == [] and got["already"] == 2
    assert all_files(tree) == ["SHA512", "liba-1.0.tgz", "pkg_summary.gz", "tool-2.1.tgz"]
    assert sorted(summary(tree)) == ["liba-1.0", "tool-2.1"]


def test_an_unreadable_package_gets_what_is_known(tree):
    directory = tree / "incoming" / TOKEN_A
    directory.mkdir()
    (directory / "odd-1.0.tgz").write_bytes(b"\x1f\x8b\x08garbage, not a tarball")
    pkg = describe(directory / "odd-1.0.tgz")
    got = publish(str(tree), [entry("odd-1.0", TOKEN_A, [pkg], categories="misc", pkgpath="misc/odd")])
    assert got["published"] == ["odd-1.0.tgz"]
    assert summary(tree)["odd-1.0"] == {"PKGNAME": ["odd-1.0"], "PKGPATH": ["misc/odd"], "CATEGORIES": ["misc"],
                                        "FILE_NAME": ["odd-1.0.tgz"], "FILE_SIZE": [str(pkg["size"])],
                                        "FILE_CKSUM": [f"SHA256 {pkg['sha256']}"]}


def test_summary_entry_falls_back_to_the_job_and_reads_signed_packages(tmp_path):
    plain = tmp_path / "anon-1.0.tgz"
    make_package(plain, "anon-1.0", name_line=False)
    text = summary_entry(str(plain), {"name": "anon-1.0", "version": "1.0", "deps": []})
    assert text.startswith("PKGNAME=anon-1.0\nCOMMENT=The anon-1.0 tool\n") and text.endswith("\n")
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
    text = summary_entry(str(signed), None)
    assert "PKGNAME=signed-1.0\nDEPENDS=liba>=1\n" in text and f"FILE_SIZE={signed.stat().st_size}\n" in text


def test_build_logs_are_published_beside_the_packages(tree):
    entries, a, b = two_packages(tree)
    log = tree / "incoming" / TOKEN_A / "liba-1.0-aaaaaaaa.log"
    log.write_text("build output\n")
    job_rec, result = entries[0]
    entries[0] = (job_rec, dict(result, log={"name": log.name, "size": log.stat().st_size,
                                             "sha256": sha256_file(log)}))
    job_rec, result = entries[1]
    entries[1] = (job_rec, dict(result, log={"name": "../../../etc/passwd", "size": 1, "sha256": "0" * 64}))
    got = publish(str(tree), entries)
    assert got["logs"] == ["logs/liba-1.0/liba-1.0-aaaaaaaa.log"]
    assert (tree / "logs" / "liba-1.0" / log.name).read_text() == "build output\n"
    assert publish(str(tree), entries)["logs"] == []  # already there
    # A log that differs from its result is refused; one already published is never overwritten.
    log.write_text("other output\n")
    os.unlink(tree / "logs" / "liba-1.0" / log.name)
    assert publish(str(tree), entries)["mismatch"] == ["logs/liba-1.0/liba-1.0-aaaaaaaa.log"]
    (tree / "logs" / "liba-1.0" / log.name).write_text("build output, edited\n")
    assert publish(str(tree), entries)["conflict"] == ["logs/liba-1.0/liba-1.0-aaaaaaaa.log"]


def test_results_of_a_real_queue_and_publishing_them(tmp_path, tree):
    url = make_queue(tmp_path, [job("liba-1.0", pkgpath="devel/liba", categories="devel"),
                                job("tool-2.1", ["liba-1.0"], pkgpath="devel/tool", no_bin_on_ftp="not allowed")])
    with open_queue(url, tmp_path) as q:
        assert results_of(q) == []
        claimed = lease.claim(q, "w1")
        assert claimed["job"] == "liba-1.0"
        token = claimed["lease"]
        log = tree / "incoming" / token / "build.log"
        log.parent.mkdir(parents=True)
        log.write_text("ok\n")
        lease.report(q, "w1", "liba-1.0", "success", log={"name": "build.log", "size": 3, "sha256": sha256_file(log)})
        assert lease.claim(q, "w2")["job"] == "tool-2.1"
        lease.report(q, "w2", "tool-2.1", "failure", log_tail="boom")
        pairs = results_of(q)
    assert [(j["name"], r["status"]) for j, r in pairs] == [("liba-1.0", "success"), ("tool-2.1", "failure")]
    assert pairs[0][0]["pkgpath"] == "devel/liba" and pairs[0][1]["token"] == token
    assert pairs[1][0]["no_bin_on_ftp"] == "not allowed"

    got = publish(str(tree), pairs)  # no packages recorded yet: only the log
    assert got["published"] == [] and got["logs"] == ["logs/liba-1.0/build.log"]
    assert summary(tree) == {}
    # The same result once reports carry packages (lease.report does not take them yet).
    pkg = upload(tree, token, "liba-1.0", pkgpath="devel/liba")
    job_rec, result = pairs[0]
    pairs[0] = (job_rec, records.validate("result", dict(result, packages=[pkg])))
    got = publish(str(tree), pairs)
    assert got["published"] == ["liba-1.0.tgz"]
    assert summary(tree)["liba-1.0"]["PKGPATH"] == ["devel/liba"]


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
    got = publish(str(tree), entries)
    assert got["published"] == ["c-1.0.tgz"] and got["missing"] == ["a-1.0.tgz", "b-1.0.tgz"]
    assert got["logs"] == [] and got["conflict"] == ["logs/c-1.0/c.log"]
    assert sorted(os.listdir(outside)) == ["a-1.0.tgz", "b-1.0.tgz", "secret"]
    assert sorted(os.listdir(tree / "logs")) == ["c-1.0"]
    for path in tree.rglob("*"):
        assert path.is_symlink() or path.is_dir() or secret not in path.read_bytes(), path

    # A link in All/ under a package's name is not that package.
    (tree / "All" / "a-1.0.tgz").symlink_to(outside / "a-1.0.tgz")
    assert publish(str(tree), entries)["conflict"] == ["a-1.0.tgz", "logs/c-1.0/c.log"]
    assert sorted(summary(tree)) == ["c-1.0"]
    # All/ itself must be a directory of the tree, not a link to one.
    os.rename(tree / "All", tmp_path / "All")
    (tree / "All").symlink_to(tmp_path / "All")
    with pytest.raises(GitqueueError, match=r"/All is not a directory \(a symbolic link\?\)"):
        publish(str(tree), entries)
