"""Fault injection (issue 7): a short seeded run of tests/faults.py; bench/faults.py runs longer.

The seed is printed; rerun one with GITQUEUE_FAULT_SEED=N.
"""

import os
import random

import pytest

from faults import Harness


@pytest.mark.ssh
def test_a_build_survives_kills_cuts_reclaims_and_skewed_clocks(tmp_path, sshd):
    seed = int(os.environ.get("GITQUEUE_FAULT_SEED", random.randrange(10**6)))
    print(f"fault injection seed {seed}")
    harness = Harness(tmp_path, sshd, seed, jobs=60, hosts=3, per_host=2, ttl=4)
    try:
        figures = harness.run(deadline=int(os.environ.get("GITQUEUE_FAULT_DEADLINE", 300)), fault_every=1.0,
                              faults_for=25)
    finally:
        harness.stop()
    print(figures)
    assert figures["workers killed"] > 0 and figures["connections cut"] > 0
    assert figures["gc runs"] > 0 and figures["cache gc runs"] > 0
    assert figures["duplicate results"] == 0 and figures["lost jobs"] == 0
    assert figures["successes"] + figures["failures"] + figures["indirect"] == 60
