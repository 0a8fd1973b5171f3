"""Markdown, reStructuredText and plain text.

Every regular expression here runs in linear time on any input (document text is untrusted): each
pattern is anchored to a line start and has no two quantifiers that can match the same characters,
so a failed match never retries more than one line. Headings and front-matter titles are matched
with a simple line pattern and cleaned in Python (``heading_text``) instead of with lazy groups
followed by optional trailers, which backtracked cubically (``# a`` + 5,000 spaces + ``b``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ingest.documents import LoadedDocument, Section, SourceFile
from ingest.textio import read_text

MAX_TITLE_CHARS = 200  # titles and headings are metadata stored with every chunk: a 60 KB "title" is not one
# "#" to "######", whitespace, then the rest of the line (cleaned by heading_text); never crosses a line
ATX_HEADING = re.compile(r"^(#{1,6})[^\S\n]+(\S[^\n]*)", re.MULTILINE)
_H1 = re.compile(r"^#[^\S\n]+(\S[^\n]*)", re.MULTILINE)
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_FRONT_TITLE = re.compile(r"^title:[^\S\n]*([^\n]*)", re.MULTILINE)


def title_from_name(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip().capitalize() or path.name


def heading_text(raw: str) -> str:
    """The text of an ATX heading line after its ``#``s: trimmed, without a closing ``#`` sequence
    (``Title ##`` -> ``Title``; ``C#`` keeps its ``#``), at most ``MAX_TITLE_CHARS``."""
    text = raw.strip()
    bare = text.rstrip("#")
    if bare != text and bare.strip() and bare[-1].isspace():
        text = bare.rstrip()
    return text[:MAX_TITLE_CHARS]


def front_matter_title(block: str) -> str:
    """``title: "Expense policy"`` in a YAML front-matter block, without its quotes."""
    found = _FRONT_TITLE.search(block)
    value = found.group(1).strip() if found else ""
    if value.startswith(("'", '"')):
        value = value[1:]
    if value.endswith(("'", '"')):
        value = value[:-1]
    return value.strip()[:MAX_TITLE_CHARS]


def load_markdown(file: SourceFile, max_bytes: int) -> LoadedDocument:
    text = read_text(file.path, max_bytes)
    title = ""
    front = _FRONT_MATTER.match(text)
    if front:  # YAML front matter (Jekyll, Hugo, MkDocs): metadata, not content
        title = front_matter_title(front.group(1))
        text = text[front.end():]
    match = _H1.search(text)
    title = (heading_text(match.group(1)) if match else "") or title or title_from_name(file.path)
    return LoadedDocument(file.source, title, "markdown", [Section(text)])


def load_text(file: SourceFile, max_bytes: int) -> LoadedDocument:
    text = read_text(file.path, max_bytes)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    title = first[:80] if first and len(first) <= 80 else title_from_name(file.path)
    return LoadedDocument(file.source, title, "text", [Section(text)])


# reStructuredText: a title is a line underlined (and optionally overlined) with one repeated
# punctuation character at least as long as the text; levels follow the order styles first appear.
_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.!$%&,;/?@\\|])\1{2,}\s*$")


def load_rst(file: SourceFile, max_bytes: int) -> LoadedDocument:
    text = read_text(file.path, max_bytes)
    return LoadedDocument(file.source, "", "rst", []) if not text.strip() else _rst_document(file, text)


def _rst_document(file: SourceFile, text: str) -> LoadedDocument:
    lines = text.splitlines()
    styles: list[tuple[str, bool]] = []
    path: list[str] = []
    sections: list[Section] = []
    buffer: list[str] = []
    doc_title = ""

    def flush() -> None:
        body = "\n".join(buffer).strip()
        if body:
            sections.append(Section(body, heading=" > ".join(path)))
        buffer.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        under = lines[i + 1] if i + 1 < len(lines) else ""
        if (
            line.strip()
            and not _ADORNMENT.match(line)
            and _ADORNMENT.match(under)
            and len(under.rstrip()) >= len(line.rstrip())
        ):
            char = under.strip()[0]
            overlined = bool(buffer) and bool(_ADORNMENT.match(buffer[-1])) and buffer[-1].strip()[0] == char
            if overlined:
                buffer.pop()
            flush()
            style = (char, overlined)
            if style not in styles:
                styles.append(style)
            level = styles.index(style)
            title = line.strip()
            del path[level:]
            path.append(title)
            doc_title = doc_title or title
            buffer.append(title)
            buffer.append("")
            i += 2
            while i < len(lines) and not lines[i].strip():
                i += 1
            continue
        buffer.append(line)
        i += 1
    flush()
    return LoadedDocument(file.source, doc_title or title_from_name(file.path), "rst", sections)
