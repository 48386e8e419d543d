"""A job record as pbulk's build info: the KEY=value lines pbulk's master sends its build script.

pbulk-build(1) gives its build script (pkgtools/pbulk's `pkg-build`) one package as the lines of
its record in the resolved scan, PKGNAME= first, on standard input. `gitqueue work` gives the
build command the same lines (on standard input and in the file $GITQUEUE_BUILD_INFO), so that
pbulk's own script is a valid build command as it is. `importers/presolve.py` is the reader: a
job imported from a scan and written back here reads back to the same job.

The lines are in the order pbulk-resolve writes them; the fields a job lacks (a JSONL graph's
jobs have no scan) are written empty, as the scan writes an empty field. SCAN_DEPENDS, the
files the scan read, is not kept by the importer (no build script reads it), so not sent. A job is never built
while prefailed, so PKG_SKIP_REASON and PKG_FAIL_REASON are always empty here.
"""

# (build info key, job record field) in pbulk-resolve's order, DEPENDS last.
_TEXT_FIELDS = (
    ("PKG_LOCATION", "pkgpath"),
    ("ALL_DEPENDS", "all_depends"),
    ("PKG_SKIP_REASON", None),
    ("PKG_FAIL_REASON", None),
    ("NO_BIN_ON_FTP", "no_bin_on_ftp"),
    ("RESTRICTED", "restricted"),
    ("CATEGORIES", "categories"),
    ("MAINTAINER", "maintainer"),
    ("USE_DESTDIR", "use_destdir"),
    ("BOOTSTRAP_PKG", "bootstrap_pkg"),
    ("USERGROUP_PHASE", "usergroup_phase"),
)
KEYS = ("PKGNAME", *(key for key, _ in _TEXT_FIELDS), "SCAN_DEPENDS", "PBULK_WEIGHT", "MULTI_VERSION", "DEPENDS")


def _one_line(value) -> str:
    """`value` as text on one line: a line end in a record's text (a reason may have one) would
    start another KEY=value line."""
    return " ".join(str(value).splitlines())


def write(job: dict) -> bytes:
    """The build info of the job record `job`: KEY=value lines, each ending in a newline."""
    lines = [f"PKGNAME={_one_line(job['name'])}"]
    for key, field in _TEXT_FIELDS:
        lines.append(f"{key}={_one_line(job.get(field, '')) if field else ''}")
    for key, value in sorted((job.get("build_info") or {}).items()):
        if key not in KEYS:
            lines.append(f"{_one_line(key)}={_one_line(value)}")
    if job.get("weight") is not None:
        lines.append(f"PBULK_WEIGHT={job['weight']}")
    variables = job.get("multi_version") or {}
    if variables:
        # As pkgsrc's pbulk-index writes it: a space, then VAR=value pairs.
        lines.append("MULTI_VERSION= " + " ".join(f"{_one_line(k)}={_one_line(v)}" for k, v in variables.items()))
    if job.get("deps"):  # as pbulk-resolve leaves it out for a package without dependencies
        lines.append("DEPENDS=" + " ".join(job["deps"]))
    return "".join(line + "\n" for line in lines).encode("utf-8")
