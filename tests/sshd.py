"""A throwaway OpenSSH server on 127.0.0.1 for tests.

``SshServer`` generates fresh host and client keys in a directory, writes
its own ``sshd_config`` and runs ``/usr/sbin/sshd -D`` on a free high port.
Nothing outside that directory is touched except ``/run/sshd`` (sshd's
privilege-separation directory), which is created when missing.

Typical use::

    with SshServer(tmpdir) as server:
        client, path = dulwich.client.get_transport_and_path(
            server.url("/srv/queue.git"), ssh_command=server.ssh_command)

Quirks worth knowing (dulwich 1.2.x, ``SubprocessSSHVendor``):

* dulwich runs ``shlex.split(ssh_command) + ["-x", "-p", PORT, "-o",
  "SetEnv GIT_PROTOCOL=version=2", "USER@HOST", "git-upload-pack '/path'"]``;
  the port therefore must come from the URL, never from ``ssh_command``.
* ``get_transport_and_path`` does *not* read ``GIT_SSH_COMMAND``; only
  ``dulwich.porcelain`` does.  Pass ``ssh_command=`` explicitly.
* Unless ``accept_env`` contains ``GIT_PROTOCOL`` sshd drops the
  ``SetEnv`` request and the server speaks protocol v0, like a stock
  Debian sshd (``AcceptEnv LANG LC_*``).  dulwich copes with both.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = "/run/sshd"

__all__ = ["SshServer", "SshServerError", "sshd_available"]


class SshServerError(RuntimeError):
    """sshd could not be started or did not become usable."""


def sshd_available() -> str | None:
    """Return None when a test sshd can be run here, else the reason why not."""
    if not os.path.exists(SSHD):
        return f"{SSHD} not found (install openssh-server)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not executable"
    for tool in ("ssh", SSH_KEYGEN):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH (install openssh-client)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            # sshd speaks first: a banner proves it is sshd, not a stray socket
            s.settimeout(1.0)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.chmod(path, 0o600)


class SshServer:
    """A private sshd on 127.0.0.1:<free high port>, usable as a context manager.

    Args:
        directory: where keys, config, pid file and log go (created if missing).
        startup_timeout: seconds to wait for sshd to accept a real login.
        accept_env: environment variable names for sshd's ``AcceptEnv``
            (default none; pass ``("GIT_PROTOCOL",)`` to allow git protocol v2).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        startup_timeout: float = 10.0,
        accept_env: Iterable[str] = (),
        per_user_keys: bool = False,
        expose_auth_info: bool = False,
    ) -> None:
        self.dir = Path(directory).resolve()
        self.startup_timeout = startup_timeout
        self.accept_env = tuple(accept_env)
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "client_ed25519"
        # per_user_keys: each account has its own file (authorized_keys.USER), as on a real
        # master where workers log in to the build account and nobody else's.
        self.per_user_keys = per_user_keys
        # ExposeAuthInfo: sessions learn the key they logged in with (SSH_USER_AUTH).
        self.expose_auth_info = expose_auth_info
        self.authorized_keys = self.dir / (f"authorized_keys.{self.user}" if per_user_keys else "authorized_keys")
        self.config = self.dir / "sshd_config"
        self.pid_file = self.dir / "sshd.pid"
        self.log_file = self.dir / "sshd.log"
        self.session_home = self.dir / "home"
        self.port: int = 0
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ API

    @property
    def ssh_command(self) -> str:
        """ssh invocation for dulwich's ``ssh_command`` / ``GIT_SSH_COMMAND``.

        Contains no ``-p``: dulwich and git append ``-p PORT`` from the URL.
        ``-F /dev/null`` and ``IdentitiesOnly`` keep the caller's own ssh
        config and agent keys out of the picture.
        """
        return shlex.join(
            [
                "ssh",
                "-F", "/dev/null",
                "-i", str(self.client_key),
                "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR",
            ]
        )

    @property
    def rsync_rsh(self) -> str:
        """The ``-e``/``RSYNC_RSH`` argument for rsync (ssh command plus -p PORT)."""
        return f"{self.ssh_command} -p {self.port}"

    def ssh_argv(self, *command: str) -> list[str]:
        """argv running ``command`` on the server as ``user`` (for subprocess)."""
        return [
            *shlex.split(self.ssh_command),
            "-p", str(self.port),
            f"{self.user}@{self.host}",
            *command,
        ]

    def url(self, path: str | os.PathLike[str]) -> str:
        """``ssh://USER@127.0.0.1:PORT/abs/path`` for a path on this machine."""
        p = os.path.abspath(os.fspath(path))
        return f"ssh://{self.user}@{self.host}:{self.port}{p}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A copy of ``base`` (default ``os.environ``) with GIT_SSH_COMMAND set."""
        env = dict(os.environ if base is None else base)
        env["GIT_SSH_COMMAND"] = self.ssh_command
        return env

    def add_authorized_key(self, pubkey_line: str, options: str = "") -> None:
        """Append a public key line, optionally prefixed by authorized_keys options

        (e.g. ``'command="/usr/bin/gitqueue-shell",restrict'``).  sshd rereads
        the file on every login, so this works while the server runs.
        """
        line = pubkey_line.strip()
        if options:
            line = f"{options} {line}"
        with open(self.authorized_keys, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def authorized_keys_of(self, user: str) -> Path:
        """The authorized_keys file sshd reads for `user` (per_user_keys servers)."""
        return self.dir / f"authorized_keys.{user}"

    def new_client_key(self, name: str, options: str = "") -> Path:
        """Generate another client key, authorize it (with options), return its path."""
        key = self.dir / name
        _keygen(key, f"gitqueue-test-{name}")
        self.add_authorized_key(key.with_suffix(key.suffix + ".pub").read_text(), options)
        return key

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no sshd log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------ lifecycle

    def start(self) -> SshServer:
        reason = sshd_available()
        if reason is not None:
            raise SshServerError(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            _keygen(self.host_key, "gitqueue-test-host")
        if not self.client_key.exists():
            _keygen(self.client_key, "gitqueue-test-client")
            self.add_authorized_key(
                (self.dir / (self.client_key.name + ".pub")).read_text()
            )
        try:
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        except PermissionError:
            pass  # not root: sshd runs without privilege separation chroot
        t0 = time.monotonic()
        last_error = ""
        for _attempt in range(3):  # the free port may be taken before sshd binds it
            self.port = _free_port()
            self._write_config()
            try:
                self._launch()
                self.startup_seconds = time.monotonic() - t0
                return self
            except SshServerError as e:
                last_error = str(e)
                self.stop()
                if "Bind to port" not in self.log_tail(200):
                    break
        raise SshServerError(last_error)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ internals

    def _write_config(self) -> None:
        self.session_home.mkdir(exist_ok=True)
        lines = [
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys.%u' if self.per_user_keys else self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            f"PidFile {self.pid_file}",
            "LogLevel VERBOSE",
            "PrintMotd no",
            "X11Forwarding no",
            "UseDNS no",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            # Sessions get an empty home: bash run by sshd sources ~/.bashrc even for a
            # command, and a developer's .bashrc (pyenv's rehash takes a lock with a 60 s
            # timeout) made concurrent sessions stall for up to a minute.
        ]
        if self.accept_env:
            lines.append("AcceptEnv " + " ".join(self.accept_env))
        if self.expose_auth_info:
            lines.append("ExposeAuthInfo yes")
        if self.per_user_keys:
            # Other accounts keep their own home, as on a real master.
            lines += [f"Match User {self.user}", f"    SetEnv HOME={self.session_home}"]
        else:
            lines.append(f"SetEnv HOME={self.session_home}")
        self.config.write_text("\n".join(lines) + "\n")

    def _launch(self) -> None:
        self.log_file.write_text("")
        # -e would send logs to stderr; -E (given as well) wins and keeps
        # them in the log file, which error messages quote.
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config), "-E", str(self.log_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        ssh_err = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SshServerError(
                    f"sshd exited with status {self._proc.returncode} on port "
                    f"{self.port}; log tail:\n{self.log_tail()}"
                )
            if _port_open(self.host, self.port):
                try:
                    r = subprocess.run(
                        self.ssh_argv("true"),
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=max(1.0, deadline - time.monotonic()),
                    )
                except subprocess.TimeoutExpired:
                    ssh_err = "ssh true timed out"
                    continue
                if r.returncode == 0:
                    return
                ssh_err = r.stderr.decode(errors="replace").strip()
            time.sleep(0.05)
        raise SshServerError(
            f"sshd on {self.host}:{self.port} not usable after "
            f"{self.startup_timeout:.0f}s (last ssh error: {ssh_err or 'none'}); "
            f"sshd log tail:\n{self.log_tail()}"
        )

    def __repr__(self) -> str:
        return f"<SshServer {self.user}@{self.host}:{self.port} dir={self.dir}>"
