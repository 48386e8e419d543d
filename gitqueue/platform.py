"""What a worker is: architecture, OS release, pkgsrc branch and revision, and the queue's pins."""

import os
import re
import shlex

from .errors import GitqueueError

PINNED = ("arch", "os_release", "pkgsrc_branch", "pkgsrc_revision")
# Where a Linux system describes its release (os-release(5)): the first that exists counts.
OS_RELEASE_FILES = ("/etc/os-release", "/usr/lib/os-release")
_OS_RELEASE_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~+-]{0,63}")


class PinMismatch(GitqueueError):
    """The worker does not meet the platform the queue pins."""


def describe(overrides: dict | None = None, pkgsrc_dir: str | None = None,
             os_release_files: tuple[str, ...] = OS_RELEASE_FILES, uname=None) -> dict:
    """This machine as a worker: its architecture, OS release, pkgsrc branch and revision.

    Args:
        overrides: values that win over detection (the worker's config file).
        pkgsrc_dir: the pkgsrc checkout, whose CVS/Tag and CVS sticky date, or git HEAD, give
            the branch and revision.
        os_release_files: where a Linux system describes its release (see linux_release).
        uname: what os.uname() returns (a test's stand-in).

    Returns:
        {"arch": `uname -m`, "os_release": on Linux ID-VERSION_ID from os-release (debian-12),
        elsewhere or without it `uname -r` (NetBSD: 10.1), and what the checkout gives}.
    """
    uname = uname or os.uname()
    found = {"arch": uname.machine, "os_release": uname.release}
    if uname.sysname == "Linux":
        # uname -r is the kernel's release there, not the system's (6.1.0-18-amd64).
        found["os_release"] = linux_release(os_release_files) or uname.release
    if pkgsrc_dir:
        found.update(_pkgsrc_checkout(pkgsrc_dir))
    for key in PINNED:
        if overrides and overrides.get(key):
            found[key] = overrides[key]
    return found


def linux_release(paths: tuple[str, ...] = OS_RELEASE_FILES) -> str | None:
    """ID-VERSION_ID of the first os-release file of `paths` that exists: debian-12, ubuntu-24.04.

    Without VERSION_ID (Debian testing, rolling releases) ID-VERSION_CODENAME, else ID alone.
    ID defaults to "linux", as os-release(5) says. None when no file can be read or its
    values are not plain words (letters, digits, '.', '_', '~', '+', '-').
    """
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(65536)
        except OSError:
            continue
        fields = _os_release_fields(text)
        system = fields.get("ID") or "linux"
        version = fields.get("VERSION_ID") or fields.get("VERSION_CODENAME")
        words = [system, version] if version else [system]
        if not all(_OS_RELEASE_VALUE.fullmatch(w) for w in words):
            return None
        return "-".join(words)
    return None


def _os_release_fields(text: str) -> dict:
    """KEY=value lines of an os-release file, shell quoting undone; other lines ignored."""
    fields = {}
    for line in text.splitlines():
        key, eq, value = line.strip().partition("=")
        if not eq or not key.isidentifier():
            continue
        try:
            words = shlex.split(value)
        except ValueError:  # an unbalanced quote
            continue
        fields[key] = " ".join(words)
    return fields


def _pkgsrc_checkout(directory: str) -> dict:
    out = {}
    tag = os.path.join(directory, "CVS", "Tag")
    try:
        with open(tag) as f:
            text = f.read().strip()
        # CVS writes "T<branch>" for a branch, "N<tag>" for a tag, "D<date>" for a date.
        if text[:1] in ("T", "N"):
            out["pkgsrc_branch"] = text[1:]
        elif text[:1] == "D":
            out["pkgsrc_revision"] = text[1:]
    except OSError:
        pass
    head = os.path.join(directory, ".git", "HEAD")
    try:
        with open(head) as f:
            text = f.read().strip()
        if text.startswith("ref: refs/heads/"):
            out.setdefault("pkgsrc_branch", text[len("ref: refs/heads/"):])
            ref = os.path.join(directory, ".git", text[5:])
            if os.path.exists(ref):
                with open(ref) as f:
                    out.setdefault("pkgsrc_revision", f.read().strip())
        elif len(text) == 40:
            out.setdefault("pkgsrc_revision", text)
    except OSError:
        pass
    if "pkgsrc_branch" not in out and os.path.isdir(os.path.join(directory, "CVS")):
        out["pkgsrc_branch"] = "HEAD"  # a CVS checkout without a sticky tag is the trunk
    return out


def check(settings: dict, platform: dict) -> None:
    """Raise PinMismatch naming every pin of the queue that `platform` does not meet."""
    problems = []
    for key in PINNED:
        wanted = settings.get(key)
        if wanted and platform.get(key) != wanted:
            have = platform.get(key) or "unknown"
            problems.append(f"{key} is {have}, the queue needs {wanted}")
    if problems:
        raise PinMismatch("this worker does not meet the queue's pins: " + "; ".join(problems)
                          + " (set them in the worker's config file if detection is wrong)")
