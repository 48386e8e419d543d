"""pkg_summary(5): what a binary package states about itself, and its entry in All/pkg_summary.gz."""

import os
import tarfile

from .files import sha256_file

# +BUILD_INFO variables that pkg_info -X copies into pkg_summary, in the order it lists them
# (pkgtools/pkg_install/files/info/show.c, show_summary); lines are copied in file order.
BUILD_INFO_VARS = ("PKGPATH", "CATEGORIES", "PROVIDES", "REQUIRES", "PKG_OPTIONS", "OPSYS", "OS_VERSION",
                   "MACHINE_ARCH", "LICENSE", "HOMEPAGE", "PKGTOOLS_VERSION", "BUILD_DATE", "PREV_PKGPATH",
                   "SUPERSEDES")
_META_FILES = ("+CONTENTS", "+COMMENT", "+DESC", "+BUILD_INFO", "+SIZE_PKG")
# Bytes read of each + file: a huge +CONTENTS is cut (@name, @pkgdep come first); the others are
# a few lines in real packages and go into pkg_summary.gz, which every client downloads.
_MAX_META = {"+CONTENTS": 64 << 20, "+COMMENT": 4 << 10, "+DESC": 64 << 10, "+BUILD_INFO": 1 << 20,
             "+SIZE_PKG": 64, "+PKG_HASH": 64 << 10}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _read_members(tf, wanted) -> dict:
    """The + files at the head of a package (a signed package's inner one when wrapped)."""
    found = {}
    for member in tf:
        name = member.name[2:] if member.name.startswith("./") else member.name
        if not name.startswith("+"):
            if "+PKG_HASH" in found and "+CONTENTS" not in found and member.isfile():
                # A signed package: +PKG_HASH and a signature, then the package itself.
                inner = tf.extractfile(member)
                with tarfile.open(fileobj=inner, mode="r|*") as nested:
                    return _read_members(nested, wanted)
            break
        if member.isfile() and (name in wanted or name == "+PKG_HASH"):
            f = tf.extractfile(member)
            found[name] = f.read(_MAX_META[name]) if f is not None else b""
    return found


def read_package(source) -> dict | None:
    """The pkg_summary facts a binary package states about itself, or None if it is unreadable.

    `source` is a path or a binary file open at the package's start. Returns
    {"plist": [[KEY, value], ...] (PKGNAME, DEPENDS, CONFLICTS in +CONTENTS order),
     "comment", "size_pkg", "description" (text or None), "build_info": [[KEY, value], ...]}
    """
    where = {"fileobj": source} if hasattr(source, "read") else {"name": source}
    try:
        with tarfile.open(mode="r|*", **where) as tf:
            files = _read_members(tf, _META_FILES)
    except Exception:  # noqa: BLE001 - any damage (truncated, not a tar, bad compression) means unreadable
        return None
    if not any(name in files for name in _META_FILES):
        return None
    plist = []
    for line in _text(files.get("+CONTENTS", b"")).splitlines():
        for directive, key in (("@name ", "PKGNAME"), ("@pkgdep ", "DEPENDS"), ("@pkgcfl ", "CONFLICTS")):
            if line.startswith(directive) and line[len(directive):].strip():
                plist.append([key, line[len(directive):].strip()])
    build_info = []
    for line in _text(files.get("+BUILD_INFO", b"")).splitlines():
        key, sep, value = line.partition("=")
        if sep and key in BUILD_INFO_VARS:
            build_info.append([key, value])

    def text_of(name):
        return _text(files[name]) if name in files else None

    return {"plist": plist, "comment": text_of("+COMMENT"), "size_pkg": text_of("+SIZE_PKG"),
            "description": text_of("+DESC"), "build_info": build_info}


def _as_var(key: str, value: str) -> list[str]:
    """pkg_info's print_string_as_var: one KEY=line per line of `value`, no trailing empty line."""
    lines = value.replace("\r", "").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [f"{key}={line}" for line in lines]


def identity_problem(meta: dict | None, job: dict) -> str | None:
    """Why a package that states `meta` about itself is not a package of `job`, or None.

    A package that names itself (+CONTENTS @name) must name the job. One that names nothing, or
    cannot be read, is not refused here: its entry has only what the queue knows (format_entry).
    """
    wrong = [name for name in _names(meta) if name != job["name"]]
    return f"the package names itself {wrong[0]!r}, not {job['name']}" if wrong else None


def _names(meta: dict | None) -> list[str]:
    """The names a package gives itself (+CONTENTS @name)."""
    return [value for key, value in meta["plist"] if key == "PKGNAME"] if meta else []


def format_entry(meta: dict | None, job: dict, file_name: str, file_size: int, sha256: str | None) -> str:
    """One pkg_summary entry (its lines, each ending in a newline; no blank separator line).

    The package's identity is the job's: PKGNAME, PKGPATH and CATEGORIES come from the job record,
    never from the file a worker uploaded. What the package states about itself (`meta`: DEPENDS,
    CONFLICTS, COMMENT, SIZE_PKG, the other +BUILD_INFO variables, DESCRIPTION) is used only when
    its @name is the job's name.
    """
    names = _names(meta)
    own = meta if names and all(name == job["name"] for name in names) else None
    lines = [f"PKGNAME={job['name']}"]
    if own:
        lines.extend(f"{key}={value}" for key, value in own["plist"] if key != "PKGNAME")
        if own["comment"] is not None:
            lines.extend(_as_var("COMMENT", own["comment"]))
        if own["size_pkg"] is not None:
            lines.extend(_as_var("SIZE_PKG", own["size_pkg"]))
    queue_knows = {"PKGPATH": job.get("pkgpath"),
                   "CATEGORIES": " ".join(job["categories"].split()) if job.get("categories") else None}
    for key, value in own["build_info"] if own else ():
        if key in queue_knows:  # in the package's order, with the queue's value
            value = queue_knows.pop(key)
            if value is None:
                continue
        lines.append(f"{key}={value}")
    lines.extend(f"{key}={value}" for key, value in queue_knows.items() if value)
    lines.append(f"FILE_NAME={file_name}")
    lines.append(f"FILE_SIZE={file_size}")
    if sha256:
        lines.append(f"FILE_CKSUM=SHA256 {sha256}")
    if own and own["description"] is not None:
        lines.extend(_as_var("DESCRIPTION", own["description"]))
    return "".join(line + "\n" for line in lines)


def summary_entry(path: str, job_record: dict, sha256: str | None = None) -> str:
    """The pkg_summary(5) entry of the package file at `path` built for `job_record`.

    Fields and order follow `pkg_info -X`: PKGNAME, DEPENDS and CONFLICTS (from +CONTENTS),
    COMMENT, SIZE_PKG, the +BUILD_INFO variables (PKGPATH, CATEGORIES, PROVIDES, REQUIRES,
    PKG_OPTIONS, OPSYS, OS_VERSION, MACHINE_ARCH, LICENSE, HOMEPAGE, PKGTOOLS_VERSION,
    BUILD_DATE, PREV_PKGPATH, SUPERSEDES), FILE_NAME, FILE_SIZE, then DESCRIPTION (+DESC).
    PKGNAME, PKGPATH and CATEGORIES always come from the job; the rest from the package, when it
    names itself as the job (format_entry). FILE_CKSUM (pkg_summary(5): "a checksum type
    supported by digest(1) and checksum") is added. A package that does not name itself, or is
    unreadable, gets what is known: PKGNAME, PKGPATH, CATEGORIES, FILE_*.
    The entry ends with a newline; entries are separated by one empty line.
    """
    return format_entry(read_package(path), job_record, os.path.basename(path), os.path.getsize(path),
                         sha256 if sha256 is not None else sha256_file(path))


