"""gitqueue.serve.decide: what a worker's ssh key may run, judged against a real queue repository."""

import os
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gitqueue import records, registry
from gitqueue.admin import import_jobs, init_queue
from gitqueue.layout import record_path
from gitqueue.queue import Change, Queue
from gitqueue.serve import ENTRY_COST, GIT_VERBS, RRSYNC, RepoState, decide, usage
from gitqueue.signing import Signer

from helpers import job
from signed_queue import keypair

TOKENS = {name: f"{i:x}" * 32 for i, name in enumerate(
    ("live", "other", "lapsed", "taken", "done", "w2-lapsed", "fenced", "after-retry", "fenced-live"), start=10)}
W1_UPLOADS = {TOKENS["live"], TOKENS["lapsed"], TOKENS["after-retry"]}
QUOTA = 123_456


def _write(q, files):
    q.transact(lambda tip, reader: Change(files, "test records"), "test <t@gitqueue>")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A queue with w1's live lease, w2's live lease, and lapsed leases of w1: one whose job is free
    (w1 may still upload), one taken by w2 and one that has a result (w1 may not). g-1 was retried:
    w1's lapsed lease before the retry is fenced, the one after it is not; w1's live lease on h-1
    is under a token that h-1's retry fenced (a token used again)."""
    tmp = tmp_path_factory.mktemp("decide")
    keys = {n: Signer.from_key_file(str(keypair(tmp, n))) for n in ("admin", "k1", "k2", "k3", "stranger")}
    repo = str(tmp / "q.git")
    tree = tmp / "packages"
    tree.mkdir()
    with Queue(repo, str(tmp / "cache"), signer=keys["admin"]) as q:
        init_queue(q, "decide", lease_ttl=60, limits={"upload_quota": QUOTA},
                   admins=[{"name": "admin", "key": keys["admin"].public_key}])
        import_jobs(q, [job(n) for n in ("a-1", "b-1", "c-1", "d-1", "e-1", "f-1", "g-1", "h-1")], "g.jsonl")
        for name, key in (("w1", "k1"), ("w2", "k2"), ("w3", "k3")):
            registry.add_worker(q, name, keys[key].public_key)
        registry.revoke_worker(q, "w3", "stolen")
        t = TOKENS

        def lease(j, worker, token):
            return {record_path("leases", j): records.dumps("lease", {"job": j, "worker": worker, "token": token})}

        def lapsed(j, *entries):
            rec = {"job": j, "lapsed": [{"worker": w, "token": tok} for w, tok in entries]}
            return {record_path("lapsed", j): records.dumps("lapsed", rec)}

        def fenced(j, token):
            entry = {"action": "retry", "reason": "x", "declines": 0, "fenced": [token]}
            return {record_path("retries", j): records.dumps("retry", {"job": j, "retried": [entry]})}

        result = {record_path("results", "e-1"): records.dumps("result", {
            "job": "e-1", "version": "1.0", "status": "success", "worker": "w1", "token": t["done"], "late": True})}
        _write(q, {**lease("a-1", "w1", t["live"]), **lease("b-1", "w2", t["other"]),
                   **lapsed("c-1", ("w1", t["lapsed"])),
                   **lapsed("d-1", ("w1", t["taken"])), **lease("d-1", "w2", "ab" * 16),
                   **lapsed("e-1", ("w1", t["done"])), **result,
                   **lapsed("f-1", ("w2", t["w2-lapsed"])),
                   **lapsed("g-1", ("w1", t["fenced"]), ("w1", t["after-retry"])), **fenced("g-1", t["fenced"]),
                   **lease("h-1", "w1", t["fenced-live"]), **fenced("h-1", t["fenced-live"])})
    return {"repo": repo, "tree": str(tree), "keys": keys}


def serve(world, command, worker="w1", downloads=True, **kwargs):
    state = RepoState(world["repo"])
    try:
        return decide(command, worker, world["repo"], world["tree"], downloads, state, **kwargs)
    finally:
        state.close()


UPLOAD = "rsync --server -Otre.iLsfxCIvu --timeout=300 --stats . {}/"
CHECK = "rsync --server -nOtrce.iLsfxCIvu --log-format=%i --timeout=300 --stats --info=SKIP2 . {}/"
DOWNLOAD = "rsync --server --sender -tIRe.LsfxCIvu --timeout=300 --files-from=- --from0 . {}/"


def test_uploads_go_to_the_workers_own_leases_only(world):
    tree = world["tree"]
    allowed = {"live", "lapsed", "after-retry"}
    for role, token in TOKENS.items():
        d = serve(world, UPLOAD.format(f"{tree}/incoming/{token}"))
        if role in allowed:
            assert d.argv == (RRSYNC, "-wo", "-no-overwrite", "-no-del", "-munge", "-no-lock",
                              f"{tree}/incoming/{token}"), role
            assert d.env == {"SSH_ORIGINAL_COMMAND": "rsync --server -Otre.iLsfxCIvu --timeout=300 --stats . ."}
            assert d.upload.directory == f"{tree}/incoming/{token}" and d.upload.quota == QUOTA
            assert d.upload.tokens == frozenset(W1_UPLOADS)
        else:
            assert d.refusal == f"rsync: incoming/{token} is not a lease of w1", role
    # The post-upload check goes the same way; w2 has its own leases.
    d = serve(world, CHECK.format(f"{tree}/incoming/{TOKENS['live']}"))
    assert d.env["SSH_ORIGINAL_COMMAND"].endswith("--info=SKIP2 . .")
    d = serve(world, UPLOAD.format(f"{tree}/incoming/{TOKENS['w2-lapsed']}"), worker="w2")
    assert d.upload.tokens == frozenset({TOKENS["other"], "ab" * 16, TOKENS["w2-lapsed"]})


def test_uploads_anywhere_else_are_refused(world):
    tree = world["tree"]
    live = TOKENS["live"]
    for dest in (f"{tree}", f"{tree}/incoming", f"{tree}/All", f"{tree}/incoming/{live}/sub", "/tmp",
                 f"{tree}/incoming/{live}/../{TOKENS['other']}", "incoming/" + "0" * 32):
        d = serve(world, UPLOAD.format(dest))
        assert d.refused and d.argv == () and d.refusal.startswith("rsync: "), (dest, d)
    # Options naming another place to write or read, following symlinks, deleting or appending.
    for extra in (f"--temp-dir={tree}/All", "--temp-dir=x", "--partial-dir=../../All", "--partial-dir=x",
                  "--backup-dir=x", "--link-dest=/etc", "--link-dest=x", "--compare-dest=x", "--copy-dest=x",
                  "--log-file=x", "--files-from=/etc/passwd", "--files-from=x", "--copy-links", "--copy-unsafe-links",
                  "--protect-args", "--remove-source-files", "--delete", "--append", "--inplace", "-T", "x",
                  "-LOtre.iLsfxCIvu", "-K", "-k", "-b", "-s", "--server", "--sender"):
        d = serve(world, f"rsync --server -Otre.iLsfxCIvu {extra} . {tree}/incoming/{live}/")
        assert d.refused and d.refusal.startswith("rsync: "), extra
    assert serve(world, f"rsync --server -LOtre.iLsfxCIvu . {tree}/incoming/{live}/").refusal == \
        "rsync: option -L is not allowed"
    assert serve(world, f"rsync --server --sender -LtIRe.LsfxCIvu . {tree}/All/").refusal == \
        "rsync: option -L is not allowed"
    d = serve(world, f"rsync --server -re.iLsfxCIvu . {tree}/incoming/{live}/ {tree}/All/")
    assert d.refused


def test_downloads_are_read_only_inside_the_tree(world):
    tree = world["tree"]
    d = serve(world, DOWNLOAD.format(f"{tree}/All"))
    assert d.argv == (RRSYNC, "-ro", os.path.realpath(tree))
    assert d.env == {"SSH_ORIGINAL_COMMAND": "rsync --server --sender -tIRe.LsfxCIvu --timeout=300 "
                                             "--files-from=- --from0 . All/"}
    assert serve(world, DOWNLOAD.format(f"{tree}/incoming/{TOKENS['other']}")).env["SSH_ORIGINAL_COMMAND"] \
        .endswith(f" . incoming/{TOKENS['other']}/")
    for src in ("/etc", f"{tree}/../etc", f"{tree}/All/../../x", f"{tree}/*", "~/x"):
        assert serve(world, DOWNLOAD.format(src)).refused, src
    assert serve(world, DOWNLOAD.format(f"{tree}/All"), downloads=False).refusal == \
        "rsync: reading the package tree is not allowed for this key"


def test_only_registered_unrevoked_workers_with_their_own_key(world):
    git = f"git-upload-pack '{world['repo']}'"
    d = serve(world, git)
    assert d.argv == ("git", "upload-pack", world["repo"]) and d.env == {"GITQUEUE_PUSHER": "w1"}
    assert re.fullmatch(r"w3 was revoked at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", serve(world, git, worker="w3").refusal)
    assert serve(world, git, worker="w9").refusal == "w9 is not a registered worker of this queue"
    mine = f"publickey {world['keys']['k1'].public_key}\n"
    assert not serve(world, git, user_auth=mine).refused
    stranger = f"publickey {world['keys']['stranger'].public_key}\n"
    assert serve(world, git, user_auth=stranger).refusal == "this session's ssh key is not the registered key of w1"
    assert serve(world, "git-receive-pack '/srv/other.git'").refusal == \
        f"git-receive-pack: only {world['repo']} is served to this key"
    assert serve(world, "").refusal == "this key runs only git and rsync for the queue: no interactive login"


def test_usage_counts_every_entry_and_follows_no_symlink(tmp_path):
    incoming = tmp_path / "incoming"
    (incoming / "t1" / "sub").mkdir(parents=True)
    (incoming / "t1" / "p.tgz").write_bytes(b"x" * 1000)
    (incoming / "t1" / "sub" / "q").write_bytes(b"y" * 10)
    (incoming / "t1" / "up").symlink_to(tmp_path)  # would count everything twice if followed
    (incoming / "t2").symlink_to(incoming / "t1")
    assert usage(str(incoming), ["t1"]) == 5 * ENTRY_COST + 1010
    assert usage(str(incoming), ["t2", "missing"]) == ENTRY_COST


# -- hostile commands -------------------------------------------------------------------------------

WORDS = st.sampled_from([
    "rsync", "/usr/bin/rsync", "--server", "--sender", ".", "-Otre.iLsfxCIvu", "-L", "-e.LsfxCIvu", "--stats",
    "--temp-dir=/tmp", "--temp-dir=x", "--link-dest=All", "--files-from=-", "--files-from=/etc/passwd",
    "--partial-dir=x", "-T", "--info=SKIP2", "-LtIRe.LsfxCIvu", "-Ke.x", "-b", "--copy-links", "--log-file=x",
    "git-upload-pack", "git-receive-pack", "git", "upload-pack", "/etc", "..", "../..", "/", "~", "*", "{a,b}",
    "'", '"', "\\", "\x00", "\n", "\t", ";", "|", "$(id)", "`id`", "All", "All/", "incoming", "incoming/",
    *(f"incoming/{t}" for t in TOKENS.values()), "incoming/" + "0" * 32,
])
PLACES = st.sampled_from(["{tree}/"] * 6 + ["{tree}", "{tree}/incoming/", "{tree}/../", "{repo}", "'{repo}'", "",
                                          "/", "./", "//"])
SUFFIXES = st.sampled_from(["", "/"] * 4 + ["/.", "/..", "/../All", "/x", "//"])


GOOD_OPTIONS = ["--timeout=300", "--stats", "--info=SKIP2", "--log-format=%i", "--files-from=-", "--from0",
                "-nOtrce.iLsfxCIvu", "--ignore-times"]
OPTIONS = st.sampled_from(GOOD_OPTIONS * 4 + [w for w in WORDS.elements if w.startswith("-")])
TARGETS = st.sampled_from([*(f"incoming/{t}" for t in TOKENS.values())] * 6 + ["All"] * 6 + ["incoming", ""]
                          + list(WORDS.elements))


@st.composite
def commands(draw):
    """Mostly well-formed rsync and git server commands with hostile parts, some anything at all."""
    shape = draw(st.integers(0, 5))
    if shape <= 3:
        options = draw(st.lists(OPTIONS, max_size=3))
        paths = draw(st.lists(st.tuples(PLACES, TARGETS, SUFFIXES).map("".join), min_size=int(shape > 0),
                              max_size=2))
        sender = ["--sender"] if shape % 2 else []
        return " ".join(["rsync", "--server", *sender, "-Otre.iLsfxCIvu", *options, ".", *paths])
    if shape == 4:
        return f"{draw(st.sampled_from(list(GIT_VERBS)))} {draw(PLACES)}{draw(SUFFIXES)}"
    parts = []
    for _ in range(draw(st.integers(0, 9))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            parts.append(draw(WORDS))
        elif kind == 1:
            parts.append(draw(PLACES) + draw(WORDS))
        elif kind == 2:
            parts.append(draw(PLACES))
        else:
            parts.append(draw(st.text(max_size=12)))
    return draw(st.sampled_from([" ", "  ", "\t"])).join(parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(template=commands(), worker=st.sampled_from(["w1", "w2"] * 3 + ["w3", "w9", "../w1", ""]),
       downloads=st.booleans())
@example(template=f"rsync --server -Otre.iLsfxCIvu . {{tree}}/incoming/{TOKENS['live']}/", worker="w1",
         downloads=True)
@example(template="rsync --server --sender -tIRe.LsfxCIvu --files-from=- --from0 . {tree}/All/", worker="w2",
         downloads=True)
@example(template="git-upload-pack '{repo}'", worker="w1", downloads=False)
def test_hostile_commands_get_a_refusal_or_an_allowed_command(world, template, worker, downloads):
    tree, repo = world["tree"], world["repo"]
    command = template.replace("{tree}", tree).replace("{repo}", repo)
    d = serve(world, command, worker=worker, downloads=downloads)
    if d.refused:
        assert d.argv == () and d.upload is None
        assert "\n" not in d.refusal and len(d.refusal) < 400
        assert all(" " <= c <= "~" for c in d.refusal)
        return
    assert worker in ("w1", "w2")  # registered and not revoked
    if d.argv[0] == "git":
        assert d.argv in (("git", "upload-pack", repo), ("git", "receive-pack", repo))
        assert d.env == {"GITQUEUE_PUSHER": worker}
        return
    real = os.path.realpath(tree)
    rewritten = d.env["SSH_ORIGINAL_COMMAND"]
    words = rewritten.split(" ")
    assert "" not in words and all(re.fullmatch(r"[A-Za-z0-9._+=,@%/:-]+", w) for w in words)
    dot = words.index(".")
    options, paths = words[2:dot], words[dot + 1:]
    assert all(not p.startswith("/") and ".." not in p.split("/") for p in paths)
    # No option that names a place to write or read, or follows symlinks.
    for option in options:
        name = option.split("=", 1)[0]
        assert name not in ("--temp-dir", "--partial-dir", "--backup-dir", "--link-dest", "--compare-dest",
                            "--copy-dest", "--log-file", "--copy-links", "--copy-unsafe-links"), option
        assert option == "--files-from=-" or name != "--files-from"
        if not option.startswith("--"):
            assert not set(option.split("e.", 1)[0]) & set("TLKksbf"), option
    if d.argv[1] == "-ro":
        assert downloads and d.argv == (RRSYNC, "-ro", real) and words[:3] == ["rsync", "--server", "--sender"]
        assert d.upload is None
    else:
        assert "--sender" not in words and paths == ["."]
        tokens = W1_UPLOADS if worker == "w1" else \
            {TOKENS["other"], "ab" * 16, TOKENS["w2-lapsed"]}
        assert d.argv[:-1] == (RRSYNC, "-wo", "-no-overwrite", "-no-del", "-munge", "-no-lock")
        assert d.argv[-1] in {f"{real}/incoming/{t}" for t in tokens}
        assert d.upload.directory == d.argv[-1]
