"""How a process reaches a queue: ssh with connection reuse, its signing key, and `open_queue`.

The library reads no environment here: what the CLI takes from GITQUEUE_* variables, the config
file and SSH_AUTH_SOCK arrives as parameters (`agent_socket`, `reuse_connections`, ...).
"""

import hashlib
import os
import re

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "gitqueue")

# A unix socket's path holds at most 103 bytes (sun_path is 104 on the BSDs and macOS, 108 on
# Linux, with the NUL). ssh first binds the socket under a temporary name: the path + "." + 16
# random characters.
SOCKET_PATH_MAX = 103
SSH_TEMP_SUFFIX = 17


def ssh_with_reuse(command: str | None, cache_dir: str, *, agent_socket: str | None = None,
                reuse: bool = True) -> str:
    """ssh with OpenSSH connection reuse: one handshake serves many fetches, pushes and rsyncs.

    A connection is shared only by commands that authenticate the same way: the same ssh command
    (its -i KEY, -F CONFIG and -o options), the same agent, user, host and port.

    Args:
        command: the ssh program and its options (default "ssh").
        cache_dir: where the control sockets go (a short private directory in /tmp when this one
            is too long or holds characters that would not survive word splitting).
        agent_socket: the ssh-agent that offers keys (SSH_AUTH_SOCK), part of the identity.
        reuse: False returns `command` as it is.

    Returns:
        The command, with ControlMaster/ControlPath/ControlPersist and keepalive options, unless
        it sets ControlMaster itself.
    """
    base = command or "ssh"
    if "ControlMaster" in base or not reuse:
        return base
    # ssh's %C hashes this host and the remote user, host and port, not the key: a second
    # identity of this machine (its own key, config or agent) would run through the first one's
    # authenticated connection, under its forced command, and push as that worker. So the name
    # also carries a hash of the whole command and of the agent socket that offers keys.
    identity = hashlib.sha256(f"{base}\0{agent_socket or ''}".encode()).hexdigest()[:12]
    name = f"ssh-{identity}-%C"
    # The path must stay under the limit with %C expanded (40 hex digits). And it goes through
    # two word splittings (this command's, then ssh's own -o parsing), so a directory with
    # spaces or quotes is not used.
    longest = SOCKET_PATH_MAX - SSH_TEMP_SUFFIX - len(os.sep + name.replace("%C", "c" * 40))
    plain = len(cache_dir) <= longest and re.fullmatch(r"[A-Za-z0-9/._+-]+", cache_dir)
    directory = cache_dir if plain else os.path.join("/tmp", f"gitqueue-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.stat(directory).st_uid != os.getuid():
        return base  # someone else's directory: no shared sockets
    path = os.path.join(directory, name)
    # Keepalives: a worker behind NAT whose connection silently died gives up after about a
    # minute and retries, instead of waiting on the dead connection forever. SendEnv: a session
    # that gitqueue opens through the master itself (gitstore) passes GIT_PROTOCOL on only when
    # the master sends it, whatever command started the master (an rsync's ssh sets none).
    return (f"{base} -o ControlMaster=auto -o ControlPath={path} -o ControlPersist=60"
            " -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o SendEnv=GIT_PROTOCOL")


_REUSED = re.compile(r"(-o ControlPath=[A-Za-z0-9/._+-]+/ssh-[0-9a-f]{12}-)%C(?= )")


def for_destination(command: str, user: str | None, host: str, port: int | None) -> tuple[str, str | None]:
    """`command` with the ControlPath that `ssh_with_reuse` gave it named for user@host:port, and
    that path (None for a command without it).

    gitqueue opens sessions through the master itself (gitstore), so it must know the socket's
    name without asking ssh: in place of ssh's %C, the name hashes what %C does, this machine
    (a home directory may be shared by several) and the user, host and port, but as given rather
    than as ssh's configuration resolves them. rsync's ssh gets the same name, and shares the
    master.
    """
    match = _REUSED.search(command)
    if match is None:
        return command, None
    where = f"{os.uname().nodename}\0{user or ''}\0{host.strip('[]')}\0{port or ''}"
    prefix = match.group(1)
    name = prefix + hashlib.sha256(where.encode()).hexdigest()[:16]
    return command[:match.start()] + name + command[match.end():], name[len("-o ControlPath="):]


def load_signer(spec: str | None, *, agent_socket: str | None = None):
    """The signing.Signer that `spec` names, or None without one.

    Args:
        spec: a private key file ("~" is expanded), "agent", or "agent:FINGERPRINT" to choose
            among the agent's keys.
        agent_socket: the ssh-agent's socket (SSH_AUTH_SOCK), needed for "agent".

    Raises:
        GitqueueError: "agent" without an agent socket, or a key that cannot be used.
    """
    if not spec:
        return None
    from .signing import Signer

    if spec == "agent" or spec.startswith("agent:"):
        if not agent_socket:
            from .errors import GitqueueError

            raise GitqueueError(f"signing key {spec!r}: SSH_AUTH_SOCK is not set (no ssh-agent)")
        return Signer.from_agent(spec[6:] or None, socket_path=agent_socket)
    return Signer.from_key_file(os.path.expanduser(spec))


def open_queue(url: str, *, worker: str | None = None, cache_dir: str | None = None,
               ssh_command: str | None = None, signing_key: str | None = None, branch: str = "main",
               agent_socket: str | None = None, reuse_connections: bool = True,
               network_timeout: float | None = None, clock=None, notice=None):
    """Open the queue at `url` as one worker (or an operator) of this machine.

    Args:
        url: a path to a bare repository, ssh://[user@]host[:port]/path, git:// or file://.
            A relative path is taken from the current directory.
        worker: the name this process claims and reports as (`Queue.claim` and friends).
        cache_dir: where this machine keeps its caches of queues (default ~/.cache/gitqueue).
        ssh_command: the ssh program and options for ssh:// queues (default "ssh"); connections
            are reused per identity (see `ssh_with_reuse`) unless `reuse_connections` is False.
        signing_key: the key that signs every commit (see `load_signer`); needed on signed queues.
        branch: the queue branch.
        agent_socket: the ssh-agent socket (SSH_AUTH_SOCK) for "agent" keys and connection reuse.
        network_timeout: seconds a fetch or push may go without progress before it is abandoned.
        clock: a time.time stand-in (tests of clock skew).
        notice: called with one line when the cache is repaired (default: said nowhere).

    Returns:
        A `Queue`, to be closed (it is a context manager).
    """
    from .client import Queue

    if url and "://" not in url and not url.startswith("/") and ":" not in url.split("/")[0]:
        url = os.path.abspath(url)
    cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
    command = ssh_with_reuse(ssh_command, cache_dir, agent_socket=agent_socket, reuse=reuse_connections)
    signer = load_signer(signing_key, agent_socket=agent_socket)
    extra = {"clock": clock} if clock is not None else {}
    return Queue(url, cache_dir, branch, command, signer=signer, notice=notice, network_timeout=network_timeout,
                 worker=worker, **extra)
