"""Queue records: TOML text to dicts and back, each validated against its JSON Schema."""

import re
import tomllib

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
    if t == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise RecordInvalid(f"{where}: longer than {schema['maxLength']} characters")
        pattern = schema.get("pattern")
        if pattern is not None:
            rx = _pattern_cache.get(pattern)
            if rx is None:
                rx = _pattern_cache[pattern] = re.compile(pattern)
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


def validate(kind: str, record: dict, where: str = "") -> dict:
    """Check `record` against the schema of `kind`; return it or raise RecordInvalid."""
    _check(record, SCHEMAS[kind], where or kind)
    return record


def loads(kind: str, data: bytes, where: str) -> dict:
    """Parse and validate one TOML record; `where` names it in errors (e.g. its path)."""
    try:
        record = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
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

