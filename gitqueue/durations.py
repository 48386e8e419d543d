"""Durations of earlier builds (a build-time TSV or an earlier queue), to estimate the jobs of a new one."""

import csv
import os

from . import records
from .errors import ImportRefused
from .layout import record_path


def load_times(source: str, open_queue=None) -> dict[str, float]:
    """{PKGNAME or package path: seconds} from a TSV of build times or an earlier queue.

    A TSV (like pkgsrc-build-times.tsv) needs a header with `duration_s` and `pkgpath` and may
    have `history_pkgname`, `scan_pkgname` or `pkgname`, and `outcome` (only successes count).
    Anything else is taken as a queue URL and opened with `open_queue(url)`; its successful
    results with a duration count.
    """
    if os.path.isfile(source):
        return _from_tsv(source)
    if open_queue is None:
        raise ImportRefused(f"{source}: no such file")
    with open_queue(source) as queue:
        return _from_queue(queue)


def _from_tsv(path):
    times: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter="\t")
        fields = set(reader.fieldnames or ())
        if not {"duration_s", "pkgpath"} <= fields:
            raise ImportRefused(f"{path}:1: a build-time TSV needs columns pkgpath and duration_s")
        for line, row in enumerate(reader, 2):
            if row.get("outcome", "success") != "success":
                continue
            try:
                seconds = float(row["duration_s"])
            except (TypeError, ValueError):
                raise ImportRefused(f"{path}:{line}: duration_s {row['duration_s']!r} is not a number") from None
            if seconds <= 0 or seconds != seconds:
                continue
            for key in ("history_pkgname", "scan_pkgname", "pkgname", "pkgpath"):
                if row.get(key):
                    times[row[key]] = seconds
    return times


def _from_queue(queue):
    _, reader = queue.fetch()
    store = queue.remote.object_store
    times: dict[str, float] = {}
    for path, sha in reader.walk_files("results"):
        rec = records.load_at("result", store[sha].as_raw_string(), path)
        if rec["status"] != "success" or not rec.get("duration"):
            continue
        times[rec["job"]] = rec["duration"]
        job_path = record_path("jobs", rec["job"])
        job_data = reader.read(job_path)
        if job_data is not None:
            job = records.load_at("job", job_data, job_path)
            if job.get("pkgpath"):
                times[job["pkgpath"]] = rec["duration"]
    return times


def apply_times(jobs: list[dict], times: dict[str, float]) -> int:
    """Set est_seconds (source: history) of the jobs `times` knows; return how many."""
    matched = 0
    for job in jobs:
        for key in (job["name"], job.get("pkgpath")):
            if key and key in times:
                job["est_seconds"] = round(float(times[key]), 3)
                job["est_source"] = "history"
                matched += 1
                break
    return matched
