"""pkgsrc builds as pbulk's client makes them: `gitqueue work` running a build script with pbulk's
interface (tests/pbulk/pkg-build), real bmake, real rsync into a package tree, real processes.

tests/pbulk/ holds the pbulk side (pkg-build, pkg-up-to-date, client-clean, and stand-ins for
pkg_add and pkg_delete); each test lays out a small pkgsrc tree whose Makefiles (bmake) build
packages of a few files, and a pbulk.conf pointing pbulk at gitqueue's directories as
docs/pkgsrc.md says.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gitqueue import outcome, records
from gitqueue.layout import record_path

from helpers import REPO, gitqueue, open_queue

PBULK = REPO / "tests" / "pbulk"

# PKGNAME: (PKG_LOCATION, DEPENDS, NEEDS installed when it configures, extra Makefile lines)
PACKAGES = {
    "base-1.0": ("devel/base", [], [], ""),
    "lib-1.0": ("devel/lib", ["base-1.0"], ["base"], ""),
    "stray-1.0": ("misc/stray", [], [], ""),
    # app depends on lib only: base comes with lib (pkg_add installs a package's dependencies).
    "app-2.0": ("misc/app", ["lib-1.0"], ["lib", "base"], ""),
    "broken-1.0": ("misc/broken", ["base-1.0"], ["base"], "BROKEN_CONFIGURE=yes"),
    "after-1.0": ("misc/after", ["broken-1.0"], ["broken"], ""),
}


def need_bmake():
    if shutil.which("bmake") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bmake is not installed (scripts/test installs it)", pytrace=False)
        pytest.skip("bmake is not installed (apt-get install bmake)")


def presolve(packages=PACKAGES) -> str:
    """The resolved scan of `packages`, as pbulk-resolve writes it."""
    out = []
    for name, (location, deps, _, _) in packages.items():
        out += [f"PKGNAME={name}", f"PKG_LOCATION={location}",
                "ALL_DEPENDS= " + " ".join(f"{d.rsplit('-', 1)[0]}>=1.0:../../x/{d}" for d in deps),
                "PKG_SKIP_REASON=", "PKG_FAIL_REASON=", "NO_BIN_ON_FTP=", "RESTRICTED=", "CATEGORIES=test",
                "MAINTAINER=tests@example.org", "USE_DESTDIR=user-destdir", "BOOTSTRAP_PKG=", "USERGROUP_PHASE=",
                "SCAN_DEPENDS=../../mk/fake.mk", f"DEPENDS={' '.join(deps)}"]
    return "".join(line + "\n" for line in out)


class Site:
    """A master (queue, package tree) and one pkgsrc worker host, all in `tmp`."""

    def __init__(self, tmp: Path, packages=PACKAGES):
        self.tmp = tmp
        self.tree = tmp / "tree"
        self.pkgsrc = tmp / "pkgsrc"
        self.packages = tmp / "packages"  # pbulk.conf's packages = the worker's packages_dir
        self.prefix = tmp / "prefix"
        (self.pkgsrc / "mk").mkdir(parents=True)
        shutil.copy(PBULK / "fake.mk", self.pkgsrc / "mk" / "fake.mk")
        (self.pkgsrc / "mk.conf").write_text(f"PKGSRCDIR={self.pkgsrc}\nPACKAGES={self.packages}\n"
                                             f"PREFIX={self.prefix}\n")
        for name, (location, deps, needs, extra) in packages.items():
            (self.pkgsrc / location).mkdir(parents=True)
            (self.pkgsrc / location / "Makefile").write_text(
                f"PKGNAME=\t{name}\nPKG_DEPENDS=\t{' '.join(deps)}\nNEEDS=\t{' '.join(needs)}\n{extra}\n"
                '.include "../../mk/fake.mk"\n')
        self.scan = tmp / "presolve"
        self.scan.write_text(presolve(packages))
        self.conf = tmp / "pbulk.conf"
        self.conf.write_text(
            "config_version=0.72\n"
            f"pkgsrc={self.pkgsrc}\npackages={self.packages}\n"
            # The build's log directory is gitqueue's: $GITQUEUE_LOGS is ${bulklog}/PKGNAME.
            'bulklog="${GITQUEUE_BULKLOG:?not run by gitqueue work}"\n'
            f"prefix={self.prefix}\npkgdb={tmp / 'pkgdb'}\nmake=bmake\nkeep_wrkdir=yes\n"
            f"pkg_add={PBULK / 'pkg_add'}\npkg_delete={PBULK / 'pkg_delete'}\n"
            f"pkg_up_to_date_script={PBULK / 'pkg-up-to-date'}\nclient_clean={PBULK / 'client-clean'}\n")
        self.config = tmp / "config.toml"
        self.config.write_text(f'pkgsrc_dir = "{self.pkgsrc}"\npkgname_command = "bmake -V PKGNAME"\n'
                               f'packages_dir = "{self.packages}"\n')
        self.env = {"GITQUEUE_CONFIG": str(self.config), "GITQUEUE_CACHE": str(tmp / "cache-w1"),
                    "PBULK_CONFIG": str(self.conf)}

    def queue(self, name: str) -> str:
        url = str(self.tmp / name)
        gitqueue("init", url, "--name", name, "--packages-url", str(self.tree), check=True)
        gitqueue("import", url, self.scan, check=True)
        return url

    def work(self, url: str, *command: str):
        return gitqueue("work", "--queue", url, "--worker", "w1", "--max-wait", "0.2", "--",
                        *(command or [str(PBULK / "pkg-build")]), env=self.env, timeout=300)

    def results(self, url: str) -> dict:
        with open_queue(url, self.tmp, host="reader") as q:
            _, reader = q.fetch()
            return outcome.results(reader, PACKAGES)


def test_bmake_answers_the_version_check(tmp_path):
    """The version check asks the real bmake of the package's directory for its PKGNAME."""
    need_bmake()
    site = Site(tmp_path)
    proc = subprocess.run(["bmake", "-V", "PKGNAME"], cwd=site.pkgsrc / "misc/app", capture_output=True,
                          text=True, check=True)
    assert proc.stdout == "app-2.0\n"


def test_pbulks_build_script_builds_a_queue(tmp_path):
    need_bmake()
    site = Site(tmp_path)
    url = site.queue("q1.git")
    proc = site.work(url)
    assert proc.returncode == 0, proc.stderr
    got = site.results(url)
    assert {name: r["status"] for name, r in got.items()} == {
        "base-1.0": "success", "lib-1.0": "success", "stray-1.0": "success", "app-2.0": "success",
        "broken-1.0": "failure"}  # after-1.0 is indirect-failed: never built

    # The packages were found where pbulk's script leaves them, ${packages}/All, and uploaded.
    for name in ("base-1.0", "lib-1.0", "stray-1.0", "app-2.0"):
        [package] = got[name]["packages"]
        assert package["name"] == f"{name}.tgz"
        uploaded = site.tree / "incoming" / got[name]["token"] / f"{name}.tgz"
        assert uploaded.read_bytes() == (site.packages / "All" / f"{name}.tgz").read_bytes()
        assert "up_to_date" not in got[name]
        assert "phase_logs" not in got[name]  # pbulk's script removes them after a success
    # app was built with exactly its dependencies, lib and (through lib, whose result lists it)
    # base: client-clean had removed stray, built just before, and configure would have refused it.
    assert got["app-2.0"]["installed"] == [
        {"name": "lib-1.0.tgz", "sha256": got["lib-1.0"]["packages"][0]["sha256"]}]
    assert got["lib-1.0"]["installed"] == [
        {"name": "base-1.0.tgz", "sha256": got["base-1.0"]["packages"][0]["sha256"]}]
    assert "installed" not in got["base-1.0"]
    # The server's rules (gitqueue verify replays them) check each installed package against the
    # results of the dependencies, and check the packages against the tree.
    verified = gitqueue("verify", url, "--packages", site.tree, env={"GITQUEUE_CACHE": str(tmp_path / "cache-verify")})
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "packages: 4 match their results, 0 not reachable\nviolations: 0\n" in verified.stdout

    broken = got["broken-1.0"]
    assert broken["failed_phase"] == "configure"
    assert [p["name"] for p in broken["phase_logs"]] == ["pre-clean.log", "depends.log", "checksum.log",
                                                        "configure.log"]
    assert "configure: error: libfoo not found" in broken["log_tail"]
    configure = (site.tree / "incoming" / broken["token"] / "configure.log").read_text()
    assert "libfoo not found" in configure
    # pbulk's keep_wrkdir tarball stays on the worker: it is no log.
    assert "not uploading the log wrkdir.tar.gz: not a plain .log or .txt file name" in proc.stderr
    elsewhere = {"GITQUEUE_CACHE": str(tmp_path / "cache-master")}
    assert "failed in configure" in gitqueue("status", "--queue", url, env=elsewhere, check=True).stdout

    # Every phase log is shown as pbulk's report shows it, on the master (after publish) too.
    log = gitqueue("log", "broken-1.0", "--phase", "configure", "--queue", url, env=site.env, check=True)
    assert "configure: error: libfoo not found" in log.stdout
    gitqueue("publish", "--queue", url, "--tree", site.tree, env=elsewhere, check=True)
    assert (site.tree / "logs" / "broken-1.0" / "configure.log").read_text() == configure
    log = gitqueue("log", "broken-1.0", "--phase", "checksum", "--queue", url, "--tree", site.tree, env=elsewhere,
                   check=True)
    assert "=> Checksum OK for broken-1.0" in log.stdout
    missing = gitqueue("log", "broken-1.0", "--phase", "install", "--queue", url, "--tree", site.tree, env=elsewhere)
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: no install log of broken-1.0 (lease ")
    assert missing.stderr.endswith("failure); its result has the logs of pre-clean, depends, checksum, configure\n")
    bad = gitqueue("log", "broken-1.0", "--phase", "../configure", "--queue", url, env=elsewhere)
    assert bad.returncode == 2 and "is not a phase name" in bad.stderr

    out = tmp_path / "report"
    gitqueue("html", out, "--queue", url, env=elsewhere, check=True)
    page = (out / "index.html").read_text()
    assert "failed in configure" in page
    assert '<a href="phases/broken-1.0/configure.txt">configure</a>' in page
    assert "libfoo not found" in (out / "phases" / "broken-1.0" / "configure.txt").read_text()
    assert "    broken-1.0: failed in configure: bmake: stopped in " in (out / "report.txt").read_text()


def test_an_up_to_date_package_is_recorded_not_uploaded(tmp_path):
    """The next build of the same tree: pbulk's script exits 0 at once for the packages that are
    up to date; gitqueue records each with the existing file's checksum and uploads nothing."""
    need_bmake()
    site = Site(tmp_path)
    first = site.queue("q1.git")
    assert site.work(first).returncode == 0
    elsewhere = {"GITQUEUE_CACHE": str(tmp_path / "cache-master")}
    gitqueue("publish", "--queue", first, "--tree", site.tree, env=elsewhere, check=True)
    before = site.results(first)
    # stray's Makefile changed since: it is built again.
    makefile = site.pkgsrc / "misc/stray/Makefile"
    makefile.write_text(makefile.read_text() + "# changed\n")
    # base's package went from the tree (by hand): up to date, but uploaded, or lib could not get it.
    (site.tree / "All" / "base-1.0.tgz").unlink()
    second = site.queue("q2.git")
    proc = site.work(second)
    assert proc.returncode == 0, proc.stderr
    got = site.results(second)
    for name in ("base-1.0", "lib-1.0", "app-2.0"):
        assert got[name]["status"] == "success" and got[name]["up_to_date"] is True, got[name]
        assert got[name]["packages"] == before[name]["packages"]
        assert "installed" not in got[name]  # nothing was built, so nothing installed for it
    for name in ("lib-1.0", "app-2.0"):
        assert not (site.tree / "incoming" / got[name]["token"] / f"{name}.tgz").exists()  # only its log
        assert f"w1: {name} is up to date: {name}.tgz stays as it is, nothing uploaded" in proc.stderr
    assert (site.tree / "incoming" / got["base-1.0"]["token"] / "base-1.0.tgz").exists()
    assert ("w1: base-1.0 is up to date: base-1.0.tgz stays as it is; uploaded base-1.0.tgz, which the package "
            "tree lacks") in proc.stderr
    assert "up_to_date" not in got["stray-1.0"]
    assert got["stray-1.0"]["packages"] != before["stray-1.0"]["packages"]
    assert (site.tree / "incoming" / got["stray-1.0"]["token"] / "stray-1.0.tgz").exists()
    assert got["broken-1.0"]["failed_phase"] == "configure"
    # publish finds the up-to-date packages in All/ already.
    proc = gitqueue("publish", "--queue", second, "--tree", site.tree, "--json", env=elsewhere)
    published = json.loads(proc.stdout)
    assert published["missing"] == [] and published["already"] == 2 and published["published"] == ["base-1.0.tgz"]
    # stray-1.0.tgz built anew is not the one All/ has: a tree never replaces a package.
    assert published["conflict"] == ["stray-1.0.tgz"]
    assert proc.returncode == 1 and proc.stderr == "Error: 1 upload(s) refused: stray-1.0.tgz\n"


def test_before_build_runs_before_every_build_and_its_failure_is_the_workers(tmp_path):
    url_dir = tmp_path
    from helpers import job, make_queue

    url = make_queue(url_dir, [job("a-1"), job("b-1"), job("c-1")])
    count = tmp_path / "cleaned"
    config = tmp_path / "config.toml"
    config.write_text(f"before_build = 'echo \"$GITQUEUE_JOB\" >> {count}'\n")
    env = {"GITQUEUE_CONFIG": str(config), "GITQUEUE_CACHE": str(tmp_path / "cache-w1")}
    proc = gitqueue("work", "--queue", url, "--worker", "w1", "--max-jobs", "2", "--", "sh", "-c",
                    f'test "$(tail -n 1 {count})" = "$GITQUEUE_JOB"', env=env)
    assert proc.returncode == 0, proc.stderr
    cleaned = count.read_text().split()
    assert len(cleaned) == 2
    with open_queue(url, tmp_path, host="reader") as q:
        _, reader = q.fetch()
        for name in cleaned:
            rec = records.load_at("result", reader.read(record_path("results", name)), record_path("results", name))
            assert rec["status"] == "success"

    # A clean system cannot be had: the job goes back (not declined), nothing is recorded against
    # the package, and the worker stops with one Error line.
    config.write_text("before_build = 'echo \"cannot reset the sandbox: no snapshot\" >&2; exit 3'\n")
    proc = gitqueue("work", "--queue", url, "--worker", "w1", "--", "true", env=env)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    [left] = {"a-1", "b-1", "c-1"} - set(cleaned)
    assert last.startswith(f"Error: w1: before_build failed (exit 3) before building {left}: cannot reset the "
                           "sandbox: no snapshot (output: ")
    assert last.endswith("/before_build.log); stopping")
    with open_queue(url, tmp_path, host="reader2") as q:
        _, reader = q.fetch()
        assert reader.read(record_path("results", left)) is None
        assert reader.read(record_path("leases", left)) is None
        assert reader.read(record_path("declines", left)) is None


def test_phase_logs_of_a_success_are_kept_when_asked(tmp_path):
    """Any build command's $GITQUEUE_LOGS: uploaded with a success only with keep_phase_logs."""
    from helpers import job, make_package_queue

    tree = tmp_path / "tree"
    url = make_package_queue(tmp_path, str(tree), [job("a-1"), job("b-1")])
    config = tmp_path / "config.toml"
    env = {"GITQUEUE_CONFIG": str(config), "GITQUEUE_CACHE": str(tmp_path / "cache-w1")}
    secret = tmp_path / "secret"
    secret.write_text("not for the master\n")
    script = ('echo "built $GITQUEUE_JOB" > "$GITQUEUE_LOGS/build.log"; echo x > "$GITQUEUE_OUTPUT/$GITQUEUE_JOB.tgz"; '
              f'ln -s {secret} "$GITQUEUE_LOGS/install.log"')
    got = {}
    for keep in ("false", "true"):
        config.write_text(f"keep_phase_logs = {keep}\n")
        proc = gitqueue("work", "--queue", url, "--worker", "w1", "--once", "--", "sh", "-c", script, env=env)
        assert proc.returncode == 0, proc.stderr
        if keep == "true":
            assert "w1: not uploading the log install.log: not a regular file" in proc.stderr
        with open_queue(url, tmp_path, host=f"reader-{keep}") as q:
            _, reader = q.fetch()
            for name in ("a-1", "b-1"):
                data = reader.read(record_path("results", name))
                if data is not None and name not in got:
                    got[name] = (keep, records.load_at("result", data, record_path("results", name)))
    [with_logs] = [r for k, r in got.values() if k == "true"]
    [without] = [r for k, r in got.values() if k == "false"]
    assert "phase_logs" not in without and "failed_phase" not in without
    [entry] = with_logs["phase_logs"]
    assert entry["name"] == "build.log"
    assert (tree / "incoming" / with_logs["token"] / "build.log").read_text() == f"built {with_logs['job']}\n"
    assert {p.name for p in (tree / "incoming" / with_logs["token"]).iterdir()} == {
        "build.log", f"{with_logs['job']}.tgz", with_logs["log"]["name"]}


def test_a_result_too_large_for_the_server_goes_without_its_installed_list(tmp_path):
    from gitqueue import lease
    from gitqueue.admin import import_jobs, init_queue
    from gitqueue.queue import Queue

    from helpers import job

    url = str(tmp_path / "q.git")
    with Queue(url, str(tmp_path / "cache-admin")) as q:
        init_queue(q, "small", max_record_bytes=4096)
        import_jobs(q, [job("a-1")], "g.jsonl")
    installed = [{"name": f"dep{i}-1.0.tgz", "sha256": f"{i:064x}"} for i in range(100)]
    with open_queue(url, tmp_path) as q:
        token = lease.claim(q, "w1").lease
        rec = lease.report(q, "w1", "a-1", "success", token=token, extra={"installed": installed})
    assert "installed" not in rec and rec["status"] == "success"


def test_the_build_command_gets_the_scans_record_on_stdin_and_in_a_file(tmp_path):
    """What pbulk's master would send: the job's record of the scan, every line of it as it was but
    SCAN_DEPENDS (which gitqueue import does not keep: no build script reads it)."""
    record = ("PKGNAME=py313-foo-1.0\nPKG_LOCATION=devel/py-foo\nALL_DEPENDS=  python313>=3.13:../../lang/python313 \n"
              "PKG_SKIP_REASON=\nPKG_FAIL_REASON=\nNO_BIN_ON_FTP=\nRESTRICTED=\nCATEGORIES=devel python\n"
              "MAINTAINER=pkgsrc-users@NetBSD.org\nUSE_DESTDIR=user-destdir\nBOOTSTRAP_PKG=\n"
              "USERGROUP_PHASE=pre-install\nSCAN_DEPENDS=../../lang/python/pyversion.mk\nPBULK_WEIGHT=250\n"
              "MULTI_VERSION= PYTHON_VERSION_REQD=313\n")
    scan = tmp_path / "presolve"
    scan.write_text(record)
    url = str(tmp_path / "q.git")
    gitqueue("init", url, check=True)
    gitqueue("import", url, scan, check=True)
    got = tmp_path / "got"
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_CONFIG": str(tmp_path / "none.toml")}
    proc = gitqueue("work", "--queue", url, "--worker", "w1", "--once", "--", "sh", "-c",
                    f'cat > {got}.stdin && cp "$GITQUEUE_BUILD_INFO" {got}.file && '
                    f'test "$GITQUEUE_LOGS" = "$GITQUEUE_BULKLOG/$GITQUEUE_JOB" && test -d "$GITQUEUE_LOGS"', env=env)
    assert proc.returncode == 0, proc.stderr
    sent = record.replace("SCAN_DEPENDS=../../lang/python/pyversion.mk\n", "")
    assert (tmp_path / "got.stdin").read_text() == sent
    assert (tmp_path / "got.file").read_text() == sent
    assert "w1: py313-foo-1.0 success" in proc.stderr
