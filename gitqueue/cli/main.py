"""The `gitqueue` command: thin click wrappers over the library.

Exit statuses: 0 done; 1 error (one `Error:` line); 2 usage error; 3 nothing ready now, retry
later (claim); 4 queue finished, nothing left to do (claim); 5 the job is not (or no longer)
held by this worker (report, release, heartbeat).
"""

import os
import re
import sys

import click

from ..errors import GitqueueError
from ..text import printable

CONFIG_KEYS = ("queue", "worker", "cache_dir", "ssh_command", "branch", "host",
               # what the worker is, when detection is wrong or impossible
               "arch", "os_release", "pkgsrc_branch", "pkgsrc_revision",
               # building pkgsrc: the tree, the command that names a directory's PKGNAME, where
               # binary packages of dependencies go, and rsync's ssh for the package tree
               "pkgsrc_dir", "pkgname_command", "packages_dir", "rsync_rsh",
               # how hard to retry rsync transfers before giving a job back
               "transfer_attempts", "transfer_backoff",
               # seconds a fetch, push or rsync may go without progress before it is abandoned
               "network_timeout",
               # the SSH key that signs this machine's commits: a private key file, or "agent"
               # ("agent:FINGERPRINT" to choose among the agent's keys)
               "signing_key")
NUMERIC_KEYS = {"transfer_attempts": int, "transfer_backoff": (int, float), "network_timeout": (int, float)}


def _config_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.environ.get("GITQUEUE_CONFIG") or os.path.join(base, "gitqueue", "config.toml")


def _load_config() -> dict:
    path = _config_path()
    try:
        with open(path, "rb") as f:
            import tomllib

            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{path}: {e}")
    unknown = set(data) - set(CONFIG_KEYS)
    if unknown:
        raise click.ClickException(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    for key, value in data.items():
        kind = NUMERIC_KEYS.get(key)
        if kind is not None:
            if isinstance(value, bool) or not isinstance(value, kind) or value < (1 if kind is int else 0):
                raise click.ClickException(f"{path}: {key} must be a positive number")
        elif not isinstance(value, str):
            raise click.ClickException(f"{path}: {key} must be a string")
    queue = data.get("queue")
    if queue and "://" not in queue and not os.path.isabs(queue) and ":" not in queue.split("/")[0]:
        # A relative queue path means relative to the config file, not to where a worker starts.
        data["queue"] = os.path.join(os.path.dirname(os.path.abspath(path)), queue)
    return data


class Context:
    """Shared options, resolved from the command line, the environment and the config file."""

    def __init__(self, queue_url, worker, cache_dir, branch, ssh_command, signing_key=None):
        self._config = None
        self.signing_key = (signing_key or os.environ.get("GITQUEUE_SIGNING_KEY")
                            or self.config.get("signing_key"))
        self.queue_url = queue_url or os.environ.get("GITQUEUE_QUEUE") or self.config.get("queue")
        self.worker_name = worker or os.environ.get("GITQUEUE_WORKER") or self.config.get("worker")
        cache_base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        self.cache_dir = (cache_dir or os.environ.get("GITQUEUE_CACHE") or self.config.get("cache_dir")
                          or os.path.join(cache_base, "gitqueue"))
        self.branch = branch or self.config.get("branch") or "main"
        self.ssh_command = (ssh_command or os.environ.get("GITQUEUE_SSH_COMMAND")
                            or self.config.get("ssh_command"))
        self.host = self.config.get("host") or os.uname().nodename

    @property
    def config(self):
        if self._config is None:
            self._config = _load_config()
        return self._config

    def open(self, url=None):
        """Open the queue at `url` (default: the --queue option)."""
        from ..queue import Queue

        url = url or self.queue_url
        if not url:
            raise click.UsageError("no queue given: pass --queue URL, set GITQUEUE_QUEUE or 'queue' in "
                                   + _config_path())
        if "://" not in url and not url.startswith("/") and ":" not in url.split("/")[0]:
            url = os.path.abspath(url)
        kwargs = {}
        offset = os.environ.get("GITQUEUE_CLOCK_OFFSET")
        if offset:
            # For tests of clock skew: this process's clock runs OFFSET seconds off. gitqueue
            # never compares clocks of different machines, and this lets anyone check that.
            import time

            try:
                seconds = float(offset)
            except ValueError:
                raise click.ClickException(f"GITQUEUE_CLOCK_OFFSET={offset!r}: expected seconds") from None
            kwargs["clock"] = lambda: time.time() + seconds
        if self.config.get("network_timeout"):
            kwargs["network_timeout"] = self.config["network_timeout"]
        return Queue(url, self.cache_dir, self.branch, _ssh_command(self.ssh_command, self.cache_dir),
                     signer=self.signer(), notice=lambda message: click.echo(printable(message), err=True), **kwargs)

    def signer(self):
        """The signing.Signer of --signing-key (or its env and config), or None."""
        spec = self.signing_key
        if not spec:
            return None
        from ..signing import Signer

        if spec == "agent" or spec.startswith("agent:"):
            sock = os.environ.get("SSH_AUTH_SOCK")
            if not sock:
                raise click.ClickException(f"signing key {spec!r}: SSH_AUTH_SOCK is not set (no ssh-agent)")
            return Signer.from_agent(spec[6:] or None, socket_path=sock)
        return Signer.from_key_file(os.path.expanduser(spec))

    def platform(self):
        """This worker's description (detected, overridden by the config file)."""
        from ..platform import describe

        return describe(self.config, self.config.get("pkgsrc_dir"))

    def worker(self):
        if not self.worker_name:
            raise click.UsageError("no worker name given: pass --worker NAME, set GITQUEUE_WORKER or "
                                   "'worker' in " + _config_path())
        return self.worker_name


# A unix socket's path holds at most 103 bytes (sun_path is 104 on the BSDs and macOS, 108 on
# Linux, with the NUL). ssh first binds the socket under a temporary name: the path + "." + 16
# random characters.
SOCKET_PATH_MAX = 103
SSH_TEMP_SUFFIX = 17


def _ssh_command(command, cache_dir):
    """ssh with OpenSSH connection reuse: one handshake serves many fetches and pushes.

    A connection is shared only by commands that authenticate the same way: the same ssh command
    (its -i KEY, -F CONFIG and -o options), the same agent, user, host and port.
    """
    base = command or "ssh"
    if "ControlMaster" in base or os.environ.get("GITQUEUE_SSH_REUSE") == "0":
        return base
    # ssh's %C hashes this host and the remote user, host and port, not the key: a second
    # identity of this machine (its own key, config or agent) would run through the first one's
    # authenticated connection, under its forced command, and push as that worker. So the name
    # also carries a hash of the whole command and of the agent socket that offers keys.
    import hashlib

    identity = hashlib.sha256(f"{base}\0{os.environ.get('SSH_AUTH_SOCK', '')}".encode()).hexdigest()[:12]
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
    # minute and retries, instead of waiting on the dead connection forever.
    return (f"{base} -o ControlMaster=auto -o ControlPath={path} -o ControlPersist=60"
            " -o ServerAliveInterval=15 -o ServerAliveCountMax=4")


def queue_option(f):
    return click.option("--queue", "queue_url", metavar="URL",
                        help="Queue repository: a path, ssh://host/path or git://host/path [env GITQUEUE_QUEUE].")(f)


def worker_option(f):
    return click.option("--worker", metavar="NAME", help="This worker's name [env GITQUEUE_WORKER].")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def emit(data, as_json, text):
    """Print `data` as JSON, or the human text `text` (a string or a callable returning one).

    JSON keeps the data exact (json.dumps escapes control characters); the text shows them as
    escapes, whatever a record or commit message held.
    """
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        click.echo(printable(text() if callable(text) else text, keep_newlines=True))


# Which module defines each command: only that one is imported when the command runs.
LAZY_COMMANDS = {
    "simulate": "schedule", "priority": "schedule", "noway": "schedule",
    "status": "view", "html": "view", "history": "view", "diff": "view", "log": "view",
    "worker": "registry",
    "hooks": "server", "verify": "server", "serve": "server",
    "gc": "maintenance",
}


class Group(click.Group):
    """Turns library errors into one `Error:` line and their documented exit status."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        module = LAZY_COMMANDS.get(name)
        if module is not None and name not in self.commands:
            import importlib

            importlib.import_module(f"{__package__}.{module}")
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GitqueueError as e:
            # Messages quote paths, names and server replies that others wrote: one printable line.
            click.echo(f"Error: {printable(str(e))}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:
            # A file the user named (log, graph) or the cache: say which, in one line.
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            click.echo(f"Error: {printable(where + str(e.strerror or e))}", err=True)
            ctx.exit(1)


@click.group(cls=Group)
@click.option("--cache-dir", metavar="DIR", help="Where this host keeps its queue caches [env GITQUEUE_CACHE].")
@click.option("--branch", metavar="NAME", help="Queue branch (default main).")
@click.option("--ssh-command", metavar="CMD", help="ssh program and options for ssh:// queues [env GITQUEUE_SSH_COMMAND].")
@click.option("--signing-key", metavar="FILE|agent",
              help="SSH private key that signs this machine's commits, or 'agent' [env GITQUEUE_SIGNING_KEY].")
@click.version_option(package_name="gitqueue")
@click.pass_context
def cli(ctx, cache_dir, branch, ssh_command, signing_key):
    """Distributed bulk package builds coordinated through a shared git repository.

    Every command takes --queue URL (or GITQUEUE_QUEUE); worker commands take --worker NAME
    (or GITQUEUE_WORKER). Both may be set in ~/.config/gitqueue/config.toml.
    """
    ctx.obj = {"cache_dir": cache_dir, "branch": branch, "ssh_command": ssh_command, "signing_key": signing_key}


def context(queue_url=None, worker=None) -> Context:
    obj = click.get_current_context().find_root().obj or {}
    return Context(queue_url, worker, obj.get("cache_dir"), obj.get("branch"), obj.get("ssh_command"),
                   obj.get("signing_key"))


from . import commands  # noqa: E402,F401  (registers the commands; see LAZY_COMMANDS for the rest)


def main():
    cli(prog_name="gitqueue")

