"""Parser of pbulk presolve output (pkgsrc mk/pbulk/pbulk-index.mk, resolved by pbulk).

A record starts at PKGNAME= and runs to the next one; DEPENDS= holds the resolved PKGNAMEs.
Every field of a record but SCAN_DEPENDS is kept in its job (buildinfo.py writes them back for the
build command).
"""

import re
from collections.abc import Iterable

from ..errors import ImportRefused
from . import check_name, quote, show, validated_job

# Every field of a record but SCAN_DEPENDS reaches its job (the build command gets them back:
# buildinfo.py).
# These are read into fields of their own; any other variable goes into the job's build_info.
_WANTED = frozenset(
    (
        b"PKG_LOCATION",
        b"PKG_SKIP_REASON",
        b"PKG_FAIL_REASON",
        b"NO_BIN_ON_FTP",
        b"RESTRICTED",
        b"CATEGORIES",
        b"MAINTAINER",
        b"MULTI_VERSION",
        b"DEPENDS",
        b"PBULK_WEIGHT",
        b"ALL_DEPENDS",
        b"USE_DESTDIR",
        b"BOOTSTRAP_PKG",
        b"USERGROUP_PHASE",
    )
)
# Left out: SCAN_DEPENDS, the files each package's scan read, is 86% of a scan's bytes (4.8 KB a
# package: 162 MB of job records for pkgsrc's 29k instead of 23 MB, and five times the time to
# read them all, as every worker's index does), and no build script reads it. It is skipped
# without being decoded.
_SKIPPED = frozenset((b"SCAN_DEPENDS",))
_VARIABLE = re.compile(rb"[A-Za-z_][A-Za-z0-9_.]*")
_WEIGHT = re.compile(r"[0-9]{1,18}")
_QUOTED = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*')
# The keys gitqueue reads itself; the others are kept as the scan wrote them (buildinfo.py).
_READ = frozenset((b"PKGNAME", b"PKG_LOCATION", b"PKG_SKIP_REASON", b"PKG_FAIL_REASON", b"NO_BIN_ON_FTP",
                   b"RESTRICTED", b"CATEGORIES", b"MAINTAINER", b"MULTI_VERSION", b"DEPENDS", b"PBULK_WEIGHT"))
_OPTIONAL_TEXT = (
    (b"CATEGORIES", "categories"),
    (b"MAINTAINER", "maintainer"),
    (b"NO_BIN_ON_FTP", "no_bin_on_ftp"),
    (b"RESTRICTED", "restricted"),
    (b"ALL_DEPENDS", "all_depends"),
    (b"USE_DESTDIR", "use_destdir"),
    (b"BOOTSTRAP_PKG", "bootstrap_pkg"),
    (b"USERGROUP_PHASE", "usergroup_phase"),
)


def parse(lines: Iterable[bytes], source: str) -> list[dict]:
    """Parse presolve `lines` (bytes, as read from `source`) into validated jobs, in file order."""
    jobs = []
    record: dict[bytes, tuple[str, int]] | None = None  # key -> (text, line number) of the record being read
    for lineno, line in enumerate(lines, 1):
        eq = line.find(b"=")
        if eq < 0:
            raise ImportRefused(f"{source}:{lineno}: not a KEY=value line: {show(line)}")
        key = line[:eq]
        if key == b"PKGNAME":
            if record is not None:
                jobs.append(_job(record, source))
            record = {}
        elif record is None:
            raise ImportRefused(
                f"{source}:{lineno}: expected PKGNAME= to start a record, got {show(line)}"
            )
        elif key in _SKIPPED:
            continue
        elif key not in _WANTED and not _VARIABLE.fullmatch(key):
            raise ImportRefused(f"{source}:{lineno}: not a KEY=value line: {show(line)}")
        elif key in record:
            name = record[b"PKGNAME"][0]
            raise ImportRefused(f"{source}:{lineno}: second {key.decode()}= in the record of {name}")
        try:
            value = line[eq + 1 :].decode("utf-8").rstrip("\r\n")
            if key in _READ:
                value = value.strip()
        except UnicodeDecodeError:
            raise ImportRefused(f"{source}:{lineno}: not UTF-8 text: {show(line)}") from None
        if key == b"PKGNAME":
            check_name(value, f"{source}:{lineno}")
        record[key] = (value, lineno)
    if record is not None:
        jobs.append(_job(record, source))
    return jobs


def _job(record: dict, source: str) -> dict:
    """Turn one record's fields into a validated job dict."""
    name, start = record[b"PKGNAME"]
    where = f"{source}:{start}"
    base, dash, version = name.rpartition("-")
    if not (dash and base and version):
        raise ImportRefused(f"{where}: PKGNAME {quote(name)} has no version (expected NAME-VERSION)")
    job = {"name": name, "version": version, "deps": []}

    value, lineno = record.get(b"DEPENDS", ("", 0))
    if value:
        deps = value.split()
        for dep in deps:
            check_name(dep, f"{source}:{lineno}")
        job["deps"] = list(dict.fromkeys(deps))

    value = record.get(b"PKG_LOCATION", ("", 0))[0]
    if value:
        job["pkgpath"] = value

    reasons = []
    for key, label in ((b"PKG_SKIP_REASON", "skip"), (b"PKG_FAIL_REASON", "fail")):
        value = record.get(key, ("", 0))[0]
        if value:
            reasons.append(f"{label}: {_unquote(value)}")
    if reasons:
        job["prefailed"] = "; ".join(reasons)

    value, lineno = record.get(b"MULTI_VERSION", ("", 0))
    if value:
        variables = {}
        for pair in value.split():
            var, eq, setting = pair.partition("=")
            if not (eq and var):
                raise ImportRefused(
                    f"{source}:{lineno}: MULTI_VERSION entry {quote(pair)} is not VAR=value"
                )
            variables[var] = setting
        job["multi_version"] = variables

    value, lineno = record.get(b"PBULK_WEIGHT", ("", 0))
    if value:
        if not _WEIGHT.fullmatch(value):
            raise ImportRefused(f"{source}:{lineno}: PBULK_WEIGHT {quote(value)} is not a whole number")
        job["weight"] = int(value)

    for key, field in _OPTIONAL_TEXT:
        value = record.get(key, ("", 0))[0]
        if value:  # a field kept as the scan wrote it may be white space: it is sent back so
            job[field] = value
    other = {key.decode(): value for key, (value, _) in record.items()
             if key != b"PKGNAME" and key not in _WANTED and value}
    if other:
        job["build_info"] = other
    return validated_job(job, where)


def _unquote(reason: str) -> str:
    """pkgsrc writes reasons as "quoted" "strings"; return their text, else `reason` as is."""
    parts, pos = [], 0
    while pos < len(reason):
        m = _QUOTED.match(reason, pos)
        if m is None:
            break
        parts.append(re.sub(r"\\(.)", r"\1", m.group(1)))
        pos = m.end()
    if parts and pos == len(reason):
        return " ".join(parts)
    # pbulk-resolve writes "could not resolve dependency "pattern"" without escaping.
    if len(reason) >= 2 and reason[0] == reason[-1] == '"':
        return reason[1:-1]
    return reason
