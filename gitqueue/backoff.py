"""Waiting before trying again: delays that double up to a bound, each jittered.

Workers that failed together (a push that lost the race, a remote that went away) would retry
together and collide again; a random factor on every delay spreads them out.
"""

import random


def jittered(delay: float, low: float = 0.5, high: float = 1.5) -> float:
    """`delay` times a random factor between `low` and `high`."""
    return delay * random.uniform(low, high)


class Backoff:
    """Successive delays: `first`, doubling each time up to `cap`, each `jittered` by (`low`, `high`).

    The n-th delay (from 0) lies between `low` and `high` times min(first * 2**n, cap).
    """

    def __init__(self, first: float, cap: float, low: float = 0.5, high: float = 1.5):
        self.first = first
        self.cap = cap
        self.low = low
        self.high = high
        self.base = min(first, cap)

    def next(self) -> float:
        """The next delay, in seconds."""
        delay = jittered(self.base, self.low, self.high)
        self.base = min(self.base * 2, self.cap)
        return delay

    def reset(self) -> None:
        """Start again from `first` (after a success)."""
        self.base = min(self.first, self.cap)
