"""SSH commit signatures: what we sign git verifies, what git signs we verify, and hostile input fails cleanly."""

import base64
import os
import shutil
import signal
import struct
import subprocess
import time

import pytest
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitqueue.gitstore import make_commit
from gitqueue.signing import (
    ARMOR_WIDTH,
    SignatureError,
    Signer,
    SigningError,
    allowed_signers_text,
    armor,
    cryptography_available,
    fingerprint,
    parse_signature,
    sign_commit,
    split_signed,
    verify,
    verify_commit,
)

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")

KEY_TYPES = {"ed25519": ["-t", "ed25519"], "ecdsa": ["-t", "ecdsa", "-b", "256"], "rsa": ["-t", "rsa", "-b", "2048"]}
BACKENDS = ["ssh-keygen"] + (["cryptography"] if cryptography_available() else [])
IDENTITY = "Worker One <w1@example.org>"


def keygen(directory, name, kind="ed25519", passphrase="", extra=()):
    path = str(directory / name)
    subprocess.run(["ssh-keygen", "-q", *KEY_TYPES[kind], *extra, "-N", passphrase, "-C", name, "-f", path],
                   check=True, stdin=subprocess.DEVNULL)
    return path


def public(path):
    with open(path + ".pub") as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """One throwaway key per type, plus an unrelated ed25519 key."""
    d = tmp_path_factory.mktemp("keys")
    made = {kind: keygen(d, f"id_{kind}", kind) for kind in KEY_TYPES}
    made["other"] = keygen(d, "id_other")
    return made


@pytest.fixture
def bare(tmp_path):
    repo = Repo.init_bare(str(tmp_path / "q.git"), mkdir=True)
    yield repo
    repo.close()


def store_commit(repo, message="claim job-1", identity=IDENTITY, signer=None, encoding=True):
    """A commit of a one-file tree, signed if `signer`; stored and set as refs/heads/main."""
    blob = Blob.from_string(b"state = 'leased'\n")
    tree = Tree()
    tree[b"lease.toml"] = (0o100644, blob.id)
    commit = make_commit(tree.id, None, message, identity, now=1_700_000_000)
    if not encoding:
        commit.encoding = None
    if signer is not None:
        sign_commit(commit, signer)
    for obj in (blob, tree, commit):
        repo.object_store.add_object(obj)
    repo.refs[b"refs/heads/main"] = commit.id
    return commit


def git(repo, allowed_file, *args):
    return subprocess.run(["git", "-C", repo.path, "-c", f"gpg.ssh.allowedSignersFile={allowed_file}", *args],
                          capture_output=True, text=True)


def write_allowed(tmp_path, entries):
    path = tmp_path / "allowed_signers"
    path.write_text(allowed_signers_text(entries))
    return str(path)


def git_verdict(repo, allowed_file, commit_id):
    """(git verify-commit succeeded, its message)."""
    proc = git(repo, allowed_file, "verify-commit", "-v", commit_id.decode())
    return proc.returncode == 0, proc.stderr


def our_verdict(commit, allowed, backend):
    try:
        return True, verify_commit(commit, allowed, backend=backend)
    except SignatureError as e:
        return False, str(e)


def replace_signature(repo, commit, signature: bytes):
    """Store a copy of `commit` with `signature` as its gpgsig; return it."""
    copy = Commit.from_string(commit.as_raw_string())
    copy.gpgsig = signature[:-1] if signature.endswith(b"\n") else signature
    repo.object_store.add_object(copy)
    return copy


# -- agreement with git -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KEY_TYPES))
def test_git_verifies_what_we_sign(keys, bare, tmp_path, kind):
    signer = Signer.from_key_file(keys[kind])
    commit = store_commit(bare, signer=signer)
    allowed_file = write_allowed(tmp_path, {"worker-1": [public(keys[kind])]})

    ok, message = git_verdict(bare, allowed_file, commit.id)
    assert ok, message
    assert f'Good "git" signature for worker-1 with {kind.upper()} key {signer.fingerprint}' in message
    log = git(bare, allowed_file, "log", "--show-signature", "-1", "main")
    assert 'Good "git" signature for worker-1' in log.stdout
    for backend in BACKENDS:
        assert verify_commit(bare[commit.id], {"worker-1": [public(keys[kind])]}, backend=backend) == "worker-1"


def test_signing_changes_the_id_and_keeps_the_payload(keys):
    signer = Signer.from_key_file(keys["ed25519"])
    commit = make_commit(b"4b825dc642cb6eb9a060e54bf8d69288fbee4904", None, "m", IDENTITY, now=1)
    before = commit.id
    raw = commit.as_raw_string()
    sign_commit(commit, signer)
    assert commit.id != before
    payload, signature = split_signed(commit.as_raw_string())
    assert payload == raw == commit.raw_without_sig()
    assert signature == signer.sign(raw)  # ed25519 signatures are deterministic
    sign_commit(commit, signer)  # re-signing replaces, never stacks
    assert split_signed(commit.as_raw_string()) == (raw, signature)


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])  # deterministic signatures: ecdsa is randomised
def test_same_commit_id_as_git_commit_tree(keys, bare, kind):
    """Byte for byte what `git commit-tree -S` with gpg.format=ssh makes."""
    # git commit-tree -m ends the message with a newline; make_commit keeps it as given
    ours = store_commit(bare, "claim job-1\n", "W <w@x>", Signer.from_key_file(keys[kind]), encoding=False)
    env = dict(os.environ, GIT_AUTHOR_NAME="W", GIT_AUTHOR_EMAIL="w@x", GIT_COMMITTER_NAME="W",
               GIT_COMMITTER_EMAIL="w@x", GIT_AUTHOR_DATE="@1700000000 +0000",
               GIT_COMMITTER_DATE="@1700000000 +0000")
    proc = subprocess.run(["git", "-C", bare.path, "-c", "gpg.format=ssh", "-c", f"user.signingKey={keys[kind]}",
                           "commit-tree", "-S", "-m", "claim job-1", ours.tree.decode()],
                          env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ours.id.decode()


def test_we_verify_what_git_signs(keys, bare, tmp_path):
    tree = store_commit(bare).tree
    env = dict(os.environ, GIT_AUTHOR_NAME="W", GIT_AUTHOR_EMAIL="w@x", GIT_COMMITTER_NAME="W",
               GIT_COMMITTER_EMAIL="w@x")
    proc = subprocess.run(["git", "-C", bare.path, "-c", "gpg.format=ssh", "-c",
                           f"user.signingKey={keys['ecdsa']}", "commit-tree", "-S", "-m", "by git", tree.decode()],
                          env=env, capture_output=True, text=True, check=True)
    commit = bare[proc.stdout.strip().encode()]
    for backend in BACKENDS:
        assert verify_commit(commit, {"w": [public(keys["ecdsa"])]}, backend=backend) == "w"


def tampered(repo, commit):
    copy = Commit.from_string(commit.as_raw_string())
    copy.message = b"claim job-2\n"
    repo.object_store.add_object(copy)
    return copy


def wrong_namespace(repo, commit, key):
    payload, _ = split_signed(commit.as_raw_string())
    sig = subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "file", "-f", key], input=payload,
                         capture_output=True, check=True).stdout
    return replace_signature(repo, commit, sig)


def truncated(repo, commit):
    _, sig = split_signed(commit.as_raw_string())
    lines = sig.split(b"\n")
    return replace_signature(repo, commit, b"\n".join(lines[:2] + lines[-2:]))


def garbage(repo, commit):
    _, sig = split_signed(commit.as_raw_string())
    lines = sig.split(b"\n")
    lines[2] = b"!!" + lines[2][2:]
    return replace_signature(repo, commit, b"\n".join(lines))


def flipped_bit(repo, commit):
    """A signature byte changed, the armor still well formed."""
    _, sig = split_signed(commit.as_raw_string())
    blob = bytearray(base64.b64decode(b"".join(sig.split(b"\n")[1:-2])))
    blob[-5] ^= 1
    return replace_signature(repo, commit, armor(bytes(blob)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["good", "tampered", "wrong key", "wrong namespace", "truncated", "garbage",
                                  "flipped bit", "unsigned"])
def test_agrees_with_git(keys, bare, tmp_path, backend, case):
    allowed = {"worker-1": [public(keys["ed25519"])]}
    allowed_file = write_allowed(tmp_path, allowed)
    signed = store_commit(bare, signer=Signer.from_key_file(keys["ed25519"]))
    commit = {
        "good": lambda: signed,
        "tampered": lambda: tampered(bare, signed),
        "wrong key": lambda: store_commit(bare, "other", signer=Signer.from_key_file(keys["other"])),
        "wrong namespace": lambda: wrong_namespace(bare, signed, keys["ed25519"]),
        "truncated": lambda: truncated(bare, signed),
        "garbage": lambda: garbage(bare, signed),
        "flipped bit": lambda: flipped_bit(bare, signed),
        "unsigned": lambda: store_commit(bare, "unsigned"),
    }[case]()
    git_ok, git_message = git_verdict(bare, allowed_file, commit.id)
    ok, message = our_verdict(commit, allowed, backend)
    assert ok == git_ok == (case == "good"), (git_message, message)
    expected = {
        "good": "worker-1",
        "tampered": "bad signature by worker-1",
        "wrong key": "which is not an allowed signer",
        "wrong namespace": "namespace 'file', not 'git'",
        "truncated": "not valid base64",
        "garbage": "line 3 is not a line of base64",
        "flipped bit": "bad signature by worker-1",
        "unsigned": "is not signed",
    }[case]
    assert expected in message


def test_rejects_another_principals_key_and_bad_allowed_entries(keys):
    signer = Signer.from_key_file(keys["ed25519"])
    sig = signer.sign(b"data")
    allowed = {"a": [public(keys["other"])], "b": [public(keys["rsa"]), signer.public_key + " comment"]}
    assert verify(b"data", sig, allowed) == "b"
    with pytest.raises(SignatureError, match="invalid principal"):
        verify(b"data", sig, {"*": [signer.public_key]})
    with pytest.raises(SignatureError, match="invalid principal"):
        allowed_signers_text({"a,b": [signer.public_key]})
    with pytest.raises(SignatureError, match="public key"):
        verify(b"data", sig, {"a": ["ssh-ed25519 AAAA"]})


def test_allowed_signers_text(keys):
    text = allowed_signers_text({"w1": [public(keys["ed25519"])], "w2": [public(keys["rsa"]), public(keys["ecdsa"])]})
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0] == 'w1 namespaces="git" ' + " ".join(public(keys["ed25519"]).split()[:2])
    assert lines[2].startswith('w2 namespaces="git" ecdsa-sha2-nistp256 AAAA')


# -- signers ----------------------------------------------------------------------------------------


def test_signer_from_key_file(keys, tmp_path):
    signer = Signer.from_key_file(keys["ed25519"])
    listed = subprocess.run(["ssh-keygen", "-l", "-f", keys["ed25519"] + ".pub"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert signer.fingerprint == listed[1]
    assert signer.public_key == " ".join(public(keys["ed25519"]).split()[:2])
    # without the .pub file: the public key is taken from the private key
    bare_key = tmp_path / "no_pub"
    shutil.copy(keys["ed25519"], bare_key)
    os.chmod(bare_key, 0o600)
    assert Signer.from_key_file(str(bare_key)).public_key == signer.public_key
    # a .pub that is not the private key's
    shutil.copy(keys["other"] + ".pub", str(bare_key) + ".pub")
    with pytest.raises(SigningError, match="is not the public half"):
        Signer.from_key_file(str(bare_key))


def test_signature_layout_matches_ssh_keygen(keys):
    sig = Signer.from_key_file(keys["rsa"]).sign(b"x" * 1000)
    lines = sig.decode().split("\n")
    assert lines[0] == "-----BEGIN SSH SIGNATURE-----" and lines[-2:] == ["-----END SSH SIGNATURE-----", ""]
    assert {len(line) for line in lines[1:-3]} == {ARMOR_WIDTH}
    assert armor(base64.b64decode("".join(lines[1:-2]))) == sig
    key, namespace, hash_alg, blob = parse_signature(sig)
    assert (namespace, hash_alg) == ("git", "sha512")
    assert blob[4:16] == b"rsa-sha2-512"


@pytest.mark.parametrize("fmt", [[], ["-m", "PEM"]], ids=["openssh", "pem"])
def test_passphrase_protected_key_fails_fast(tmp_path, fmt):
    path = keygen(tmp_path, "locked", "rsa" if fmt else "ed25519", passphrase="secret", extra=fmt)
    start = time.monotonic()
    with pytest.raises(SigningError, match="passphrase"):
        Signer.from_key_file(path).sign(b"data")
    # even when the key's format is not recognised up front, ssh-keygen must not prompt or read stdin
    with pytest.raises(SigningError, match="passphrase"):
        Signer(public(path), key_file=path).sign(b"data\n" * 1000)
    os.unlink(path + ".pub")
    with pytest.raises(SigningError, match="passphrase"):
        Signer.from_key_file(path)
    assert time.monotonic() - start < 10


# -- ssh-agent --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(keys, tmp_path_factory):
    """A real ssh-agent on a private socket, holding the ed25519, ecdsa and rsa keys."""
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("needs ssh-agent and ssh-add")
    sock = str(tmp_path_factory.mktemp("agent") / "agent.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.skip("ssh-agent did not start")
            time.sleep(0.02)
        env = dict(os.environ, SSH_AUTH_SOCK=sock)
        for kind in KEY_TYPES:
            subprocess.run(["ssh-add", "-q", keys[kind]], env=env, check=True, capture_output=True)
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.mark.parametrize("kind", list(KEY_TYPES))
def test_agent_signature_verifies_in_git(keys, agent, bare, tmp_path, kind):
    signer = Signer.from_agent(public(keys[kind]), socket_path=agent)
    assert signer.fingerprint == Signer.from_key_file(keys[kind]).fingerprint
    commit = store_commit(bare, signer=signer)
    allowed = {"worker-1": [public(keys[kind])]}
    ok, message = git_verdict(bare, write_allowed(tmp_path, allowed), commit.id)
    assert ok, message
    assert [verify_commit(commit, allowed, backend=b) for b in BACKENDS] == ["worker-1"] * len(BACKENDS)


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_agent_and_key_file_signatures_are_identical(keys, agent, kind):
    data = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nm\n"
    by_agent = Signer.from_agent(fingerprint(public(keys[kind])), socket_path=agent).sign(data)
    assert by_agent == Signer.from_key_file(keys[kind]).sign(data)


def test_agent_key_choice(keys, agent, tmp_path):
    with pytest.raises(SigningError, match="holds 3 usable keys: name one"):
        Signer.from_agent(socket_path=agent)
    with pytest.raises(SigningError, match="does not hold key"):
        Signer.from_agent(public(keys["other"]), socket_path=agent)
    with pytest.raises(SigningError, match="ssh-agent at"):
        Signer.from_agent(socket_path=str(tmp_path / "no-such.sock"))
    with pytest.raises(SigningError, match="SSH_AUTH_SOCK is not set"):
        Signer.from_agent(socket_path="")


def test_agent_that_lost_the_key(keys, agent):
    signer = Signer.from_agent(public(keys["ecdsa"]), socket_path=agent)
    env = dict(os.environ, SSH_AUTH_SOCK=agent)
    subprocess.run(["ssh-add", "-q", "-d", keys["ecdsa"]], env=env, check=True, capture_output=True)
    try:
        with pytest.raises(SigningError, match="refused to sign"):
            signer.sign(b"data")
    finally:
        subprocess.run(["ssh-add", "-q", keys["ecdsa"]], env=env, check=True, capture_output=True)


# -- hostile input ----------------------------------------------------------------------------------


def test_parse_signature_messages(keys):
    sig = Signer.from_key_file(keys["ed25519"]).sign(b"d")
    key, namespace, hash_alg, blob = parse_signature(sig)
    assert key == " ".join(public(keys["ed25519"]).split()[:2])
    raw = base64.b64decode(b"".join(sig.split(b"\n")[1:-2]))

    def rebuilt(**fields):
        parts = {"key": base64.b64decode(key.split()[1]), "namespace": b"git", "reserved": b"",
                 "hash": b"sha512", "sig": blob, **fields}
        s = lambda b: struct.pack(">I", len(b)) + b  # noqa: E731
        body = b"SSHSIG" + struct.pack(">I", fields.get("version", 1))
        body += s(parts["key"]) + s(parts["namespace"]) + s(parts["reserved"]) + s(parts["hash"]) + s(parts["sig"])
        return armor(body + fields.get("trailer", b""))

    assert parse_signature(rebuilt()) == parse_signature(sig)
    cases = {
        b"": "does not start with -----BEGIN SSH SIGNATURE-----",
        sig.replace(b"-----END SSH SIGNATURE-----", b""): "does not end with",
        armor(raw[:40]): "claims",
        armor(b"SSHSIH" + raw[6:]): "does not start with SSHSIG",
        rebuilt(version=2): "version 2",
        rebuilt(reserved=b"x"): "reserved field is not empty",
        rebuilt(hash=b"md5"): "hash algorithm 'md5'",
        rebuilt(namespace=b""): "namespace",
        rebuilt(trailer=b"\0"): "1 bytes of trailing data",
        rebuilt(key=b"\0\0\0\x07ssh-dss"): "unsupported key type 'ssh-dss'",
        rebuilt(sig=blob[:-1]): "claims",
        sig.decode().replace("\n", "\r\n").encode(): "does not start with -----BEGIN",
        sig.replace(b"\n", b"\n ", 2): "line 2 is not a line of base64",
        sig + b"\n": "does not end with",
        "é".encode() + sig: "not ASCII",
        b"x" * 70_000: "at most",
    }
    for armored, message in cases.items():
        with pytest.raises(SignatureError, match=message):
            parse_signature(armored)


@pytest.fixture(scope="module")
def samples(keys):
    return [Signer.from_key_file(keys[kind]).sign(b"sample") for kind in KEY_TYPES]


def _only_signature_error(armored):
    try:
        parse_signature(armored)
    except SignatureError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_parse_signature_never_crashes_on_mutations(samples, data):
    sig = data.draw(st.sampled_from(samples))
    raw = bytearray(base64.b64decode(b"".join(sig.split(b"\n")[1:-2])))
    how = data.draw(st.sampled_from(["flip", "cut", "insert", "text"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        _only_signature_error(armor(bytes(raw)))
    elif how == "cut":
        i = data.draw(st.integers(0, len(raw)))
        _only_signature_error(armor(bytes(raw[:i])))
    elif how == "insert":
        i = data.draw(st.integers(0, len(raw)))
        _only_signature_error(armor(bytes(raw[:i]) + data.draw(st.binary(max_size=12)) + bytes(raw[i:])))
    else:
        i = data.draw(st.integers(0, len(sig)))
        _only_signature_error(sig[:i] + data.draw(st.binary(max_size=8)) + sig[i:])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300),
                 st.binary(max_size=300).map(armor),
                 st.binary(max_size=300).map(lambda b: armor(b"SSHSIG\0\0\0\x01" + b))))
def test_parse_signature_never_crashes_on_random_input(armored):
    _only_signature_error(armored)


@pytest.mark.skipif(not cryptography_available(), reason="needs cryptography")
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_verify_never_crashes_on_mutations(keys, samples, data):
    """Mutated envelopes that still parse go through the crypto check: SignatureError or a principal."""
    allowed = {f"w-{kind}": [public(keys[kind])] for kind in KEY_TYPES}
    sig = data.draw(st.sampled_from(samples))
    raw = bytearray(base64.b64decode(b"".join(sig.split(b"\n")[1:-2])))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    try:
        verify(b"sample", armor(bytes(raw)), allowed, backend="cryptography")
    except SignatureError:
        pass


def test_module_imports_stay_lean():
    """The claim path imports signing: nothing beyond the standard library's light modules."""
    code = ("import sys; before = set(sys.modules); import gitqueue.signing; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run(["python", "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(__file__))))
                            ).stdout.split()
    for heavy in ("subprocess", "socket", "tempfile", "cryptography", "dulwich", "click"):
        assert heavy not in loaded
