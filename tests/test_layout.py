"""The source layout and the record schemas: what the library may touch, and schema/ in sync with the code."""

import ast
import json
import tomllib

import pytest
from dulwich.repo import Repo

from gitqueue import lease, records
from gitqueue.admin import import_jobs, init_queue
from gitqueue.durations import apply_times
from gitqueue.importers import check_graph, load_graph
from gitqueue.queue import Queue
from gitqueue.schema import SCHEMAS, write_all
from gitqueue.worker import describe_log

from helpers import REPO, job, write_jsonl

PACKAGE = REPO / "gitqueue"
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts[:1])
ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
# Copying the whole environment to hand it to a child process is not configuration: the library may
# do it in exactly these functions, and only inside the first argument of dict(...) (a copy of the whole
# environment, e.g. dict(os.environ, X=...)). Reading one variable is not allowed anywhere.
PASS_THROUGH = {("worker.py", "job_environment"), ("demo.py", "run_demo.start")}


# -- what the library may touch -------------------------------------------------------------------


def _functions(tree):
    """{node: dotted name of the innermost enclosing function} for every node of `tree`."""
    owner = {}

    def visit(node, name):
        for child in ast.iter_child_nodes(node):
            inner = name
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = f"{name}.{child.name}" if name else child.name
            owner[child] = inner
            visit(child, inner)

    visit(tree, "")
    return owner


def library_violations(path):
    """(line, what) of each click import and each use of the process environment in one module."""
    tree = ast.parse(path.read_text(), str(path))
    owner = _functions(tree)
    os_names = set()
    passed_through = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "click" or alias.name.startswith("click."):
                    found.append((node.lineno, f"import {alias.name}"))
                if alias.name == "os":
                    os_names.add(alias.asname or "os")
                elif alias.name.startswith("os.") and alias.asname is None:
                    os_names.add("os")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and (module == "click" or module.startswith("click.")):
                found.append((node.lineno, f"from {module} import ..."))
            if node.level == 0 and module == "os":
                for alias in node.names:
                    if alias.name in ENVIRONMENT or alias.name == "*":
                        found.append((node.lineno, f"from os import {alias.name}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
              and node.args and (path.name, owner.get(node)) in PASS_THROUGH):
            passed_through.update(id(sub) for sub in ast.walk(node.args[0]))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT and isinstance(node.value, ast.Name)
                and node.value.id in os_names and id(node) not in passed_through):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


def test_the_library_modules_are_found():
    names = {str(p.relative_to(PACKAGE)) for p in LIBRARY}
    assert {"lease.py", "queue.py", "records.py", "importers/jsonl.py"} <= names
    assert not any(n.startswith("cli/") for n in names)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_cli_imports_click_or_reads_the_environment(path):
    assert library_violations(path) == []


def test_the_checker_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os as o\nimport click\nfrom click.testing import CliRunner\nfrom os import getenv\n"
        "def f():\n    return o.environ.get('X'), o.environ['Y'], dict(o.environ)\n"
    )
    assert sorted(what for _, what in library_violations(bad)) == sorted(
        ["import click", "from click.testing import ...", "from os import getenv", "o.environ", "o.environ",
         "o.environ"])
    allowed = tmp_path / "worker.py"
    allowed.write_text("import os\ndef job_environment(job):\n    return dict(os.environ, A='1')\n"
                       "def other():\n    return dict(os.environ)\n")
    assert library_violations(allowed) == [(5, "os.environ")]


# -- schema/ is generated from gitqueue/schema.py --------------------------------------------------


def test_schema_files_are_generated_from_the_code(tmp_path):
    written = write_all(str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in written) == sorted(f"{kind}.json" for kind in SCHEMAS)
    shipped = sorted(p.name for p in (REPO / "schema").glob("*.json"))
    assert shipped == sorted(f"{kind}.json" for kind in SCHEMAS), "schema/ has stale or missing files"
    for kind in SCHEMAS:
        fresh = (tmp_path / f"{kind}.json").read_bytes()
        assert (REPO / "schema" / f"{kind}.json").read_bytes() == fresh, \
            f"schema/{kind}.json is stale: run python -m gitqueue.schema schema/"
        assert fresh == (json.dumps(SCHEMAS[kind], indent=2) + "\n").encode()


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_schemas_are_well_formed(kind):
    schema = SCHEMAS[kind]
    assert schema["title"] == kind and schema["$id"].endswith(f"/{kind}.json")
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])


# Every record kind with every key the schema allows.
PLATFORM = {"arch": "m68k", "os_release": "10.1", "pkgsrc_branch": "pkgsrc-2026Q4", "pkgsrc_revision": "2026Q4-r1"}
FULL = {
    "queue": {"format_version": 1, "name": "2026Q4-m68k", "arch": "m68k", "os_release": "10.1",
              "pkgsrc_branch": "pkgsrc-2026Q4", "lease_ttl": 7200, "created": "2026-10-01T00:00:00Z",
              "packages_url": "master:/srv/pkgsrc/packages/m68k", "pkgsrc_revision": "2026Q4-r1",
              "admins": [{"name": "alice", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKgQ7e"}],
              "max_record_bytes": 65536, "max_leases": 2,
              "package_files": ["{name}.tgz", "{base}-debug-{version}.tgz"],
              "upload_quota": 1 << 30, "min_heartbeat_seconds": 30.0, "max_attempts": 5},
    "worker": {"name": "hp300-1", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKgQ7e",
               "owner": "Jane <jane@example.org>",
               "arch": "m68k", "added_at": "2026-10-01T00:00:00Z", "revoked_at": "2026-10-02T00:00:00Z",
               "revoked_reason": "disk stolen"},
    "job": {"name": "py311-gtk3+-3.24.51", "version": "3.24.51", "pkgpath": "x11/py-gtk3", "deps": ["glib2-2.84.1"],
            "est_seconds": 312.5, "est_source": "history", "priority": 2, "weight": 7,
            "prefailed": "skip: \"broken\" on m68k",
            "multi_version": {"PYTHON_VERSION_REQD": "311"}, "maintainer": "pkgsrc-users@NetBSD.org",
            "categories": "x11 python", "no_bin_on_ftp": "license", "restricted": "license",
            "all_depends": " glib2>=2.84:../../devel/glib2 ", "use_destdir": "user-destdir", "bootstrap_pkg": "yes",
            "usergroup_phase": "pre-install",
            "build_info": {"SOME_NEWER_PBULK_KEY": "value"}},
    "lease": {"job": "gmake-4.4.1", "worker": "hp300-1", "token": "3f0c2d" + "0" * 26,
              "claimed_at": "2026-10-01T00:00:00Z", "host": "hp300.example.org", "platform": PLATFORM,
              "request": "9a" * 8,
              "signer": "SHA256:" + "A" * 43},
    "result": {"job": "gmake-4.4.1", "version": "4.4.1", "status": "failure", "worker": "hp300-1",
               "token": "3f0c2d" + "0" * 26, "duration": 312.0, "finished_at": "2026-10-01T00:05:12Z", "late": True,
               "log": {"name": "gmake.log", "size": 1234, "sha256": "ab" * 32}, "log_tail": "*** Error code 1\n",
               "packages": [{"name": "gmake-4.4.1.tgz", "size": 512, "sha256": "cd" * 32}], "platform": PLATFORM,
               "up_to_date": False, "failed_phase": "configure", "transient": True,
               "reused": {"queue": "/srv/queues/2026Q3-m68k.git", "token": "4a0c2d" + "0" * 26},
               "phase_logs": [{"name": "configure.log", "size": 99, "sha256": "ef" * 32}],
               "installed": [{"name": "glib2-2.84.1.tgz", "sha256": "12" * 32}],
               "signer": "SHA256:" + "A" * 43},
    "decline": {"job": "gmake-4.4.1",
                "declined": [{"worker": "hp300-1", "reason": "my pkgsrc has gmake-4.3", "at": "2026-10-01T00:00:00Z",
                              "transient": True, "token": "5b0c2d" + "0" * 26}]},
    "retry": {"job": "gmake-4.4.1",
              "retried": [{"action": "retry", "reason": "the distfile mirror is back", "at": "2026-10-03T00:00:00Z",
                           "status": "failure", "worker": "hp300-1", "token": "3f0c2d" + "0" * 26,
                           "version": "4.4.1", "declines": 2, "fenced": ["4a0c2d" + "0" * 26]}]},
    "lapsed": {"job": "gmake-4.4.1",
               "lapsed": [{"worker": "hp300-1", "token": "3f0c2d" + "0" * 26, "at": "2026-10-01T02:00:00Z",
                           "reason": "not heard from for 7300 s (ttl 7200 s)"}]},
    "heartbeat": {"worker": "hp300-1", "seq": 41, "at": "2026-10-01T00:00:00Z", "host": "hp300.example.org"},
    "priority": {"packages": ["gmake", "devel/gmake", "py3*-gtk3+-[0-9]*"]},
    "noway": {"entries": [{"pattern": "firefox*", "arch": "m68k", "reason": "needs rust"}]},
}
NESTED = {("result", "log"): FULL["result"]["log"], ("decline", "declined"): FULL["decline"]["declined"][0],
          ("noway", "entries"): FULL["noway"]["entries"][0], ("result", "packages"): FULL["result"]["packages"][0],
          ("lease", "platform"): PLATFORM, ("result", "platform"): PLATFORM,
          ("queue", "admins"): FULL["queue"]["admins"][0], ("lapsed", "lapsed"): FULL["lapsed"]["lapsed"][0],
          ("result", "phase_logs"): FULL["result"]["phase_logs"][0],
          ("result", "installed"): FULL["result"]["installed"][0],
          ("retry", "retried"): FULL["retry"]["retried"][0]}


def _properties(kind, key=None):
    schema = SCHEMAS[kind]
    if key is None:
        return set(schema["properties"])
    sub = schema["properties"][key]
    return set((sub.get("items") or sub)["properties"])


def test_every_schema_has_a_full_example():
    assert sorted(set(SCHEMAS) - set(FULL)) == [], "add a record with every key to FULL"


@pytest.mark.parametrize("kind", sorted(set(SCHEMAS) & set(FULL)))
def test_a_record_with_every_key_round_trips(kind):
    record = FULL[kind]
    assert sorted(_properties(kind) - set(record)) == [], f"FULL[{kind!r}] lacks these keys of the schema"
    assert sorted(set(record) - _properties(kind)) == []
    assert records.loads(kind, records.dumps(kind, record), kind) == record
    for (k, key), value in NESTED.items():
        if k == kind:
            assert set(value) == _properties(kind, key)


@pytest.mark.parametrize("kind", sorted(set(SCHEMAS) & set(FULL)))
def test_a_standard_validator_agrees(kind):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMAS[kind])
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[kind])
    assert list(validator.iter_errors(FULL[kind])) == []
    extra = {**FULL[kind], "surprise": 1}
    assert list(validator.iter_errors(extra)) != []
    with pytest.raises(records.RecordInvalid):
        records.validate(kind, extra)


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


PRESOLVE = """\
PKGNAME=a-1.0
PKG_LOCATION=cat/a
PKG_SKIP_REASON=
PKG_FAIL_REASON=
NO_BIN_ON_FTP=
RESTRICTED=
CATEGORIES=cat
MAINTAINER=pkgsrc-users@NetBSD.org
MULTI_VERSION=
PBULK_WEIGHT=2
DEPENDS=
PKGNAME=py311-b-2.0
PKG_LOCATION=lang/py-b
ALL_DEPENDS= a>=1.0:../../cat/a
USE_DESTDIR=user-destdir
BOOTSTRAP_PKG=yes
USERGROUP_PHASE=pre-install
SCAN_DEPENDS=../../mk/bsd.prefs.mk
SOME_NEWER_PBULK_KEY=value
NO_BIN_ON_FTP=no redistribution
RESTRICTED=no redistribution
CATEGORIES=lang python
MULTI_VERSION=PYTHON_VERSION_REQD=311
DEPENDS=a-1.0
PKGNAME=broken-1
PKG_LOCATION=cat/broken
PKG_FAIL_REASON="does not build on m68k"
"""


def _written_keys(url):
    """{kind or (kind, key): set of keys} over every record of every commit of the queue."""
    kinds = {"queue.toml": "queue", "jobs": "job", "leases": "lease", "results": "result", "declines": "decline",
             "heartbeats": "heartbeat", "priority.toml": "priority", "noway.toml": "noway", "workers": "worker",
             "lapsed": "lapsed", "retries": "retry"}
    seen = {}
    repo = Repo(url)
    try:
        store = repo.object_store
        for entry in repo.get_walker():
            stack = [("", entry.commit.tree)]
            while stack:
                prefix, tree = stack.pop()
                for item in store[tree].iteritems():
                    path = f"{prefix}{item.path.decode()}"
                    if item.mode & 0o40000:
                        stack.append((path + "/", item.sha))
                        continue
                    if path == "graph.tsv":
                        continue  # plain text derived from the records (graph.py), not a record
                    kind = kinds[path.split("/", 1)[0]]
                    record = tomllib.loads(store[item.sha].as_raw_string().decode())
                    seen.setdefault(kind, set()).update(record)
                    if kind == "result" and "log" in record:
                        seen.setdefault(("result", "log"), set()).update(record["log"])
                    if kind == "result":
                        for key in ("packages", "phase_logs", "installed"):
                            for part in record.get(key, ()):
                                seen.setdefault(("result", key), set()).update(part)
                    if kind in ("lease", "result") and "platform" in record:
                        seen.setdefault((kind, "platform"), set()).update(record["platform"])
                    if kind == "queue":
                        for admin in record.get("admins", ()):
                            seen.setdefault(("queue", "admins"), set()).update(admin)
                    if kind == "decline":
                        for d in record["declined"]:
                            seen.setdefault(("decline", "declined"), set()).update(d)
                    if kind == "lapsed":
                        for d in record["lapsed"]:
                            seen.setdefault(("lapsed", "lapsed"), set()).update(d)
                    if kind == "retry":
                        for d in record["retried"]:
                            seen.setdefault(("retry", "retried"), set()).update(d)
    finally:
        repo.close()
    return seen


def _signed_run(tmp_path):
    """A signed queue: admins, a registered and a revoked worker, a signed claim and report."""
    import subprocess

    from gitqueue.registry import add_worker, read_key, revoke_worker
    from gitqueue.signing import Signer

    keys = {}
    for name in ("alice", "host"):
        path = tmp_path / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        keys[name] = (Signer.from_key_file(str(path)), read_key((tmp_path / f"{name}.pub").read_text(), name))
    url = str(tmp_path / "signed.git")
    with Queue(url, str(tmp_path / "cache-alice"), signer=keys["alice"][0]) as admin:
        init_queue(admin, "signed", admins=[{"name": "alice", "key": keys["alice"][1]}], max_record_bytes=4096,
                   limits={"max_leases": 2, "package_files": ["{name}.tgz"], "upload_quota": 1 << 30,
                           "min_heartbeat_seconds": 0.5, "max_attempts": 4})
        import_jobs(admin, [job("s-1")], "s.jsonl")
        add_worker(admin, "h1", keys["host"][1], owner="Jane", arch="m68k")
        with Queue(url, str(tmp_path / "cache-host"), signer=keys["host"][0]) as w:
            took = lease.claim(w, "h1")
            lease.report(w, "h1", took.job, "success")
        revoke_worker(admin, "h1", "disk stolen")
    return url


# The records the protocol writes (init, import, claim, report, release, reclaim, heartbeat); the
# admin lists (priority, noway) are covered by the round trip above.
PROTOCOL_KINDS = ("queue", "job", "lease", "result", "decline", "lapsed", "heartbeat", "worker", "retry")


def _retry_run(tmp_path):
    """Transient failures up to max_attempts, then a retry of the failure: a reclaimed lease fenced."""
    from gitqueue.admin import retry_jobs

    url = str(tmp_path / "retry.git")
    with Queue(url, str(tmp_path / "cache-radmin")) as admin:
        init_queue(admin, "retry", lease_ttl=10, limits={"max_attempts": 2})
        import_jobs(admin, [job("t-1"), job("u-1", ["t-1"])], "t.jsonl")
    with Queue(url, str(tmp_path / "cache-rw"), clock=Clock()) as w, \
            Queue(url, str(tmp_path / "cache-rcron"), clock=Clock()) as cron:
        assert lease.claim(w, "w1").job == "t-1"
        lease.reclaim(cron)
        cron.clock.t += 11
        assert [r["job"] for r in lease.reclaim(cron)] == ["t-1"]
        for worker in ("w2", "w3"):
            assert lease.claim(w, worker).job == "t-1"
            lease.report(w, worker, "t-1", "failure", extra={"transient": True})
        assert retry_jobs(w, ["t-1"], reason="disk replaced")[0]["job"] == "t-1"
    # import --previous: an up-to-date result reused from an earlier success
    earlier = {"job": "t-1", "status": "success", "worker": "w1", "token": "ab" * 16,
               "packages": [{"name": "t-1.tgz", "size": 1, "sha256": "0" * 64}]}
    with Queue(str(tmp_path / "reuse.git"), str(tmp_path / "cache-reuse")) as admin:
        init_queue(admin, "reuse")
        import_jobs(admin, [job("t-1")], "t.jsonl", reused={"t-1": earlier}, previous=url)
    return url, str(tmp_path / "reuse.git")


def test_every_schema_key_is_written_by_the_code(tmp_path):
    """Run every operation with every option on a real queue; the keys found are the schemas' keys."""
    url = str(tmp_path / "q.git")
    presolve = tmp_path / "presolve"
    presolve.write_text(PRESOLVE)
    graph = write_jsonl(tmp_path / "g.jsonl", [job("j-1", est_seconds=30, priority=2), job("c-1"), job("d-1")])
    jobs = check_graph(load_graph(str(presolve)) + load_graph(graph), "both")
    assert apply_times(jobs, {"lang/py-b": 120.0}) == 1  # import --history writes est_source
    log = tmp_path / "build.log"
    log.write_text("*** Error code 1\n")
    with Queue(url, str(tmp_path / "cache-admin")) as admin:
        init_queue(admin, "layout", arch="m68k", os_release="10.1", pkgsrc_branch="pkgsrc-2026Q4", lease_ttl=10,
                   packages_url="master:/srv/packages/m68k", pkgsrc_revision="2026Q4-r1")
        import_jobs(admin, jobs, str(presolve))
    with Queue(url, str(tmp_path / "cache-w"), clock=Clock()) as w, \
            Queue(url, str(tmp_path / "cache-cron"), clock=Clock()) as cron:
        failed = lease.claim(w, "w1", host="h1", platform=PLATFORM)
        described, tail = describe_log(str(log))
        lease.report(w, "w1", failed.job, "failure", duration=3, log=described, log_tail=tail,
                     extra={"failed_phase": "configure",
                            "phase_logs": [dict(described, name="configure.log")],
                            "installed": [{"name": "a-1.0.tgz", "sha256": "0" * 64}]})
        given_back = lease.claim(w, "w1", host="h1")
        lease.release(w, "w1", given_back.job, "no room")
        slow = lease.claim(w, "w2", host="h1")
        lease.reclaim(cron)
        cron.clock.t += 11
        assert [r["job"] for r in lease.reclaim(cron)] == [slow.job]
        late = lease.report(w, "w2", slow.job, "success", token=slow.lease, duration=1,
                            packages=[{"name": f"{slow.job}.tgz", "size": 3, "sha256": "0" * 64}], platform=PLATFORM,
                            extra={"up_to_date": True})
        assert late["late"] is True
        [settled] = lease.settle(w, [{"worker": "w3", "claim": True, "id": "ab" * 8}], lease.identity("w3"))
        assert settled.claim is not None
        lease.heartbeat(w, "w1")
    seen = _written_keys(url)
    retried, reused = _retry_run(tmp_path)
    for kind, keys in [*_written_keys(_signed_run(tmp_path)).items(), *_written_keys(retried).items(),
                       *_written_keys(reused).items()]:
        seen.setdefault(kind, set()).update(keys)
    for kind in PROTOCOL_KINDS:
        written, allowed = seen.get(kind, set()), _properties(kind)
        assert sorted(allowed - written) == [], f"{kind}: schema keys that no operation wrote"
        assert sorted(written - allowed) == [], f"{kind}: keys written that the schema lacks"
    for kind, key in NESTED:
        if kind in PROTOCOL_KINDS:
            assert seen.get((kind, key)) == _properties(kind, key), f"{kind}.{key}"


def test_record_times_read_back_as_the_schema_writes_them():
    import subprocess
    import sys

    assert records.epoch(records.utc(1_800_000_000)) == 1_800_000_000
    assert records.epoch("1970-01-01T00:00:00Z") == 0
    for bad in (None, 5, "", "2026-1-02T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-02T24:00:00Z",
                "2026-01-02 00:00:00Z", "2026-01-02T00:00:00Z\n", "2026-01-02T00:00:00"):
        assert records.epoch(bad) is None, bad
    # strptime's module would cost every worker 0.2 MiB
    code = "import sys, gitqueue.records as r; r.epoch('2026-01-02T03:04:05Z'); print('_strptime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          check=True).stdout == "False\n"
