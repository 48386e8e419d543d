"""JSON Schemas of every queue record; `schema/*.json` in the source tree is generated from these.

Regenerate with `python -m gitqueue.schema schema/` (a test checks that the files match).
"""

import json
import sys

FORMAT_VERSION = 1

# Every string a record holds is bounded, and none may hold control characters: records are
# worker-written text that reaches terminals, mail and web pages (docs/trust.md). _LINE is one
# line; _TEXT may also hold newlines and tabs (log tails).
_UNICODE_CONTROLS = "\\u007f-\\u009f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069"
_NO_CONTROLS = "^[^\\u0000-\\u001f" + _UNICODE_CONTROLS + "]*$"
_NO_CONTROLS_BUT_NEWLINES = "^[^\\u0000-\\u0008\\u000b-\\u001f" + _UNICODE_CONTROLS + "]*$"


def _line(max_length: int, **extra) -> dict:
    return {"type": "string", "maxLength": max_length, "pattern": _NO_CONTROLS, **extra}


_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+~-]*$", "maxLength": 200}
_WORKER = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$", "maxLength": 64}
_TOKEN = {"type": "string", "pattern": "^[0-9a-f]{16,64}$"}
_TIME = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$", "maxLength": 20,
         "description": "UTC time (YYYY-MM-DDTHH:MM:SSZ) as the writer's clock saw it (informational)"}
_TEXT = {"type": "string", "maxLength": 4096, "pattern": _NO_CONTROLS_BUT_NEWLINES}
_REASON = _line(1000)
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
# A file a worker uploads and names in a result: published under this name (All/NAME, logs/JOB/NAME)
# and shown in reports, so it is one plain file name. Logs are text: .log or .txt only, so that no
# web server serves one as a page (the report links them).
FILE_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._+~-]*$"
LOG_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._+~-]*[.](log|txt)$"
_FILE = {"type": "string", "pattern": FILE_NAME_PATTERN, "maxLength": 250}
_LOG_FILE = {"type": "string", "pattern": LOG_NAME_PATTERN, "maxLength": 128}
# A build phase (pbulk's: pre-clean, depends, checksum, configure, build, install, package, clean,
# deinstall): the name of its log without .log or .txt, so one plain word.
PHASE_PATTERN = "^[a-z0-9][a-z0-9_-]*$"
_PHASE = {"type": "string", "pattern": PHASE_PATTERN, "maxLength": 32}
MAX_PHASE_LOGS = 32
MAX_INSTALLED = 512
_KEY = {"type": "string", "maxLength": 2000,
        "pattern": "^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521)"
                   " [A-Za-z0-9+/]+={0,2}$",
        "description": "an OpenSSH public key line without comment: type and base64"}
_FINGERPRINT = {"type": "string", "pattern": "^SHA256:[A-Za-z0-9+/]{43}$",
                "description": "SHA256 fingerprint of the key that signed the commit writing this record"}


_PLATFORM = {
    "type": "object",
    "description": "the worker as it described itself: detected, or set in its config file",
    "properties": {
        "arch": _line(64),
        "os_release": _line(200),
        "pkgsrc_branch": _line(200),
        "pkgsrc_revision": _line(200),
    },
    "additionalProperties": False,
}


def _record(title, description, properties, required):
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://gitqueue.invalid/schema/{title}.json",
        "title": title,
        "description": description,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_PATTERN = {"type": "string", "pattern": "^[A-Za-z0-9*?\\[][A-Za-z0-9._+~*?\\[\\]/-]*$", "maxLength": 200}

SCHEMAS = {
    "queue": _record(
        "queue",
        "queue.toml: the settings of one queue (one bulk build).",
        {
            "format_version": {"type": "integer", "const": FORMAT_VERSION},
            "name": _line(200),
            "arch": _line(64),
            "os_release": _line(200),
            "pkgsrc_branch": _line(200),
            "lease_ttl": {"type": "integer", "minimum": 1},
            "packages_url": _line(1000, description="the shared package tree: a path or an rsync target host:/path"),
            "pkgsrc_revision": _line(200),
            "created": _TIME,
            "admins": {
                "type": "array",
                "maxItems": 64,
                "description": "who may sign administrative commits; a queue with admins is signed: "
                               "every commit must carry a valid signature (docs/trust.md)",
                "items": {"type": "object", "properties": {"name": _WORKER, "key": _KEY},
                          "required": ["name", "key"], "additionalProperties": False},
            },
            "max_record_bytes": {"type": "integer", "minimum": 1024,
                                 "description": "the largest file a commit may add (default 65536)"},
            "max_leases": {"type": "integer", "minimum": 1,
                           "description": "live leases one worker may hold at once (default 4)"},
            "package_files": {
                "type": "array",
                "maxItems": 16,
                "description": "the file names a success result may name for its job, as shell patterns where "
                               "{name} is the job's name, {base} its name without the version and {version} "
                               "its version (default [\"{name}.tgz\"])",
                "items": {"type": "string", "maxLength": 200,
                          # A wildcard may come first (*_{version}_*.deb: Debian's binary packages are
                          # not named after their source): a file name still starts with a letter or digit.
                          "pattern": "^[A-Za-z0-9{*?\\[][A-Za-z0-9{}*?\\[\\]._+~-]*$"},
            },
            "upload_quota": {"type": "integer", "minimum": 0,
                             "description": "bytes one worker may hold in the upload areas of its live leases "
                                            "(gitqueue serve; default 4 GiB)"},
            "min_heartbeat_seconds": {"type": "number", "minimum": 0,
                                      "description": "the least time between two heartbeats of one worker that the "
                                                     "server accepts (default lease_ttl / 20, at most 60)"},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100,
                             "description": "attempts of a job that end in a transient failure before it becomes a "
                                            "failure (default 3)"},
        },
        ["format_version", "name", "lease_ttl"],
    ),
    "job": _record(
        "job",
        "jobs/XX/NAME.toml: one package to build and what it needs.",
        {
            "name": _NAME,
            "version": _line(200),
            "pkgpath": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+-]*/[A-Za-z0-9][A-Za-z0-9._+-]*$",
                        "maxLength": 400},
            "deps": {"type": "array", "items": _NAME},
            "est_seconds": {"type": "number", "minimum": 0},
            "est_source": {"type": "string", "enum": ["history"],
                           "description": "where est_seconds came from when not from the input graph"},
            "priority": {"type": "number"},
            "weight": {"type": "integer", "minimum": 0},
            "prefailed": _TEXT,
            "multi_version": {"type": "object", "maxProperties": 16,
                              "propertyNames": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                                                "maxLength": 64},
                              "additionalProperties": _line(200)},
            "maintainer": _line(400),
            "categories": _line(400),
            "no_bin_on_ftp": _TEXT,
            "restricted": _TEXT,
            # The rest of pbulk's build info (pbulk-build(1)), kept as the scan wrote it so that a
            # build command gets every line pbulk's master would send (buildinfo.py).
            "all_depends": _line(32768, description="every dependency pattern of the package, as the scan "
                                                    "found them (pattern:../../dir ...)"),
            "use_destdir": _line(64, description="the DESTDIR method the package supports (user-destdir)"),
            "bootstrap_pkg": _line(64, description="set when the package is part of pkgsrc's bootstrap"),
            "usergroup_phase": _line(64, description="the phase that needs the package's users and groups"),
            "build_info": {"type": "object", "maxProperties": 32,
                           "description": "other variables of the scan, sent to the build command as they are",
                           "propertyNames": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.]*$",
                                             "maxLength": 64},
                           "additionalProperties": _line(4096)},
        },
        ["name", "version", "deps"],
    ),
    "lease": _record(
        "lease",
        "leases/XX/NAME.toml: a worker holds this job; present only while the lease is live.",
        {
            "job": _NAME,
            "worker": _WORKER,
            "token": _TOKEN,
            "claimed_at": _TIME,
            "host": _line(200),
            "platform": _PLATFORM,
            # the spool request this lease answers: a retried request finds its lease
            "request": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            "signer": _FINGERPRINT,
        },
        ["job", "worker", "token"],
    ),
    "result": _record(
        "result",
        "results/XX/NAME.toml: the one final result of a job.",
        {
            "job": _NAME,
            "version": _line(200),
            "status": {"type": "string", "enum": ["success", "failure"]},
            "worker": _WORKER,
            "token": _TOKEN,
            "duration": {"type": "number", "minimum": 0},
            "finished_at": _TIME,
            "late": {"type": "boolean"},
            "platform": _PLATFORM,
            "log": {
                "type": "object",
                "description": "the build log, uploaded to incoming/TOKEN/NAME of the package tree",
                "properties": {
                    "name": _LOG_FILE,
                    "size": {"type": "integer", "minimum": 0},
                    "sha256": _SHA256,
                },
                "required": ["size", "sha256"],
                "additionalProperties": False,
            },
            "log_tail": _TEXT,
            "packages": {
                "type": "array",
                "maxItems": 64,
                "description": "binary packages uploaded to incoming/TOKEN/ of the package tree; only names "
                               "the queue's package_files allow for this job",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": _FILE,
                        "size": {"type": "integer", "minimum": 0},
                        "sha256": _SHA256,
                    },
                    "required": ["name", "size", "sha256"],
                    "additionalProperties": False,
                },
            },
            "transient": {"type": "boolean",
                          "description": "a failure after max_attempts attempts that each failed for a reason not the "
                                         "package's (the build command said so: exit 75 or report --transient)"},
            "reused": {"type": "object",
                       "description": "an up-to-date result an administrator's import wrote from an earlier success "
                                      "(import --previous): the queue it came from and that result's token",
                       "properties": {"queue": _line(1000), "token": _TOKEN},
                       "required": ["queue", "token"], "additionalProperties": False},
            "up_to_date": {"type": "boolean",
                           "description": "a success whose build command found the existing package up to date: "
                                          "packages name that file, uploaded only if the tree's All/ lacked it"},
            "failed_phase": {**_PHASE, "description": "the build phase that failed: the newest phase log, in "
                                                      "pbulk's order of phases"},
            "phase_logs": {
                "type": "array",
                "maxItems": MAX_PHASE_LOGS,
                "description": "the logs the build command wrote, one per phase (pre-clean.log, configure.log, "
                               "...), uploaded to incoming/TOKEN/NAME of the package tree",
                "items": {
                    "type": "object",
                    "properties": {"name": _LOG_FILE, "size": {"type": "integer", "minimum": 0},
                                   "sha256": _SHA256},
                    "required": ["name", "size", "sha256"],
                    "additionalProperties": False,
                },
            },
            "installed": {
                "type": "array",
                "maxItems": MAX_INSTALLED,
                "description": "the packages of the direct dependencies, which the build installed (their "
                               "results list theirs): what the binary was built against",
                "items": {
                    "type": "object",
                    "properties": {"name": _FILE, "sha256": _SHA256},
                    "required": ["name", "sha256"],
                    "additionalProperties": False,
                },
            },
            "signer": _FINGERPRINT,
        },
        ["job", "status", "worker", "token"],
    ),
    "decline": _record(
        "decline",
        "declines/XX/NAME.toml: workers that gave this job back; it is not offered to them again.",
        {
            "job": _NAME,
            "declined": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"worker": _WORKER, "reason": _REASON, "at": _TIME,
                                   "transient": {"type": "boolean",
                                                 "description": "a transient failure: the job is not the worker's "
                                                                "fault and goes back to the queue after a backoff; "
                                                                "the worker is not excluded"},
                                   "token": {**_TOKEN, "description": "the token of the lease given back (a "
                                                                      "retried report of a transient failure finds "
                                                                      "its outcome by it)"}},
                    "required": ["worker", "reason"],
                    "additionalProperties": False,
                },
            },
        },
        ["job", "declined"],
    ),
    "lapsed": _record(
        "lapsed",
        "lapsed/XX/NAME.toml: the leases on this job that were reclaimed from silent workers. Only such a "
        "worker may still report a (late) success for the job, under the token listed here.",
        {
            "job": _NAME,
            "lapsed": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"worker": _WORKER, "token": _TOKEN, "at": _TIME, "reason": _REASON},
                    "required": ["worker", "token"],
                    "additionalProperties": False,
                },
            },
        },
        ["job", "lapsed"],
    ),
    "retry": _record(
        "retry",
        "retries/XX/NAME.toml: the results of this job an administrator set aside (retry, import --update), "
        "oldest first; each old result stays in the history. Appended to only.",
        {
            "job": _NAME,
            "retried": {
                "type": "array",
                "maxItems": 1000,
                "items": {
                    "type": "object",
                    "properties": {
                        "action": {"type": "string", "enum": ["retry", "update"]},
                        "reason": _REASON,
                        "at": _TIME,
                        "status": {"type": "string", "enum": ["success", "failure"],
                                   "description": "the status of the result set aside, if there was one"},
                        "worker": _WORKER,
                        "token": {**_TOKEN, "description": "the token of the result set aside"},
                        "version": _line(200),
                        "declines": {"type": "integer", "minimum": 0,
                                     "description": "entries of the job's declines record at the time: transient "
                                                    "failures before them no longer count"},
                        "fenced": {"type": "array", "maxItems": 1000, "items": _TOKEN,
                                   "description": "lease tokens (live or reclaimed) whose result is no longer "
                                                  "accepted, not even as late"},
                    },
                    "required": ["action", "reason", "declines"],
                    "additionalProperties": False,
                },
            },
        },
        ["job", "retried"],
    ),
    "priority": _record(
        "priority",
        "priority.toml: packages (patterns) built ahead of the rest, with everything they need.",
        {"packages": {"type": "array", "items": _PATTERN}},
        ["packages"],
    ),
    "noway": _record(
        "noway",
        "noway.toml: packages (patterns) that must not be built on an architecture, and why.",
        {
            "entries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "pattern": _PATTERN,
                        "arch": _line(64, description="architecture it applies to; empty means every one"),
                        "reason": _TEXT,
                    },
                    "required": ["pattern", "arch", "reason"],
                    "additionalProperties": False,
                },
            }
        },
        ["entries"],
    ),
    "heartbeat": _record(
        "heartbeat",
        "heartbeats/WORKER.toml: rewritten by each claim, heartbeat, report and release of that worker.",
        {
            "worker": _WORKER,
            "seq": {"type": "integer", "minimum": 0},
            "at": _TIME,
            "host": _line(200),
        },
        ["worker", "seq"],
    ),
    "worker": _record(
        "worker",
        "workers/NAME.toml: a registered worker and the SSH key that signs its commits; several "
        "workers (the processes of one host) may share a key. Revoked workers stay listed.",
        {
            "name": _WORKER,
            "key": _KEY,
            "owner": _line(200),
            "arch": _line(64),
            "added_at": _TIME,
            "revoked_at": _TIME,
            "revoked_reason": _REASON,
        },
        ["name", "key"],
    ),
}


def write_all(directory: str) -> list[str]:
    """Write every schema as DIRECTORY/NAME.json; return the paths written."""
    import os

    paths = []
    for name, schema in SCHEMAS.items():
        path = os.path.join(directory, f"{name}.json")
        with open(path, "w") as f:
            json.dump(schema, f, indent=2, sort_keys=False)
            f.write("\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_all(sys.argv[1] if len(sys.argv) > 1 else "schema"):
        print(p)
