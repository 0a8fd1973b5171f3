"""Find documents under the ingested paths and turn each file into text sections.

A loader returns ``LoadedDocument``: a title and a list of ``Section``s (the whole text of a
markdown file, one section per PDF page, the text of an HTML page rendered as markdown). The
splitter turns sections into chunks. Files that cannot be read become a ``Skipped`` with a reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.errors import UsageError

DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    """A file found under an ingested root. ``source`` is its path relative to ``root``, with ``/``."""

    root: Path
    path: Path
    source: str


@dataclass
class Section:
    text: str
    page: int | None = None  # 1-based PDF page


@dataclass
class LoadedDocument:
    source: str
    title: str
    kind: str  # "markdown", "text", "pdf", "html"
    sections: list[Section] = field(default_factory=list)


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


class SkipFile(Exception):
    """Raised by a loader: the file is not indexed, for the reason given."""


# ---------------------------------------------------------------- discovery


def discover(paths: Iterable[Path]) -> tuple[list[SourceFile], list[Skipped]]:
    """Every supported file under ``paths`` (folders are walked, files taken as they are).

    Hidden files and folders are ignored; unsupported files are reported as skipped.
    """
    found: list[SourceFile] = []
    skipped: list[Skipped] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise UsageError(f"no such file or folder: {given}")
        if path.is_file():
            root = path.resolve().parent
            candidates = [path.resolve()]
        else:
            root = path.resolve()
            candidates = sorted(_walk(root))
        for file in candidates:
            source = file.relative_to(root).as_posix()
            if loader_for(file) is None:
                skipped.append(Skipped(source, f"unsupported file type '{file.suffix or file.name}'"))
                continue
            found.append(SourceFile(root=root, path=file, source=source))
    return found, skipped


def _walk(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


# ---------------------------------------------------------------- loading


def load(file: SourceFile, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> LoadedDocument:
    """Load one file; raises ``SkipFile`` with a reason when it cannot be indexed."""
    loader = loader_for(file.path)
    if loader is None:
        raise SkipFile(f"unsupported file type '{file.path.suffix}'")
    try:
        size = file.path.stat().st_size
    except OSError as exc:
        raise SkipFile(f"cannot read: {exc.strerror or exc}") from None
    if size > max_bytes:
        raise SkipFile(f"larger than the size cap ({size / 1e6:.1f} MB > {max_bytes / 1e6:.0f} MB)")
    try:
        document = loader(file)
    except SkipFile:
        raise
    except OSError as exc:
        raise SkipFile(f"cannot read: {exc.strerror or exc}") from None
    if not any(section.text.strip() for section in document.sections):
        raise SkipFile("empty: no text to index" if document.kind != "pdf" else "no extractable text")
    return document


def read_text(path: Path) -> str:
    """Decode a text file: UTF-8 (with or without BOM), UTF-16 with BOM, else Latin-1."""
    data = path.read_bytes()
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SkipFile("binary data, not text")
    for bom, encoding in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _title_from_name(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip().capitalize() or path.name


_H1 = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)


def load_markdown(file: SourceFile) -> LoadedDocument:
    text = read_text(file.path)
    match = _H1.search(text)
    title = match.group(1).strip() if match else _title_from_name(file.path)
    return LoadedDocument(file.source, title, "markdown", [Section(text)])


def load_text(file: SourceFile) -> LoadedDocument:
    text = read_text(file.path)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    title = first[:80] if first and len(first) <= 80 else _title_from_name(file.path)
    return LoadedDocument(file.source, title, "text", [Section(text)])


def load_pdf(file: SourceFile) -> LoadedDocument:
    import logging

    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # broken xref tables are reported as skips, not noise
    try:
        reader = pypdf.PdfReader(str(file.path))
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise SkipFile("encrypted PDF (password required)")
            except SkipFile:
                raise
            except Exception:
                raise SkipFile("encrypted PDF (password required)") from None
        pages = [Section(_clean_pdf_text(page.extract_text() or ""), page=i) for i, page in enumerate(reader.pages, 1)]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except SkipFile:
        raise
    except (DependencyError, FileNotDecryptedError):
        raise SkipFile("encrypted PDF (password required)") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise SkipFile(f"malformed PDF ({type(exc).__name__}: {str(exc)[:100]})") from None
    except Exception as exc:  # pypdf raises a wide range of errors on broken files
        raise SkipFile(f"malformed PDF ({type(exc).__name__})") from None
    if not any(page.text.strip() for page in pages):
        raise SkipFile("no extractable text (scanned or image-only PDF)")
    first_line = next((line.strip() for page in pages for line in page.text.splitlines() if line.strip()), "")
    title = str(meta_title).strip() or (first_line if 0 < len(first_line) <= 80 else _title_from_name(file.path))
    return LoadedDocument(file.source, title, "pdf", pages)


def _clean_pdf_text(text: str) -> str:
    text = re.sub(r"-\n(?=[a-z])", "", text)  # re-join hyphenated line breaks
    return re.sub(r"[ \t]+", " ", text).strip()


_HTML_DROP = ("script", "style", "nav", "footer", "header", "noscript", "svg", "form", "aside", "template")


def load_html(file: SourceFile) -> LoadedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(read_text(file.path), "html.parser")
    title_tag = soup.find("title")
    h1 = soup.find("h1")
    title = (title_tag.get_text(" ", strip=True) if title_tag else "") or (
        h1.get_text(" ", strip=True) if h1 else ""
    )
    for tag in soup(list(_HTML_DROP)):
        tag.decompose()
    body = soup.find("main") or soup.find("article") or soup.body or soup
    return LoadedDocument(file.source, title or _title_from_name(file.path), "html", [Section(html_to_markdown(body))])


_HTML_CONTAINERS = ["p", "li", "pre", "tr", "dt", "dd", "blockquote"]


def html_to_markdown(node) -> str:
    """Render HTML as light markdown so headings drive the split like in .md files."""
    lines: list[str] = []
    for element in node.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "tr", "dt", "dd", "blockquote"]):
        if element.find_parent(_HTML_CONTAINERS) is not None:
            continue  # its text is already part of an enclosing block
        if element.name == "tr":
            cells = [cell.get_text(" ", strip=True) for cell in element.find_all(["th", "td"])]
            if any(cells):
                lines.append("| " + " | ".join(cells) + " |")
            continue
        text = element.get_text(" ", strip=True)
        if not text:
            continue
        if element.name[0] == "h" and element.name[1:].isdigit():
            lines.append("")
            lines.append("#" * int(element.name[1:]) + " " + text)
            lines.append("")
        elif element.name == "li":
            lines.append(f"- {text}")
        elif element.name == "pre":
            lines.append(f"```\n{element.get_text()}\n```")
        else:
            lines.append(text)
            lines.append("")
    return "\n".join(lines).strip()


LOADERS: dict[str, Callable[[SourceFile], LoadedDocument]] = {
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".txt": load_text,
    ".pdf": load_pdf,
    ".html": load_html,
    ".htm": load_html,
}


def loader_for(path: Path) -> Callable[[SourceFile], LoadedDocument] | None:
    return LOADERS.get(path.suffix.lower())
