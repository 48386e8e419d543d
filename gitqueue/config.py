"""This machine's settings as a worker: one list of fields for the config file, the CLI and `Worker`.

`WorkerSettings` is that list. Each of its fields is a key of the config file
(~/.config/gitqueue/config.toml); a field whose metadata names an `option` is also an option of
`gitqueue work`. The config file's other keys say how to reach the queue: they are the keyword
arguments of `gitqueue.open_queue` listed in CONNECTION_KEYS.
"""

import dataclasses
import math
from collections.abc import Mapping

from .errors import SettingInvalid

# The config file's keys that `open_queue` takes (each a string).
CONNECTION_KEYS = ("queue", "worker", "cache_dir", "ssh_command", "branch", "signing_key")
PLATFORM_KEYS = ("arch", "os_release", "pkgsrc_branch", "pkgsrc_revision")


def _field(default, doc: str, option: str | None = None, minimum: float | None = None):
    metadata = {"doc": doc, "option": option, "minimum": minimum}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """How this machine builds and moves packages; every value is checked when it is made."""

    host: str | None = _field(None, "This machine's name in leases and heartbeats (the CLI's default: its nodename).")
    # What the worker is, when detection is wrong or impossible (see platform.describe).
    arch: str | None = _field(None, "Machine architecture (default: uname -m).")
    os_release: str | None = _field(None, "OS release (default: uname -r; on Linux ID-VERSION_ID).")
    pkgsrc_branch: str | None = _field(None, "pkgsrc branch (default: what the checkout says).")
    pkgsrc_revision: str | None = _field(None, "pkgsrc revision (default: what the checkout says).")
    # Building pkgsrc: the tree, the command that names a directory's PKGNAME, where binary
    # packages of dependencies go, and rsync's ssh for the package tree.
    pkgsrc_dir: str | None = _field(None, "The pkgsrc checkout the build command uses.")
    pkgname_command: str | None = _field(
        None, "Asked in a job's directory for the PKGNAME the tree builds (with pkgsrc_dir: "
              "bmake show-var VARNAME=PKGNAME).")
    packages_dir: str | None = _field(
        None, "Where dependencies' packages are downloaded, into its All/ (default: in the cache); for pbulk, "
              "pbulk.conf's packages.")
    # A clean system for every job (pbulk's client-clean, a sandbox reset): a command line run by
    # /bin/sh before each build. Failing, it is this worker's trouble: the job goes back and the
    # worker stops.
    before_build: str | None = _field(None, "Run (by /bin/sh) before every build, e.g. pbulk's client-clean.")
    keep_phase_logs: bool = _field(False, "Upload the build's phase logs ($GITQUEUE_LOGS) with a success too, "
                                          "not only with a failure.")
    rsync_rsh: str | None = _field(None, "The ssh command of rsync (default: the queue's ssh command).")
    # How hard to retry rsync transfers before giving a job back.
    transfer_attempts: int = _field(5, "Tries of each upload or download.", minimum=1)
    transfer_backoff: float = _field(1.0, "Seconds before the second try; doubled for each next.", minimum=0)
    network_timeout: float | None = _field(
        None, "Seconds a fetch, push or rsync may go without progress before it is abandoned.", minimum=0)
    heartbeat_every: float | None = _field(
        None, "Seconds between heartbeats (default: TTL/4).", option="--heartbeat", minimum=0)
    max_wait: float = _field(60.0, "Longest pause between claims while nothing is ready.", option="--max-wait",
                             minimum=0)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            if isinstance(f.default, bool):
                if not isinstance(value, bool):
                    raise SettingInvalid(f.name, "must be true or false")
                continue
            if f.metadata["minimum"] is None:
                if not isinstance(value, str):
                    raise SettingInvalid(f.name, "must be a string")
                continue
            whole = isinstance(f.default, int) and not isinstance(f.default, float)
            kind = int if whole else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
                    or value < f.metadata["minimum"]:
                raise SettingInvalid(f.name, "must be a positive number")

    @classmethod
    def from_mapping(cls, values: Mapping) -> "WorkerSettings":
        """The settings named in `values` (a config file's table); keys not fields are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def platform(self, detect=None) -> dict:
        """This worker's description: detected (platform.describe), overridden by the settings."""
        from .platform import describe

        overrides = {key: getattr(self, key) for key in PLATFORM_KEYS}
        return (detect or describe)(overrides, self.pkgsrc_dir)

    def transfer(self, rsh: str | None) -> dict:
        """upload()/download() keyword arguments: rsync over `rsh`, with these retries and timeout."""
        options = {"rsh": rsh, "attempts": self.transfer_attempts, "backoff": self.transfer_backoff}
        if self.network_timeout:
            options["io_timeout"] = max(1, int(self.network_timeout))
        return options


def config_keys() -> tuple[str, ...]:
    """Every key the config file may hold."""
    return CONNECTION_KEYS + tuple(f.name for f in dataclasses.fields(WorkerSettings))


def check_connection(values: Mapping) -> None:
    """Refuse a connection key (CONNECTION_KEYS) of `values` that is not a string."""
    for key in CONNECTION_KEYS:
        if key in values and not isinstance(values[key], str):
            raise SettingInvalid(key, "must be a string")


def options() -> list[dataclasses.Field]:
    """The fields that are also options of `gitqueue work`."""
    return [f for f in dataclasses.fields(WorkerSettings) if f.metadata["option"]]
