"""SSH signatures on commits in git's own format (gpg.format=ssh): sign, parse and verify.

A signed commit carries a `gpgsig` header holding an armored SSHSIG blob (OpenSSH's
PROTOCOL.sshsig) made in the namespace "git" over the commit without that header, exactly as
`git commit -S` with gpg.format=ssh writes it, so `git verify-commit` and
`git log --show-signature` with gpg.ssh.allowedSignersFile check what we sign and we check what
git signs.

Signing uses `ssh-keygen -Y sign` for a key file, or talks to ssh-agent directly over its socket.
Verification parses the envelope here (strictly: commits come from other machines), then checks
the signature with the `cryptography` package when it is importable, else with
`ssh-keygen -Y verify`.

Only the standard library is imported at module level: workers start this on every claim.
subprocess, socket, tempfile and cryptography are imported where they are used.
"""

import base64
import hashlib
import re
import struct
from functools import cache

from .errors import GitqueueError

NAMESPACE = "git"
HASH_ALGORITHM = "sha512"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
# ssh-keygen's sshbuf_dtob64() wraps at 70 columns (not PEM's 64 nor MIME's 76).
ARMOR_WIDTH = 70
MAX_ARMOR = 64 * 1024  # a 16384-bit RSA signature with its key armors to under 6 KiB
TIMEOUT = 60.0

_MAGIC = b"SSHSIG"
_VERSION = 1
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_RSA_SIGNATURES = {"rsa-sha2-512": "sha512", "rsa-sha2-256": "sha256"}
_CURVES = {  # key type: (curve name in the key, coordinate bytes, hash of the signature)
    "ecdsa-sha2-nistp256": ("nistp256", 32, "sha256"),
    "ecdsa-sha2-nistp384": ("nistp384", 48, "sha384"),
    "ecdsa-sha2-nistp521": ("nistp521", 66, "sha512"),
}
_RSA_MIN_BITS = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE
_RSA_MAX_BITS = 16384  # OpenSSH's SSHBUF_MAX_BIGNUM
# Patterns, not compiled objects: re compiles them on first use, off the import path.
_BASE64_LINE = r"[A-Za-z0-9+/]*={0,2}"
# Exact names only: in an allowed-signers file a principal is a comma-separated pattern list,
# so commas, wildcards, negation and white space would widen what it matches.
_PRINCIPAL = r"[A-Za-z0-9][A-Za-z0-9._@+-]*"

# ssh-agent protocol (draft-miller-ssh-agent).
_AGENT_FAILURE = 5
_AGENTC_REQUEST_IDENTITIES = 11
_AGENT_IDENTITIES_ANSWER = 12
_AGENTC_SIGN_REQUEST = 13
_AGENT_SIGN_RESPONSE = 14
_AGENT_RSA_SHA2_512 = 4
_AGENT_MAX_MESSAGE = 256 * 1024


class SignatureError(GitqueueError):
    """A signature that is malformed, made by a key that is not allowed, or does not verify."""


class SigningError(GitqueueError):
    """A signature could not be made: unusable key, no agent, or ssh-keygen failed."""


# -- SSH wire format -------------------------------------------------------------------------------


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(n: int) -> bytes:
    return _string(n.to_bytes(n.bit_length() // 8 + 1, "big") if n else b"")


class _Reader:
    """Read SSH wire-format fields from a byte string, raising SignatureError on anything off."""

    def __init__(self, data: bytes, what: str):
        self.data = data
        self.pos = 0
        self.what = what

    def fail(self, problem: str):
        raise SignatureError(f"{self.what}: {problem}")

    def uint32(self, field: str) -> int:
        if len(self.data) - self.pos < 4:
            self.fail(f"truncated before {field}")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return value

    def string(self, field: str) -> bytes:
        n = self.uint32(field)
        left = len(self.data) - self.pos
        if n > left:
            self.fail(f"{field} claims {n} bytes, only {left} left")
        value = self.data[self.pos:self.pos + n]
        self.pos += n
        return value

    def name(self, field: str) -> str:
        value = self.string(field)
        if not value or not all(0x21 <= b <= 0x7E for b in value):
            self.fail(f"{field} {value[:40]!r} is not a printable ASCII name")
        return value.decode("ascii")

    def mpint(self, field: str) -> int:
        value = self.string(field)
        if value and value[0] & 0x80:
            self.fail(f"{field} is negative")
        if len(value) > _RSA_MAX_BITS // 8 + 1:
            self.fail(f"{field} is {len(value)} bytes long")
        return int.from_bytes(value, "big")

    def end(self) -> None:
        if self.pos != len(self.data):
            self.fail(f"{len(self.data) - self.pos} bytes of trailing data")


# -- keys -------------------------------------------------------------------------------------------


def _check_key_blob(blob: bytes, what: str = "public key") -> str:
    """Validate a public key blob; return its type. Only plain ed25519, ECDSA and RSA keys."""
    r = _Reader(blob, what)
    key_type = r.name("key type")
    if key_type == "ssh-ed25519":
        if len(r.string("ed25519 key")) != 32:
            r.fail("ed25519 key is not 32 bytes")
    elif key_type in _CURVES:
        curve, size, _ = _CURVES[key_type]
        if r.name("curve") != curve:
            r.fail(f"curve does not match key type {key_type}")
        point = r.string("point")
        if len(point) != 1 + 2 * size or point[0] != 4:
            r.fail(f"point is not an uncompressed {curve} point")
    elif key_type == "ssh-rsa":
        e = r.mpint("exponent")
        n = r.mpint("modulus")
        if e < 3 or e % 2 == 0:
            r.fail("bad RSA exponent")
        if not _RSA_MIN_BITS <= n.bit_length() <= _RSA_MAX_BITS:
            r.fail(f"RSA modulus of {n.bit_length()} bits")
    else:
        r.fail(f"unsupported key type {key_type!r} (ssh-ed25519, ecdsa-sha2-nistp*, ssh-rsa)")
    r.end()
    return key_type


def key_blob(public_key: str) -> bytes:
    """The wire-format blob of an OpenSSH public key line ("ssh-ed25519 AAAA... [comment]").

    Raises:
        SignatureError: the line is not a supported, well-formed public key.
    """
    fields = public_key.split()
    if len(fields) < 2:
        raise SignatureError(f"public key {public_key[:60]!r}: expected 'type base64 [comment]'")
    key_type, encoded = fields[0], fields[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise SignatureError(f"public key {key_type}: bad base64") from None
    found = _check_key_blob(blob, f"public key {key_type}")
    if found != key_type:
        raise SignatureError(f"public key says {key_type} but holds a {found} key")
    return blob


def _key_line(blob: bytes) -> str:
    """The "type base64" line of a validated key blob."""
    key_type = _Reader(blob, "public key").name("key type")
    return f"{key_type} {base64.b64encode(blob).decode()}"


def fingerprint(public_key: str | bytes) -> str:
    """SHA256:... fingerprint of a key line or blob, as `ssh-keygen -l` prints it."""
    blob = key_blob(public_key) if isinstance(public_key, str) else public_key
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# -- the SSHSIG envelope ----------------------------------------------------------------------------


def _signed_data(namespace: str, hash_alg: str, message: bytes) -> bytes:
    """What the key actually signs: the preamble and the hash of the message."""
    digest = _HASHES[hash_alg](message).digest()
    return _MAGIC + _string(namespace.encode()) + _string(b"") + _string(hash_alg.encode()) + _string(digest)


def _envelope(key: bytes, namespace: str, hash_alg: str, signature: bytes) -> bytes:
    return (_MAGIC + struct.pack(">I", _VERSION) + _string(key) + _string(namespace.encode())
            + _string(b"") + _string(hash_alg.encode()) + _string(signature))


def armor(blob: bytes) -> bytes:
    """Armor an SSHSIG blob byte for byte as ssh-keygen does (70 columns, final newline)."""
    text = base64.b64encode(blob).decode()
    lines = [text[i:i + ARMOR_WIDTH] for i in range(0, len(text), ARMOR_WIDTH)]
    return "\n".join([BEGIN, *lines, END, ""]).encode()


def _parse_signature_blob(blob: bytes, key: bytes, key_type: str) -> tuple[str, bytes]:
    """Check a signature blob against its key type; return (signature type, signature value).

    The value is the signature proper: ed25519's 64 bytes, RSA's bytes, ECDSA's (r, s) as the
    SSH wire format's two mpints.
    """
    r = _Reader(blob, "signature")
    sig_type = r.name("signature type")
    if key_type == "ssh-ed25519":
        if sig_type != key_type:
            r.fail(f"{sig_type} signature from an {key_type} key")
        value = r.string("ed25519 signature")
        if len(value) != 64:
            r.fail("ed25519 signature is not 64 bytes")
    elif key_type in _CURVES:
        if sig_type != key_type:
            r.fail(f"{sig_type} signature from an {key_type} key")
        value = r.string("ecdsa signature")
        r_s = _ecdsa_r_s(value)
        if not r_s[0] or not r_s[1]:
            r.fail("ecdsa signature has a zero component")
    else:  # ssh-rsa, as _check_key_blob allows nothing else
        if sig_type not in _RSA_SIGNATURES:
            r.fail(f"RSA signature of type {sig_type!r} (only rsa-sha2-512 and rsa-sha2-256, as OpenSSH)")
        value = r.string("rsa signature")
        modulus = _Reader(key, "public key")
        modulus.string("key type")
        modulus.string("exponent")
        size = (int.from_bytes(modulus.string("modulus"), "big").bit_length() + 7) // 8
        if not value or len(value) > size:
            r.fail(f"RSA signature of {len(value)} bytes for a {size}-byte modulus")
    r.end()
    return sig_type, value


def _ecdsa_r_s(value: bytes) -> tuple[int, int]:
    inner = _Reader(value, "ecdsa signature")
    r_s = (inner.mpint("r"), inner.mpint("s"))
    inner.end()
    return r_s


class _Parsed:
    __slots__ = ("key", "key_type", "namespace", "hash_alg", "signature", "sig_type", "value")
    key: bytes
    key_type: str
    namespace: str
    hash_alg: str
    signature: bytes  # the (signature type, value) blob
    sig_type: str
    value: bytes  # _parse_signature_blob


def _dearmor(armored: bytes | str) -> bytes:
    if isinstance(armored, bytes):
        if len(armored) > MAX_ARMOR:
            raise SignatureError(f"signature is {len(armored)} bytes long (at most {MAX_ARMOR})")
        try:
            armored = armored.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("signature is not ASCII text") from None
    elif not isinstance(armored, str):
        raise SignatureError(f"signature is a {type(armored).__name__}, not text")
    if len(armored) > MAX_ARMOR:
        raise SignatureError(f"signature is {len(armored)} characters long (at most {MAX_ARMOR})")
    lines = armored.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != BEGIN:
        raise SignatureError(f"signature does not start with {BEGIN}")
    if len(lines) < 3 or lines[-1] != END:
        raise SignatureError(f"signature does not end with {END}")
    body = lines[1:-1]
    for number, line in enumerate(body, 2):
        if not line or len(line) > 76 or not re.fullmatch(_BASE64_LINE, line):
            raise SignatureError(f"signature line {number} is not a line of base64")
    text = "".join(body)
    try:
        blob = base64.b64decode(text, validate=True)
    except ValueError:
        raise SignatureError("signature is not valid base64 (truncated?)") from None
    if base64.b64encode(blob).decode() != text:
        raise SignatureError("signature base64 is not in canonical form")
    return blob


def _parse(armored: bytes | str) -> _Parsed:
    r = _Reader(_dearmor(armored), "signature")
    if r.data[:6] != _MAGIC:
        r.fail("does not start with SSHSIG")
    r.pos = 6
    version = r.uint32("version")
    if version != _VERSION:
        r.fail(f"version {version}, expected {_VERSION}")
    p = _Parsed()
    p.key = r.string("public key")
    p.key_type = _check_key_blob(p.key)
    namespace = r.string("namespace")
    if not namespace or not all(0x21 <= b <= 0x7E for b in namespace):
        r.fail(f"namespace {namespace[:40]!r} is not a printable ASCII name")
    p.namespace = namespace.decode("ascii")
    if r.string("reserved"):
        r.fail("reserved field is not empty")
    p.hash_alg = r.name("hash algorithm")
    if p.hash_alg not in _HASHES:
        r.fail(f"hash algorithm {p.hash_alg!r} (only sha256 and sha512)")
    p.signature = r.string("signature")
    r.end()
    p.sig_type, p.value = _parse_signature_blob(p.signature, p.key, p.key_type)
    return p


def parse_signature(armored: bytes | str) -> tuple[str, str, str, bytes]:
    """Take an armored SSH signature apart, checking every field.

    Args:
        armored: the text between and including the BEGIN/END SSH SIGNATURE lines.

    Returns:
        (public key line "type base64", namespace, hash algorithm, signature blob), where the
        signature blob is the wire-format (signature type, signature) pair the key made.

    Raises:
        SignatureError: naming what is wrong, for any malformed or unsupported input.
    """
    p = _parse(armored)
    return _key_line(p.key), p.namespace, p.hash_alg, p.signature


# -- allowed signers -------------------------------------------------------------------------------


def _check_principal(principal: str) -> str:
    if not isinstance(principal, str) or len(principal) > 256 or not re.fullmatch(_PRINCIPAL, principal):
        raise SignatureError(f"invalid principal {principal!r} (letters, digits, '.', '_', '@', '+', '-')")
    return principal


def allowed_signers_text(entries: dict[str, list[str]]) -> str:
    """A git allowed-signers file (gpg.ssh.allowedSignersFile) for principal -> public keys.

    Each key gets one line `principal namespaces="git" keytype base64`; comments are dropped.

    Raises:
        SignatureError: a principal that is not a plain name, or a malformed key.
    """
    lines = []
    for principal, keys in entries.items():
        _check_principal(principal)
        for key in keys:
            lines.append(f'{principal} namespaces="{NAMESPACE}" {_key_line(key_blob(key))}\n')
    return "".join(lines)


def _principal_of(key: bytes, allowed: dict[str, list[str]]) -> str | None:
    for principal, keys in allowed.items():
        _check_principal(principal)
        if any(key_blob(line) == key for line in keys):
            return principal
    return None


# -- verification -----------------------------------------------------------------------------------


@cache
def cryptography_available() -> bool:
    """True when the optional `cryptography` package can be imported (checked once)."""
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
    except ImportError:
        return False
    return True


def _verify_cryptography(p: _Parsed, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

    signed = _signed_data(p.namespace, p.hash_alg, data)
    key = _Reader(p.key, "public key")
    key.string("key type")
    try:
        if p.key_type == "ssh-ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(key.string("key")).verify(p.value, signed)
        elif p.key_type in _CURVES:
            curve, _, hash_name = _CURVES[p.key_type]
            key.string("curve")
            point = key.string("point")
            curves: dict[str, type[ec.EllipticCurve]] = {"nistp256": ec.SECP256R1, "nistp384": ec.SECP384R1,
                                                          "nistp521": ec.SECP521R1}
            curve_class = curves[curve]
            try:
                public = ec.EllipticCurvePublicKey.from_encoded_point(curve_class(), point)
            except ValueError:
                raise SignatureError(f"{p.key_type} key: point is not on the curve") from None
            hash_classes: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384,
                                                                   "sha512": hashes.SHA512}
            hash_class = hash_classes[hash_name]
            public.verify(utils.encode_dss_signature(*_ecdsa_r_s(p.value)), signed, ec.ECDSA(hash_class()))
        else:
            e = int.from_bytes(key.string("exponent"), "big")
            n = int.from_bytes(key.string("modulus"), "big")
            size = (n.bit_length() + 7) // 8
            hash_class = hashes.SHA512 if _RSA_SIGNATURES[p.sig_type] == "sha512" else hashes.SHA256
            # OpenSSH accepts signatures shorter than the modulus and pads them; so do we.
            value = p.value.rjust(size, b"\0")
            rsa.RSAPublicNumbers(e, n).public_key().verify(value, signed, padding.PKCS1v15(), hash_class())
    except InvalidSignature:
        return False
    return True


def _child_env() -> dict:
    """Environment for ssh-keygen: no agent, and any passphrase prompt fails at once.

    stdin carries the data and the caller may have a terminal: without this, ssh-keygen would
    read a passphrase from /dev/tty (and wait) or from stdin (and eat the data). SSH_ASKPASS_REQUIRE
    =force (OpenSSH >= 8.4) or DISPLAY (older) make it run SSH_ASKPASS instead, which fails.
    """
    import shutil

    return {
        "SSH_ASKPASS": shutil.which("false") or "/nonexistent/false",
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": "gitqueue-no-display:0",
        "LC_ALL": "C",
    }


def _run_ssh_keygen(ssh_keygen: str, args: list[str], data: bytes, timeout: float, error):
    """Run ssh-keygen detached from any terminal; return the completed process."""
    import shutil
    import subprocess

    program = shutil.which(ssh_keygen)
    if program is None:
        raise error(f"{ssh_keygen}: not found")
    try:
        return subprocess.run([program, *args], input=data, capture_output=True, env=_child_env(),
                              timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise error(f"{ssh_keygen} {args[0]} {args[1]} did not finish in {timeout:.0f} s") from None
    except OSError as e:
        raise error(f"{ssh_keygen}: {e.strerror or e}") from None


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _verify_ssh_keygen(p: _Parsed, principal: str, data: bytes, armored: bytes, ssh_keygen: str,
                       timeout: float) -> bool:
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gitqueue-verify-") as tmp:
        allowed = os.path.join(tmp, "allowed_signers")
        sig = os.path.join(tmp, "signature")
        with open(allowed, "w") as f:
            f.write(f'{principal} namespaces="{NAMESPACE}" {_key_line(p.key)}\n')
        with open(sig, "wb") as f:
            f.write(armored)
        proc = _run_ssh_keygen(ssh_keygen, ["-Y", "verify", "-f", allowed, "-I", principal, "-n", NAMESPACE,
                                            "-s", sig], data, timeout, SignatureError)
    if proc.returncode == 0 and proc.stdout.startswith(f'Good "{NAMESPACE}" signature for {principal} '.encode()):
        return True
    if b"Signature verification failed" in proc.stderr or b"incorrect signature" in proc.stderr:
        return False
    raise SignatureError(f"ssh-keygen -Y verify: {_last_line(proc.stderr)}")


def verify(data: bytes, armored: bytes | str, allowed: dict[str, list[str]], *, backend: str = "auto",
           ssh_keygen: str = "ssh-keygen", timeout: float = TIMEOUT) -> str:
    """Check that `armored` is a git-namespace signature over `data` by an allowed key.

    Args:
        data: the signed bytes (for a commit: the commit without its gpgsig header).
        armored: the armored SSH signature.
        allowed: principal -> OpenSSH public key lines that may sign as that principal.
        backend: "cryptography", "ssh-keygen", or "auto" (cryptography when importable).
        ssh_keygen: the ssh-keygen program.
        timeout: seconds to wait for ssh-keygen.

    Returns:
        The principal whose key made the signature (the first, in `allowed` order, listing it).

    Raises:
        SignatureError: malformed, another namespace, key not allowed, or a bad signature.
    """
    p = _parse(armored)
    if p.namespace != NAMESPACE:
        raise SignatureError(f"signature is for namespace {p.namespace!r}, not {NAMESPACE!r}")
    principal = _principal_of(p.key, allowed)
    if principal is None:
        raise SignatureError(f"signed by {p.key_type} key {fingerprint(p.key)}, which is not an allowed signer")
    if backend == "auto":
        backend = "cryptography" if cryptography_available() else "ssh-keygen"
    if backend == "cryptography":
        good = _verify_cryptography(p, data)
    elif backend == "ssh-keygen":
        text = armored.encode("ascii") if isinstance(armored, str) else armored
        good = _verify_ssh_keygen(p, principal, data, text, ssh_keygen, timeout)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    if not good:
        raise SignatureError(f"bad signature by {principal} ({fingerprint(p.key)}): "
                             "the signed data was changed, or the signature belongs to other data")
    return principal


# -- commits ----------------------------------------------------------------------------------------


def _signature_header(commit) -> bytes:
    fmt = getattr(commit, "object_format", None)
    return b"gpgsig-sha256" if getattr(fmt, "name", "sha1") == "sha256" else b"gpgsig"


def split_signed(raw: bytes, header: bytes = b"gpgsig") -> tuple[bytes, bytes | None]:
    """Split a raw commit into (signed payload, signature or None) exactly as git does.

    Mirrors git's parse_buffer_signed_by_header(): the lines of every `header` header form the
    signature; those and any other header starting with "gpgsig" (a signature for another hash
    algorithm) are left out of the payload; everything from the blank line on stays.
    """
    payload = []
    signature = []
    in_signature = other = False
    pos = 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        nxt = len(raw) if nl < 0 else nl + 1
        line = raw[pos:nxt]
        if in_signature and line.startswith(b" "):
            signature.append(line[1:])
        elif line.startswith(header + b" "):
            signature.append(line[len(header) + 1:])
            in_signature, other = True, False
        else:
            if line.startswith(b"gpgsig"):
                other = True
            elif other and not line.startswith(b" "):
                other = False
            if line.startswith(b"\n"):
                nxt = len(raw)
                line = raw[pos:]
            if not other:
                payload.append(line)
            in_signature = False
        pos = nxt
    return b"".join(payload), (b"".join(signature) if signature else None)


def sign_commit(commit, signer: "Signer") -> None:
    """Sign a dulwich Commit in place, as `git commit -S` with gpg.format=ssh would.

    Any previous signature is replaced; the commit's id changes accordingly.

    Raises:
        SigningError: the signer could not sign.
    """
    commit.gpgsig = None
    payload, _ = split_signed(commit.as_raw_string(), _signature_header(commit))
    signature = signer.sign(payload)
    # git stores the armor with its final newline as the header's last line; dulwich adds the
    # header's line ending itself, so hand it the text without that newline.
    commit.gpgsig = signature[:-1] if signature.endswith(b"\n") else signature


def verify_commit(commit, allowed: dict[str, list[str]], **options) -> str:
    """Check a dulwich Commit's SSH signature; return the signing principal.

    Args:
        commit: the commit, as read from a repository (its raw bytes are what is checked).
        allowed: principal -> public key lines, as for `verify`.
        **options: passed to `verify` (backend, ssh_keygen, timeout).

    Raises:
        SignatureError: unsigned, malformed, not allowed, or a bad signature.
    """
    payload, signature = split_signed(commit.as_raw_string(), _signature_header(commit))
    if signature is None:
        raise SignatureError(f"commit {commit.id.decode()} is not signed")
    return verify(payload, signature, allowed, **options)


# -- signers ----------------------------------------------------------------------------------------


def _openssh_private_key(text: bytes, path: str):
    """(public key blob, encrypted?) of an openssh-key-v1 private key, or None for other formats."""
    begin = b"-----BEGIN OPENSSH PRIVATE KEY-----"
    end = b"-----END OPENSSH PRIVATE KEY-----"
    start = text.find(begin)
    stop = text.find(end)
    if start < 0 or stop < start:
        return None
    try:
        blob = base64.b64decode(b"".join(text[start + len(begin):stop].split()), validate=True)
        r = _Reader(blob, path)
        if blob[:15] != b"openssh-key-v1\0":
            return None
        r.pos = 15
        cipher = r.string("cipher")
        r.string("kdf")
        r.string("kdf options")
        if r.uint32("key count") != 1:
            return None
        return r.string("public key"), cipher != b"none"
    except (ValueError, SignatureError):
        return None


class Signer:
    """Makes git-namespace SSH signatures with one key, held in a key file or by ssh-agent.

    Attributes:
        public_key: "type base64" line of the key, without comment.
        fingerprint: "SHA256:..." as `ssh-keygen -l` prints it.
    """

    def __init__(self, public_key: str, *, key_file: str | None = None, agent_socket: str | None = None,
                 ssh_keygen: str = "ssh-keygen", timeout: float = TIMEOUT):
        if (key_file is None) == (agent_socket is None):
            raise ValueError("give exactly one of key_file and agent_socket")
        self._blob = key_blob(public_key)
        self.key_type = _check_key_blob(self._blob)
        self.public_key = _key_line(self._blob)
        self.fingerprint = fingerprint(self._blob)
        self.key_file = key_file
        self.agent_socket = agent_socket
        self.ssh_keygen = ssh_keygen
        self.timeout = timeout

    def __repr__(self):
        where = self.key_file or f"agent {self.agent_socket}"
        return f"<Signer {self.key_type} {self.fingerprint} ({where})>"

    @classmethod
    def from_key_file(cls, path: str, *, ssh_keygen: str = "ssh-keygen", timeout: float = TIMEOUT) -> "Signer":
        """A signer using the private key at `path` through `ssh-keygen -Y sign`.

        The public key comes from PATH.pub, else from the key file itself (`ssh-keygen -y`).

        Raises:
            SigningError: unreadable key, a .pub that does not match, or a passphrase-protected
                key (ssh-keygen cannot prompt here: load it into ssh-agent and use from_agent).
        """
        import os

        try:
            with open(path, "rb") as f:
                private = f.read()
        except OSError as e:
            raise SigningError(f"{path}: {e.strerror}") from None
        embedded = _openssh_private_key(private, path)
        if embedded is not None and embedded[1]:
            raise SigningError(f"{path}: the key is protected by a passphrase and gitqueue cannot ask for it; "
                               "load it into ssh-agent (ssh-add) and sign with the agent")
        public = None
        if os.path.exists(path + ".pub"):
            try:
                with open(path + ".pub") as f:
                    public = f.read().strip()
                key_blob(public)
            except (OSError, UnicodeDecodeError, SignatureError) as e:
                raise SigningError(f"{path}.pub: {getattr(e, 'strerror', None) or e}") from None
            if embedded is not None and key_blob(public) != embedded[0]:
                raise SigningError(f"{path}.pub is not the public half of {path}")
        elif embedded is not None:
            try:
                public = _key_line(embedded[0])
                key_blob(public)
            except SignatureError as e:
                raise SigningError(f"{path}: {e}") from None
        else:
            proc = _run_ssh_keygen(ssh_keygen, ["-y", "-f", path], b"", timeout, SigningError)
            if proc.returncode != 0:
                raise SigningError(f"{path}: ssh-keygen -y: {_last_line(proc.stderr)}")
            public = proc.stdout.decode(errors="replace").strip()
        try:
            return cls(public, key_file=path, ssh_keygen=ssh_keygen, timeout=timeout)
        except SignatureError as e:
            raise SigningError(f"{path}: {e}") from None

    @classmethod
    def from_agent(cls, public_key_or_fingerprint: str | None = None, *, socket_path: str,
                   timeout: float = TIMEOUT) -> "Signer":
        """A signer using a key held by the ssh-agent listening on `socket_path`.

        Args:
            public_key_or_fingerprint: which key ("type base64" line or SHA256:... fingerprint);
                None if the agent holds exactly one supported key.
            socket_path: the agent's socket (the CLI passes $SSH_AUTH_SOCK).
            timeout: seconds to wait for the agent (it may ask its user to confirm).

        Raises:
            SigningError: no agent, key not held, or an ambiguous choice.
        """
        if not socket_path:
            raise SigningError("no ssh-agent socket (SSH_AUTH_SOCK is not set)")
        kind, body = _agent_request(socket_path, _AGENTC_REQUEST_IDENTITIES, b"", timeout)
        if kind != _AGENT_IDENTITIES_ANSWER:
            raise SigningError(f"ssh-agent at {socket_path} refused to list its keys")
        try:
            r = _Reader(body, "ssh-agent identities")
            keys = []
            for _ in range(r.uint32("key count")):
                blob = r.string("key")
                r.string("comment")
                try:
                    _check_key_blob(blob)
                except SignatureError:
                    continue  # certificates, security keys: not ours to use
                keys.append(blob)
        except SignatureError as e:
            raise SigningError(str(e)) from None
        wanted = public_key_or_fingerprint
        if wanted is None:
            if len(keys) != 1:
                raise SigningError(f"ssh-agent at {socket_path} holds {len(keys)} usable keys: name one")
            chosen = keys[0]
        else:
            if wanted.startswith("SHA256:"):
                matches = [k for k in keys if fingerprint(k) == wanted]
            else:
                try:
                    blob = key_blob(wanted)
                except SignatureError as e:
                    raise SigningError(str(e)) from None
                matches = [k for k in keys if k == blob]
            if not matches:
                raise SigningError(f"ssh-agent at {socket_path} does not hold key {wanted[:60]}")
            chosen = matches[0]
        return cls(_key_line(chosen), agent_socket=socket_path, timeout=timeout)

    def sign(self, data: bytes) -> bytes:
        """The armored SSHSIG signature over `data`, namespace "git", hash sha512.

        Raises:
            SigningError: ssh-keygen or the agent failed.
        """
        if self.key_file is not None:
            return self._sign_key_file(self.key_file, data)
        if self.agent_socket is not None:
            return self._sign_agent(self.agent_socket, data)
        raise ValueError("a Signer has a key_file or an agent_socket")  # __init__ sees to it

    def _sign_key_file(self, key_file: str, data: bytes) -> bytes:
        proc = _run_ssh_keygen(self.ssh_keygen, ["-Y", "sign", "-n", NAMESPACE, "-O", f"hashalg={HASH_ALGORITHM}",
                                                 "-f", key_file], data, self.timeout, SigningError)
        if proc.returncode != 0:
            message = _last_line(proc.stderr)
            if "passphrase" in message:
                message += " (the key needs a passphrase: load it into ssh-agent and sign with the agent)"
            raise SigningError(f"{key_file}: ssh-keygen -Y sign: {message}")
        try:
            p = _parse(proc.stdout)
        except SignatureError as e:
            raise SigningError(f"{key_file}: ssh-keygen -Y sign wrote {e}") from None
        if p.key != self._blob:
            raise SigningError(f"{key_file}: signed with {fingerprint(p.key)}, not {self.fingerprint}")
        return proc.stdout

    def _sign_agent(self, agent_socket: str, data: bytes) -> bytes:
        signed = _signed_data(NAMESPACE, HASH_ALGORITHM, data)
        flags = _AGENT_RSA_SHA2_512 if self.key_type == "ssh-rsa" else 0
        request = _string(self._blob) + _string(signed) + struct.pack(">I", flags)
        kind, body = _agent_request(agent_socket, _AGENTC_SIGN_REQUEST, request, self.timeout)
        if kind != _AGENT_SIGN_RESPONSE:
            raise SigningError(f"ssh-agent at {agent_socket} refused to sign with {self.fingerprint}")
        try:
            r = _Reader(body, "ssh-agent signature")
            signature = r.string("signature")
            r.end()
            sig_type, _ = _parse_signature_blob(signature, self._blob, self.key_type)
        except SignatureError as e:
            raise SigningError(str(e)) from None
        if self.key_type == "ssh-rsa" and sig_type != "rsa-sha2-512":
            raise SigningError(f"ssh-agent made an {sig_type} signature, not rsa-sha2-512")
        return armor(_envelope(self._blob, NAMESPACE, HASH_ALGORITHM, signature))


def _agent_request(socket_path: str, kind: int, payload: bytes, timeout: float) -> tuple[int, bytes]:
    """One request/answer exchange with ssh-agent; returns (message type, body)."""
    import socket

    def receive(sock, n):
        chunks = []
        while n:
            chunk = sock.recv(min(n, 65536))
            if not chunk:
                raise SigningError(f"ssh-agent at {socket_path} closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(struct.pack(">IB", len(payload) + 1, kind) + payload)
            (length,) = struct.unpack(">I", receive(sock, 4))
            if not 1 <= length <= _AGENT_MAX_MESSAGE:
                raise SigningError(f"ssh-agent at {socket_path} sent a {length}-byte message")
            body = receive(sock, length)
    except TimeoutError:
        raise SigningError(f"ssh-agent at {socket_path} did not answer in {timeout:.0f} s") from None
    except OSError as e:
        raise SigningError(f"ssh-agent at {socket_path}: {e.strerror or e}") from None
    return body[0], body[1:]
