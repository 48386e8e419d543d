"""Shared pytest fixtures for gitqueue's tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Every gitqueue the tests start (the CLI, workers, hooks) runs this checkout's code, whatever
# the interpreter has installed.
_CHECKOUT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_CHECKOUT, os.environ.get("PYTHONPATH")) if p)

from sshd import SshServer, SshServerError, sshd_available  # noqa: E402


def _unavailable(reason: str) -> None:
    """Skip locally, but fail under CI, where sshd must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"sshd unavailable under CI: {reason}", pytrace=False)
    pytest.skip(f"sshd unavailable: {reason}")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A running throwaway sshd on 127.0.0.1 (see tests/sshd.py), one per session."""
    reason = sshd_available()
    if reason is not None:
        _unavailable(reason)
    yield from _running(SshServer(tmp_path_factory.mktemp("sshd")))


def _running(server: SshServer) -> Iterator[SshServer]:
    """`server` started (or the test skipped, failed under CI), and stopped afterwards."""
    try:
        server.start()
    except SshServerError as e:
        server.stop()
        _unavailable(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def master_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An sshd deployed as README asks of a master (AcceptEnv GIT_PROTOCOL), one per session."""
    reason = sshd_available()
    if reason is not None:
        _unavailable(reason)
    yield from _running(SshServer(tmp_path_factory.mktemp("sshd-master"), accept_env=["GIT_PROTOCOL"]))


@pytest.fixture(scope="session")
def farm_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An sshd whose accounts each have their own authorized_keys (see tests/farm.py)."""
    from farm import unavailable

    reason = sshd_available() or unavailable()
    if reason is not None:
        _unavailable(reason)
    import shutil
    import tempfile

    # sshd reads an account's authorized_keys as that account: the directory must be open to it.
    directory = tempfile.mkdtemp(prefix="gq-farm-sshd-", dir="/tmp")
    os.chmod(directory, 0o755)
    try:
        # AcceptEnv GIT_PROTOCOL, as README asks of a master: workers fetch with protocol v2 through
        # the forced command, and a new worker's cache leaves the job records out (test_partial.py).
        yield from _running(SshServer(directory, per_user_keys=True, expose_auth_info=True,
                                      accept_env=["GIT_PROTOCOL"]))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def make_farm(farm_sshd, tmp_path_factory):
    """make_farm(jobs, lease_ttl=60, limits=None) -> a deployed master (tests/farm.py Farm)."""
    from farm import Farm

    made = []

    def make(jobs, **kwargs):
        farm = Farm(farm_sshd, tmp_path_factory.mktemp("farm-keys"), jobs, **kwargs)
        made.append(farm)
        return farm

    yield make
    for farm in made:
        farm.close()
