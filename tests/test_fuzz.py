"""Hostile input to every record parser and name check: a clear error, never a crash or a hang."""

import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gitqueue import records
from gitqueue.errors import GitqueueError, InvalidName
from gitqueue.layout import MAX_NAME, check_job_name, check_worker_name, heartbeat_path, name_from_path, record_path
from gitqueue.schema import SCHEMAS

from test_layout import FULL

KINDS = sorted(SCHEMAS)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=400))
def test_random_bytes_are_refused_cleanly(kind, data):
    try:
        records.loads(kind, data, f"{kind}.toml")
    except GitqueueError as e:
        assert str(e).startswith(f"{kind}.toml") and "\n" not in str(e)


@FAST
@given(kind=st.sampled_from(KINDS), cut=st.integers(0, 2000), junk=st.binary(max_size=20))
def test_mangled_records_are_refused_cleanly(kind, cut, junk):
    text = records.dumps(kind, FULL[kind])
    mangled = text[: cut % (len(text) + 1)] + junk + text[cut % (len(text) + 1):]
    try:
        rec = records.loads(kind, mangled, "where")
    except GitqueueError as e:
        assert str(e).startswith("where") and "\n" not in str(e)
        return
    records.validate(kind, rec)  # what parses is valid, and writes back the same
    assert records.loads(kind, records.dumps(kind, rec), "again") == rec


@FAST
@given(kind=st.sampled_from(KINDS), key=st.text(max_size=12), value=values)
def test_any_value_in_any_key_is_valid_or_refused(kind, key, value):
    rec = dict(FULL[kind])
    rec[key] = value
    try:
        records.validate(kind, rec)
    except GitqueueError as e:
        assert "\n" not in str(e)
        return
    # A record the validator accepts must survive the round trip through TOML unchanged.
    assert records.loads(kind, records.dumps(kind, rec), "x") == rec


@FAST
@given(st.text(max_size=MAX_NAME + 20))
def test_job_names_are_safe_or_refused(name):
    try:
        checked = check_job_name(name)
    except InvalidName as e:
        assert "\n" not in str(e)
        return
    assert checked == name and 0 < len(name) <= MAX_NAME
    assert "/" not in name and name[0] not in ".-" and name not in (".", "..")
    assert all(c in string.ascii_letters + string.digits + "._+~-" for c in name)
    kind, back = name_from_path(record_path("jobs", name))
    assert (kind, back) == ("jobs", name)


@FAST
@given(st.text(max_size=80))
def test_worker_names_are_safe_or_refused(name):
    try:
        check_worker_name(name)
    except InvalidName:
        return
    assert "/" not in name and not name.startswith((".", "-"))
    assert name_from_path(heartbeat_path(name)) == ("heartbeats", name)


paths = st.lists(st.sampled_from(["jobs", "leases", "..", ".", "a-1", "00", "ff", "x.toml", "..toml", "", "/",
                                  "a-1.toml", "heartbeats", "w1.toml", "a/b"]), min_size=1, max_size=4)


@FAST
@given(paths)
@example(["", "a-1.toml"])  # was accepted as kind "" (found by this test)
def test_paths_outside_the_layout_are_refused(parts):
    path = "/".join(parts)
    try:
        kind, name = name_from_path(path)
    except InvalidName:
        return
    # Anything accepted is exactly the path the layout would give that name.
    assert path in (record_path(kind, name), f"{kind}/{name}.toml")
    assert ".." not in path.split("/") and "" not in path.split("/")
