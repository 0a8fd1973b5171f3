"""The shapes passed between discovery, loading and splitting.

A loader turns a ``SourceFile`` into a ``LoadedDocument``: a title, a ``kind`` that selects the
splitter, and ``Section``s in reading order. A section is a unit of structure the splitter keeps
together where it can: a PDF page, an rst section, a notebook cell, a CSV row, a JSON record, a
Python function. Files that cannot be indexed raise ``SkipFile`` and become a ``Skipped`` report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    """A file found under an ingested root. ``source`` is its path relative to ``root``, with ``/``."""

    root: Path
    path: Path
    source: str


@dataclass
class Section:
    """One unit of a document.

    Consecutive sections with the same ``heading``, ``page`` and ``prefix`` are packed into one chunk
    while they fit; ``unit`` numbers them (row, record, cell) so a packed chunk is labelled
    "rows 12-40". ``prefix`` is repeated at the top of every chunk (a CSV header).
    """

    text: str
    page: int | None = None  # 1-based PDF page
    heading: str = ""  # heading path, "def name", "Sheet > key"...
    unit: int | None = None
    prefix: str = ""


@dataclass
class LoadedDocument:
    source: str
    title: str
    kind: str  # markdown, html, docx, text, rst, pdf, csv, json, notebook, code
    sections: list[Section] = field(default_factory=list)
    language: str | None = None  # for kind "code": python, sql, js...
    unit_name: str = ""  # what ``Section.unit`` counts: "row", "record", "cell"
    joiner: str = "\n\n"  # how packed sections are joined


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


class SkipFile(Exception):
    """Raised by a loader: the file is not indexed, for the reason given."""
