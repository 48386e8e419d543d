"""Errors raised by the gitqueue library; the CLI turns each into one `Error:` line."""

# Exit statuses shared by the library and the CLI (documented in README.md).
EXIT_ERROR = 1
EXIT_NOTHING_READY = 3
EXIT_FINISHED = 4
EXIT_LEASE_LOST = 5


class GitqueueError(Exception):
    """Base class: a failure a user can act on, described in one line."""

    exit_code = EXIT_ERROR
    # The constructor's keyword arguments after the message, kept as attributes of the same
    # names: what error_to_json writes and error_from_json passes back.
    fields: tuple[str, ...] = ()


class InvalidName(GitqueueError):
    """A job or worker name that could escape the repository layout."""


class RecordInvalid(GitqueueError):
    """A record that does not match its schema."""


class ImportRefused(GitqueueError):
    """A dependency graph that cannot be imported (cycle, unknown dependency, bad line)."""


class QueueNotFound(GitqueueError):
    """The URL does not hold a queue (or the repository is unreachable)."""


class RemoteError(GitqueueError):
    """Talking to the queue repository failed (network, refused push, lock)."""


class PushRejected(RemoteError):
    """The remote branch moved since we read it: refetch and retry."""


class NothingReady(GitqueueError):
    """No job is ready now; retry later (after `retry_after` seconds, when known)."""

    exit_code = EXIT_NOTHING_READY
    fields = ("retry_after",)

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class QueueFinished(GitqueueError):
    """Every job has a final state: nothing is left to do."""

    exit_code = EXIT_FINISHED


class LeaseLost(GitqueueError):
    """The job is not held by this worker (never was, reclaimed, or reported already)."""

    exit_code = EXIT_LEASE_LOST


class UnknownJob(GitqueueError):
    """A job name that the queue does not have."""


class UnknownWorker(GitqueueError):
    """A worker name that the queue's registry does not have."""


class RepositoryDamaged(GitqueueError):
    """An object that should be in a repository is missing or unreadable."""


class PushRefused(RemoteError):
    """The server refused a push on its merits (its hook), not because the branch moved."""


class TooManyLeases(GitqueueError):
    """The worker already holds as many live leases as the queue allows (max_leases)."""


class NoLog(GitqueueError):
    """A build log that is not there, cannot be fetched, or does not match its result."""


class SettingInvalid(GitqueueError):
    """A setting (a config file key, a `WorkerSettings` field) whose value cannot be used."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key} {problem}")
        self.key = key
        self.problem = problem


class PackageRefused(GitqueueError):
    """A package file that a job's result may not name: nothing was uploaded or recorded."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}; nothing uploaded or recorded")
        self.path = path
        self.problem = problem


def error_to_json(error: GitqueueError) -> dict:
    """{"type", "message", fields...}: an error of this library as JSON, for another process."""
    return {"type": type(error).__name__, "message": str(error),
            **{name: getattr(error, name) for name in error.fields}}


def error_from_json(data: dict) -> GitqueueError:
    """The error that error_to_json described: of its class when one loaded in this process has
    that name and a (message, **fields) constructor, else a GitqueueError with its message."""
    kinds: dict[str, type[GitqueueError]] = {}
    todo = [GitqueueError]
    while todo:
        kind = todo.pop()
        kinds.setdefault(kind.__name__, kind)
        todo.extend(kind.__subclasses__())
    kind = kinds.get(str(data.get("type")), GitqueueError)
    if kind.__init__ is not Exception.__init__ and not kind.fields:
        kind = GitqueueError  # made from parts (SettingInvalid), not from a message
    return kind(data["message"], **{name: data.get(name) for name in kind.fields})
