"""Untrusted text on the terminal: printed literally, never interpreted.

Document text, titles, file names, model answers, tool output and upstream error messages reach
the terminal through this module:

- ``clean(text)`` drops what a terminal would act on instead of show: escape sequences (CSI colours
  and cursor moves, OSC titles and hyperlinks, ...), every C0 control but newline and tab (a
  carriage return could overwrite a line), DEL, the C1 controls (U+0080-U+009F: U+009B is a
  one-character CSI) and the bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069,
  "Trojan Source" reordering). ``clean(text, line=True)`` also folds newlines and tabs into spaces,
  for names and titles that must stay on their line.
- ``markup(text)``: ``clean`` plus Rich's ``escape``, for untrusted parts of a Rich markup string
  (``[bold]`` in a document stays text). kb's consoles (``agent.cli``) are made with
  ``emoji=False``, so ``root:x:0`` never becomes an emoji.
- ``literal(text)``: a Rich ``Text`` (no markup, no emoji) for panel and table titles, which Rich
  would otherwise parse as markup with emoji codes on.

Hand-written (a table and one regex) because no maintained library strips terminal sequences
without also pulling in a terminal emulator; the regex is linear: each repeated class is disjoint
from what follows it, and whatever it leaves of a broken sequence loses its ESC anyway, so a
sequence split across streamed tokens cannot form either (each token is cleaned on its own).
"""

from __future__ import annotations

import re
from typing import Any

# ESC-introduced sequences: CSI (parameters, intermediates, final byte), OSC/DCS/PM/APC/SOS
# strings with their terminator (BEL or ST; unterminated, only the introducer goes: the scan for
# a terminator stops at the next ESC, so the total work stays linear), and two-character escapes.
_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[ -/]*[0-~]?"
)
_DROP = {c: None for c in [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0),
                           *range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
_DROP_LINE = {**_DROP, 0x09: " ", 0x0A: " ", 0x0D: " "}


def clean(text: Any, *, line: bool = False) -> str:
    """``text`` as a string without terminal control sequences (see the module docstring)."""
    text = "" if text is None else str(text)
    if "\x1b" in text:
        text = _SEQUENCE.sub("", text)
    if not line:
        text = text.replace("\r\n", "\n")
    return text.translate(_DROP_LINE if line else _DROP)


def markup(text: Any, *, line: bool = False) -> str:
    """``clean`` and escaped for a Rich markup string."""
    from rich.markup import escape

    return escape(clean(text, line=line))


def literal(text: Any, style: str = "") -> Any:
    """A Rich ``Text`` of the cleaned single-line ``text``: never markup, never emoji codes."""
    from rich.text import Text

    return Text(clean(text, line=True), style=style)
