"""printable(): whatever text others wrote, what reaches a terminal holds no control character."""

import re
import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gitqueue.text import printable, printable_lines

FAST = settings(max_examples=200, deadline=None)
# Besides the Cc category (C0, DEL, C1): the characters that break or reorder lines.
SEPARATORS_AND_BIDI = {"\u2028", "\u2029", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}
HOSTILE = ["\x1b]0;owned\x07", "\x1b[2J", "\r", "\b", "\x7f", "\x9b", "\u202e", "\u2066", "\u2028", "\x00", "\ud800"]


def is_control(c: str) -> bool:
    """The definition printable() must follow, written independently of it (Unicode categories)."""
    return unicodedata.category(c) in ("Cc", "Cs") or c in SEPARATORS_AND_BIDI


def unescape(text: str) -> str:
    """Undo printable() on text that held no backslash: proof that nothing was lost or merged."""
    return re.sub(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1) or m.group(2), 16)), text)


# Any characters but the backslash (which printable() leaves alone), and hostile sequences.
anything = st.lists(st.characters(exclude_characters="\\") | st.sampled_from(HOSTILE), max_size=40).map("".join)
plain = st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters=SEPARATORS_AND_BIDI), max_size=60)


@FAST
@given(anything)
@example("title \x1b]0;owned\x07 clear \x1b[2J\rline\u202eevil\u2028")
def test_no_control_character_gets_through(text):
    out = printable(text)
    assert not any(is_control(c) for c in out), repr(out)
    kept = printable(text, keep_newlines=True)
    assert not any(is_control(c) and c not in "\n\t" for c in kept), repr(kept)
    assert kept.count("\n") == text.count("\n") and kept.count("\t") == text.count("\t")


@FAST
@given(plain)
@example("gmake-4.4.1 (devel/gmake) by hp300-1: sorry, my pkgsrc has gmake-4.3 — «ok» \\ 日本")
def test_plain_text_is_unchanged(text):
    assert printable(text) == text
    assert printable(text, keep_newlines=True) == text


@FAST
@given(anything, st.booleans())
def test_every_control_character_is_told_apart(text, keep_newlines):
    """Text that differs in a control character renders differently: the escapes decode back."""
    assert unescape(printable(text, keep_newlines)) == text


@FAST
@given(anything, st.integers(0, 60), st.sampled_from(HOSTILE), st.sampled_from(HOSTILE))
def test_two_controls_at_one_place_render_differently(text, at, one, other):
    at = min(at, len(text))
    first, second = text[:at] + one + text[at:], text[:at] + other + text[at:]
    assert (printable(first) == printable(second)) == (one == other)


def test_escapes_are_visible_and_lines_stay_lines():
    assert printable("\x1b]0;owned\x07\r\u202e") == "\\x1b]0;owned\\x07\\x0d\\u202e"
    assert printable("cc -c x.c\n\t*** Error code 1\r\n", keep_newlines=True) == \
        "cc -c x.c\n\t*** Error code 1\\x0d\n"
    # A newline inside one line of a listing is escaped: it cannot forge another line.
    assert printable_lines(["w1  done 3", "evil\nQueue commit 0000"]) == "w1  done 3\nevil\\x0aQueue commit 0000"
