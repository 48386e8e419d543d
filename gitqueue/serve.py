"""The ssh forced command of a worker's key: what the key may run on the master, and bounded uploads.

`decide` turns an ssh session's command (SSH_ORIGINAL_COMMAND) into a `Decision`: git for the
queue, a read-only rrsync on the package tree, an upload into the directory of one of the
worker's own leases, or a refusal. It reads the queue at the tip of its branch every time (through
a `RepoState`), so that a revocation takes effect at the worker's next command, even over an ssh
connection that was opened before (ControlPersist). `run_upload` runs an upload's rrsync under the
worker's upload quota and removes what a refused or killed upload left.

An upload goes only to `DIR/incoming/TOKEN`, for a TOKEN that is a live lease of the worker, or a
lapsed lease of the worker whose job has neither a result nor a live lease (a late success uploads
after its lease was reclaimed), and that no administrator's retry or update fenced. rrsync runs
write-only there with `-no-overwrite` (an uploaded file is never replaced), `-munge` (an uploaded
symlink points nowhere) and `-no-del`.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import posixpath
import pwd
import re
import select
import shlex
import shutil
import signal
import stat
import subprocess
import time
from typing import TYPE_CHECKING

from . import layout, records
from .errors import GitqueueError
from .layout import check_worker_name, record_path
from .transfer import SERVE_REFUSAL

if TYPE_CHECKING:
    from .gitstore import LocalRemote, TreeReader

__all__ = ["Decision", "Upload", "RepoState", "decide", "run_upload", "usage", "ENTRY_COST", "RRSYNC"]

RRSYNC = "rrsync"
GIT_VERBS = {"git-upload-pack": "upload-pack", "git-receive-pack": "receive-pack"}
MAX_COMMAND = 4096  # characters of SSH_ORIGINAL_COMMAND; rsync's and git's own are far shorter
MAX_USER_AUTH = 65536
# What each file, directory or symlink in an upload directory costs against the quota, on top of a
# file's size: a block, so that a million empty files cannot fill the disk's inodes for free.
ENTRY_COST = 4096
POLL = 0.1  # seconds between two looks at the upload directories while rsync runs

# Long options an rsync client sends to the server for gitqueue's transfers (and harmless others).
# None takes a path: rrsync checks paths too, but a path it allows inside DIR (--temp-dir,
# --partial-dir, --backup-dir, --link-dest, ...) would still reach beyond incoming/TOKEN.
_LONG_OPTIONS = frozenset({
    "timeout", "stats", "info", "log-format", "files-from", "from0", "ignore-times", "checksum", "dry-run",
    "ignore-existing", "size-only", "no-W", "whole-file", "compress-level", "compress-choice", "checksum-choice",
    "checksum-seed", "new-compress", "old-compress", "skip-compress", "bwlimit", "modify-window", "numeric-ids",
    "omit-dir-times", "no-implied-dirs", "max-alloc", "block-size", "msgs2stderr", "no-msgs2stderr", "no-r",
    "ignore-missing-args", "safe-links", "munge-links", "links", "times", "recursive", "perms", "dirs",
    "existing", "list-only",
})
# Short options: a cluster of letters that take no argument (-s, -L, -K, -k and -b left out: rrsync
# refuses them too), then rsync's capability string (e.LsfxCIvu); or -B/-@ with their number.
_SHORT_LETTERS = "ACDEHIJNORSUWXcdglmnopqrtuvxyz"
_SHORT_OPTIONS = re.compile(r"-(?=.)([A-Za-z]*?)(?:e\d*\.[A-Za-z]*)?|-[B@]\d+")
_OPTION_VALUE = re.compile(r"[A-Za-z0-9%,.:_+-]{0,100}")
# What an rsync path argument may hold (the characters gitqueue.transfer allows in a remote path).
_PATH = re.compile(r"/?[A-Za-z0-9._+=,@%-][A-Za-z0-9._+=,@%/-]{0,1000}")
# An rsync command is handed to rrsync, which splits it at white space and undoes backslashes: keep
# out everything that would make its reading differ from ours.
_RSYNC_CHARS = re.compile(r"[A-Za-z0-9 ._+=,@%/:-]+")


@dataclasses.dataclass(frozen=True)
class Upload:
    """Where an allowed upload writes, and what counts against the worker's quota."""

    directory: str  # DIR/incoming/TOKEN
    incoming: str  # DIR/incoming
    token: str
    worker: str
    tokens: frozenset  # every token whose directory counts against the worker's quota
    quota: int  # bytes


@dataclasses.dataclass(frozen=True)
class Decision:
    """What serve does with one ssh session: run `argv` with `env` added, or refuse (one line)."""

    argv: tuple = ()
    env: dict = dataclasses.field(default_factory=dict)
    refusal: str | None = None
    upload: Upload | None = None

    @property
    def refused(self) -> bool:
        return self.refusal is not None


def _refuse(message: str) -> Decision:
    return Decision(refusal=message)


def _show(text: str, limit: int = 200) -> str:
    """A hostile string as it may appear in a refusal: printable ASCII only, bounded."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


class RepoState:
    """What serve needs from the queue, read at the tip of `branch` of the bare repository `repo`.

    Read once per session (one ssh command): every command sees the registry and the leases as
    they are at that moment.
    """

    def __init__(self, repo: str, branch: str = "main"):
        self.repo_path = repo
        self.branch = branch
        self._reader: TreeReader | None = None
        self._repo: LocalRemote | None = None

    def _tip_reader(self) -> TreeReader:
        if self._reader is None:
            from .gitstore import LocalRemote

            try:
                self._repo = LocalRemote(self.repo_path, self.branch)
            except (GitqueueError, OSError):
                raise GitqueueError(f"{self.repo_path}: not a git repository") from None
            tip = self._repo.fetch()
            if tip is None:
                raise GitqueueError(f"{self.repo_path}: no queue on branch {self.branch}")
            self._reader = self._repo.reader(tip)
        return self._reader

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()

    def _load(self, kind: str, path: str, data: bytes | None) -> dict | None:
        if data is None:
            return None
        try:
            return records.load_at(kind, data, path)
        except GitqueueError:
            return None  # the hook refuses such records; one that got in anyway grants nothing

    def worker(self, name: str) -> dict | None:
        """The registry record of worker `name` (revoked or not), or None."""
        reader = self._tip_reader()
        path = layout.worker_path(name)
        return self._load("worker", path, reader.read(path))

    def upload_quota(self) -> int:
        data = self._tip_reader().read(layout.SETTINGS)
        try:
            settings = records.loads("queue", data, layout.SETTINGS) if data is not None else None
        except GitqueueError:
            settings = None
        return layout.upload_quota(settings)

    def upload_tokens(self, worker: str) -> frozenset:
        """The tokens `worker` may upload under: its live leases, and its lapsed leases whose job has
        neither a result nor a live lease; none that an administrator's retry or update fenced."""
        from .lease import fenced_tokens

        reader = self._tip_reader()
        mine: dict[str, set] = {}  # job -> the worker's tokens there
        leased = set()
        # Only records that name the worker are parsed (and validated): every upload session reads
        # all leases and lapsed leases, thousands in a big build.
        quoted = f'"{worker}"'.encode()
        for path, sha in reader.walk_files("leases"):
            leased.add(path.rsplit("/", 1)[-1][: -len(".toml")])
            data = reader.store[sha].as_raw_string()
            lease = self._load("lease", path, data) if quoted in data else None
            if lease is not None and lease["worker"] == worker:
                mine.setdefault(lease["job"], set()).add(lease["token"])
        for path, sha in reader.walk_files("lapsed"):
            data = reader.store[sha].as_raw_string()
            lapsed = self._load("lapsed", path, data) if quoted in data else None
            if lapsed is None or lapsed["job"] in leased:
                continue
            lapsed_tokens = [e["token"] for e in lapsed["lapsed"] if e["worker"] == worker]
            if lapsed_tokens and reader.blob_id(record_path("results", lapsed["job"])) is None:
                mine.setdefault(lapsed["job"], set()).update(lapsed_tokens)
        # The retries records of these few jobs only: a fenced late worker gets no upload area.
        allowed = set()
        for job, tokens in mine.items():
            path = record_path("retries", job)
            allowed.update(tokens - fenced_tokens(self._load("retry", path, reader.read(path))))
        return frozenset(allowed)


def decide(original_command: str | None, worker: str, repo: str, packages: str | None, downloads: bool,
           state, *, user_auth: str | None = None, home: str | None = None) -> Decision:
    """What the ssh session of `worker`'s key may run for `original_command`, or why not.

    Args:
        original_command: SSH_ORIGINAL_COMMAND (None or '' for a login shell).
        worker: the worker the key belongs to (the forced command's --worker).
        repo: the bare queue repository; git-upload-pack and git-receive-pack may run on it only.
        packages: the package tree (None: no rsync at all).
        downloads: whether the key may read the package tree (dependencies' packages).
        state: a RepoState (or anything with its worker, upload_tokens and upload_quota).
        user_auth: what sshd's ExposeAuthInfo wrote (SSH_USER_AUTH's file), if it did: the key the
            session authenticated with must then be the worker's registered key.
        home: the account's home directory (paths in git commands may be relative to it).

    Returns:
        A Decision: argv to run (git, or rrsync with the command it is to see in `env`), or a
        one-line refusal. Never raises for a hostile command.
    """
    if not original_command:
        return _refuse("this key runs only git and rsync for the queue: no interactive login")
    if len(original_command) > MAX_COMMAND:
        return _refuse(f"command longer than {MAX_COMMAND} characters")
    if any(not (" " <= c <= "~") for c in original_command):
        return _refuse("command with control or non-ASCII characters")
    try:
        argv = shlex.split(original_command)
    except ValueError:
        return _refuse("unparsable command")
    if not argv:
        return _refuse("empty command")
    try:
        check_worker_name(worker)
        problem = _identity_problem(worker, state, user_auth)
        if problem:
            return _refuse(problem)
        if argv[0] == "git" and len(argv) > 1:
            argv = [f"git-{argv[1]}", *argv[2:]]
        if argv[0] in GIT_VERBS:
            if len(argv) != 2 or not _same_path(argv[1], repo, home):
                return _refuse(f"{argv[0]}: only {repo} is served to this key")
            return Decision(argv=("git", GIT_VERBS[argv[0]], repo), env={"GITQUEUE_PUSHER": worker})
        if posixpath.basename(argv[0]) == "rsync" and argv[1:2] == ["--server"] and packages:
            return _rsync(original_command, worker, packages, downloads, state)
    except GitqueueError as e:
        return _refuse(_show(str(e), 300))
    return _refuse(f"{_show(argv[0], 40)}: not allowed for this key (git for the queue, rsync uploads "
                   "into incoming/ of its leases)")


def _identity_problem(worker: str, state, user_auth: str | None) -> str | None:
    """Why this session may not act as `worker` now (unregistered, revoked, another key), or None."""
    rec = state.worker(worker)
    if rec is None:
        return f"{worker} is not a registered worker of this queue"
    if rec.get("revoked_at"):
        return f"{worker} was revoked at {rec['revoked_at']}"
    if user_auth:
        keys = {" ".join(line.split()[1:3]) for line in user_auth.splitlines() if line.startswith("publickey ")}
        if keys and rec["key"] not in keys:
            return f"this session's ssh key is not the registered key of {worker}"
    return None


def _home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


def _same_path(given: str, path: str, home: str | None) -> bool:
    home = home or _home()
    given = given.rstrip("/") or "/"
    if given.startswith("~/"):
        given = os.path.join(home, given[2:])
    elif not given.startswith("/"):
        given = os.path.join(home, given)
    return os.path.realpath(given) == os.path.realpath(path)


def _inside(path: str, roots: tuple[str, ...]) -> str | None:
    """`path` relative to the first of `roots` it lies in ('' for a root itself), or None."""
    for root in roots:
        if path == root:
            return ""
        if path.startswith(root.rstrip("/") + "/"):
            return path[len(root.rstrip("/")) + 1:]
    return None


def _rsync(command: str, worker: str, packages: str, downloads: bool, state) -> Decision:
    """The rrsync run for an `rsync --server ...` command, or a refusal."""
    if not _RSYNC_CHARS.fullmatch(command):
        return _refuse("rsync: quotes, backslashes or unusual characters in the command")
    words = command.split()
    sender = words[2:3] == ["--sender"]
    rest = words[3 if sender else 2:]
    if "." not in rest:
        return _refuse("rsync: malformed server command")
    dot = rest.index(".")
    options, paths = rest[:dot], rest[dot + 1:]
    for option in options:
        problem = _option_problem(option)
        if problem:
            return _refuse(f"rsync: {problem}")
    if not paths:
        return _refuse("rsync: no path given")
    given = os.path.normpath(os.path.abspath(packages))
    real = os.path.realpath(packages)
    roots = (given, real) if given != real else (given,)
    relative = []
    for p in paths:
        if not _PATH.fullmatch(p) or ".." in p.split("/"):
            return _refuse(f"rsync: not a path this key may use: {_show(p)}")
        full = os.path.normpath(p if p.startswith("/") else os.path.join(given, p))
        rel = _inside(full, roots)
        if rel is None:
            if sender:
                return _refuse(f"rsync: may read only in {given}/, not {_show(p)}")
            return _refuse(f"rsync: may upload only into incoming/TOKEN of a lease of {worker}, not {_show(p)}")
        relative.append((rel or ".") + ("/" if p.endswith("/") and rel else ""))
    if sender:
        if not downloads:
            return _refuse("rsync: reading the package tree is not allowed for this key")
        rewritten = " ".join(["rsync", "--server", "--sender", *options, ".", *relative])
        return Decision(argv=(RRSYNC, "-ro", real), env={"SSH_ORIGINAL_COMMAND": rewritten})
    parts = relative[0].rstrip("/").split("/")
    if len(paths) != 1 or len(parts) != 2 or parts[0] != "incoming":
        return _refuse(f"rsync: may upload only into incoming/TOKEN of a lease of {worker}, not "
                       f"{_show(' '.join(paths))}")
    token = parts[1]
    tokens = state.upload_tokens(worker)
    if token not in tokens:
        return _refuse(f"rsync: incoming/{_show(token)} is not a lease of {worker}")
    incoming = os.path.join(real, "incoming")
    directory = os.path.join(incoming, token)
    rewritten = " ".join(["rsync", "--server", *options, ".", "."])
    return Decision(argv=(RRSYNC, "-wo", "-no-overwrite", "-no-del", "-munge", "-no-lock", directory),
                    env={"SSH_ORIGINAL_COMMAND": rewritten},
                    upload=Upload(directory, incoming, token, worker, tokens, state.upload_quota()))


def _option_problem(option: str) -> str | None:
    if option.startswith("--"):
        name, eq, value = option[2:].partition("=")
        if name not in _LONG_OPTIONS:
            return f"option --{_show(name, 40)} is not allowed"
        if eq and not _OPTION_VALUE.fullmatch(value):
            return f"option --{name}: unusual value"
        if name == "files-from" and value != "-":
            return "--files-from: only - (the list sent by the client)"
        return None
    short = _SHORT_OPTIONS.fullmatch(option)
    if not short:
        return f"not an option rsync sends: {_show(option, 40)}"
    for letter in short.group(1) or "":
        if letter not in _SHORT_LETTERS:
            return f"option -{letter} is not allowed"
    return None


# -- running an upload ---------------------------------------------------------------------------


def usage(incoming: str, tokens) -> int:
    """Bytes that the directories incoming/T (T in `tokens`) hold: each file's size, plus ENTRY_COST
    for every file, directory and symlink. Symlinks are not followed."""
    total = 0
    for token in tokens:
        total += _tree_usage(os.path.join(incoming, token))
    return total


def _tree_usage(path: str) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return ENTRY_COST + (st.st_size if stat.S_ISREG(st.st_mode) else 0)
    total = ENTRY_COST
    for _, entry in _walk(path):
        total += ENTRY_COST
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # removed meanwhile
    return total


def _walk(path: str):
    """Yield (relative path, os.DirEntry) of everything below the directory `path`, following no
    symlink."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(path, rel) if rel else path) as it:
                entries = list(it)
        except OSError:
            continue  # removed meanwhile
        for entry in entries:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(sub)
            except OSError:
                pass
            yield sub, entry


def _entries(path: str) -> set:
    """(relative path, inode) of everything below the directory `path`."""
    return {(rel, entry.inode()) for rel, entry in _walk(path)}


def _remove_new(path: str, before: set) -> None:
    """Remove what appeared below `path` since `before` (an `_entries` snapshot), never following a
    symlink."""
    for rel, _ in sorted(_entries(path) - before, key=lambda e: e[0].count("/")):
        full = os.path.join(path, rel)
        try:
            if stat.S_ISDIR(os.lstat(full).st_mode):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        except FileNotFoundError:
            continue  # inside a directory removed just before


def _open_upload_dir(upload: Upload) -> tuple[int, bool]:
    """A descriptor of DIR/incoming/TOKEN (made if missing) and whether it was made; neither
    incoming/ nor TOKEN may be a symlink."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        os.mkdir(upload.incoming)
    except FileExistsError:
        pass
    try:
        parent = os.open(upload.incoming, flags)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise GitqueueError("incoming/ of the package tree is not a directory") from None
        raise
    try:
        made = False
        try:
            os.mkdir(upload.token, 0o755, dir_fd=parent)
            made = True
        except FileExistsError:
            pass
        try:
            return os.open(upload.token, flags, dir_fd=parent), made
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise GitqueueError(f"incoming/{upload.token} is not a directory") from None
            raise
    finally:
        os.close(parent)


def run_upload(decision: Decision, environ: dict, out: int, err: int, poll: float = POLL) -> int:
    """Run an upload decision's rrsync bounded by the worker's upload quota; return the exit status.

    The upload may use what is left of the quota: no file may grow beyond it (RLIMIT_FSIZE), and
    the worker's upload directories are measured while rsync runs. When they exceed the quota, or
    rsync fails on the limit, the transfer is stopped and everything this upload added is removed.
    A directory incoming/TOKEN made for an upload that failed is removed when empty.

    Args:
        decision: a Decision of `decide` with `upload` set.
        environ: the environment rrsync starts with (the decision's `env` is added).
        out: the file descriptor of the session's standard output, where rsync's goes.
        err: the file descriptor of the session's standard error: it gets rrsync's as it comes,
            and the one line of a refusal (written before the transfer is stopped, so that the
            worker's rsync reads it before the connection closes).
        poll: seconds between two measurements.
    """
    up = decision.upload
    if up is None:
        raise ValueError("run_upload runs only a decision to upload")
    used = usage(up.incoming, up.tokens)
    if used >= up.quota:
        return _refused(err, f"upload quota of {up.quota} bytes used up: the upload directories of "
                             f"{up.worker}'s leases hold {used} bytes")
    left = up.quota - used
    try:
        fd, made = _open_upload_dir(up)
    except OSError as e:
        return _refused(err, f"cannot open incoming/{up.token}: {e.strerror}")
    except GitqueueError as e:
        return _refused(err, str(e))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _say(err, f"gitqueue serve: busy: another upload into incoming/{up.token} is running; try again\n")
            return 1
        before = _entries(up.directory)
        over = (f"upload quota of {up.quota} bytes used up: this upload would exceed it ({left} bytes were "
                "left); nothing of it was kept")
        code, stopped = _bounded_run(decision, environ, (out, err), up, left, poll, over)
        if not stopped and usage(up.incoming, up.tokens) > up.quota:
            stopped = True
            _refused(err, over)
        if stopped:
            _remove_new(up.directory, before)
            code = 1
        if code != 0 and made:
            _rmdir_if_empty(up.directory)
        return code
    finally:
        os.close(fd)


def _refused(err: int, message: str) -> int:
    _say(err, f"{SERVE_REFUSAL}{message}\n")
    return 1


def _rmdir_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _say(err: int, text: str) -> None:
    try:
        os.write(err, text.encode())
    except OSError:
        pass  # the session is gone


def _bounded_run(decision, environ, session, up, left, poll, over) -> tuple[int, bool]:
    """Run rrsync with RLIMIT_FSIZE `left`; (exit status, stopped for the quota?).

    rsync's standard output (the protocol stream to the worker) and standard error pass through
    this process: rsync writes why it failed to stderr before it tells the worker over stdout, so
    reading stderr first lets the refusal reach the worker before rsync's own end of the story, and
    nothing of rsync's output after it.
    """
    import resource

    session_out, err = session

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (left, left))

    env = {**environ, **decision.env}
    try:
        child = subprocess.Popen(decision.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=limit, start_new_session=True)
    except OSError as e:
        _say(err, f"gitqueue serve: cannot run {decision.argv[0]}: {e.strerror}\n")
        return 1, False
    assert child.stdout is not None and child.stderr is not None  # stdout=PIPE, stderr=PIPE
    out, errs = child.stdout.fileno(), child.stderr.fileno()
    open_fds = {out, errs}
    stopped = False
    tail = b""

    def stop():
        nonlocal stopped
        if not stopped:
            stopped = True
            _refused(err, over)
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def relay_stderr(timeout):
        nonlocal tail
        while errs in open_fds and select.select([errs], [], [], timeout)[0]:
            chunk = os.read(errs, 65536)
            if not chunk:
                open_fds.discard(errs)
                return
            tail = (tail + chunk)[-4096:]
            if b"File too large" in tail:
                stop()  # rsync met RLIMIT_FSIZE: a file larger than what is left of the quota
            _say(err, chunk.decode("utf-8", "replace"))
            timeout = 0

    # The worker's end is written without blocking, so that the quota is watched even while a
    # worker does not read (rsync's generator then stops asking it for more files).
    blocking = os.get_blocking(session_out)
    os.set_blocking(session_out, False)
    pending = b""
    gone = False
    next_look = time.monotonic() + poll
    try:
        while open_fds or pending:
            readable = [fd for fd in open_fds if fd == errs or not pending]
            ready, writable, _ = select.select(readable, [session_out] if pending else [], [],
                                               max(0.0, next_look - time.monotonic()))
            relay_stderr(0)
            if out in ready:
                chunk = os.read(out, 65536)
                if not chunk:
                    open_fds.discard(out)
                elif not (stopped or gone):
                    pending = chunk
            if writable:
                try:
                    pending = pending[os.write(session_out, pending):]
                except BlockingIOError:
                    pass
                except OSError:
                    gone = True  # the worker is gone; rsync learns it from its own end
            if stopped or gone:
                pending = b""
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + poll
                if usage(up.incoming, up.tokens) > up.quota:
                    stop()
    finally:
        os.set_blocking(session_out, blocking)
    child.stdout.close()
    child.stderr.close()
    code = child.wait()
    return (code if code >= 0 else 128 - code), stopped
