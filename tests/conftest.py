"""Shared pytest fixtures for gitqueue's tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Every process a test starts (`python -m gitqueue ...`, hooks, workers) imports this checkout's
# gitqueue, whichever one the shared Python has installed and whatever the working directory.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(__file__).resolve().parents[1])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

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
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    try:
        server.start()
    except SshServerError as e:
        server.stop()
        _unavailable(str(e))
    try:
        yield server
    finally:
        server.stop()
