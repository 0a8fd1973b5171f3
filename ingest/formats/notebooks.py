"""Notebooks: Jupyter ``.ipynb`` and Databricks source notebooks (``.py``/``.sql``/``.scala``/``.r``
exported with ``COMMAND ----------`` separators). One section per cell, labelled with the heading
path of the markdown cells above it; small cells under the same heading are packed together.
Headings are found with ``markup.ATX_HEADING``, whose run time is linear on any cell."""

from __future__ import annotations

import json
import re
from typing import Any

from ingest.documents import LoadedDocument, Section, SkipFile, SourceFile
from ingest.formats.markup import ATX_HEADING, heading_text, title_from_name
from ingest.textio import read_text

MAX_OUTPUT_CHARS = 1000


def load_ipynb(file: SourceFile, max_bytes: int) -> LoadedDocument:
    text = read_text(file.path, max_bytes)
    if not text.strip():
        return LoadedDocument(file.source, title_from_name(file.path), "notebook")
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SkipFile(f"malformed notebook (invalid JSON at line {exc.lineno}: {exc.msg})") from None
    if not isinstance(notebook, dict):
        raise SkipFile("malformed notebook (not a JSON object)")
    cells = notebook.get("cells")
    if cells is None:  # nbformat 3 keeps cells in worksheets
        cells = [c for sheet in notebook.get("worksheets") or [] for c in sheet.get("cells") or []]
    if not isinstance(cells, list):
        raise SkipFile("malformed notebook (no list of cells)")
    meta = notebook.get("metadata") if isinstance(notebook.get("metadata"), dict) else {}
    language = _language(meta)
    builder = _CellBuilder(file, language)
    for number, cell in enumerate(cells, 1):
        if not isinstance(cell, dict):
            continue
        source = _joined(cell.get("source", cell.get("input", "")))
        kind = cell.get("cell_type")
        if kind == "markdown":
            builder.markdown(number, source)
        elif kind == "code":
            builder.code(number, source, language, _outputs(cell.get("outputs")))
        else:
            builder.raw(number, source)
    return builder.document(str(meta.get("title") or ""))


def _language(meta: dict[str, Any]) -> str:
    for key in ("kernelspec", "language_info"):
        info = meta.get(key)
        if isinstance(info, dict):
            name = info.get("language") or info.get("name")
            if isinstance(name, str) and name.strip():
                return name.strip().lower()
    return "python"


def _joined(source: Any) -> str:
    if isinstance(source, list):
        return "".join(str(part) for part in source)
    return source if isinstance(source, str) else ""


def _outputs(outputs: Any) -> str:
    """Text outputs of a code cell (streams, plain-text results, error names), capped."""
    parts: list[str] = []
    for output in outputs if isinstance(outputs, list) else []:
        if not isinstance(output, dict):
            continue
        kind = output.get("output_type")
        if kind == "stream":
            parts.append(_joined(output.get("text")))
        elif kind in ("execute_result", "display_data", "pyout"):
            data = output.get("data") if isinstance(output.get("data"), dict) else output
            parts.append(_joined(data.get("text/plain", data.get("text", ""))))
        elif kind in ("error", "pyerr"):
            parts.append(f"{output.get('ename', 'Error')}: {output.get('evalue', '')}")
    text = "\n".join(p.strip() for p in parts if p.strip())
    return text if len(text) <= MAX_OUTPUT_CHARS else text[:MAX_OUTPUT_CHARS] + " … (output truncated)"


class _CellBuilder:
    def __init__(self, file: SourceFile, language: str) -> None:
        self.file = file
        self.language = language
        self.path: list[tuple[int, str]] = []  # (level, heading)
        self.sections: list[Section] = []
        self.first_heading = ""

    def _heading(self) -> str:
        return " > ".join(title for _, title in self.path)

    def markdown(self, number: int, source: str, *, title: str = "") -> None:
        for hashes, raw in ATX_HEADING.findall(source):
            level, heading = len(hashes), heading_text(raw)
            self.path = [(lvl, text) for lvl, text in self.path if lvl < level] + [(level, heading)]
            if level == 1 and not self.first_heading:
                self.first_heading = heading
        self._add(number, source, title)

    def code(self, number: int, source: str, language: str, output: str = "", *, title: str = "") -> None:
        if not source.strip():
            return
        body = f"```{language}\n{source.strip()}\n```"
        if output:
            body += f"\nOutput:\n{output}"
        self._add(number, body, title)

    def raw(self, number: int, source: str) -> None:
        self._add(number, source, "")

    def _add(self, number: int, body: str, title: str) -> None:
        if body.strip():
            text = f"{title}\n{body.strip()}" if title else body.strip()
            self.sections.append(Section(text, heading=self._heading(), unit=number))

    def document(self, meta_title: str = "") -> LoadedDocument:
        title = self.first_heading or meta_title.strip() or title_from_name(self.file.path)
        return LoadedDocument(self.file.source, title, "notebook", self.sections, language=self.language, unit_name="cell")


# Databricks source format: a header line, then cells separated by "COMMAND ----------" comments.
_DATABRICKS_COMMENT = {"python": "#", "r": "#", "sql": "--", "scala": "//"}
_MAGIC_LANGUAGES = {"%sql": "sql", "%python": "python", "%scala": "scala", "%r": "r", "%sh": "bash", "%pip": "bash"}


def is_databricks_source(text: str) -> bool:
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    return first.endswith("Databricks notebook source") and first.split(" ", 1)[0] in ("#", "--", "//")


def load_databricks_source(file: SourceFile, text: str, language: str) -> LoadedDocument:
    comment = _DATABRICKS_COMMENT.get(language, "#")
    body = text.lstrip("\ufeff").split("\n", 1)[1] if "\n" in text else ""
    separator = re.compile(rf"^{re.escape(comment)} COMMAND -+\s*$", re.MULTILINE)
    magic = re.compile(rf"^{re.escape(comment)} MAGIC ?", re.MULTILINE)
    dbtitle = re.compile(rf"^{re.escape(comment)} DBTITLE \d+,(.*)$", re.MULTILINE)
    builder = _CellBuilder(file, language)
    for number, cell in enumerate(separator.split(body), 1):
        title_match = dbtitle.search(cell)
        title = title_match.group(1).strip() if title_match else ""
        cell = dbtitle.sub("", cell).strip()
        if not cell:
            continue
        if magic.match(cell):
            cell = magic.sub("", cell)
            command, _, rest = cell.partition("\n")
            command = command.strip().split(" ", 1)[0]
            if command.startswith("%md"):
                builder.markdown(number, rest, title=title)
            elif command in _MAGIC_LANGUAGES:
                builder.code(number, rest, _MAGIC_LANGUAGES[command], title=title)
            else:
                builder.code(number, cell, language, title=title)
        else:
            builder.code(number, cell, language, title=title)
    return builder.document()
