"""Markup templates: every value put into one is escaped unless it is Markup already."""

from hypothesis import given
from hypothesis import strategies as st

from gitqueue.markup import Markup, escape

HOSTILE = "\"'><script>alert(1)</script>&amp;"
ESCAPED = "&quot;&#x27;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;amp;"


def test_format_escapes_text_in_content_and_attributes():
    got = Markup('<a href="{}" title="{title}">{}</a>').format(HOSTILE, HOSTILE, title=HOSTILE)
    assert got == f'<a href="{ESCAPED}" title="{ESCAPED}">{ESCAPED}</a>'
    assert isinstance(got, Markup)


def test_markup_goes_in_as_it_is_and_numbers_keep_their_format():
    cell = Markup("<b>{}</b>").format(HOSTILE)
    assert Markup("<td>{}</td><td>{:.1f}</td><td>{:>4}</td>").format(cell, 2.25, 7) == \
        f"<td><b>{ESCAPED}</b></td><td>2.2</td><td>   7</td>"


def test_items_attributes_conversions_and_other_values_are_escaped():
    class Row:
        name = HOSTILE

    template = Markup("{row[job]} {obj.name} {0!r} {0!s} {none} {items}")
    got = template.format(HOSTILE, row={"job": HOSTILE}, obj=Row(), none=None, items=["<li>"])
    assert "<" not in got
    assert got.startswith(f"{ESCAPED} {ESCAPED} ") and got.endswith(" None [&#x27;&lt;li&gt;&#x27;]")


def test_join_escapes_each_part_but_markup():
    assert Markup("<br>").join(["<i>", Markup("<i>"), 3]) == "&lt;i&gt;<br><i><br>3"
    assert escape(Markup("<p>")) == "<p>" and escape("<p>") == "&lt;p&gt;" and escape(None) == "None"


@given(st.text())
def test_no_text_ever_makes_a_tag_or_leaves_an_attribute(text):
    got = Markup('<td title="{0}">{0}</td>').format(text)
    title, _, body = got[len('<td title="'):-len("</td>")].partition('">')
    assert title == body and not set("<>\"'") & set(body)
