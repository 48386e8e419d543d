"""The workers registry: who may contribute to a queue, and with which SSH key.

`workers/NAME.toml` holds a worker's name and public key (plus owner and architecture for
people). Administrators, listed in queue.toml with their keys, add and revoke workers; a revoked
worker stays listed with `revoked_at`, so commits it signed before the revocation stay
verifiable while anything it signs afterwards is refused (docs/trust.md). Several workers may
share a key: the processes of one host.
"""

from . import records
from .errors import GitqueueError, UnknownWorker
from .layout import check_worker_name, worker_path
from .queue import Change, trailers
from .records import utc

ADMIN = "gitqueue-admin <admin@gitqueue>"


def read_key(text: str, where: str) -> str:
    """The "type base64" part of an OpenSSH public key line (the comment dropped)."""
    parts = text.split()
    if len(parts) < 2:
        raise GitqueueError(f"{where}: not an OpenSSH public key (expected 'TYPE BASE64 [COMMENT]')")
    key = f"{parts[0]} {parts[1]}"
    from .signing import key_blob

    try:
        key_blob(key)
        records.validate("worker", {"name": "x", "key": key})
    except GitqueueError as e:
        raise GitqueueError(f"{where}: unsupported or malformed public key ({e})") from None
    return key


def workers(reader) -> dict[str, dict]:
    """{name: worker record} of every registered worker, revoked ones included."""
    out = {}
    for path, sha in reader.walk_files("workers"):
        rec = records.load_at("worker", reader.store[sha].as_raw_string(), path)
        out[rec["name"]] = rec
    return out


def admins(settings: dict) -> dict[str, str]:
    """{name: key} of the queue's administrators."""
    return {a["name"]: a["key"] for a in settings.get("admins", [])}


def _require_signed(queue, reader) -> None:
    """Refuse to change the registry of an unsigned queue (no administrators in queue.toml).

    No signature is checked on an unsigned queue, so a registry would only seem to protect it:
    workers would sign commits that nothing enforces, and `verify` would judge them later.
    """
    queue.settings(reader)  # QueueNotFound when queue.toml is missing
    if not queue.is_signed(reader):
        raise GitqueueError(f"{queue.url} is unsigned (no administrators in queue.toml): a worker registry would "
                            "not be enforced; create a signed queue with gitqueue init --admin NAME=KEY.pub "
                            "(docs/trust.md)")


def add_worker(queue, name: str, key: str, owner: str = "", arch: str = "") -> dict:
    """Register `name` with public key `key` in one administrative commit.

    Raises:
        GitqueueError: the queue is unsigned, or `name` is already registered (or was revoked).
    """
    check_worker_name(name)
    rec = {"name": name, "key": key, "added_at": utc(queue.clock())}
    if owner:
        rec["owner"] = owner
    if arch:
        rec["arch"] = arch
    records.validate("worker", rec)

    def decide(tip, reader):
        _require_signed(queue, reader)
        existing = reader.read(worker_path(name))
        if existing is not None:
            old = records.load_at("worker", existing, worker_path(name))
            state = "revoked" if old.get("revoked_at") else "registered"
            raise GitqueueError(f"worker {name} is already {state}; choose another name")
        message = f"register worker {name}\n\n" + trailers(
            {"Action": "register", "Worker": name, "Key": _fingerprint(key), "Owner": owner or None})
        return Change({worker_path(name): records.dumps("worker", rec)}, message)

    queue.transact(decide, ADMIN, use_index=False)
    return rec


def revoke_worker(queue, name: str, reason: str = "") -> dict:
    """Revoke `name`: its key signs nothing new from this commit on.

    Raises:
        GitqueueError: the queue is unsigned, or `name` was already revoked.
        UnknownWorker: no worker `name` is registered.
    """
    check_worker_name(name)
    out = {}

    def decide(tip, reader):
        _require_signed(queue, reader)
        data = reader.read(worker_path(name))
        if data is None:
            raise UnknownWorker(f"no registered worker {name}")
        rec = records.load_at("worker", data, worker_path(name))
        if rec.get("revoked_at"):
            raise GitqueueError(f"worker {name} was already revoked at {rec['revoked_at']}")
        rec["revoked_at"] = utc(queue.clock())
        if reason:
            rec["revoked_reason"] = " ".join(reason.split())[:1000]
        out.update(rec)
        message = f"revoke worker {name}{': ' + reason if reason else ''}\n\n" + trailers(
            {"Action": "revoke", "Worker": name, "Reason": reason or None})
        return Change({worker_path(name): records.dumps("worker", rec)}, message)

    queue.transact(decide, ADMIN, use_index=False)
    return out


def allowed_signers(settings: dict, registered: dict[str, dict]) -> str:
    """A git allowed-signers file (gpg.ssh.allowedSignersFile) for the queue's admins and workers.

    A revoked worker's key is valid only before its revocation (`valid-before`), so git still
    shows its earlier commits as good.
    """
    lines = [f"# gitqueue allowed signers: {settings['name']}"]
    for name, key in sorted(admins(settings).items()):
        lines.append(f'{name} namespaces="git" {key}')
    for name, rec in sorted(registered.items()):
        options = 'namespaces="git"'
        if rec.get("revoked_at"):
            stamp = rec["revoked_at"].replace("-", "").replace(":", "").replace("T", "")
            options += f',valid-before="{stamp}"'
        lines.append(f"{name} {options} {rec['key']}")
    return "\n".join(lines) + "\n"


def _fingerprint(key: str) -> str:
    from .signing import fingerprint

    return fingerprint(key)
