"""Queue records: TOML text to dicts and back, each validated against its JSON Schema."""

import re
import tomllib
from collections.abc import Callable

from .errors import RecordInvalid
from .schema import SCHEMAS

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}
_pattern_cache: dict[str, re.Pattern] = {}


def _check(value, schema, where):
    """Validate `value` against the subset of JSON Schema that gitqueue's schemas use."""
    t = schema.get("type")
    if t == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise RecordInvalid(f"{where}: expected an integer, got {value!r}")
    elif t == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise RecordInvalid(f"{where}: expected a number, got {value!r}")
    elif t is not None and not isinstance(value, _TYPES[t]):
        raise RecordInvalid(f"{where}: expected {t}, got {type(value).__name__}")
    if "const" in schema and value != schema["const"]:
        raise RecordInvalid(f"{where}: must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise RecordInvalid(f"{where}: must be one of {', '.join(schema['enum'])}, got {value!r}")
    if "minimum" in schema and value < schema["minimum"]:
        raise RecordInvalid(f"{where}: must be at least {schema['minimum']}, got {value!r}")
    if "maximum" in schema and value > schema["maximum"]:
        raise RecordInvalid(f"{where}: must be at most {schema['maximum']}, got {value!r}")
    if t == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise RecordInvalid(f"{where}: longer than {schema['maxLength']} characters")
        pattern = schema.get("pattern")
        if pattern is not None:
            rx = _compiled_pattern(pattern)
            # JSON Schema's (ECMA's) "$" is the end of the text; Python's also matches before a
            # final newline, which would let "name\n" through.
            m = rx.search(value)
            if m is None or (pattern.endswith("$") and m.end() != len(value)):
                raise RecordInvalid(f"{where}: {_shown(value)} is not a valid value")
    elif t == "array":
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise RecordInvalid(f"{where}: more than {schema['maxItems']} items")
        items = schema.get("items")
        if items is not None:
            for i, item in enumerate(value):
                _check(item, items, f"{where}[{i}]")
    elif t == "object":
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            raise RecordInvalid(f"{where}: more than {schema['maxProperties']} keys")
        names = schema.get("propertyNames")
        if names is not None:
            for key in value:
                _check(key, names, f"{where} key")
        props = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                raise RecordInvalid(f"{where}: missing required key {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = props.get(key)
            if sub is None:
                if extra is False:
                    raise RecordInvalid(f"{where}: unknown key {key!r}")
                if isinstance(extra, dict):
                    _check(item, extra, _join(where, key))
            else:
                _check(item, sub, _join(where, key))


def _compiled_pattern(pattern: str) -> re.Pattern:
    rx = _pattern_cache.get(pattern)
    if rx is None:
        rx = _pattern_cache[pattern] = re.compile(pattern)
    return rx


def _shown(value: str) -> str:
    """A bad value as an error message shows it: repr (no raw control characters), cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(where: str, key: str) -> str:
    """'results/39/a-1.toml' + 'status' -> 'results/39/a-1.toml: status'; nested keys use dots."""
    if not where:
        return key
    if where.endswith(".toml") or ":" not in where:
        return f"{where}: {key}" if where.endswith(".toml") else f"{where}.{key}"
    return f"{where}.{key}"


_ABSENT = object()


def _compile(schema: dict) -> Callable[[object], bool]:
    """A function telling whether _check(value, schema, ...) would pass, several times faster.

    It applies the same keywords with the same tests, without following where a value is or
    building messages: validate() calls _check when it says no, so errors read as they did.
    """
    t = schema.get("type")
    const = schema.get("const", _ABSENT)
    enum = schema.get("enum", _ABSENT)
    minimum = schema.get("minimum", _ABSENT)
    maximum = schema.get("maximum", _ABSENT)

    def allowed(value) -> bool:  # const, enum, minimum and maximum, which _check applies to every type
        return ((const is _ABSENT or value == const) and (enum is _ABSENT or value in enum)
                and (minimum is _ABSENT or not value < minimum) and (maximum is _ABSENT or not value > maximum))

    if const is _ABSENT and enum is _ABSENT and minimum is _ABSENT and maximum is _ABSENT:
        allowed = _always
    if t == "integer":
        return lambda value: isinstance(value, int) and not isinstance(value, bool) and allowed(value)
    if t == "number":
        return lambda value: (isinstance(value, (int, float)) and not isinstance(value, bool)
                              and value == value and allowed(value))
    if t is None:
        return allowed
    of_type = _TYPES[t]
    if t == "string":
        max_length = schema.get("maxLength")
        pattern = schema.get("pattern")
        rx = None if pattern is None else _compiled_pattern(pattern)
        to_the_end = pattern is not None and pattern.endswith("$")

        def string(value) -> bool:
            if not isinstance(value, str) or not allowed(value):
                return False
            if max_length is not None and len(value) > max_length:
                return False
            if rx is not None:
                m = rx.search(value)
                if m is None or (to_the_end and m.end() != len(value)):
                    return False
            return True
        return string
    if t == "array":
        max_items = schema.get("maxItems")
        items = None if schema.get("items") is None else _compile(schema["items"])

        def array(value) -> bool:
            if not isinstance(value, list) or not allowed(value):
                return False
            if max_items is not None and len(value) > max_items:
                return False
            return items is None or all(map(items, value))
        return array
    if t == "object":
        max_properties = schema.get("maxProperties")
        names = None if schema.get("propertyNames") is None else _compile(schema["propertyNames"])
        properties = {key: _compile(sub) for key, sub in schema.get("properties", {}).items()}
        required = tuple(schema.get("required", ()))
        extra = schema.get("additionalProperties", True)
        closed = extra is False
        extra_check = _compile(extra) if isinstance(extra, dict) else None

        def mapping(value) -> bool:
            if not isinstance(value, dict) or not allowed(value):
                return False
            if max_properties is not None and len(value) > max_properties:
                return False
            if names is not None and not all(map(names, value)):
                return False
            for key in required:
                if key not in value:
                    return False
            for key, item in value.items():
                check = properties.get(key)
                if check is None:
                    if closed or (extra_check is not None and not extra_check(item)):
                        return False
                elif not check(item):
                    return False
            return True
        return mapping
    return lambda value: isinstance(value, of_type) and allowed(value)


def _always(value) -> bool:
    return True


_validators: dict[str, Callable[[object], bool]] = {}


def validate(kind: str, record: dict, where: str = "") -> dict:
    """Check `record` against the schema of `kind`; return it or raise RecordInvalid."""
    valid = _validators.get(kind)
    if valid is None:
        valid = _validators[kind] = _compile(SCHEMAS[kind])
    if not valid(record):
        _check(record, SCHEMAS[kind], where or kind)  # raises, naming the place and the reason
    return record


# The plain TOML that dumps() (tomli_w) writes for gitqueue's records, read without tomllib,
# which costs several times more. Lines are exactly what tomli_w emits: `key = value`, `[name]`,
# `[[name]]`, blank lines, and arrays written one item a line (`key = [`, `    item,`, `]`).
# Values are basic strings without escapes or control characters, decimal integers of at most
# 18 digits, decimal fractions (no exponent, nan or inf), true, false, `[]`, and in arrays
# inline tables of such scalars. Keys and table names are bare. Anything else (a comment, an
# escape, other whitespace, CR, a quoted or dotted key, a duplicate key or table...) makes
# _plain() return None and tomllib reads the text: records are written by volunteers, and what
# this reader accepts must mean exactly what it means to tomllib (tests/test_records_fast.py).
_KEY = "[A-Za-z0-9_-]+"
_CHARS = r'[^"\\\x00-\x1f\x7f]*'  # what a string may hold here: no escape, no control character
_NUMBER = r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]+)?"
_SCALAR = '"' + _CHARS + '"|' + _NUMBER + "|true|false"
_KEY_RX = re.compile(_KEY)
_SCALAR_RX = re.compile(_SCALAR)
# key = "string" (group 2) or key = number, true, false, [] or the [ of an array (group 3)
_KEY_VALUE_RX = re.compile("(" + _KEY + ') = (?:"(' + _CHARS + ')"|(' + _NUMBER + r"|true|false|\[\]?))")
# key = scalar, then ", " before the next pair or " }" at the end of an inline table
_INLINE_PAIR_RX = re.compile("(" + _KEY + ") = (" + _SCALAR + r")(, | \})")


def _scalar(text: str):
    """The value of one scalar that _SCALAR_RX matched as a whole."""
    first = text[0]
    if first == '"':
        return text[1:-1]
    if first == "t":
        return True
    if first == "f":
        return False
    return float(text) if "." in text else int(text)


def _inline_table(text: str) -> dict | None:
    """`{}` or `{ key = scalar, key = scalar }` exactly, else None."""
    if text == "{}":
        return {}
    if not text.startswith("{ "):
        return None
    table: dict = {}
    pos = 2
    while True:
        m = _INLINE_PAIR_RX.match(text, pos)
        if m is None:
            return None
        key, value, separator = m.groups()
        if key in table:
            return None
        table[key] = _scalar(value)
        pos = m.end()
        if separator == " }":
            return table if pos == len(text) else None


def _plain(text: str) -> dict | None:
    """`text` parsed as tomllib would, if it is plain TOML as dumps() writes it; else None."""
    if not text.endswith("\n"):
        return None
    root: dict = {}
    table = root  # where key lines go: the root, then the table of the last header
    arrays_of_tables: set[str] = set()  # names defined by [[name]], which may be appended to
    array: list | None = None  # the array whose item lines are being read
    key_value = _KEY_VALUE_RX.fullmatch
    for line in text[:-1].split("\n"):
        if array is None:
            m = key_value(line)
            if m is not None:
                key, string, value = m.groups()
                if key in table:
                    return None
                if string is not None:
                    table[key] = string
                elif value == "[":
                    table[key] = array = []
                elif value == "[]":
                    table[key] = []
                else:
                    table[key] = _scalar(value)
            elif not line:
                continue
            elif line.startswith("[[") and line.endswith("]]"):
                name = line[2:-2]
                if _KEY_RX.fullmatch(name) is None:
                    return None
                table = {}
                if name in arrays_of_tables:
                    root[name].append(table)
                elif name in root:
                    return None
                else:
                    root[name] = [table]
                    arrays_of_tables.add(name)
            elif line.startswith("[") and line.endswith("]"):
                name = line[1:-1]
                if _KEY_RX.fullmatch(name) is None or name in root:
                    return None
                root[name] = table = {}
            else:
                return None
        elif line == "]":
            array = None
        elif line.startswith("    ") and line.endswith(","):
            item = line[4:-1]
            if item.startswith("{"):
                inline = _inline_table(item)
                if inline is None:
                    return None
                array.append(inline)
            elif _SCALAR_RX.fullmatch(item):
                array.append(_scalar(item))
            else:
                return None
        else:
            return None
    return root if array is None else None


def _parse(text: str) -> dict:
    """tomllib.loads(text): the same value, or the same error."""
    record = _plain(text)
    return tomllib.loads(text) if record is None else record


def loads(kind: str, data: bytes, where: str) -> dict:
    """Parse and validate one TOML record; `where` names it in errors (e.g. its path)."""
    try:
        record = _parse(data.decode("utf-8"))
    except ValueError as e:  # undecodable UTF-8, a TOMLDecodeError, or int() of more than 4,300 digits
        raise RecordInvalid(f"{where}: malformed TOML: {e}") from None
    return validate(kind, record, where)


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc(t: float) -> str:
    """A record time (ISO 8601, UTC, seconds) for the epoch time `t`."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime(TIME_FORMAT)


_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")


def epoch(stamp) -> float | None:
    """The epoch time of a record time, or None when it is missing or malformed."""
    from datetime import UTC, datetime

    # Not strptime: its module (and the locale tables it builds) costs a worker 0.2 MiB.
    match = _TIME.fullmatch(stamp) if isinstance(stamp, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second = map(int, match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except ValueError:  # a day or hour out of range
        return None


_IDENTITY = {"job": "name", "lease": "job", "result": "job", "decline": "job", "lapsed": "job", "retry": "job",
             "heartbeat": "worker", "worker": "name"}


def load_at(kind: str, data: bytes, path: str) -> dict:
    """Parse and validate the record stored at `path`, which must name the same job or worker."""
    from .layout import name_from_path

    record = loads(kind, data, path)
    _, name = name_from_path(path)
    key = _IDENTITY[kind]
    if record[key] != name:
        raise RecordInvalid(f"{path}: {key} {record[key]!r} does not match the file name")
    return record


def dumps(kind: str, record: dict) -> bytes:
    """Validate and serialize one record as TOML."""
    import tomli_w  # only writers pay for it

    validate(kind, record)
    return tomli_w.dumps(record).encode("utf-8")

