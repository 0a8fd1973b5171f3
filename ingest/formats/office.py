"""Word documents (.docx, python-docx): headings, paragraphs, lists and tables in reading order,
rendered as markdown so the heading split applies.

A DOCX is a zip archive, and an archive can promise far more than it holds on disk (a 3 MB file
whose image member inflates to 3 GiB). Before python-docx sees anything, ``check_archive`` refuses
packages whose members, by their declared sizes, expand past a bound derived from the size cap
(``KB_MAX_FILE_MB``): any one member past the cap, all of them together past ``TOTAL_FACTOR`` times
the cap, more than ``MAX_MEMBERS`` members, or a member inflating more than ``MAX_RATIO`` to 1 (a
zip bomb; real DOCX XML compresses 5-30 to 1). Then only the XML parts that carry text are read,
each through a counted read that stops at its declared size (headers lie), into a new in-memory
package in which every other part (images, embedded files, fonts) is an empty placeholder: they
are never inflated, whatever their relationships point at.
"""

from __future__ import annotations

import io
import re
import zipfile

from ingest.documents import LoadedDocument, Section, SkipFile, SourceFile
from ingest.formats.markup import MAX_TITLE_CHARS, title_from_name
from ingest.textio import read_bytes

_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADING = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)
MAX_MEMBERS = 10_000
TOTAL_FACTOR = 4  # all members together may inflate to 4x the size cap (pictures barely compress)
MAX_RATIO = 200  # deflate's ceiling is ~1032:1; text XML reaches ~30:1
_RATIO_FLOOR = 1 << 20  # the ratio is only judged on members inflating past 1 MiB
_TEXT_PARTS = (".xml", ".rels")  # what python-docx reads text, styles and structure from


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def check_archive(archive: zipfile.ZipFile, max_bytes: int, kind: str) -> list[zipfile.ZipInfo]:
    """The archive's members, or ``SkipFile`` when their declared sizes make it a bomb."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise SkipFile(f"{kind} archive has too many members ({len(infos)} > {MAX_MEMBERS})")
    total = 0
    for info in infos:
        size = info.file_size
        if size > max_bytes:
            raise SkipFile(f"{kind} expands beyond the size cap: member {info.filename!r} inflates to {_mb(size)} "
                           f"> {_mb(max_bytes)} (KB_MAX_FILE_MB)")
        if size > _RATIO_FLOOR and size > MAX_RATIO * max(info.compress_size, 1):
            raise SkipFile(f"{kind} looks like a zip bomb: member {info.filename!r} inflates "
                           f"{size // max(info.compress_size, 1)}:1 (limit {MAX_RATIO}:1)")
        total += size
    if total > TOTAL_FACTOR * max_bytes:
        raise SkipFile(f"{kind} expands beyond the size cap: {_mb(total)} uncompressed in all "
                       f"> {TOTAL_FACTOR} x {_mb(max_bytes)} (KB_MAX_FILE_MB)")
    return infos


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, kind: str) -> bytes:
    """A member's bytes, read in blocks and never past ``limit`` (nor past its declared size)."""
    parts, got = [], 0
    with archive.open(info) as member:
        while True:
            block = member.read(min(1 << 20, limit + 1 - got))
            if not block:
                break
            got += len(block)
            if got > limit:
                raise SkipFile(f"{kind} member {info.filename!r} inflates past {_mb(limit)}")
            parts.append(block)
    return b"".join(parts)


def _text_package(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], max_bytes: int) -> bytes:
    """A copy of the package with its text-bearing XML parts and empty placeholders for the rest."""
    budget = TOTAL_FACTOR * max_bytes
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as copy:
        for info in infos:
            if info.is_dir():
                continue
            if info.filename.lower().endswith(_TEXT_PARTS) or info.filename == "[Content_Types].xml":
                data = read_member(archive, info, max(0, min(max_bytes, budget)), "DOCX")
                budget -= len(data)
            else:
                data = b""  # images, embedded objects, fonts: never inflated
            copy.writestr(info.filename, data)
    return out.getvalue()


def load_docx(file: SourceFile, max_bytes: int) -> LoadedDocument:
    data = read_bytes(file.path, max_bytes)
    if data.startswith(_OLE):
        raise SkipFile("encrypted or legacy Word file (OLE container, not DOCX)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        archive.getinfo("word/document.xml")
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        raise SkipFile("not a valid DOCX (not a Word zip package)") from None
    infos = check_archive(archive, max_bytes, "DOCX")
    try:
        package = _text_package(archive, infos, max_bytes)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise SkipFile(f"malformed DOCX ({type(exc).__name__})") from None
    del data, archive
    try:
        import docx

        document = docx.Document(io.BytesIO(package))
        found: dict[str, str] = {}  # the first Title paragraph and the first heading
        lines = list(_markdown_lines(document, found))
        core_title = _core_title(document)
    except SkipFile:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # python-docx / lxml errors on damaged packages
        raise SkipFile(f"malformed DOCX ({type(exc).__name__})") from None
    text = "\n".join(lines).strip()
    title = core_title or found.get("title") or found.get("heading") or title_from_name(file.path)
    return LoadedDocument(file.source, title, "docx", [Section(text)])


def _core_title(document) -> str:
    """The title in ``docProps/core.xml``, or "" when the package has none: python-docx would make a
    default core part on first access, titled "Word Document", so its absence is checked first."""
    from docx.opc.constants import RELATIONSHIP_TYPE as RT

    try:
        document.part.package.part_related_by(RT.CORE_PROPERTIES)
    except KeyError:
        return ""
    return " ".join((document.core_properties.title or "").split())[:MAX_TITLE_CHARS]


def _markdown_lines(document, found: dict[str, str]):
    """Markdown lines of the body; ``found`` gets the first Title paragraph and the first heading."""
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
            found.setdefault("title", " ".join(text.split())[:MAX_TITLE_CHARS])
            yield f"\n# {text}\n"
        elif heading:
            found.setdefault("heading", " ".join(text.split())[:MAX_TITLE_CHARS])
            yield f"\n{'#' * min(int(heading.group(1)), 6)} {text}\n"
        elif style.lower().startswith("list"):
            yield f"- {text}"
        else:
            yield text
            yield ""
