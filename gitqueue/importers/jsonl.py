"""Parser of JSONL job graphs: one JSON object per line, blank lines ignored.

{"name": "a-1.0", "version": "1.0", "deps": ["b-2.0"], "est_seconds": 30, "priority": 1,
 "pkgpath": "cat/a", "prefailed": "why it is not built"}; the last four keys are optional.
docs/import.md is the users' description: keep it in step.
"""

import json
import math
from collections.abc import Iterable
from typing import Any

from ..errors import ImportRefused
from . import check_name, quote, validated_job

KEYS = ("name", "version", "deps", "est_seconds", "priority", "pkgpath", "prefailed")
REQUIRED = ("name", "version", "deps")
_INT64 = 2**63


def parse(lines: Iterable[bytes], source: str) -> list[dict]:
    """Parse JSONL `lines` (bytes, as read from `source`) into validated jobs, in file order."""
    jobs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        job = _job(_object(line, where, lineno == 1), where)
        jobs.append(validated_job(job, where))
    return jobs


def _object(line: bytes, where: str, first: bool) -> dict:
    """Decode one line as a JSON object."""
    try:
        # Without the line end, an error at the end of the line gets this line's column.
        text = line.decode("utf-8-sig" if first else "utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ImportRefused(f"{where}: not UTF-8 text") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ImportRefused(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
    except ValueError as e:  # NaN/Infinity, or an integer too long to convert
        raise ImportRefused(f"{where}: not valid JSON: {e}") from None
    except RecursionError:
        raise ImportRefused(f"{where}: not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ImportRefused(f"{where}: expected a JSON object, got {_kind(value)}")
    return value


def _job(obj: dict, where: str) -> dict:
    """Check the keys and types of one decoded object; return it as a job dict."""
    for key in obj:
        if key not in KEYS:
            raise ImportRefused(f"{where}: unknown key {quote(key)} (allowed: {', '.join(KEYS)})")
    for key in REQUIRED:
        if key not in obj:
            raise ImportRefused(f"{where}: missing key {key!r}")
    name = obj["name"]
    if not isinstance(name, str):
        raise ImportRefused(f"{where}: 'name' must be a string, got {_kind(name)}")
    check_name(name, where)
    deps = obj["deps"]
    if not isinstance(deps, list):
        raise ImportRefused(f"{where}: 'deps' must be a list of job names, got {_kind(deps)}")
    for dep in deps:
        if not isinstance(dep, str):
            raise ImportRefused(f"{where}: 'deps' must be a list of job names, holds {_kind(dep)}")
        check_name(dep, where)
    job: dict[str, Any] = {"name": name, "version": _text(obj, "version", where), "deps": list(dict.fromkeys(deps))}
    for key in ("est_seconds", "priority"):
        if key in obj:
            job[key] = _number(obj, key, where)
    if "est_seconds" in job and job["est_seconds"] < 0:
        raise ImportRefused(f"{where}: 'est_seconds' must not be negative, got {job['est_seconds']!r}")
    for key in ("pkgpath", "prefailed"):
        if key in obj:
            job[key] = _text(obj, key, where, printable=key != "prefailed")
    return job


def _text(obj: dict, key: str, where: str, printable: bool = True) -> str:
    """obj[key] if it is a string that can be stored (and, if asked, printed on one line)."""
    value = obj[key]
    if not isinstance(value, str):
        raise ImportRefused(f"{where}: {key!r} must be a string, got {_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ImportRefused(f"{where}: {key!r} holds an unpaired surrogate") from None
    # A reason may span lines; nothing may hold other control characters (records refuse them).
    if not (value.isprintable() if printable else value.replace("\n", "").replace("\t", "").isprintable()):
        raise ImportRefused(f"{where}: {key!r} holds control characters: {quote(value)}")
    return value


def _number(obj: dict, key: str, where: str) -> int | float:
    """obj[key] if it is a finite number that TOML can store."""
    value = obj[key]
    ok = (isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64) or (
        isinstance(value, float) and math.isfinite(value)
    )
    if not ok:
        raise ImportRefused(f"{where}: {key!r} must be a finite number, got {_kind(value)} {quote(value)}")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number gitqueue accepts")


def _kind(value) -> str:
    """The JSON name of a decoded value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
