"""Moving binary packages between a worker and the shared package tree, with rsync.

The package tree on the master holds ``All/`` (published packages) and ``incoming/<lease-token>/``
(what a worker uploaded under one lease). A tree location is a local directory or an
rsync-over-ssh target: ``[user@]host:/path`` or ``ssh://[user@]host[:port]/path`` (the port
becomes ``-p PORT`` in the ssh command). ``host::module`` and ``rsync://`` (rsync daemon) are
refused, and so is a remote path with shell metacharacters. A local path whose first component
holds a ':' must be written with a leading ``./``, as for rsync itself.

Guarantees:

* A file never appears under its final name until it is complete: rsync writes a temporary
  ``.NAME.XXXXXX`` next to it and renames it at the end. An interrupted download is kept in
  ``.rsync-partial/`` inside the destination directory and resumed by the next attempt; an
  interrupted upload is not (a master running ``gitqueue serve`` refuses ``--partial-dir``, whose
  files it would have to overwrite): the next attempt sends the file again. Readers of
  ``incoming/<token>/`` and of a download directory must ignore dot-files.
* An upload never relies on replacing a file: behind ``gitqueue serve`` the tree keeps the first
  file uploaded under a name, and a different file under that name fails the check below.
* :func:`upload` returns only after the uploaded copies were checked against what it described
  (sha256 for a local tree; ``rsync --checksum --dry-run`` for a remote one, which needs rsync
  3.2.4 or later on both ends: ``--info=skip2`` says whether a file the tree kept matches).
* :func:`download` returns only files whose sha256 is the expected one; a file that does not
  match is deleted.
* Failures are retried with exponential backoff (with jitter); the final error is one line
  naming the tree and rsync's (or ssh's, or the master's ``gitqueue serve``) most telling stderr
  line. What ``gitqueue serve`` refuses is not retried.

Pass a :class:`TransferStats` as ``stats=`` to learn what went over the wire (rsync's
``Total bytes sent/received``, i.e. the rsync stream inside ssh) and how long each run took.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from .backoff import Backoff
from .errors import GitqueueError
from .files import sha256_file

__all__ = [
    "TransferError",
    "TransferStats",
    "Location",
    "parse_tree",
    "describe",
    "upload",
    "upload_build",
    "Uploaded",
    "in_tree",
    "download",
    "PARTIAL_DIR",
]

PARTIAL_DIR = ".rsync-partial"
RSYNC = "rsync"
DEFAULT_IO_TIMEOUT = 300  # seconds without any data before rsync gives up (--timeout)
MAX_DELAY = 300.0

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_USER_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\]")
# What a remote path may hold: the remote shell sees it (older rsync does not escape it).
_REMOTE_PATH_RE = re.compile(r"[A-Za-z0-9._+~/=,@%-]+")
_STAT_RE = re.compile(r"^Total bytes (sent|received):\s*([0-9][0-9,.']*)", re.M)
# An --itemize-changes line for a regular file: YXcstpoguax NAME (Y: < > c h . *).
_ITEM_FILE_RE = re.compile(r"^[<>ch.*]f\S{7,} ")
# --info=skip2: a file the receiver kept (--ignore-existing) and how it compares.
_EXISTS_RE = re.compile(r"^(.*) exists(?: \(([a-z ]+)\))?$")
_SAME = {"uptodate", "attr change"}
# How the line starts that gitqueue serve on the master refuses with: another attempt gets the same
# answer.
SERVE_REFUSAL = "gitqueue serve: refused: "
# rsync exit statuses that another attempt cannot cure: usage, protocol, unsupported action.
_PERMANENT = {1, 2, 4}


class TransferError(GitqueueError):
    """An upload or download that failed (after its retries), described in one line."""


@dataclasses.dataclass
class TransferStats:
    """Accumulates what rsync reported; ``runs`` has one dict per rsync process."""

    bytes_sent: int = 0
    bytes_received: int = 0
    runs: list[dict] = dataclasses.field(default_factory=list)

    @property
    def bytes_on_wire(self) -> int:
        return self.bytes_sent + self.bytes_received

    def add(self, purpose: str, rc: int, seconds: float, sent: int, received: int) -> None:
        self.bytes_sent += sent
        self.bytes_received += received
        self.runs.append({"purpose": purpose, "rc": rc, "seconds": seconds, "sent": sent, "received": received})


@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed tree: ``host`` is None for a local directory."""

    path: str
    host: str | None = None  # "[user@]host" as rsync wants it
    port: int | None = None

    def arg(self, sub: str = "") -> str:
        """The rsync argument for ``sub`` (a relative path, '' for the tree) inside the tree."""
        path = self.path.rstrip("/") + "/" + sub if sub else self.path
        return f"{self.host}:{path}" if self.host else path

    def rsh(self, rsh: str | None) -> str | None:
        if self.host is None:
            return None
        if rsh:
            from .connection import for_destination

            # the socket name gitqueue's own git sessions use for this host: one master for both
            user, _, host = self.host.rpartition("@")
            rsh, _ = for_destination(rsh, user or None, host, self.port)
        if self.port is not None:
            return f"{rsh or 'ssh'} -p {self.port}"
        return rsh


# ------------------------------------------------------------------------------- validation

def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or len(name) > 255 or not _NAME_RE.fullmatch(name):
        raise TransferError(f"invalid {what} {name!r} (letters, digits and ._+~-, not starting with . - _ + ~)")
    return name


def parse_tree(tree: str) -> Location:
    """Parse a tree location; raise TransferError for one that is malformed or unsupported."""
    if not isinstance(tree, str) or not tree or "\n" in tree or "\0" in tree:
        raise TransferError(f"invalid package tree {tree!r}")
    if tree.startswith("ssh://"):
        try:
            u = urlsplit(tree)
            port = u.port
        except ValueError as e:
            raise TransferError(f"invalid package tree {tree!r}: {e}") from None
        host = u.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if not _HOST_RE.fullmatch(host) or u.query or u.fragment or u.password is not None:
            raise TransferError(f"invalid package tree {tree!r}")
        user = u.username
        if user is not None and not _USER_RE.fullmatch(user):
            raise TransferError(f"invalid user in package tree {tree!r}")
        return _remote(tree, f"{user}@{host}" if user else host, u.path, port)
    first = tree.split("/", 1)[0]
    if "://" in tree or ("::" in first and "[" not in first):
        raise TransferError(f"unsupported package tree {tree!r} (a directory, [user@]host:/path or ssh://...)")
    if ":" in first:  # rsync's own rule: a colon before the first slash means a remote host
        userhost, path = _split_v6(tree) if "[" in first else tree.split(":", 1)
        user, _, host = userhost.rpartition("@")
        if not _HOST_RE.fullmatch(host) or (user and not _USER_RE.fullmatch(user)):
            raise TransferError(f"invalid host in package tree {tree!r}")
        return _remote(tree, userhost, path, None)
    if tree.startswith("-"):
        raise TransferError(f"invalid package tree {tree!r}")
    return Location(os.path.abspath(tree))


def _split_v6(tree: str) -> tuple[str, str]:
    m = re.fullmatch(r"([^/\[]*\[[^\]]*\]):(.*)", tree, re.S)
    if not m:
        raise TransferError(f"invalid host in package tree {tree!r}")
    return m.group(1), m.group(2)


def _remote(tree: str, userhost: str, path: str, port: int | None) -> Location:
    if not path or not _REMOTE_PATH_RE.fullmatch(path) or path.startswith("-"):
        raise TransferError(f"invalid path in package tree {tree!r} (letters, digits and ._+~/=,@%- only)")
    if any(part == ".." for part in path.split("/")):
        raise TransferError(f"invalid path in package tree {tree!r} ('..')")
    return Location(path, userhost, port)


# ------------------------------------------------------------------------------- describe

def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _describe(path: str) -> tuple[dict, tuple]:
    try:
        before = os.stat(path)
        if not os.path.isfile(path):
            raise TransferError(f"{path}: not a regular file")
        digest = sha256_file(path)
        after = os.stat(path)
    except OSError as e:
        raise TransferError(f"{path}: {e.strerror or e}") from None
    if _signature(before) != _signature(after):
        raise TransferError(f"{path}: changed while being read")
    return {"name": os.path.basename(path), "size": after.st_size, "sha256": digest}, _signature(after)


def describe(path: str) -> dict:
    """``{'name': basename, 'size': bytes, 'sha256': hex}`` of a local file."""
    return _describe(path)[0]


# ------------------------------------------------------------------------------- running rsync

class _Failed(Exception):
    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry


# rsync's closing boilerplate and ssh chatter; then the lines that only say the connection broke.
_NOISE = re.compile(r"^rsync error: |^\(see the rsync man ?page|^Warning: Permanently added ")
_WEAK = re.compile(r"connection unexpectedly closed|Broken pipe")


def _summary(stderr: str, rc: int) -> str:
    """The most telling stderr line: the master's refusal, ssh's or rsync's complaint, not rsync's
    closing boilerplate."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not _NOISE.search(ln)]
    strong = [ln for ln in useful if not _WEAK.search(ln)]
    refused = [ln for ln in lines if ln.startswith(SERVE_REFUSAL)]
    if refused:
        line = refused[-1]
    elif strong:
        line = strong[-1]
    elif useful:
        line = useful[0]
    else:
        line = lines[-1] if lines else f"rsync exited with status {rc}"
    if len(line) > 300:
        line = line[:297] + "..."
    return f"{line} (rsync exit {rc})"


def _stat_numbers(stdout: str) -> tuple[int, int]:
    got = {k: int(re.sub(r"\D", "", v)) for k, v in _STAT_RE.findall(stdout)}
    return got.get("sent", 0), got.get("received", 0)


def _failed(proc: subprocess.CompletedProcess[str]) -> _Failed:
    """The failure of an rsync run; retried unless another attempt cannot change the answer."""
    permanent = proc.returncode in _PERMANENT or SERVE_REFUSAL in proc.stderr
    return _Failed(_summary(proc.stderr, proc.returncode), not permanent)


def _rsync(args: list[str], purpose: str, stats: TransferStats | None, input_text: str | None = None,
           rsync: str = RSYNC) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [rsync, *args],
            input=input_text,
            stdin=subprocess.DEVNULL if input_text is None else None,
            capture_output=True,
            text=True,
            errors="replace",
        )
    except OSError as e:
        raise _Failed(f"cannot run {rsync}: {e.strerror or e}", retry=False) from None
    sent, received = _stat_numbers(proc.stdout)
    if stats is not None:
        stats.add(purpose, proc.returncode, time.monotonic() - t0, sent, received)
    return proc


def _common(loc: Location, rsh: str | None, io_timeout: int, rsync_path: str | None) -> list[str]:
    args = [f"--timeout={int(io_timeout)}", "--no-human-readable"]
    ssh = loc.rsh(rsh)
    if ssh is not None:
        args += ["--rsh", ssh]
        if rsync_path:
            args.append(f"--rsync-path={rsync_path}")
    return args


def _delays(attempts: int, backoff: float) -> list[float]:
    delays = Backoff(backoff, MAX_DELAY / 1.5, low=1.0, high=1.5)  # never above MAX_DELAY
    return [delays.next() for _ in range(max(0, attempts - 1))]


def _with_retries(once: Callable[[int], None], attempts: int, backoff: float, sleep: Callable[[float], object],
                  what: str) -> None:
    attempts = max(1, int(attempts))
    delays = _delays(attempts, backoff)
    for i in range(attempts):
        try:
            once(i)
            return
        except _Failed as e:
            if not e.retry or i == attempts - 1:
                n = f"{i + 1} attempt" + ("s" if i else "")
                raise TransferError(f"{what} failed after {n}: {e.message}") from None
        sleep(delays[i])


# ------------------------------------------------------------------------------- upload

def upload(files: list[str], tree: str, token: str, rsh: str | None = None, attempts: int = 5,
           backoff: float = 1.0, sleep: Callable[[float], object] = time.sleep, *,
           stats: TransferStats | None = None, io_timeout: int = DEFAULT_IO_TIMEOUT,
           rsync: str = RSYNC, rsync_path: str | None = None, names: list[str] | None = None) -> list[dict]:
    """Copy ``files`` into ``<tree>/incoming/<token>/``; return their :func:`describe` dicts.

    Sends the files to ``incoming/<token>/`` (no ``--mkpath``, no remote shell command: the
    master's ``gitqueue serve`` makes the directory; a tree without ``incoming/`` yet is sent
    ``incoming/<token>/NAME`` from the staging directory once). A file already there with the
    same size and mtime is not sent again, but is still checked; a different file already there
    under the same name fails the check when the tree keeps it (``gitqueue serve``), and is sent
    again otherwise. Raises TransferError (one line) for a bad token, name or tree, a file that
    changes while it is uploaded, a refusal of the master, or a transfer that still fails after
    ``attempts`` tries.

    Keyword-only: ``stats`` (a TransferStats to fill), ``io_timeout`` (rsync ``--timeout``:
    seconds without data before an attempt fails), ``rsync`` (the local binary),
    ``rsync_path`` (the remote one, e.g. ``/usr/pkg/bin/rsync``, when it is not on the PATH of
    a non-interactive ssh session) and ``names`` (the name each file gets in the tree, instead
    of its own).
    """
    loc = parse_tree(tree)
    _check_name(token, "lease token")
    if names is not None and len(names) != len(files):
        raise TransferError(f"upload to {tree}: {len(files)} files but {len(names)} names")
    described = []
    for i, path in enumerate(files):
        desc, sig = _describe(os.fspath(path))
        if names is not None:
            desc["name"] = names[i]
        _check_name(desc["name"], "package file name")
        described.append((os.path.abspath(path), desc, sig))
    chosen = [d["name"] for _, d, _ in described]
    if len(set(chosen)) != len(chosen):
        raise TransferError(f"upload to {tree}: the same file name given twice")
    if not described:
        return []

    stage = tempfile.mkdtemp(prefix="gitqueue-upload-")
    try:
        inner = os.path.join(stage, "incoming", token)
        os.makedirs(inner)
        for src, desc, _ in described:
            os.symlink(src, os.path.join(inner, desc["name"]))
        base = ["--recursive", "--copy-links", "--times", "--omit-dir-times",
                *_common(loc, rsh, io_timeout, rsync_path)]
        # Sent into incoming/TOKEN/ itself, the one directory gitqueue serve lets this lease's
        # worker write. rsync makes only the last directory of the target: a tree without
        # incoming/ yet (a plain account) is sent the whole staging directory once.
        target: tuple[str, str] = (inner + "/", loc.arg(f"incoming/{token}") + "/")
        state: dict = {"force": False, "target": target}

        def once(_attempt: int) -> None:
            args = [*base, "--stats"]
            if state["force"]:
                args.append("--ignore-times")  # a copy failed its check: resend whatever the quick check says
            proc = _rsync([*args, *state["target"]], "upload", stats, rsync=rsync)
            if proc.returncode != 0 and re.search(r'mkdir "[^"]*/incoming/[^"/]*" failed', proc.stderr):
                state["target"] = (stage + "/", loc.arg() + "/")
                proc = _rsync([*args, *state["target"]], "upload", stats, rsync=rsync)
            if proc.returncode != 0:
                raise _failed(proc)
            for src, _desc, sig in described:
                try:
                    now = _signature(os.stat(src))
                except OSError as e:
                    raise _Failed(f"{src}: {e.strerror or e}", retry=False) from None
                if now != sig:
                    raise _Failed(f"{src} changed while it was being uploaded", retry=False)
            if loc.host is None:
                for _, desc, _ in described:
                    got = os.path.join(loc.path, "incoming", token, desc["name"])
                    try:
                        ok = sha256_file(got) == desc["sha256"]
                    except OSError:
                        ok = False
                    if not ok:
                        state["force"] = True
                        raise _Failed(f"{got}: the uploaded copy does not match its sha256")
                return
            _check_upload(base, state, stats, rsync)

        _with_retries(once, attempts, backoff, sleep, f"upload to {tree}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [desc for _, desc, _ in described]


@dataclasses.dataclass(frozen=True)
class Uploaded:
    """What `upload_build` put in a lease's upload area: the packages', the log's and the phase
    logs' describe() dicts.

    ``log`` is None when there was no log or it could not be uploaded (``log_error`` says why);
    the phase logs go with the log, or not at all.
    """

    packages: list[dict]
    log: dict | None = None
    log_error: str | None = None
    phase_logs: list[dict] = dataclasses.field(default_factory=list)


def upload_build(tree: str, token: str, packages: list[str], log: str | None = None,
                 log_name: str | None = None, phase_logs: Sequence[tuple[str, str]] = (), **options) -> Uploaded:
    """Upload a build's packages, then its log (named ``log_name``) and phase logs ((path, name)
    pairs), into ``incoming/<token>/``.

    The one upload path of a result: `gitqueue work` and `gitqueue report --package` both come
    here. ``options`` are :func:`upload`'s (``rsh``, ``attempts``, ...).

    Raises TransferError when the packages could not be uploaded: a result never names a file
    that is not fully uploaded. Logs that could not be uploaded are said in ``log_error``; the
    caller decides whether the result goes without them.
    """
    sent = upload(packages, tree, token, **options) if packages else []
    if not log and not phase_logs:
        return Uploaded(sent)
    paths = ([log] if log else []) + [path for path, _ in phase_logs]
    names = ([log_name or os.path.basename(log)] if log else []) + [name for _, name in phase_logs]
    try:
        described = upload(paths, tree, token, names=names, **options)
    except TransferError as e:
        return Uploaded(sent, None, str(e))
    if log:
        return Uploaded(sent, described[0], None, described[1:])
    return Uploaded(sent, None, None, described)


def _check_upload(base: list[str], state: dict, stats: TransferStats | None, rsync: str) -> None:
    """Compare the uploaded copies with the files by checksum (a dry run of the same transfer)."""
    # --info=skip2: behind gitqueue serve the master keeps files that exist (--ignore-existing),
    # so a differing file is not itemized but reported as "NAME exists (sum change)".
    check = _rsync([*base, "--checksum", "--dry-run", "--itemize-changes", "--info=skip2", "--stats",
                    *state["target"]], "verify", stats, rsync=rsync)
    if check.returncode != 0:
        raise _failed(check)
    differ = []
    for line in check.stdout.splitlines():
        if _ITEM_FILE_RE.match(line):
            differ.append(line.split(" ", 1)[1])
            continue
        kept = _EXISTS_RE.match(line)
        if kept and kept.group(2) not in _SAME:
            raise _Failed(f"{kept.group(1)}: the package tree already holds another file under this name "
                          "and keeps it (an upload never replaces a file)", retry=False)
    if differ:
        state["force"] = True
        raise _Failed(f"{differ[0]}: the uploaded copy does not match (rsync --checksum)")


# ------------------------------------------------------------------------------- checking the tree

def in_tree(path: str, tree: str, rsh: str | None = None, *, io_timeout: int = DEFAULT_IO_TIMEOUT,
            rsync: str = RSYNC, rsync_path: str | None = None, **_options) -> bool:
    """Whether ``<tree>/All/<NAME>`` holds the bytes of the local file ``path`` (NAME its name).

    For a remote tree, a dry run of a download compared by checksum: no file data is sent. False
    when the tree has no such file, another one, or cannot be asked (the caller uploads instead,
    which retries and says why it fails). ``_options`` (attempts, backoff) are :func:`upload`'s.
    """
    from . import files

    loc = parse_tree(tree)
    name = _check_name(os.path.basename(path), "package file name")
    if loc.host is None:
        try:
            fd = files.open_file(loc.path, "All", name)
        except FileNotFoundError:
            return False
        if fd is None:
            return False
        os.close(fd)
        try:
            return sha256_file(os.path.join(loc.path, "All", name)) == sha256_file(path)
        except OSError:
            return False
    try:
        proc = _rsync(["--dry-run", "--checksum", "--itemize-changes", *_common(loc, rsh, io_timeout, rsync_path),
                       loc.arg(f"All/{name}"), os.path.dirname(os.path.abspath(path)) + "/"], "check", None,
                      rsync=rsync)
    except _Failed:
        return False
    # A file whose contents differ would be transferred: an itemized line ">f..." names it. A
    # symlink there is skipped ("skipping non-regular file"): no download would get it either.
    said = proc.stdout + proc.stderr
    return proc.returncode == 0 and "skipping non-regular file" not in said and not any(
        line.startswith(">f") for line in said.splitlines())


# ------------------------------------------------------------------------------- download

def download(packages: list[dict], tree: str, dest_dir: str, rsh: str | None = None, attempts: int = 5,
             backoff: float = 1.0, sleep: Callable[[float], object] = time.sleep, *,
             stats: TransferStats | None = None, io_timeout: int = DEFAULT_IO_TIMEOUT,
             rsync: str = RSYNC, rsync_path: str | None = None, source: str = "All") -> list[str]:
    """Fetch ``<tree>/<source>/<name>`` for each ``{'name', 'sha256'}`` into ``dest_dir``; return the paths.

    ``source`` is ``All`` (published), ``incoming/<token>`` (uploaded, not yet published) or
    ``logs/<job>`` (a published build log).

    Files already in ``dest_dir`` with the right sha256 are not fetched; a stale copy serves as
    rsync's basis. Every fetched file is checked: one whose sha256 differs is deleted and raises
    TransferError naming the package (not retried: the tree's copy is not the one expected).
    """
    loc = parse_tree(tree)
    parts = source.split("/")
    if source != "All" and not (len(parts) == 2 and parts[0] in ("incoming", "logs")):
        raise TransferError(f"cannot download from {source!r}: only All, incoming/TOKEN or logs/JOB")
    if len(parts) == 2:
        _check_name(parts[1], "token" if parts[0] == "incoming" else "job name")
    wanted: dict[str, str] = {}
    order = []
    for p in packages:
        if not isinstance(p, dict):
            raise TransferError(f"invalid package entry {p!r}")
        name = _check_name(p.get("name"), "package name")
        sha = p.get("sha256")
        if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha.lower()):
            raise TransferError(f"{name}: invalid sha256 {sha!r}")
        if wanted.setdefault(name, sha.lower()) != sha.lower():
            raise TransferError(f"{name}: listed twice with different sha256")
        order.append(name)
    try:
        os.makedirs(dest_dir, exist_ok=True)
    except OSError as e:
        raise TransferError(f"{dest_dir}: {e.strerror or e}") from None
    dest_dir = os.path.abspath(dest_dir)

    def good(name: str) -> bool:
        try:
            return sha256_file(os.path.join(dest_dir, name)) == wanted[name]
        except OSError:
            return False

    need = [n for n in wanted if not good(n)]
    if need:
        # No --copy-links: rrsync (gitqueue serve) refuses -L; a symlink in the tree is not sent,
        # and the check below says so.
        args = ["--times", "--ignore-times", f"--partial-dir={PARTIAL_DIR}", "--stats",
                "--files-from=-", *_common(loc, rsh, io_timeout, rsync_path),
                loc.arg(source) + "/", dest_dir + "/"]

        def once(_attempt: int) -> None:
            proc = _rsync(args, "download", stats, input_text="".join(n + "\n" for n in need), rsync=rsync)
            if proc.returncode != 0:
                raise _failed(proc)

        _with_retries(once, attempts, backoff, sleep, f"download from {tree}")
        for name in need:
            path = os.path.join(dest_dir, name)
            try:
                got = sha256_file(path)
            except FileNotFoundError:
                # rsync succeeded without it: the tree holds no regular file by that name (a symlink)
                raise TransferError(f"{name}: not downloaded from {tree}: not a regular file there") from None
            except OSError as e:
                raise TransferError(f"{name}: not downloaded from {tree}: {e.strerror or e}") from None
            if got != wanted[name]:
                try:
                    os.unlink(path)
                except OSError:
                    pass
                raise TransferError(
                    f"{name}: sha256 mismatch in {tree} (expected {wanted[name][:12]}..., got {got[:12]}...); "
                    "local copy removed")
    return [os.path.join(dest_dir, n) for n in order]
