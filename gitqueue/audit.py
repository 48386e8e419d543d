"""Replay a queue's whole history and check every rule commit by commit (`gitqueue verify`)."""

import hashlib
import os
from dataclasses import dataclass, field

from . import files
from .layout import record_path
from .rules import Options, State, Violation, check_commit


@dataclass
class Audit:
    """What a replay of the history found."""

    commits: int = 0
    signed: dict = field(default_factory=dict)  # principal -> commits it signed
    unsigned: int = 0
    claims: int = 0
    results: int = 0
    reclaims: int = 0
    late: int = 0
    packages_checked: int = 0
    packages_unreachable: list = field(default_factory=list)  # "job: name"
    violations: list = field(default_factory=list)  # Violation

    def as_dict(self) -> dict:
        return {"commits": self.commits, "signed": self.signed, "unsigned": self.unsigned,
                "claims": self.claims, "results": self.results, "reclaims": self.reclaims, "late": self.late,
                "packages_checked": self.packages_checked, "packages_unreachable": self.packages_unreachable,
                "violations": [str(v) for v in self.violations],
                "first_violation": _violation_dict(self.violations[0]) if self.violations else None}


def _violation_dict(v: Violation) -> dict:
    return {"commit": v.commit, "path": v.path, "rule": v.rule, "message": v.message}


def replay(remote, tip: bytes, options: Options | None = None, packages_dir: str | None = None,
           stop_at_first: bool = False) -> Audit:
    """Walk the branch from its first commit to `tip` and check every commit (see rules).

    Args:
        remote: anything with an `object_store` (a gitstore Remote), or an object store.
        tip: the commit to end at.
        options: rules.Options; `history` is turned on (tokens, late results).
        packages_dir: the package tree (All/, incoming/TOKEN/); each success result's packages
            are checked against it (size and SHA-256). Missing files are listed, not violations;
            so are links and anything but regular files, which are never followed.
        stop_at_first: stop after the first commit that breaks a rule.

    Returns:
        An Audit. A history that is not one line of commits is reported as a violation.
    """
    store = getattr(remote, "object_store", remote)
    options = Options(**{**(options or Options()).__dict__, "history": True})
    tree_fd = os.open(packages_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if packages_dir is not None else None
    try:
        return _replay(store, tip, options, packages_dir, tree_fd, stop_at_first)
    finally:
        if tree_fd is not None:
            os.close(tree_fd)


def _replay(store, tip, options, packages_dir, tree_fd, stop_at_first) -> Audit:
    from .rules import first_parent_chain

    chain = first_parent_chain(store, None, tip)
    audit = Audit(commits=len(chain))
    state = State(store, None)
    for commit in chain:
        verdict = check_commit(store, state, commit, options)
        if verdict.signer is not None:
            audit.signed[verdict.signer.principal] = audit.signed.get(verdict.signer.principal, 0) + 1
        elif not commit.gpgsig:
            audit.unsigned += 1
        audit.claims += verdict.claims
        audit.results += verdict.results
        audit.reclaims += verdict.reclaims
        audit.late += verdict.late
        audit.violations.extend(verdict.violations)
        if packages_dir is not None:
            for job, token, package in verdict.packages:
                problem = _check_package(packages_dir, tree_fd, token, package)
                if problem is None:
                    audit.packages_checked += 1
                elif problem == "unreachable":
                    audit.packages_unreachable.append(f"{job}: {package['name']}")
                else:
                    audit.violations.append(Violation(commit.id.decode(), "package", f"{job}: {problem}",
                                                      record_path("results", job)))
        if stop_at_first and audit.violations:
            break
        state.advance(commit, verdict)
    return audit


def _check_package(tree: str, tree_fd: int, token: str, package: dict) -> str | None:
    """None when the published (or uploaded) file matches; "unreachable" or a mismatch message.

    The file is All/NAME or incoming/TOKEN/NAME of the tree, opened without following a link
    (files.open_file): a link or anything but a regular file there is not reachable.
    """
    for parts in (("All", package["name"]), ("incoming", token, package["name"])):
        fd = files.open_file(tree_fd, *parts)
        if fd is None:
            continue
        where = os.path.join(tree, *parts)
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(fd).st_size
            if size != package["size"]:
                return f"{where}: {size} bytes, the result says {package['size']}"
            digest = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != package["sha256"]:
            return f"{where}: sha256 {digest.hexdigest()[:12]}..., the result says {package['sha256'][:12]}..."
        return None
    return "unreachable"
