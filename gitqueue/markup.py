"""HTML built from templates that escape every value put into them, unless it is Markup already.

What a report shows was mostly written by workers (job and worker names, reasons, log names and
tails): text, never HTML. So the page is made of Markup templates (`Markup("<td>{}</td>")
.format(cell)`) and joins (`Markup("").join(cells)`) that escape each plain value, in text and
in attributes alike (& < > " '); only a value that is itself Markup, the page's own HTML, goes in
as it is. A caller that forgets to escape shows the text, never runs it.
"""

from html import escape as _escape


class Markup(str):
    """Text that is already HTML: put into a template as it is, where every other value is escaped."""

    __slots__ = ()

    def format(self, *args, **kwargs) -> "Markup":
        """This template with its fields filled as str.format fills them, each value escaped unless Markup.

        Conversions (`{x!r}`) and format specs of text see the escaped text.
        """
        if kwargs:
            kwargs = {k: _escaped(v) for k, v in kwargs.items()}
        return Markup(str.format(self, *[_escaped(v) for v in args], **kwargs))

    def join(self, parts) -> "Markup":
        """The parts with this between them, each escaped unless Markup."""
        return Markup(str.join(self, map(escape, parts)))


def escape(value) -> Markup:
    """`value` as HTML: Markup as it is; anything else as its str() with & < > " ' escaped."""
    return value if isinstance(value, Markup) else Markup(_escape(str(value)))


def _escaped(value):
    """`value` ready for str.format: text escaped, numbers as they are (their digits need no
    escaping and keep their format specs), anything else escaped once formatted."""
    if isinstance(value, str):
        return value if isinstance(value, Markup) else _escape(value)
    if type(value) in _NUMBERS:
        return value
    return _Escaping(value)


_NUMBERS = {int, float}


class _Escaping:
    """Any other value given to Markup.format: formatted as asked, then escaped unless Markup."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __format__(self, spec: str) -> str:
        if isinstance(self.value, Markup):
            return self.value
        return _escape(format(self.value, spec))

    # {x!s} and {x!r} call these instead of __format__.
    def __str__(self) -> str:
        return escape(self.value)

    def __repr__(self) -> str:
        return _escape(repr(self.value))

    # {x[key]} and {x.name}: the item or attribute, escaped in its turn.
    def __getitem__(self, key):
        return _escaped(self.value[key])

    def __getattr__(self, name):
        return _escaped(getattr(self.value, name))
