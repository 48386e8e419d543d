"""gitqueue: distributed bulk package builds coordinated through a shared git repository.

The public API (docs/library.md): `open_queue`, `Queue`, `Worker`, `WorkerSettings`, `Claim`,
`Heartbeat`, `AlreadyRecorded` and the errors. Each is imported on first use, so `import gitqueue`
(and the CLI's start-up) costs no more than this file.
"""

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "open_queue": "connection",
    "Queue": "client",
    "Worker": "worker",
    "WorkerSettings": "config",
    "Claim": "lease",
    "Heartbeat": "lease",
    "AlreadyRecorded": "lease",
    "GitqueueError": "errors",
    "InvalidName": "errors",
    "RecordInvalid": "errors",
    "ImportRefused": "errors",
    "QueueNotFound": "errors",
    "RemoteError": "errors",
    "PushRejected": "errors",
    "PushRefused": "errors",
    "NothingReady": "errors",
    "QueueFinished": "errors",
    "LeaseLost": "errors",
    "UnknownJob": "errors",
    "UnknownWorker": "errors",
    "RepositoryDamaged": "errors",
    "TooManyLeases": "errors",
    "NoLog": "errors",
    "SettingInvalid": "errors",
    "PackageRefused": "errors",
    "TransferError": "transfer",
    "PinMismatch": "platform",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
