"""The build info a build command gets: a job record written back as pbulk's KEY=value lines."""

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitqueue.buildinfo import write
from gitqueue.errors import ImportRefused
from gitqueue.importers import presolve
from gitqueue.records import validate

from helpers import FULL_SCAN, SUBSET


def records_of(text: bytes) -> list[bytes]:
    """The records of a presolve file, each from its PKGNAME= line to the next."""
    starts = [i for i, line in enumerate(text.splitlines(keepends=True)) if line.startswith(b"PKGNAME=")]
    lines = text.splitlines(keepends=True)
    return [b"".join(lines[a:b]) for a, b in zip(starts, starts[1:] + [len(lines)])]


def test_the_sample_scan_is_sent_as_pbulk_sends_it():
    """Each job of pkgsrc's scan, written back, is its record as pbulk's master sends it, byte for byte."""
    text = SUBSET.read_bytes()
    originals = records_of(text)
    jobs = presolve.parse(io.BytesIO(text), "subset")
    assert len(jobs) == len(originals) == 279
    for job, original in zip(jobs, originals):
        assert write(job) == original, job["name"]


@pytest.mark.slow
def test_the_whole_scan_reads_back_to_the_same_jobs():
    import lzma

    text = lzma.decompress(FULL_SCAN.read_bytes())
    jobs = presolve.parse(io.BytesIO(text), "scan")
    built = [job for job in jobs if "prefailed" not in job]
    again = presolve.parse(io.BytesIO(b"".join(write(job) for job in built)), "again")
    assert again == built
    assert sum("all_depends" in job for job in jobs) == 29022
    assert not [job for job in jobs if "scan_depends" in job or "SCAN_DEPENDS" in job.get("build_info", {})]
    assert sum(job.get("usergroup_phase") == "pre-install" for job in jobs) == 8


def test_a_jsonl_job_gets_the_fields_it_has_and_empty_others():
    job = {"name": "gmake-4.4.1", "version": "4.4.1", "deps": ["a-1", "b-2"], "pkgpath": "devel/gmake"}
    assert write(job).decode() == (
        "PKGNAME=gmake-4.4.1\nPKG_LOCATION=devel/gmake\nALL_DEPENDS=\nPKG_SKIP_REASON=\nPKG_FAIL_REASON=\n"
        "NO_BIN_ON_FTP=\nRESTRICTED=\nCATEGORIES=\nMAINTAINER=\nUSE_DESTDIR=\nBOOTSTRAP_PKG=\nUSERGROUP_PHASE=\n"
        "DEPENDS=a-1 b-2\n")


def test_a_line_end_in_a_record_never_starts_another_line():
    job = {"name": "a-1", "version": "1", "deps": [], "restricted": "no\nPKGNAME=evil-1\nDEPENDS=x-1"}
    lines = write(job).decode().splitlines()
    assert [line for line in lines if line.startswith(("PKGNAME=", "DEPENDS="))] == ["PKGNAME=a-1"]
    assert "RESTRICTED=no PKGNAME=evil-1 DEPENDS=x-1" in lines


_name = st.from_regex(r"[a-z][a-z0-9]{0,8}-[0-9][0-9.]{0,4}(nb[0-9])?", fullmatch=True)
_text = st.text(st.characters(max_codepoint=0x2fff, blacklist_categories=("C", "Zl", "Zp")),
                max_size=40)
_word = st.from_regex(r"[A-Za-z0-9_./>=*:\[\]-]{1,20}", fullmatch=True)


@st.composite
def jobs(draw):
    name = draw(_name)
    job = {"name": name, "version": name.rsplit("-", 1)[1], "deps": draw(st.lists(_name, max_size=5, unique=True))}
    job["deps"] = [d for d in job["deps"] if d != name]
    if draw(st.booleans()):
        job["pkgpath"] = draw(st.from_regex(r"[a-z]{1,8}/[a-z0-9][a-z0-9.+-]{0,12}", fullmatch=True))
    # Text the scan writes as it is (spaces around included), or that gitqueue reads (trimmed).
    for field in ("all_depends", "use_destdir", "bootstrap_pkg", "usergroup_phase"):
        value = draw(st.none() | _text)
        if value:
            job[field] = value
    for field in ("categories", "maintainer", "no_bin_on_ftp", "restricted"):
        value = draw(st.none() | _text)
        if value is not None and value.strip():
            job[field] = value.strip()
    variables = draw(st.dictionaries(st.from_regex(r"[A-Z][A-Z_]{0,10}", fullmatch=True), _word, max_size=3))
    if variables:
        job["multi_version"] = variables
    if draw(st.booleans()):
        job["weight"] = draw(st.integers(0, 10**12))
    other = draw(st.dictionaries(st.from_regex(r"X_[A-Z]{1,8}", fullmatch=True), _text.filter(str.strip),
                                 max_size=2))
    if other:
        job["build_info"] = other
    return validate("job", job)


@settings(max_examples=300, deadline=None)
@given(job=jobs())
def test_written_build_info_reads_back_to_the_job(job):
    """The writer and the reader (the presolve importer) agree: what is written reads back the same."""
    try:
        [back] = presolve.parse(io.BytesIO(write(job)), "info")
    except ImportRefused as e:  # the writer wrote something its reader cannot take
        raise AssertionError(f"{e}\n{write(job).decode()}") from None
    assert back == job
