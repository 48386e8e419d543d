"""JSON Schemas of every queue record; `schema/*.json` in the source tree is generated from these.

Regenerate with `python -m gitqueue.schema schema/` (a test checks that the files match).
"""

import json
import sys

FORMAT_VERSION = 1

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+~-]*$", "maxLength": 200}
_WORKER = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$", "maxLength": 64}
_TOKEN = {"type": "string", "pattern": "^[0-9a-f]{16,64}$"}
_TIME = {"type": "string", "description": "ISO 8601 UTC time as the writer's clock saw it (informational)"}
_TEXT = {"type": "string", "maxLength": 4096}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_KEY = {"type": "string", "maxLength": 2000,
        "pattern": "^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) [A-Za-z0-9+/]+={0,2}$",
        "description": "an OpenSSH public key line without comment: type and base64"}
_FINGERPRINT = {"type": "string", "pattern": "^SHA256:[A-Za-z0-9+/]{43}$",
                "description": "SHA256 fingerprint of the key that signed the commit writing this record"}


_PLATFORM = {
    "type": "object",
    "description": "the worker as it described itself: detected, or set in its config file",
    "properties": {
        "arch": {"type": "string", "maxLength": 64},
        "os_release": {"type": "string", "maxLength": 200},
        "pkgsrc_branch": {"type": "string", "maxLength": 200},
        "pkgsrc_revision": {"type": "string", "maxLength": 200},
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


SCHEMAS = {
    "queue": _record(
        "queue",
        "queue.toml: the settings of one queue (one bulk build).",
        {
            "format_version": {"type": "integer", "const": FORMAT_VERSION},
            "name": {"type": "string", "maxLength": 200},
            "arch": {"type": "string", "maxLength": 64},
            "os_release": {"type": "string", "maxLength": 200},
            "pkgsrc_branch": {"type": "string", "maxLength": 200},
            "lease_ttl": {"type": "integer", "minimum": 1},
            "packages_url": {"type": "string", "maxLength": 1000,
                             "description": "the shared package tree: a path or an rsync target host:/path"},
            "pkgsrc_revision": {"type": "string", "maxLength": 200},
            "created": _TIME,
            "admins": {
                "type": "array",
                "description": "who may sign administrative commits; a queue with admins is signed: "
                               "every commit must carry a valid signature (docs/trust.md)",
                "items": {"type": "object", "properties": {"name": _WORKER, "key": _KEY},
                          "required": ["name", "key"], "additionalProperties": False},
            },
            "max_record_bytes": {"type": "integer", "minimum": 1024,
                                 "description": "the largest file a commit may add (default 65536)"},
        },
        ["format_version", "name", "lease_ttl"],
    ),
    "job": _record(
        "job",
        "jobs/XX/NAME.toml: one package to build and what it needs.",
        {
            "name": _NAME,
            "version": {"type": "string", "maxLength": 200},
            "pkgpath": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+-]*/[A-Za-z0-9][A-Za-z0-9._+-]*$"},
            "deps": {"type": "array", "items": _NAME},
            "est_seconds": {"type": "number", "minimum": 0},
            "est_source": {"type": "string", "enum": ["history"],
                           "description": "where est_seconds came from when not from the input graph"},
            "priority": {"type": "number"},
            "weight": {"type": "integer", "minimum": 0},
            "prefailed": _TEXT,
            "multi_version": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 200}},
            "maintainer": {"type": "string", "maxLength": 400},
            "categories": {"type": "string", "maxLength": 400},
            "no_bin_on_ftp": _TEXT,
            "restricted": _TEXT,
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
            "host": {"type": "string", "maxLength": 200},
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
            "version": {"type": "string", "maxLength": 200},
            "status": {"type": "string", "enum": ["success", "failure"]},
            "worker": _WORKER,
            "token": _TOKEN,
            "duration": {"type": "number", "minimum": 0},
            "finished_at": _TIME,
            "late": {"type": "boolean"},
            "platform": _PLATFORM,
            "log": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 400},
                    "size": {"type": "integer", "minimum": 0},
                    "sha256": _SHA256,
                },
                "required": ["size", "sha256"],
                "additionalProperties": False,
            },
            "log_tail": _TEXT,
            "packages": {
                "type": "array",
                "description": "binary packages uploaded to incoming/TOKEN/ of the package tree",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+~-]*$", "maxLength": 250},
                        "size": {"type": "integer", "minimum": 0},
                        "sha256": _SHA256,
                    },
                    "required": ["name", "size", "sha256"],
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
                    "properties": {"worker": _WORKER, "reason": _TEXT, "at": _TIME},
                    "required": ["worker", "reason"],
                    "additionalProperties": False,
                },
            },
        },
        ["job", "declined"],
    ),
    "priority": _record(
        "priority",
        "priority.toml: packages (patterns) built ahead of the rest, with everything they need.",
        {"packages": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9*?\\[][A-Za-z0-9._+~*?\\[\\]/-]*$",
                                                 "maxLength": 200}}},
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
                        "pattern": {"type": "string", "pattern": "^[A-Za-z0-9*?\\[][A-Za-z0-9._+~*?\\[\\]/-]*$",
                                    "maxLength": 200},
                        "arch": {"type": "string", "maxLength": 64,
                                 "description": "architecture it applies to; empty means every one"},
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
            "host": {"type": "string", "maxLength": 200},
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
            "owner": {"type": "string", "maxLength": 200},
            "arch": {"type": "string", "maxLength": 64},
            "added_at": _TIME,
            "revoked_at": _TIME,
            "revoked_reason": {"type": "string", "maxLength": 1000},
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
