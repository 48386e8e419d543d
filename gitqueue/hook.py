"""The server's pre-receive check: refuse any push that breaks the queue's rules (docs/trust.md).

git-receive-pack runs the hook with the pushed objects in a quarantine directory and the ref
updates ("old new ref" lines) on stdin; whatever the hook writes to stderr reaches the pusher
as `remote: ...`, and a non-zero exit refuses the whole push. `hooks/pre-receive` (installed by
`gitqueue hooks install`) is a shim calling gitqueue.cli.prereceive, which reads the
environment and calls `check_push` here.

Pushes to a local path with gitqueue (gitstore.LocalRemote) move the ref directly and run no
hook: whoever can write the repository's files is trusted.
"""

import os
import sys

from .gitstore import TreeReader, open_quarantine, receive_store, set_config
from .layout import heartbeat_path
from .rules import ChainError, Options, State, Violation, check_commit, first_parent_chain
from .text import printable

ZERO = b"0" * 40
MARKER = "gitqueue pre-receive hook"
MAX_LINES = 8  # of violations shown to the pusher

SCRIPT = """#!{python}
# {marker}: refuses pushes that break the queue's rules (docs/trust.md).
# Installed by `gitqueue hooks install`; reinstall rather than edit.
import sys
{path_line}from gitqueue.cli.prereceive import main
sys.exit(main(branch={branch!r}))
"""


def script(python: str, branch: str = "main", package_dir: str | None = None) -> str:
    """The text of the pre-receive hook for interpreter `python` (gitqueue importable from it).

    With `package_dir` (the directory holding the gitqueue package), the hook imports that very
    gitqueue, whatever the server's PYTHONPATH.
    """
    path_line = f"sys.path.insert(0, {package_dir!r})\n" if package_dir else ""
    return SCRIPT.format(python=python, marker=MARKER, path_line=path_line, branch=branch)


DEFAULT_MAX_INPUT_SIZE = 32 << 20  # an import of the 29,000 pkgsrc jobs is a pack of about 4 MB
# What git itself checks of every object a push brings (receive.fsckObjects). Most of these are
# only warnings by default, which would let a push through; the hook checks the same again.
FSCK_ERRORS = ("zeroPaddedFilemode", "fullPathname", "hasDot", "hasDotdot", "hasDotgit", "badFilemode",
               "emptyName", "duplicateEntries", "treeNotSorted", "nulInHeader")


def configure(repo_path: str, max_input_size: int = DEFAULT_MAX_INPUT_SIZE) -> None:
    """Set what git's receive-pack itself refuses: malformed objects (receive.fsckObjects, with
    the tree-entry checks made errors) and pushes larger than `max_input_size` bytes; and let a
    new worker's first fetch leave out the file contents it does not need (blob:none), and the
    timeline fetch everything but the commits (tree:0): those filters only, which cost the
    server nothing (gitstore.CachedRemote._first_fetch, fetch_commits)."""
    set_config(repo_path, {"receive.fsckObjects": True, **{f"receive.fsck.{msg}": "error" for msg in FSCK_ERRORS},
                           "receive.maxInputSize": int(max_input_size), "receive.denyNonFastForwards": True,
                           "receive.denyDeletes": True, "uploadpack.allowFilter": True,
                           "uploadpack.filter.allow": False, "uploadpack.filter.blob:none.allow": True,
                           "uploadpack.filter.tree.allow": True, "uploadpack.filter.tree.maxDepth": 0})


def install(repo_path: str, python: str, branch: str = "main", package_dir: str | None = None,
            force: bool = False, max_input_size: int = DEFAULT_MAX_INPUT_SIZE) -> str:
    """Write hooks/pre-receive into the bare repository `repo_path` and set the repository's
    receive checks (see `configure`); return the hook's path.

    Idempotent; refuses to replace a hook that gitqueue did not write unless `force`.

    Raises:
        GitqueueError: not a bare repository, or a foreign hook without `force`.
    """
    from .errors import GitqueueError
    from .files import replace_file

    if not os.path.isdir(os.path.join(repo_path, "objects")) or not os.path.isfile(os.path.join(repo_path, "HEAD")):
        raise GitqueueError(f"{repo_path}: not a bare git repository")
    hooks = os.path.join(repo_path, "hooks")
    os.makedirs(hooks, exist_ok=True)
    path = os.path.join(hooks, "pre-receive")
    text = script(python, branch, package_dir)
    try:
        with open(path) as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    except (OSError, UnicodeDecodeError):
        current = ""
    if current is not None and MARKER not in current and not force:
        raise GitqueueError(f"{path} exists and was not written by gitqueue; move it away or pass --force")
    if current != text:
        replace_file(path, text, mode=0o755)
    else:
        os.chmod(path, 0o755)
    configure(repo_path, max_input_size)
    return path


MAX_PUSH_COMMITS = 100  # a worker pushes one commit at a time; an import is one commit
HEARTBEATS_FILE = "gitqueue-heartbeats.json"
LOG_FILE = "gitqueue-hook.log"


class Push:
    """What the hook found in one push: the violations, and what it must remember if accepted."""

    def __init__(self):
        self.violations: list[Violation] = []
        self.referenced: set[bytes] = set()  # every new commit, tree and file the pushed commits reach
        self.heartbeats: dict[str, tuple[bytes, float]] = {}  # worker -> (heartbeat blob, min interval)
        self.settings: dict | None = None


def check_push(store, updates: list[tuple[bytes, bytes, bytes]], branch: str = "main",
               pusher: str | None = None, gate=None) -> Push:
    """Every rule a push breaks: ref updates (queue branch only, no deletion, fast-forward only),
    then each new commit, oldest first, up to the first commit that breaks a rule.

    Args:
        store: object store holding the old and the new commits.
        updates: (old id, new id, ref name) as pre-receive reads them; ZERO means none.
        branch: the queue branch.
        pusher: the worker whose ssh key pushed (GITQUEUE_PUSHER from `gitqueue serve`).
        gate: a HeartbeatGate: heartbeats of a worker faster than the queue allows are refused.
    """
    ref = b"refs/heads/" + branch.encode()
    push = Push()
    found = push.violations
    for old, new, name in updates:
        shown = name.decode(errors="replace")
        if name != ref:
            found.append(Violation(new.decode()[:40], "ref", f"{shown[:100]}: only {ref.decode()} may be pushed"))
            continue
        if new == ZERO:
            found.append(Violation(old.decode(), "ref", f"{shown}: deleting the queue branch is refused"))
            continue
        try:
            chain = first_parent_chain(store, None if old == ZERO else old, new,
                                       limit=None if old == ZERO else MAX_PUSH_COMMITS)
        except ChainError as e:
            found.append(Violation(new.decode(), "commit", str(e)))
            continue
        if chain is None:
            found.append(Violation(new.decode(), "ref", f"{shown}: not a fast-forward of {old.decode()[:12]}, or "
                                                        f"more than {MAX_PUSH_COMMITS} commits "
                                                        "(the queue's history is never rewritten)"))
            continue
        state = State(store, None if old == ZERO else store[old].tree)
        options = Options(pusher=pusher)
        for commit in chain:
            verdict = check_commit(store, state, commit, options)
            push.referenced.add(commit.id)
            push.referenced.update(verdict.objects)
            if not verdict.violations and verdict.heartbeat_only and gate is not None:
                problem = _heartbeat_rate(store, state, commit, verdict.heartbeat_only, gate, push)
                if problem:
                    verdict.violations.append(Violation(commit.id.decode(), "heartbeat", problem,
                                                        heartbeat_path(verdict.heartbeat_only)))
            if verdict.violations:
                found.extend(verdict.violations)
                break
            push.settings = state.registry().settings
            state.advance(commit, verdict)
    return push


def _heartbeat_rate(store, state, commit, worker, gate, push) -> str | None:
    """Why a heartbeat-only commit of `worker` comes too soon after its last one, or None."""
    from .layout import min_heartbeat_seconds

    settings = state.registry().settings or {}
    interval = min_heartbeat_seconds(settings) if "lease_ttl" in settings else 0.0
    path = heartbeat_path(worker)
    before = TreeReader(store, state.tree).blob_id(path)
    after = TreeReader(store, commit.tree).blob_id(path)
    if worker in push.heartbeats:
        return f"two heartbeats of {worker} in one push: at most one per {interval:g} s (min_heartbeat_seconds)"
    since = gate.since(worker, before)
    push.heartbeats[worker] = (after, interval)
    if since is not None and since < interval:
        return (f"heartbeat of {worker} {since:.1f} s after the last one: at most one per {interval:g} s "
                "(min_heartbeat_seconds)")
    return None


class HeartbeatGate:
    """When the server last accepted a heartbeat of each worker, on its own clock.

    Kept in the repository's directory. A worker's heartbeat is "the last one" only while its
    record is still the tip's (a claim or report rewrites it, a push that lost the race never
    landed), so a retry after a lost race is never refused. Not a rule of the history: `verify`
    cannot see when commits arrived.
    """

    def __init__(self, path: str, clock=None):
        import time

        self.path = path
        self.clock = clock or time.time
        self.seen: dict = {}
        try:
            import json

            with open(path) as f:
                data = json.load(f)
            if isinstance(data, dict):
                self.seen = data
        except (OSError, ValueError):
            pass

    def since(self, worker: str, blob: bytes | None) -> float | None:
        """Seconds since the accepted heartbeat that wrote `blob`, None if `blob` is not it."""
        entry = self.seen.get(worker)
        if not (isinstance(entry, list) and len(entry) == 2 and blob is not None and entry[0] == blob.decode()):
            return None
        return max(0.0, self.clock() - float(entry[1]))

    def record(self, accepted: dict) -> None:
        """Remember the heartbeats of an accepted push ({worker: (blob, interval)})."""
        if not accepted:
            return
        import json

        from .files import replace_file
        from .locking import FileLock

        with FileLock(self.path + ".lock"):
            try:
                with open(self.path) as f:
                    current = json.load(f)
                if not isinstance(current, dict):
                    current = {}
            except (OSError, ValueError):
                current = {}
            now = self.clock()
            for worker, (blob, _) in accepted.items():
                current[worker] = [blob.decode(), now]
            replace_file(self.path, json.dumps(current))


def unreferenced(git_dir: str, environ: dict, push: Push) -> list[Violation]:
    """Objects the push brought that no pushed commit reaches (and the repository lacks).

    receive-pack keeps a push's objects in a quarantine directory until the hook accepts it;
    anything there that the queue never reads would otherwise stay in the repository forever.
    """
    quarantine = open_quarantine(git_dir, environ)
    if quarantine is None:
        return []
    with quarantine:
        extra = [sha for sha in quarantine if sha not in push.referenced and not quarantine.in_repository(sha)]
        if not extra:
            return []
        sized = []
        for sha in extra[:1000]:
            header = quarantine.header(sha) or ("object", 0)
            sized.append((header[1], header[0], sha))
    size, kind, sha = max(sized)
    return [Violation(sha.decode(), "objects", f"the push brings {len(extra)} object(s) that no pushed commit "
                                               f"uses (the largest: {kind} {sha.decode()[:12]}, {size} bytes)")]


def run(git_dir: str, environ: dict, stdin, stderr, branch: str = "main") -> int:
    """The hook: read the updates from `stdin`, explain refusals on `stderr`; return the exit status.

    Whatever goes wrong inside, the pusher sees one line saying the push was refused, never a
    traceback (which would show the server's paths); the details go to the repository's
    gitqueue-hook.log.
    """
    try:
        found = _check(git_dir, environ, stdin, branch)
    except BaseException as e:  # noqa: BLE001 - a crafted push must never show the server's traceback
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        _log(git_dir, e)
        stderr.write("gitqueue: push refused: the server could not check it "
                     f"({type(e).__name__}); its administrator's {LOG_FILE} says more\n")
        stderr.flush()
        return 1
    if not found:
        return 0
    stderr.write(f"gitqueue: push refused, {len(found)} rule{'s' if len(found) > 1 else ''} broken:\n")
    for v in found[:MAX_LINES]:
        stderr.write(f"gitqueue: {printable(str(v))}\n")
    if len(found) > MAX_LINES:
        stderr.write(f"gitqueue: ... and {len(found) - MAX_LINES} more\n")
    stderr.flush()
    return 1


def _check(git_dir, environ, stdin, branch) -> list[Violation]:
    updates = []
    for line in stdin.read(1 << 20).splitlines()[:100]:
        parts = line.split()
        if len(parts) == 3:
            updates.append((parts[0], parts[1], parts[2]))
    store = receive_store(git_dir, environ)
    gate = HeartbeatGate(os.path.join(git_dir, HEARTBEATS_FILE))
    try:
        push = check_push(store, updates, branch, environ.get("GITQUEUE_PUSHER") or None, gate)
        if not push.violations:
            push.violations.extend(unreferenced(git_dir, environ, push))
    finally:
        store.close()
    if not push.violations:
        gate.record(push.heartbeats)
    return push.violations


def _log(git_dir: str, error: BaseException) -> None:
    """Append the traceback of a failed check to the repository's hook log (kept under 1 MB)."""
    import time
    import traceback

    path = os.path.join(git_dir, LOG_FILE)
    try:
        if os.path.getsize(path) > 1 << 20:
            os.replace(path, path + ".old")
    except OSError:
        pass
    try:
        with open(path, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()}\n")
            f.write("".join(traceback.format_exception(error)))
    except OSError:
        pass


def main_module_dir() -> str:
    """The directory holding the gitqueue package this process imported."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def interpreter() -> str:
    return sys.executable
