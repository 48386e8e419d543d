"""Retry delays: they grow, stay within their bounds, and start again after a reset."""

from hypothesis import given
from hypothesis import strategies as st

from gitqueue.backoff import Backoff, jittered

seconds = st.floats(min_value=0.001, max_value=1000.0)
factors = st.tuples(st.floats(min_value=0.0, max_value=2.0), st.floats(min_value=0.0, max_value=2.0)).map(sorted)


@given(first=seconds, cap=seconds, factor=factors, count=st.integers(min_value=1, max_value=40))
def test_each_delay_is_within_its_bounds(first, cap, factor, count):
    low, high = factor
    backoff = Backoff(first, cap, low, high)
    for n in range(count):
        base = min(first * 2 ** n, cap)
        assert low * base * (1 - 1e-9) <= backoff.next() <= high * base * (1 + 1e-9)


@given(first=seconds, cap=seconds)
def test_delays_double_until_the_cap_when_jitter_cannot_hide_it(first, cap):
    # With factors 1 to 1.5 each delay is more than the one before until the cap is reached.
    backoff = Backoff(first, cap, 1.0, 1.5)
    delays = [backoff.next() for _ in range(30)]
    for n, (a, b) in enumerate(zip(delays, delays[1:])):
        if first * 2 ** (n + 1) <= cap:
            assert a < b
    assert max(delays) <= 1.5 * cap * (1 + 1e-9)


def test_the_defaults_spread_half_either_way_and_reset_starts_again():
    backoff = Backoff(0.2, 60.0)
    first = [backoff.next() for _ in range(12)]
    assert 0.1 <= first[0] <= 0.3 and all(30.0 <= d <= 90.0 for d in first[10:])
    backoff.reset()
    assert 0.1 <= backoff.next() <= 0.3
    assert len({round(backoff.next(), 9) for _ in range(5)}) > 1  # jittered, not one value


@given(delay=seconds, factor=factors)
def test_jittered_stays_between_its_factors(delay, factor):
    low, high = factor
    assert low * delay * (1 - 1e-9) <= jittered(delay, low, high) <= high * delay * (1 + 1e-9)
