"""A Word document's title: docProps/core.xml, else the first Title paragraph, else the first
heading, else the file name (issue 16); the zip-bomb guards still apply to the package."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from ingest.loaders import SourceFile, load

MB = 1 << 20


def _load(path: Path):
    return load(SourceFile(root=path.parent, path=path, source=path.name))


def _docx(path: Path, *, core: str | None = "", title: str | None = None, heading: str | None = None) -> Path:
    import docx

    document = docx.Document()
    if core is not None:
        document.core_properties.title = core
    document.add_paragraph("An opening line before any heading.")
    if title:
        document.add_paragraph(title, style="Title")
    if heading:
        document.add_heading(heading, level=2)
    document.add_paragraph("Body text about the quarterly budget.")
    document.save(path)
    return path


def _without_core_part(path: Path) -> Path:
    """The same package with docProps/core.xml and its relationship removed (some generators omit it)."""
    source = zipfile.ZipFile(path)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as copy:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "docProps/core.xml":
                continue
            if info.filename == "_rels/.rels":
                text = data.decode()
                rel_start = text.rfind("<Relationship ", 0, text.find("core-properties"))
                rel_end = text.find("/>", rel_start) + 2
                data = (text[:rel_start] + text[rel_end:]).encode()
                assert "core-properties" not in data.decode()
            copy.writestr(info, data)
    path.write_bytes(out.getvalue())
    return path


def test_core_properties_title_wins(tmp_path: Path) -> None:
    path = _docx(tmp_path / "q3_budget-final.docx", core="Budget 2025", title="Quarterly Budget", heading="Overview")
    assert _load(path).title == "Budget 2025"


def test_title_paragraph_before_any_heading(tmp_path: Path) -> None:
    path = _docx(tmp_path / "q3_budget-final.docx", core="", title="Quarterly Budget", heading="Overview")
    assert _load(path).title == "Quarterly Budget"


def test_first_heading_when_there_is_no_title(tmp_path: Path) -> None:
    path = _docx(tmp_path / "q3_budget-final.docx", core="", heading="Overview of the budget")
    loaded = _load(path)
    assert loaded.title == "Overview of the budget"
    assert "## Overview of the budget" in loaded.sections[0].text


def test_file_name_as_the_last_resort(tmp_path: Path) -> None:
    path = _docx(tmp_path / "q3_budget-final.docx", core="")
    assert _load(path).title == "Q3 budget final"


def test_a_package_without_core_properties_is_not_titled_word_document(tmp_path: Path) -> None:
    path = _without_core_part(_docx(tmp_path / "notes.docx", core="ignored", title="Team Notes"))
    assert "docProps/core.xml" not in zipfile.ZipFile(path).namelist()
    assert _load(path).title == "Team Notes"


def test_the_core_title_is_one_line_of_at_most_200_characters(tmp_path: Path) -> None:
    path = _docx(tmp_path / "long.docx", core="Line one\n\tline two " + "x" * 230)
    title = _load(path).title
    assert title == ("Line one line two " + "x" * 230)[:200]
