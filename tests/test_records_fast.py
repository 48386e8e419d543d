"""The fast reading of records against its references.

records._plain reads the plain TOML that records.dumps (tomli_w) writes and returns None for
anything else, which tomllib then reads; records._compile's checks say whether _check would
accept a value. Records come from possibly hostile volunteers, so what either fast path accepts
must mean exactly what the reference makes of it: the same dict with the same types (1, 1.0
and True differ; so do 0.0 and -0.0), the same verdict and the same error.
"""

import math
import tomllib

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gitqueue import records
from gitqueue.errors import RecordInvalid
from gitqueue.schema import SCHEMAS

from test_fuzz import values
from test_layout import FULL

PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same(a, b) -> bool:
    """Equal, with the same types and key order all the way down; floats by value and sign, nan is nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b


def agrees(text: str):
    """Check records' reading of `text` against tomllib's; return the fast path's value or None."""
    try:
        expected = tomllib.loads(text)
    except Exception as e:  # whatever tomllib raises, the records reader must raise too
        assert records._plain(text) is None, f"the fast path accepts what tomllib refuses: {e}"
        with pytest.raises(type(e)) as got:
            records._parse(text)
        assert str(got.value) == str(e)
        return None
    fast = records._plain(text)
    assert fast is None or same(fast, expected), (fast, expected)
    assert same(records._parse(text), expected)
    return fast


def old_loads(kind, data, where):
    """records.loads as it was before the fast paths: tomllib, then _check."""
    try:
        record = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RecordInvalid(f"{where}: malformed TOML: {e}") from None
    records._check(record, SCHEMAS[kind], where)
    return record


def loads_agrees(kind, data):
    """records.loads gives what it gave before the fast paths: the same record or the same error."""
    try:
        expected = old_loads(kind, data, "results/ab/x.toml")
    except RecordInvalid as e:
        with pytest.raises(RecordInvalid) as got:
            records.loads(kind, data, "results/ab/x.toml")
        assert str(got.value) == str(e)
        return
    assert same(records.loads(kind, data, "results/ab/x.toml"), expected)


# --- records as gitqueue writes them --------------------------------------------------------

EXAMPLE = """\
job = "hs-SHA-1.6.4.4nb11"
version = "1.6.4.4nb11"
status = "success"
worker = "bulk"
token = "c77a9defc3491066d8da540e14916867"
finished_at = "2026-12-03T17:35:35Z"
duration = 0.008

[log]
name = "hs-SHA-1.6.4.4nb11-c77a9def.log"
size = 0
sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

[platform]
arch = "x86_64"
os_release = "debian-12"
"""


def test_a_result_as_the_worker_writes_it_is_read_by_the_fast_path():
    fast = agrees(EXAMPLE)
    assert fast is not None and fast["duration"] == 0.008 and fast["log"]["size"] == 0
    assert records.loads("result", EXAMPLE.encode(), "r") == tomllib.loads(EXAMPLE)


def _without_escapes(value):
    """`value` with every string that tomli_w would escape made plain."""
    if isinstance(value, dict):
        return {k: _without_escapes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_escapes(v) for v in value]
    if isinstance(value, str):
        return value.replace('"', "'").replace("\n", " ")
    return value


@pytest.mark.parametrize("kind", sorted(FULL))
def test_every_kind_of_record_is_read_by_the_fast_path(kind):
    """Each kind as records.dumps writes it: tables, arrays of tables, inline tables, arrays."""
    record = _without_escapes(FULL[kind])
    text = records.dumps(kind, record).decode()
    assert agrees(text) is not None, text
    assert records.loads(kind, text.encode(), kind) == record
    # with an escape (a quote, a newline) somewhere, tomllib reads it, to the same record
    if "\\" in records.dumps(kind, FULL[kind]).decode():
        assert records._plain(records.dumps(kind, FULL[kind]).decode()) is None
    loads_agrees(kind, records.dumps(kind, FULL[kind]))


bare_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=8)
keys = bare_keys | st.text(max_size=8)
strings = st.text(max_size=30) | st.text(alphabet=' "\\\t\n\r\x00\x1f\x7f\x85\u2028\ufeff\'#=[]{},.é𝄞a0', max_size=20)
integers = (st.integers() | st.integers(-2**80, 2**80)
            | st.sampled_from([0, -1, 10**17, 10**18 - 1, 10**18, -(10**18 - 1), 10**19, 2**63 - 1, -2**63]))
floats = st.floats() | st.sampled_from([0.1, 0.008, 312.5, 1e300, -0.0, 0.0, 1e16, 1e-05, 123456789012345.6,
                                        math.inf, -math.inf, math.nan])
scalars = st.booleans() | integers | floats | strings
arrays = st.lists(scalars, max_size=4)
tables = st.dictionaries(keys, scalars | arrays, max_size=5)
# what gitqueue's records hold: scalars, arrays (deps), tables ([log]), arrays of tables ([[packages]] or,
# when every table is short, an array of inline tables)
gitqueue_shaped = st.dictionaries(keys, scalars | arrays | tables | st.lists(tables, min_size=1, max_size=3),
                                  max_size=8)
# and anything else tomli_w writes: tables in tables, arrays of arrays, ...
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=15)


@PROPERTY
@given(record=gitqueue_shaped)
@example(record={"a": [], "b": {}, "c": [{}], "d": [{"x": []}], "e": -0.0, "f": 0, "g": ""})
@example(record={"n": [{"name": "a", "size": 1, "sha256": "x" * 64}, {"name": "b"}]})
def test_records_written_by_tomli_w_read_as_tomllib_reads_them(record):
    agrees(tomli_w.dumps(record))


@PROPERTY
@given(record=st.dictionaries(keys, nested, max_size=5))
def test_anything_tomli_w_writes_reads_as_tomllib_reads_it(record):
    agrees(tomli_w.dumps(record))


plain_strings = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'), max_size=30)
plain_scalars = (st.booleans() | st.integers(-(10**18 - 1), 10**18 - 1) | plain_strings
                 | st.floats(0, 1e6).map(lambda x: round(x, 3)))
plain_tables = st.dictionaries(bare_keys, plain_scalars | st.lists(plain_scalars, max_size=4), max_size=5)


@PROPERTY
@given(record=st.dictionaries(bare_keys, plain_scalars | st.lists(plain_scalars, max_size=4) | plain_tables
                              | st.lists(st.dictionaries(bare_keys, plain_scalars | st.lists(plain_scalars, min_size=1,
                                                                                             max_size=4), max_size=5),
                                         min_size=1, max_size=3), min_size=1, max_size=8))
def test_plain_records_are_read_by_the_fast_path(record):
    """Bare keys, no escapes, integers within 18 digits, decimals: the fast path must not fall back."""
    assert agrees(tomli_w.dumps(record)) is not None


# --- hostile text ----------------------------------------------------------------------------

FALLS_BACK = [
    "a = 1\na = 2\n",  # a duplicate key
    "[a]\nx = 1\n\n[a]\ny = 2\n",  # a table twice
    "[a]\n\n[a]\n",
    "a = 1\n\n[a]\nx = 1\n",  # a key, then a table of its name
    'a = "x"\n\n[[a]]\n',
    "[[a]]\nx = 1\n\n[a]\n",  # an array of tables, then a table of its name
    "[a]\n\n[[a]]\n",  # a table, then an array of tables of its name
    "a = [\n    1,\n]\n\n[[a]]\n",  # a static array, then [[a]]
    "a = []\n\n[[a]]\n",
    "a = [\n    { x = 1 },\n]\n\n[[a]]\n",
    "[t]\na = 1\na = 2\n",
    "[[t]]\na = 1\na = 2\n",
    "a = [\n    { x = 1, x = 2 },\n]\n",  # a duplicate key in an inline table
    'key = "x" # comment\n',
    '# comment\nkey = "x"\n',
    'key = "x"\r\n',  # CRLF
    "a = 1\r\nb = 2\r\n",
    "[a]\r\nx = 1\n",
    "a = [\r\n    1,\r\n]\r\n",
    '\ufeffkey = "x"\n',  # a BOM
    'key = "x" \n',  # trailing whitespace
    'key = "x"\t\n',
    "[a] \n",
    "a = [ \n    1,\n]\n",
    "a = [\n    1, \n]\n",
    "a = [\n    1,\n] \n",
    ' key = "x"\n',
    'key  = "x"\n',
    'key="x"\n',
    "key =\t1\n",
    "a = 1_000\n",
    "a = +1\n",
    "a = 0x10\n",
    "a = 0o7\n",
    "a = 0b1\n",
    "a = 1e5\n",
    "a = 1.5e3\n",
    "a = 1E5\n",
    "a = 1.5e-07\n",
    'a = "\\u00e9"\n',
    'a = "\\n"\n',
    'a = "\\""\n',
    'a = "\\\\"\n',
    "a = 01\n",  # leading zeros
    "a = 00\n",
    "a = -01\n",
    "a = 01.5\n",
    "a = 00.5\n",
    "a = inf\n",
    "a = -inf\n",
    "a = +inf\n",
    "a = nan\n",
    "a = 1.\n",
    "a = .5\n",
    "a = 1..5\n",
    "a = -\n",
    "a = --1\n",
    "a = 12345678901234567890\n",  # beyond 18 digits
    "a = 1234567890123456789.5\n",
    "a = TRUE\n",
    "a = True\n",
    "a = 'literal'\n",
    'a = """x"""\n',
    "a = '''x'''\n",
    'a = """\nx"""\n',
    'a = "tab\there"\n',  # control characters, which tomllib allows (tab) or refuses
    'a = "del\x7f"\n',
    'a = "nul\x00"\n',
    'a = "cr\rx"\n',
    "a = 1979-05-27\n",
    "a = 1979-05-27T07:32:00Z\n",
    "a = 07:32:00\n",
    "a = { x = 1 }\n",  # an inline table outside an array: tomli_w never writes one
    "a = {}\n",
    "a = [1, 2]\n",  # arrays on one line, or not as tomli_w indents them
    "a = [ ]\n",
    "a = [\n  1,\n]\n",
    "a = [\n     1,\n]\n",
    "a = [\n\t1,\n]\n",
    "a = [\n \t  1,\n]\n",
    "a = [\n12345,\n]\n",
    "a = [\n    1\n]\n",
    "a = [\n    1,\n    ]\n",
    "a = [\n\n    1,\n]\n",
    "a = [\n    1,,\n]\n",
    "a = [\n    [],\n]\n",
    "a = [\n    [\n        1,\n    ],\n]\n",
    "a = [\n    { x = [] },\n]\n",
    "a = [\n    { x = { y = 1 } },\n]\n",
    "a = [\n    { x = 1, },\n]\n",
    "a = [\n    {x = 1},\n]\n",
    "a = [\n    { x = 1 } ,\n]\n",
    "a = [\n    { x = 1  },\n]\n",
    "a = [\n    { },\n]\n",
    "a = [\n    { x = 1 }},\n]\n",
    "a = [\n    1,\n",  # an array not closed
    "a = [\n",
    "]\n",
    "    1,\n",
    "a.b = 1\n",  # dotted and quoted keys, other headers
    '"a" = 1\n',
    "'a' = 1\n",
    "[a.b]\n",
    '["a"]\n',
    "[ a ]\n",
    "[[ a ]]\n",
    "[a]]\n",
    "[[a]\n",
    "[[a]]]\n",
    "[]\n",
    "[[]]\n",
    "[\n",
    "é = 1\n",
    "a = 1",  # no final newline
    "a = 1\n\x00",
    "a = 1\n\n\n[b]\nc = d\n",
    "= 1\n",
    "a = \n",
    "a\n",
]


@pytest.mark.parametrize("text", FALLS_BACK)
def test_what_the_fast_path_does_not_read_goes_to_tomllib(text):
    assert records._plain(text) is None
    agrees(text)


READ = {
    "a = -0\n": {"a": 0},
    "a = -0.0\n": {"a": -0.0},
    "a = 0.1\n": {"a": 0.1},
    "a = -12.50\n": {"a": -12.5},
    "a = 123456789012345678\n": {"a": 123456789012345678},
    "a = true\nb = false\n": {"a": True, "b": False},
    "a = [\n]\n": {"a": []},
    "a = [\n    1,\n    1.0,\n    true,\n    \"1\",\n    {},\n    { x = 1, y = \"}\" },\n]\n":
        {"a": [1, 1.0, True, "1", {}, {"x": 1, "y": "}"}]},
    "[[a]]\n\n[b]\n\n[[a]]\nx = 1\n": {"a": [{}, {"x": 1}], "b": {}},
    "\n\na = 1\n\n\n": {"a": 1},
    'a = "x\u2028y\x85\ufeff"\n': {"a": "x\u2028y\x85\ufeff"},  # not TOML's newlines, nor Python's here
    'a = "# not a comment"\nb = "x = 1, y = 2 }"\n': {"a": "# not a comment", "b": "x = 1, y = 2 }"},
    "1 = 2\ntrue = false\n-_ = 0\n": {"1": 2, "true": False, "-_": 0},
}


@pytest.mark.parametrize("text", sorted(READ))
def test_what_the_fast_path_reads(text):
    assert agrees(text) is not None
    assert same(records._plain(text), READ[text])


MUTATIONS = (' \t\r\n"\\#[]{}=,._+-e0159xé\ufeff\x00\x7f\'', [
    "", "[log]", "[[packages]]", "[platform]", 'job = "x"', "a = 1", "size = 0", "]", "    1,", "deps = [",
    '    { a = 1 },', "# c", "[a.b]", "key = 1.5e3",
])


@st.composite
def mutated(draw, text):
    """`text` with a few characters or lines inserted, deleted, repeated or moved."""
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        op = draw(st.sampled_from(["insert", "delete", "repeat", "line", "drop line", "repeat line", "move line"]))
        at = draw(st.integers(0, len(text)))
        row = draw(st.integers(0, len(lines) - 1))
        if op == "insert":
            text = text[:at] + draw(st.sampled_from(MUTATIONS[0])) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + 1:]
        elif op == "repeat":
            text = text[:at] + text[at:at + 1] + text[at:]
        else:
            if op == "line":
                lines.insert(row, draw(st.sampled_from(MUTATIONS[1])))
            elif op == "drop line":
                del lines[row]
            elif op == "repeat line":
                lines.insert(row, lines[row])
            else:
                lines.insert(draw(st.integers(0, len(lines) - 1)), lines.pop(row))
            text = "\n".join(lines)
    return text


@PROPERTY
@given(data=st.data(), kind=st.sampled_from(sorted(FULL)))
def test_mutated_records_read_as_tomllib_reads_them(data, kind):
    text = data.draw(mutated(records.dumps(kind, _without_escapes(FULL[kind])).decode()))
    agrees(text)
    loads_agrees(kind, text.encode())


@PROPERTY
@given(data=st.data(), record=gitqueue_shaped)
def test_mutated_tomli_w_output_reads_as_tomllib_reads_it(data, record):
    agrees(data.draw(mutated(tomli_w.dumps(record))))


@PROPERTY
@given(data=st.data())
def test_a_mutated_example_loads_as_before(data):
    loads_agrees("result", data.draw(mutated(EXAMPLE)).encode())


@PROPERTY
@given(text=st.text(alphabet=MUTATIONS[0] + "abtrufls\n\n\n    ", max_size=80) | st.text(max_size=80))
def test_any_text_reads_as_tomllib_reads_it(text):
    agrees(text)


@PROPERTY
@given(kind=st.sampled_from(sorted(SCHEMAS)), data=st.binary(max_size=200))
def test_any_bytes_load_as_before(kind, data):
    loads_agrees(kind, data)


# --- the compiled schema checks against _check ----------------------------------------------

def _places(value, path=()):
    """Every (path to a container, key or index) in a record."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, key
            yield from _places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield path, i
            yield from _places(item, (*path, i))


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _verdict(kind, record):
    """(fast verdict, _check's verdict and message, validate's verdict and message)."""
    fast = records._compile(SCHEMAS[kind])(record)
    try:
        records._check(record, SCHEMAS[kind], kind)
        reference = None
    except RecordInvalid as e:
        reference = str(e)
    try:
        records.validate(kind, record)
        public = None
    except RecordInvalid as e:
        public = str(e)
    return fast, reference, public


schema_strings = (st.sampled_from(["", "a", "a\n", "\na", "gmake-4.4.1", "x86_64", "-a", "a b", "success", "failure",
                                   "3f0c2d" + "0" * 26, "3F0C2D" + "0" * 26, "ab" * 32, "ab" * 32 + "\n", "ab" * 33,
                                   "SHA256:" + "A" * 43, "2026-10-01T00:00:00Z", "2026-10-01T00:00:00Z\n",
                                   "gmake.log", "gmake.tgz", "a\u2028b", "a\x85b", "a\tb", "a\x00b", "retry", "update",
                                   "ssh-ed25519 AAAA", "ssh-ed25519 AAAA==\n", "configure", "{name}.tgz", "*"])
                  | st.integers(0, 5000).map(lambda n: "a" * n)
                  | st.text(alphabet="ab09-._+~/ :TZ{}*?[]\n\t\x00\u2028é", max_size=40))
anything = (values | schema_strings | st.sampled_from([0, -1, 1, 1.5, -0.5, math.nan, math.inf, True, False, None,
                                                       1023, 1024, 101, [], {}, [{}], ["a"]]))


@PROPERTY
@given(data=st.data(), kind=st.sampled_from(sorted(FULL)))
def test_the_compiled_check_agrees_with_check(data, kind):
    record = _copy(FULL[kind])
    for _ in range(data.draw(st.integers(1, 3))):
        places = list(_places(record))
        if not places:
            break
        path, key = data.draw(st.sampled_from(places))
        container = record
        for step in path:
            container = container[step]
        action = data.draw(st.sampled_from(["set", "delete", "add"]))
        if action == "delete":
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[data.draw(st.sampled_from(["surprise", "name", "size", *container]) | st.text(max_size=5))] = (
                _copy(data.draw(anything)))
        else:
            container[key] = _copy(data.draw(anything))  # not the strategy's own [] or {}: they are changed later
    fast, reference, public = _verdict(kind, record)
    assert fast == (reference is None)
    assert public == reference


@PROPERTY
@given(kind=st.sampled_from(sorted(SCHEMAS)), record=anything)
def test_the_compiled_check_agrees_with_check_on_anything(kind, record):
    fast, reference, public = _verdict(kind, record)
    assert fast == (reference is None)
    assert public == reference


@pytest.mark.parametrize("kind", sorted(FULL))
def test_the_full_records_pass_both_checks(kind):
    assert _verdict(kind, FULL[kind]) == (True, None, None)


TRICKY = [None, True, False, 0, 1, -1, 2**64, 0.0, -0.0, 1.5, -0.5, math.nan, math.inf, -math.inf, "", "a", "a\n",
          "\n", "a\tb", "a\x00", "a\x7f", "a\x85", "a\u2028", "a" * 20, "a" * 65, "a" * 5000, "success", "retry",
          "ab" * 32, "ab" * 32 + "\n", "3f0c2d" + "0" * 26, "2026-10-01T00:00:00Z", "2026-10-01T00:00:00Z\n",
          [], [1], ["a"], [{}], {}, {"name": "x"}, {"surprise": 1}]


def _variants(value):
    """Values about the limits of the schema near `value`: arrays of as many items as maxItems
    allows and one more, objects of as many keys as maxProperties allows and one more, keys
    that propertyNames refuses."""
    if isinstance(value, list) and value:
        for n in (16, 17, 32, 33, 64, 65, 512, 513, 1000, 1001):
            yield value[:1] * n
    if isinstance(value, dict):
        for n in (16, 17, 32, 33):
            yield {f"K{i}": "v" for i in range(n)}
        for name in ("1x", "a-b", "a.b", "", "_", "x" * 64, "x" * 65, "é"):
            yield {name: "v"}


@pytest.mark.parametrize("kind", sorted(FULL))
def test_the_compiled_check_agrees_with_check_everywhere(kind):
    """Every tricky value in every place of a full record, and every key missing in turn."""
    for path, key in _places(FULL[kind]):
        here = FULL[kind]
        for step in (*path, key):
            here = here[step]
        for value in [*TRICKY, *_variants(here), "missing"]:
            record = _copy(FULL[kind])
            container = record
            for step in path:
                container = container[step]
            if value == "missing":
                del container[key]
            else:
                container[key] = value
            fast, reference, public = _verdict(kind, record)
            assert fast == (reference is None), (path, key, value)
            assert public == reference


def test_an_integer_too_long_for_python_is_a_malformed_record():
    # tomllib's int() refuses more than 4,300 digits with a ValueError, which the hook once let
    # through as a traceback instead of a one-line refusal.
    data = b'job = "a-1"\nversion = "1"\nstatus = "success"\nduration = ' + b"9" * 5000 + b"\n"
    with pytest.raises(RecordInvalid, match=r"^results/a0/a-1.toml: malformed TOML: .*digits"):
        records.loads("result", data, "results/a0/a-1.toml")


def test_a_setting_above_its_maximum_is_refused_by_both_checks():
    settings = {"format_version": 1, "name": "q", "lease_ttl": 60}
    records.validate("queue", settings)
    for attempts, good in ((100, True), (101, False)):
        record = {**settings, "max_attempts": attempts}
        assert records._compile(SCHEMAS["queue"])(record) is good
        if good:
            records.validate("queue", record)
        else:
            with pytest.raises(RecordInvalid, match=r"queue.toml: max_attempts: must be at most 100, got 101"):
                records.validate("queue", record, "queue.toml")
