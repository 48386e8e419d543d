"""Packages in, packages out: dependency download, build, upload, report, publish, pkg_summary.

Real rsync over a real sshd on 127.0.0.1; the "packages" are tarballs made by a stand-in for
`bmake package`.
"""

import gzip
import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from gitqueue import records
from gitqueue.layout import record_path
from gitqueue.queue import Queue

from helpers import git_log, job, make_package_queue

STAND_IN = textwrap.dedent("""\
    #!/bin/sh
    # bmake package, as far as gitqueue can tell: needs its dependencies' packages, makes one.
    set -e
    for dep in $GITQUEUE_DEPS; do
        test -f "$GITQUEUE_PACKAGES/All/$dep.tgz" || { echo "missing $dep.tgz"; exit 1; }
    done
    work=$(mktemp -d)
    cd "$work"
    { echo "@name $GITQUEUE_JOB"; for dep in $GITQUEUE_DEPS; do echo "@pkgdep $dep"; done; } > +CONTENTS
    echo "stand-in for $GITQUEUE_PKGPATH" > +COMMENT
    printf 'A package built by a test.\\nSecond line.\\n' > +DESC
    printf 'MACHINE_ARCH=m68k\\nOPSYS=NetBSD\\nOS_VERSION=10.1\\nPKGPATH=%s\\n' "$GITQUEUE_PKGPATH" > +BUILD_INFO
    head -c 100000 /dev/urandom > payload
    mkdir -p "$GITQUEUE_OUTPUT/All"
    tar -czf "$GITQUEUE_OUTPUT/All/$GITQUEUE_JOB.tgz" +CONTENTS +COMMENT +DESC +BUILD_INFO payload
    echo "=> Creating binary package $GITQUEUE_JOB.tgz"
    """)


def run_work(url, name, env, tmp_path):
    build = tmp_path / "stand-in-package"
    build.write_text(STAND_IN)
    build.chmod(0o755)
    return subprocess.run([sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", name,
                           "--max-wait", "0.2", "--", str(build)], env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.ssh
def test_packages_travel_over_ssh_and_get_published(tmp_path, sshd):
    tree = tmp_path / "packages"
    tree.mkdir()
    url = make_package_queue(tmp_path, f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{tree}", [
        job("base-1.0", pkgpath="devel/base"), job("app-2.0", ["base-1.0"], pkgpath="misc/app"),
        job("secret-1", pkgpath="misc/secret", restricted="license")])
    config = tmp_path / "worker.toml"
    config.write_text(f'rsync_rsh = "{sshd.ssh_command}"\n')
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache-w"), "GITQUEUE_CONFIG": str(config)}
    proc = run_work(url, "w1", env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "queue finished (3 jobs built here" in proc.stderr
    # Each result names exactly what was uploaded to incoming/TOKEN/.
    with Queue(url, str(tmp_path / "cache-check")) as q:
        _, reader = q.fetch()
        for name in ("base-1.0", "app-2.0"):
            rec = records.load_at("result", reader.read(record_path("results", name)), record_path("results", name))
            [pkg] = rec["packages"]
            uploaded = tree / "incoming" / rec["token"] / pkg["name"]
            assert pkg["name"] == f"{name}.tgz"
            assert hashlib.sha256(uploaded.read_bytes()).hexdigest() == pkg["sha256"]
            assert (tree / "incoming" / rec["token"] / rec["log"]["name"]).exists()
    # The master publishes; the restricted package stays out.
    admin = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache-master")}
    pub = subprocess.run([sys.executable, "-m", "gitqueue", "publish", "--queue", url, "--tree", str(tree)],
                         env=admin, capture_output=True, text=True, timeout=60)
    assert pub.returncode == 0, pub.stderr
    assert pub.stdout.splitlines()[0] == ("published 2, already 0, missing 0, restricted 1; 2 packages indexed; "
                                         "uploads removed: 2 published, 0 abandoned")
    assert sorted(os.listdir(tree / "All")) == ["SHA512", "app-2.0.tgz", "base-1.0.tgz", "pkg_summary.gz"]
    # The published uploads are removed; the restricted package's stays where it was uploaded.
    [kept] = os.listdir(tree / "incoming")
    assert os.listdir(tree / "incoming" / kept)[0].startswith("secret-1")
    summary = gzip.decompress((tree / "All" / "pkg_summary.gz").read_bytes()).decode()
    entries = [e for e in summary.split("\n\n") if e.strip()]
    assert [next(line for line in e.splitlines() if line.startswith("PKGNAME=")) for e in entries] == \
        ["PKGNAME=app-2.0", "PKGNAME=base-1.0"]
    assert "DEPENDS=base-1.0" in entries[0] and "COMMENT=stand-in for misc/app" in entries[0]
    check = subprocess.run(["sha512sum", "-c", "All/SHA512"], cwd=tree, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    again = subprocess.run([sys.executable, "-m", "gitqueue", "publish", "--queue", url, "--tree", str(tree)],
                           env=admin, capture_output=True, text=True, timeout=60)
    assert again.stdout.splitlines()[0] == ("published 0, already 2, missing 0, restricted 1; 2 packages indexed; "
                                           "uploads removed: 0 published, 0 abandoned")
    assert "report app-2.0 (misc/app): success by w1" in git_log(url)


def test_a_failed_upload_gives_the_job_back(tmp_path):
    # A package tree on a host that does not answer.
    url = make_package_queue(tmp_path, "ssh://nobody@127.0.0.1:1/srv/packages", [job("base-1.0", pkgpath="devel/base")])
    config = tmp_path / "worker.toml"
    config.write_text('rsync_rsh = "ssh -o BatchMode=yes -o ConnectTimeout=2"\ntransfer_attempts = 2\n'
                      'transfer_backoff = 0.1\n')
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache-w"), "GITQUEUE_CONFIG": str(config)}
    build = tmp_path / "stand-in-package"
    build.write_text(STAND_IN)
    build.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", "w1",
                             "--max-wait", "0.2", "--", str(build)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    import time
    deadline = time.monotonic() + 120
    while "release base-1.0" not in git_log(url) and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.terminate()
    proc.communicate(timeout=60)
    log = git_log(url)
    assert "release base-1.0 (devel/base) by w1: upload failed: upload to" in log
    assert "report base-1.0" not in log


def test_report_uploads_packages_given_on_the_command_line(tmp_path):
    tree = tmp_path / "packages"
    url = make_package_queue(tmp_path, str(tree), [job("gmake-4.4.1", pkgpath="devel/gmake")])
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache-w")}
    gq = [sys.executable, "-m", "gitqueue"]
    claim = subprocess.run(gq + ["claim", "--queue", url, "--worker", "w1"], env=env, capture_output=True, text=True)
    assert claim.returncode == 0, claim.stderr
    token = claim.stdout.split("\t")[2].strip()
    log = tmp_path / "build output"  # not a log file name: recorded and uploaded as gmake-4.4.1.log
    log.write_text("=> Creating binary package\n")
    # A file the job's result may not name is refused before anything is uploaded.
    other = tmp_path / "glibc-2.40.tgz"
    other.write_bytes(b"not gmake")
    before = git_log(url)
    rep = subprocess.run(gq + ["report", "gmake-4.4.1", "--queue", url, "--worker", "w1", "--status", "success",
                               "--log", str(log), "--package", str(other)], env=env, capture_output=True, text=True)
    assert rep.returncode == 1
    assert rep.stderr == (f"Error: --package {other}: glibc-2.40.tgz is not a package file of gmake-4.4.1 "
                          "(package_files allow gmake-4.4.1.tgz); nothing uploaded or recorded\n")
    assert not tree.exists() and git_log(url) == before
    package = tmp_path / "gmake-4.4.1.tgz"
    package.write_bytes(os.urandom(5000))
    rep = subprocess.run(gq + ["report", "gmake-4.4.1", "--queue", url, "--worker", "w1", "--status", "success",
                               "--log", str(log), "--package", str(package), "--json"],
                         env=env, capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr
    import json
    result = json.loads(rep.stdout)
    assert result["packages"] == [{"name": "gmake-4.4.1.tgz", "size": 5000,
                                   "sha256": hashlib.sha256(package.read_bytes()).hexdigest()}]
    assert (tree / "incoming" / token / "gmake-4.4.1.tgz").read_bytes() == package.read_bytes()
    assert (tree / "incoming" / token / "gmake-4.4.1.log").read_bytes() == log.read_bytes()
    assert result["log"]["name"] == "gmake-4.4.1.log"
    pub = subprocess.run(gq + ["publish", "--queue", url], env=env, capture_output=True, text=True)
    assert pub.returncode == 0 and pub.stdout.startswith("published 1,"), pub.stderr


def test_a_package_file_pattern_may_begin_with_a_wildcard(tmp_path):
    """Debian's binary packages are not named after their source (libbsd builds libbsd0 and
    libbsd-dev): `*_{version}_*.deb` takes any of them at the job's version, nothing else."""
    tree = tmp_path / "packages"
    url = str(tmp_path / "q.git")
    graph = tmp_path / "g.jsonl"
    graph.write_text('{"name": "libbsd-0.11.7-2", "version": "0.11.7-2", "deps": []}\n')
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache-admin")}
    gq = [sys.executable, "-m", "gitqueue"]
    init = subprocess.run(gq + ["init", url, "--packages-url", str(tree), "--package-file", "*_{version}_*.deb"],
                          env=env, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert subprocess.run(gq + ["import", url, str(graph)], env=env, capture_output=True).returncode == 0
    build = tmp_path / "build"
    build.write_text('#!/bin/sh\nfor f in libbsd0_0.11.7-2_amd64.deb libbsd-dev_0.11.7-2_amd64.deb '
                     'libmd0_1.0.4-2_amd64.deb libbsd0_0.11.7-2_amd64.deb.sig; do\n'
                     '    echo "$f" > "$GITQUEUE_OUTPUT/$f"\ndone\n')
    build.chmod(0o755)
    env["GITQUEUE_CACHE"] = str(tmp_path / "cache-w")
    proc = subprocess.run(gq + ["work", "--queue", url, "--worker", "w1", "--once", "--", str(build)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    allowed = "(package_files allow *_0.11.7-2_*.deb)"
    assert sorted(line for line in proc.stderr.splitlines() if "not uploading" in line) == [
        f"w1: not uploading libbsd0_0.11.7-2_amd64.deb.sig: not a package file of libbsd-0.11.7-2 {allowed}",
        f"w1: not uploading libmd0_1.0.4-2_amd64.deb: not a package file of libbsd-0.11.7-2 {allowed}"]
    with Queue(url, str(tmp_path / "cache-check")) as q:
        _, reader = q.fetch()
        rec = records.load_at("result", reader.read(record_path("results", "libbsd-0.11.7-2")),
                              record_path("results", "libbsd-0.11.7-2"))
    assert sorted(p["name"] for p in rec["packages"]) == ["libbsd-dev_0.11.7-2_amd64.deb", "libbsd0_0.11.7-2_amd64.deb"]
    pub = subprocess.run(gq + ["publish", "--queue", url], env=env, capture_output=True, text=True)
    assert pub.returncode == 0 and pub.stdout.startswith("published 2,"), pub.stdout + pub.stderr
    assert sorted(os.listdir(tree / "All")) == ["SHA512", "libbsd-dev_0.11.7-2_amd64.deb",
                                                "libbsd0_0.11.7-2_amd64.deb", "pkg_summary.gz"]


def test_the_worker_uploads_and_names_only_the_jobs_own_package_files(tmp_path):
    tree = tmp_path / "packages"
    url = make_package_queue(tmp_path, str(tree), [job("gmake-4.4.1", pkgpath="devel/gmake")])
    build = tmp_path / "build"
    build.write_text('#!/bin/sh\nmkdir -p "$GITQUEUE_OUTPUT/All"\n'
                     'for f in All/gmake-4.4.1.tgz All/make-1.tgz notes.txt .hidden; do\n'
                     '    echo "$f" > "$GITQUEUE_OUTPUT/$f"\ndone\n')
    build.chmod(0o755)
    env = {**os.environ, "GITQUEUE_CACHE": str(tmp_path / "cache-w")}
    proc = subprocess.run([sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", "w1", "--once",
                           "--", str(build)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert [line for line in lines if "not uploading" in line] == [
        "w1: not uploading All/make-1.tgz: not a package file of gmake-4.4.1 (package_files allow gmake-4.4.1.tgz)",
        "w1: not uploading notes.txt: not a package file of gmake-4.4.1 (package_files allow gmake-4.4.1.tgz)"]
    with Queue(url, str(tmp_path / "cache-check")) as q:
        _, reader = q.fetch()
        rec = records.load_at("result", reader.read(record_path("results", "gmake-4.4.1")),
                              record_path("results", "gmake-4.4.1"))
    assert [p["name"] for p in rec["packages"]] == ["gmake-4.4.1.tgz"]
    assert rec["log"]["name"] == f"gmake-4.4.1-{rec['token'][:8]}.log"
    assert sorted(os.listdir(tree / "incoming" / rec["token"])) == sorted(["gmake-4.4.1.tgz", rec["log"]["name"]])
