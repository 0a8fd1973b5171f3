"""Structure-aware splitting into chunks.

- Markdown, HTML and DOCX (rendered as markdown) split by headings, then by size.
- Everything else arrives as ``Section``s (PDF pages, rst sections, notebook cells, CSV rows, JSON
  records, Python functions and classes): a section too big for one chunk is split by size with the
  separators of its kind (code: at definitions, then blank lines); consecutive small sections with
  the same heading, page and prefix are packed into one chunk, labelled with the range of units
  they hold ("rows 12-40", "cells 3-5"). A section's ``prefix`` (a CSV header) starts every chunk.

Chunks are sized for all-MiniLM-L6-v2, which reads 256 word pieces: about 1,000 characters of
English, so 800 characters keep the end of a chunk inside the window; code, denser in word pieces,
gets 600. (600 and 1,100 characters were measured too and retrieved worse on every gold set.)

Every chunk carries a context header, ``context`` in its metadata: "Document title › Section ›
Subsection" (at most 300 characters). The embedding model reads the header and the chunk together
(``Chunk.embedded``) while the stored and displayed text stays as written; BM25 indexes the title and
section path too (``ingest.store.lexical.indexed_text``). A chunk from the middle of a long section
thus still says what it is about: hybrid MRR 0.956 -> 0.972 on eval/knowledge-gold.jsonl, 0.985 ->
1.000 on eval/handbook-gold.jsonl. Changing what is embedded bumps ``LOADER_VERSION``
(``ingest.sync.records``), so an index made before is re-split rather than mixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ingest.documents import LoadedDocument

CHUNK_SIZE = 800
CODE_CHUNK_SIZE = 600
CHUNK_OVERLAP = 120
CONTEXT = True  # embed every chunk under its context header (``Chunk.embedded``)
MARKDOWN_KINDS = frozenset({"markdown", "html", "docx"})
_HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]
_PROSE = ["\n\n", "\n", ". ", "; ", ", ", " ", ""]
# Separators (regular expressions) for languages langchain_text_splitters has none for.
_LANGUAGE_SEPARATORS = {
    "python": [r"\nclass ", r"\ndef ", r"\nasync def ", r"\n    def ", r"\n    async def ", r"\n\n", r"\n", " ", ""],
    "sql": [r";\s*\n\s*\n", r";\s*\n", r"\n\n", r"\n", " ", ""],
    "yaml": [r"\n\n(?=\S)", r"\n(?=[^\s#-])", r"\n\n", r"\n", " ", ""],
    "toml": [r"\n(?=\[)", r"\n\n", r"\n", " ", ""],
    "ini": [r"\n(?=\[)", r"\n\n", r"\n", " ", ""],
    "hcl": [r"\n(?=(?:resource|module|data|variable|output|provider|locals|terraform)\b)", r"\n\n", r"\n", " ", ""],
    "dockerfile": [r"\n(?=FROM\s)", r"\n\n", r"\n", " ", ""],
}
# One line only ([ \t], never \s): with \s the modifiers could run over line ends, and a file of
# "public" lines made every line start retry all the lines after it (quadratic; 8,000 lines: 50 s).
_DEFINITION = re.compile(
    r"^[ \t]*(?:export[ \t]+|public[ \t]+|private[ \t]+|protected[ \t]+|static[ \t]+|async[ \t]+|pub[ \t]+)*"
    r"(def|class|function|func|fn|interface|struct|trait|impl|object|module|resource|"
    r"create[ \t]+(?:or[ \t]+replace[ \t]+)?(?:temporary[ \t]+|temp[ \t]+)?(?:table|view|function|procedure|schema))"
    r"[ \t]+([\w.`\"\[\]-]+)",
    re.IGNORECASE | re.MULTILINE,
)
MAX_SECTION_CHARS = 500  # a section label is metadata stored with every chunk
# the context header shares the model's 256-token window with the chunk: ~75 tokens at most
MAX_CONTEXT_CHARS = 300


CONTEXT_SEPARATOR = " › "
CONTEXT_KEY = "context"  # metadata: "Title › Section › Subsection", the header embedded with the chunk


@dataclass(frozen=True)
class Chunk:
    text: str  # what a reader sees and the answer cites: the chunk as written, no header
    metadata: dict[str, Any]  # source, title, section, context, chunk, kind, page

    @property
    def embedded(self) -> str:
        """What the embedding model reads: the chunk's context header (document title and section
        path) on its own line, then its text. A chunk cut from the middle of a section still says
        what it is about ("Handbook › Time off › Carry-over"), which its own words often do not."""
        context = self.metadata.get(CONTEXT_KEY)
        return f"{context}\n\n{self.text}" if context else self.text


def context_header(title: str, section: str) -> str:
    """``title › heading › subheading``: the section path, where a heading that repeats the part before it
    is said once ("datetime — Python 3.11 documentation" then "datetime": the longer of the two stays)."""
    parts = [title.strip()] if title and title.strip() else []
    for part in section.split(" > ") if section else []:
        part = part.strip()
        if not part:
            continue
        last = parts[-1].casefold() if parts else ""
        if last and last.startswith(part.casefold()):
            continue
        if last and part.casefold().startswith(last):
            parts[-1] = part
        else:
            parts.append(part)
    header = CONTEXT_SEPARATOR.join(parts)
    return header if len(header) <= MAX_CONTEXT_CHARS else header[: MAX_CONTEXT_CHARS - 1] + "…"


def split_document(
    document: LoadedDocument, *, chunk_size: int | None = None, overlap: int = CHUNK_OVERLAP, context: bool = CONTEXT
) -> list[Chunk]:
    size = chunk_size or (CODE_CHUNK_SIZE if document.kind == "code" else CHUNK_SIZE)
    if document.kind in MARKDOWN_KINDS:
        pieces = _markdown_pieces(document, size, overlap)
    else:
        pieces = _packed_pieces(document, size, overlap)
    chunks: list[Chunk] = []
    for text, section, page in pieces:
        if not text.strip():
            continue
        if document.kind == "code" and not section:
            found = _DEFINITION.search(text)
            section = f"{found.group(1).split()[-1].lower()} {found.group(2)}" if found else ""
        metadata: dict[str, Any] = {
            "source": document.source,
            "title": document.title,
            "section": section,
            "chunk": len(chunks),
            "kind": document.kind,
        }
        if len(section) > MAX_SECTION_CHARS:  # a 60 KB heading line is content, not a label
            metadata["section"] = section[: MAX_SECTION_CHARS - 1] + "…"
        if context:
            metadata[CONTEXT_KEY] = context_header(document.title, metadata["section"])
        if page is not None:
            metadata["page"] = page
        chunks.append(Chunk(text.strip(), metadata))
    return chunks


@lru_cache(maxsize=64)
def _splitter(size: int, overlap: int, language: str | None) -> Any:
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    overlap = min(overlap, size // 4)
    if language in _LANGUAGE_SEPARATORS:
        return RecursiveCharacterTextSplitter(
            separators=_LANGUAGE_SEPARATORS[language], is_separator_regex=True,
            chunk_size=size, chunk_overlap=overlap, keep_separator="start",
        )
    if language in {item.value for item in Language}:
        return RecursiveCharacterTextSplitter.from_language(Language(language), chunk_size=size, chunk_overlap=overlap)
    if language:  # bash, make, groovy...: blank lines, then lines
        return RecursiveCharacterTextSplitter(separators=["\n\n", "\n", " ", ""], chunk_size=size, chunk_overlap=overlap)
    return RecursiveCharacterTextSplitter(separators=_PROSE, chunk_size=size, chunk_overlap=overlap, keep_separator="end")


def _markdown_pieces(document: LoadedDocument, size: int, overlap: int) -> list[tuple[str, str, int | None]]:
    from langchain_text_splitters import MarkdownHeaderTextSplitter

    by_heading = MarkdownHeaderTextSplitter(headers_to_split_on=_HEADERS, strip_headers=False)
    by_size = _splitter(size, overlap, None)
    pieces = []
    for section in document.sections:
        for part in by_heading.split_text(section.text):
            heading_path = " > ".join(part.metadata[key] for _, key in _HEADERS if key in part.metadata)
            for text in by_size.split_text(part.page_content):
                pieces.append((text, heading_path, section.page))
    return pieces


def _packed_pieces(document: LoadedDocument, size: int, overlap: int) -> list[tuple[str, str, int | None]]:
    language = document.language if document.kind == "code" else None
    pieces: list[tuple[str, str, int | None]] = []
    group: dict[str, Any] | None = None  # the chunk being packed

    def close() -> None:
        if group:
            body = document.joiner.join(group["texts"])
            text = f"{group['prefix']}\n{body}" if group["prefix"] else body
            pieces.append((text, _label(group["heading"], document.unit_name, group["first"], group["last"]), group["page"]))

    for section in document.sections:
        if not section.text.strip():
            continue
        budget = max(size - len(section.prefix) - 1, size // 2) if section.prefix else size
        text = section.text.strip()
        parts = [text] if len(text) <= budget else _splitter(budget, overlap, language).split_text(text)
        key = (section.heading, section.page, section.prefix)
        for part in (p.strip() for p in parts):
            if not part:
                continue
            fits = group is not None and group["length"] + len(document.joiner) + len(part) <= budget
            if group is not None and group["key"] == key and fits:
                group["texts"].append(part)
                group["length"] += len(document.joiner) + len(part)
                group["last"] = section.unit
                continue
            close()
            group = {"key": key, "texts": [part], "length": len(part), "heading": section.heading,
                     "page": section.page, "prefix": section.prefix, "first": section.unit, "last": section.unit}
    close()
    return pieces


def _label(heading: str, unit_name: str, first: int | None, last: int | None) -> str:
    units = ""
    if unit_name and first is not None:
        units = f"{unit_name} {first}" if first == last or last is None else f"{unit_name}s {first}-{last}"
    return " · ".join(part for part in (heading, units) if part)
