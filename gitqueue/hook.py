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

from .rules import Options, State, Violation, check_commit, first_parent_chain

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


def install(repo_path: str, python: str, branch: str = "main", package_dir: str | None = None,
            force: bool = False) -> str:
    """Write hooks/pre-receive into the bare repository `repo_path`; return its path.

    Idempotent; refuses to replace a hook that gitqueue did not write unless `force`.

    Raises:
        GitqueueError: not a bare repository, or a foreign hook without `force`.
    """
    from .errors import GitqueueError

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
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    else:
        os.chmod(path, 0o755)
    return path


def open_store(git_dir: str, environ: dict):
    """The object store receive-pack sees: the quarantine directory with the repository's own
    object directory (and any alternates) behind it, or the repository's when not quarantined."""
    from dulwich.object_store import DiskObjectStore

    main = os.path.join(git_dir, "objects")
    objects = environ.get("GIT_OBJECT_DIRECTORY") or main
    alternates = [p for p in (environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES") or "").split(os.pathsep) if p]
    if os.path.abspath(objects) != os.path.abspath(main) and main not in alternates:
        alternates.append(main)
    return DiskObjectStore(objects, alternates=[p.strip('"') for p in alternates])


def check_push(store, updates: list[tuple[bytes, bytes, bytes]], branch: str = "main",
               pusher: str | None = None) -> list[Violation]:
    """Every rule a push breaks: ref updates (queue branch only, no deletion, fast-forward only),
    then each new commit, oldest first, up to the first commit that breaks a rule.

    Args:
        store: object store holding the old and the new commits.
        updates: (old id, new id, ref name) as pre-receive reads them; ZERO means none.
        branch: the queue branch.
        pusher: the worker whose ssh key pushed (GITQUEUE_PUSHER from `gitqueue serve`).
    """
    ref = b"refs/heads/" + branch.encode()
    found = []
    for old, new, name in updates:
        shown = name.decode(errors="replace")
        if name != ref:
            found.append(Violation(new.decode()[:40], "ref", f"{shown}: only {ref.decode()} may be pushed"))
            continue
        if new == ZERO:
            found.append(Violation(old.decode(), "ref", f"{shown}: deleting the queue branch is refused"))
            continue
        chain = first_parent_chain(store, None if old == ZERO else old, new)
        if chain is None:
            found.append(Violation(new.decode(), "ref", f"{shown}: not a fast-forward of {old.decode()[:12]} "
                                                        "(the queue's history is never rewritten)"))
            continue
        state = State(store, None if old == ZERO else store[old].tree)
        options = Options(pusher=pusher)
        for commit in chain:
            verdict = check_commit(store, state, commit, options)
            if verdict.violations:
                found.extend(verdict.violations)
                break
            state.advance(commit)
    return found


def run(git_dir: str, environ: dict, stdin, stderr, branch: str = "main") -> int:
    """The hook: read the updates from `stdin`, explain refusals on `stderr`; return the exit status."""
    updates = []
    for line in stdin.read().splitlines():
        parts = line.split()
        if len(parts) == 3:
            updates.append((parts[0], parts[1], parts[2]))
    store = open_store(git_dir, environ)
    try:
        found = check_push(store, updates, branch, environ.get("GITQUEUE_PUSHER") or None)
    finally:
        store.close()
    if not found:
        return 0
    stderr.write(f"gitqueue: push refused, {len(found)} rule{'s' if len(found) > 1 else ''} broken:\n")
    for v in found[:MAX_LINES]:
        stderr.write(f"gitqueue: {v}\n")
    if len(found) > MAX_LINES:
        stderr.write(f"gitqueue: ... and {len(found) - MAX_LINES} more\n")
    stderr.flush()
    return 1


def main_module_dir() -> str:
    """The directory holding the gitqueue package this process imported."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def interpreter() -> str:
    return sys.executable
