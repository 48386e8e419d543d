"""The `gitqueue` command: thin click wrappers over the library.

Exit statuses: 0 done; 1 error (one `Error:` line); 2 usage error; 3 nothing ready now, retry
later (claim); 4 queue finished, nothing left to do (claim); 5 the job is not (or no longer)
held by this worker (report, release, heartbeat).
"""

import os

import click

from ..errors import GitqueueError
from ..text import printable


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
        raise click.ClickException(f"{path}: {e}") from None
    from ..config import WorkerSettings, check_connection, config_keys
    from ..errors import SettingInvalid

    unknown = set(data) - set(config_keys())
    if unknown:
        raise click.ClickException(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    try:
        check_connection(data)
        WorkerSettings.from_mapping(data)
    except SettingInvalid as e:
        raise click.ClickException(f"{path}: {e}") from None
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
        """Open the queue at `url` (default: the --queue option) as this context's worker."""
        from ..connection import open_queue

        url = url or self.queue_url
        if not url:
            raise click.UsageError("no queue given: pass --queue URL, set GITQUEUE_QUEUE or 'queue' in "
                                   + _config_path())
        clock = None
        offset = os.environ.get("GITQUEUE_CLOCK_OFFSET")
        if offset:
            # For tests of clock skew: this process's clock runs OFFSET seconds off. gitqueue
            # never compares clocks of different machines, and this lets anyone check that.
            import time

            try:
                seconds = float(offset)
            except ValueError:
                raise click.ClickException(f"GITQUEUE_CLOCK_OFFSET={offset!r}: expected seconds") from None
            clock = lambda: time.time() + seconds  # noqa: E731
        return open_queue(url, worker=self.worker_name, cache_dir=self.cache_dir, ssh_command=self.ssh_command,
                          signing_key=self.signing_key, branch=self.branch,
                          agent_socket=os.environ.get("SSH_AUTH_SOCK"),
                          reuse_connections=os.environ.get("GITQUEUE_SSH_REUSE") != "0",
                          network_timeout=self.config.get("network_timeout") or None, clock=clock,
                          notice=lambda message: click.echo(printable(message), err=True))

    def ssh(self, command=None) -> str:
        """`command` (default: the --ssh-command) with the connection reuse that open() gives ssh."""
        from ..connection import ssh_with_reuse

        return ssh_with_reuse(command or self.ssh_command, self.cache_dir,
                              agent_socket=os.environ.get("SSH_AUTH_SOCK"),
                              reuse=os.environ.get("GITQUEUE_SSH_REUSE") != "0")

    def settings(self, **options):
        """This worker's WorkerSettings: the config file's, the command line's `options` winning.

        rsync reaches the package tree through the ssh of the queue (or rsync_rsh), reused.
        """
        from ..config import WorkerSettings

        values = {**self.config, **{key: value for key, value in options.items() if value is not None}}
        values["host"] = self.host
        values["rsync_rsh"] = self.ssh(self.config.get("rsync_rsh"))
        return WorkerSettings.from_mapping(values)

    def worker(self):
        if not self.worker_name:
            raise click.UsageError("no worker name given: pass --worker NAME, set GITQUEUE_WORKER or "
                                   "'worker' in " + _config_path())
        return self.worker_name


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
    "work": "work",
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
@click.option("--ssh-command", metavar="CMD",
              help="ssh program and options for ssh:// queues [env GITQUEUE_SSH_COMMAND].")
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

