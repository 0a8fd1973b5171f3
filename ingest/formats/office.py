"""Word documents (.docx, python-docx): headings, paragraphs, lists and tables in reading order,
rendered as markdown so the heading split applies."""

from __future__ import annotations

import io
import re
import zipfile

from ingest.documents import LoadedDocument, Section, SkipFile, SourceFile
from ingest.formats.markup import title_from_name
from ingest.textio import read_bytes

_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADING = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def load_docx(file: SourceFile, max_bytes: int) -> LoadedDocument:
    data = read_bytes(file.path, max_bytes)
    if data.startswith(_OLE):
        raise SkipFile("encrypted or legacy Word file (OLE container, not DOCX)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        body = archive.getinfo("word/document.xml")
    except (zipfile.BadZipFile, KeyError, OSError):
        raise SkipFile("not a valid DOCX (not a Word zip package)") from None
    if body.file_size > max_bytes:  # a zip bomb must not blow the memory the size cap promises
        raise SkipFile(f"DOCX text expands beyond the size cap ({body.file_size / 1e6:.0f} MB uncompressed)")
    try:
        import docx

        document = docx.Document(io.BytesIO(data))
        lines = list(_markdown_lines(document))
        core_title = (document.core_properties.title or "").strip()
    except SkipFile:
        raise
    except Exception as exc:  # python-docx / lxml errors on damaged packages
        raise SkipFile(f"malformed DOCX ({type(exc).__name__})") from None
    text = "\n".join(lines).strip()
    first_heading = next((line.lstrip("# ") for line in lines if line.startswith("#")), "")
    title = core_title or first_heading or title_from_name(file.path)
    return LoadedDocument(file.source, title, "docx", [Section(text)])


def _markdown_lines(document):
    from docx.table import Table

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = [" ".join(cell.text.split()) for cell in row.cells]
                if any(cells):
                    yield "| " + " | ".join(cells) + " |"
            yield ""
            continue
        text = block.text.strip()
        if not text:
            continue
        style = (block.style.name if block.style is not None else "") or ""
        heading = _HEADING.match(style)
        if style.lower() == "title":
            yield f"\n# {text}\n"
        elif heading:
            yield f"\n{'#' * min(int(heading.group(1)), 6)} {text}\n"
        elif style.lower().startswith("list"):
            yield f"- {text}"
        else:
            yield text
            yield ""
