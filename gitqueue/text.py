"""Text that workers wrote, made safe to show on a terminal or in a mail: controls made visible."""

import re

# C0 and C1 controls and DEL (escape sequences, carriage return, bell, backspace), the Unicode
# line and paragraph separators, the bidi embeddings, overrides and isolates (they reorder the
# text that follows them), and lone surrogates (which no terminal encoding can write). Records
# refuse the same characters (schema.py); commit messages, paths in a tree and what a server or
# another process says do not.
_BEYOND_C0 = r"\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_CONTROLS = re.compile(rf"[\x00-\x1f{_BEYOND_C0}]")
_CONTROLS_BUT_NEWLINES = re.compile(rf"[\x00-\x08\x0b-\x1f{_BEYOND_C0}]")  # \t and \n kept


def _escape(match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as a visible escape (ESC as \\x1b, U+202E as \\u202e).

    Args:
        text: any text, e.g. a reason, a worker name or an error message.
        keep_newlines: keep newlines and tabs, for text meant to span lines (log tails).

    Returns:
        The text unchanged when it holds no control character.
    """
    return (_CONTROLS_BUT_NEWLINES if keep_newlines else _CONTROLS).sub(_escape, text)


def printable_lines(lines) -> str:
    """The lines joined by newlines, each made printable: a newline inside one is escaped too."""
    return "\n".join(printable(line) for line in lines)
