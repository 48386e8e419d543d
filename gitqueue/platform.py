"""What a worker is: architecture, OS release, pkgsrc branch and revision, and the queue's pins."""

import os

from .errors import GitqueueError

PINNED = ("arch", "os_release", "pkgsrc_branch", "pkgsrc_revision")


class PinMismatch(GitqueueError):
    """The worker does not meet the platform the queue pins."""


def describe(overrides: dict | None = None, pkgsrc_dir: str | None = None) -> dict:
    """This machine as a worker: `uname -m`, `uname -r`, the pkgsrc checkout's branch and
    revision (CVS/Tag and CVS sticky date, or git HEAD), each overridable."""
    uname = os.uname()
    found = {"arch": uname.machine, "os_release": uname.release}
    if pkgsrc_dir:
        found.update(_pkgsrc_checkout(pkgsrc_dir))
    for key in PINNED:
        if overrides and overrides.get(key):
            found[key] = overrides[key]
    return found


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
