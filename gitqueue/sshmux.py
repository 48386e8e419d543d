"""A command run through a running OpenSSH ControlMaster without starting an ssh process.

OpenSSH's connection sharing runs one ssh client per command all the same: it connects to the
master's socket, hands it its stdin, stdout and stderr and waits (7 MiB of RSS, mostly its
libraries, and an exec, which a slow CPU pays for). This speaks the master's protocol itself
(PROTOCOL.mux in OpenSSH's sources, version 4): hello, a new session with the command and its
environment, the three descriptors passed with SCM_RIGHTS, then the exit status.
"""

import os
import select
import socket
import struct
from io import BufferedReader

MUX_VERSION = 4
MUX_MSG_HELLO = 0x00000001
MUX_C_NEW_SESSION = 0x10000002
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_EXIT_MESSAGE = 0x80000004
MUX_S_SESSION_OPENED = 0x80000006
NO_ESCAPE_CHAR = 0xFFFFFFFF
NO_EXIT_STATUS = 255  # what ssh exits with when the master closes without an exit status
_REQUEST_ID = 1


class Refused(Exception):
    """The master did not open the session (nothing ran): the caller starts ssh instead."""


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _send(sock: socket.socket, *fields: bytes) -> None:
    body = b"".join(fields)
    sock.sendall(struct.pack(">I", len(body)) + body)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the ssh master closed its socket")
        data += chunk
    return data


def _recv(sock: socket.socket) -> tuple[int, bytes]:
    """(type, rest of the body) of the master's next message."""
    (length,) = struct.unpack(">I", _recv_exactly(sock, 4))
    if length < 4 or length > 256 * 1024:
        raise EOFError(f"the ssh master sent a message of {length} bytes")
    body = _recv_exactly(sock, length)
    return struct.unpack(">I", body[:4])[0], body[4:]


def open_session(control_path: str, command: bytes, env: list[str]) -> "Session":
    """Run `command` on the master's host through the master listening at `control_path`.

    `env` ("NAME=value" strings) reaches the server only for names the master's SendEnv lists.

    Raises:
        Refused: no master there, or it would not open a session; nothing was run.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stdin, stdout, stderr = os.pipe(), os.pipe(), os.pipe()  # (read end, write end) each
    theirs = [stdin[0], stdout[1], stderr[1]]  # in the order the master takes them
    ours = [stdin[1], stdout[0], stderr[0]]
    try:
        try:
            sock.connect(control_path)
            _send(sock, struct.pack(">II", MUX_MSG_HELLO, MUX_VERSION))
            kind, body = _recv(sock)
            if kind != MUX_MSG_HELLO or body[:4] != struct.pack(">I", MUX_VERSION):
                raise Refused(f"an ssh master of mux protocol {body[:4].hex()}, not {MUX_VERSION}")
            # no tty, no X11 or agent forwarding, not a subsystem, no escape character, no TERM
            _send(sock, struct.pack(">II", MUX_C_NEW_SESSION, _REQUEST_ID), _string(b""),
                  struct.pack(">IIIII", 0, 0, 0, 0, NO_ESCAPE_CHAR), _string(b""), _string(command),
                  *(_string(e.encode()) for e in env))
            for fd in theirs:  # one descriptor per message, as the master reads them
                socket.send_fds(sock, [b"\0"], [fd])
            kind, body = _recv(sock)
        except (OSError, EOFError) as e:
            raise Refused(str(e)) from None
        finally:
            for fd in theirs:
                os.close(fd)
        if kind != MUX_S_SESSION_OPENED or body[:4] != struct.pack(">I", _REQUEST_ID):
            reason = body[8:].decode("utf-8", "replace") if kind in (MUX_S_PERMISSION_DENIED, MUX_S_FAILURE) else ""
            raise Refused(f"the ssh master refused the session: {reason or hex(kind)}")
    except BaseException:  # Refused, or a deadline's exception: leave nothing open
        for fd in ours:
            os.close(fd)
        sock.close()
        raise
    return Session(sock, *ours)


class Session:
    """A command running through the master: dulwich's connection (read, write, can_read, stderr,
    close) and, as `proc`, what a deadline kills (poll, kill, returncode), as for an ssh process."""

    def __init__(self, sock: socket.socket, stdin: int, stdout: int, stderr: int):
        self.sock = sock
        self.proc = self
        self.returncode: int | None = None
        self._stdin = open(stdin, "wb", buffering=0)
        self._stdout = open(stdout, "rb", buffering=0)
        self.stderr = open(stderr, "rb")
        self.read = BufferedReader(self._stdout).read
        self.write = self._stdin.write

    def can_read(self) -> bool:
        return bool(select.select([self._stdout], [], [], 0)[0])

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        """Close the session's socket: the master then ends the session, as when its ssh client dies."""
        if self.returncode is None:
            self.returncode = -9
        self.sock.close()

    def close(self, timeout: float | None = 60) -> None:
        """Close the session's pipes and wait for its exit status (`returncode`)."""
        for f in (self._stdin, self._stdout, self.stderr):
            f.close()
        if self.returncode is not None:
            self.sock.close()
            return
        self.sock.settimeout(timeout)
        status = NO_EXIT_STATUS
        try:
            while True:
                kind, body = _recv(self.sock)
                if kind == MUX_S_EXIT_MESSAGE and len(body) >= 8:
                    status = struct.unpack(">I", body[4:8])[0]
                    break
        except TimeoutError:  # an OSError, which the git layer reports as the fetch's or push's failure
            self.kill()
            raise TimeoutError(f"ssh session did not end within {timeout:g} s; closed it") from None
        except (OSError, EOFError):
            pass  # closed without an exit status (the command was killed by a signal)
        self.returncode = status
        self.sock.close()
