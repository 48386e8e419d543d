"""Build phases and their logs: pbulk's order of phases, and which one a failed build failed in.

pbulk's build script writes one log per phase into the package's log directory (`gitqueue
work` gives it as $GITQUEUE_LOGS): pre-clean.log, depends.log, checksum.log, configure.log,
build.log, install.log, package.log, clean.log, deinstall.log, in that order, and stops at the
first that fails. So the phase a build failed in is the latest of those logs by that order; for
other build commands, whose phases gitqueue does not know, the log written last.
"""

import re

from .schema import PHASE_PATTERN

PBULK_PHASES = ("pre-clean", "depends", "checksum", "configure", "build", "install", "package", "clean", "deinstall")
_PHASE = re.compile(PHASE_PATTERN.strip("^$"))
MAX_PHASE = 32


def phase_of(log_name: object) -> str | None:
    """The phase a log file is named after ("configure" for configure.log), or None when its
    name (without .log or .txt) is no phase name."""
    if not isinstance(log_name, str) or not log_name.endswith((".log", ".txt")):
        return None
    stem = log_name.rsplit(".", 1)[0]
    return stem if stem and len(stem) <= MAX_PHASE and _PHASE.fullmatch(stem) else None


def order_key(log_name: str) -> tuple:
    """Sort key of a phase log: pbulk's phases in their order first, then the others by name."""
    phase = phase_of(log_name)
    if phase in PBULK_PHASES:
        return (0, PBULK_PHASES.index(phase), log_name)
    return (1, 0, log_name)


def failed_phase(logs: list[tuple[str, float]]) -> str | None:
    """The phase a failed build failed in, from its phase logs ((name, modification time) pairs):
    the latest of pbulk's phases that has a log, else the phase of the log written last."""
    known = [name for name, _ in logs if phase_of(name) in PBULK_PHASES]
    if known:
        return phase_of(max(known, key=order_key))
    named = [(mtime, name) for name, mtime in logs if phase_of(name)]
    return phase_of(max(named)[1]) if named else None
