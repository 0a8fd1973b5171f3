"""Tables and data: CSV/TSV (rows packed into chunks, the header repeated at the top of each),
JSON and JSON Lines (flattened to ``path.to.key: value`` lines, one section per record)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from ingest.documents import LoadedDocument, Section, SkipFile, SourceFile
from ingest.textio import read_text


def load_csv(file: SourceFile, max_bytes: int) -> LoadedDocument:
    text = read_text(file.path, max_bytes)
    document = LoadedDocument(file.source, file.path.name, "csv", unit_name="row", joiner="\n")
    if not text.strip():
        return document
    csv.field_size_limit(max(max_bytes, 131072))
    delimiter = "\t" if file.path.suffix.lower() == ".tsv" else _sniff_delimiter(text[:16384])
    try:
        rows = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), 1)]
    except csv.Error as exc:
        raise SkipFile(f"malformed CSV ({exc})") from None
    rows = [(number, row) for number, row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return document
    header = rows[0][1]
    prefix = _row(header) + "\n|" + "---|" * len(header)
    document.sections = [Section(_row(row), unit=number, prefix=prefix) for number, row in rows[1:]]
    if not document.sections:  # a header and nothing else
        document.sections = [Section(_row(header))]
    return document


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(" ".join(cell.split()).replace("|", "\\|") for cell in cells) + " |"


def load_json(file: SourceFile, max_bytes: int) -> LoadedDocument:
    text = read_text(file.path, max_bytes)
    document = LoadedDocument(file.source, file.path.name, "json", unit_name="record")
    if not text.strip():
        return document
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SkipFile(f"malformed JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise SkipFile("malformed JSON (nested too deeply)") from None
    if isinstance(data, dict):
        named = next((data[k] for k in ("title", "name") if isinstance(data.get(k), str) and data[k].strip()), "")
        document.title = named.strip()[:120] or document.title
    if isinstance(data, list) and any(isinstance(item, (dict, list)) for item in data):
        document.sections = [Section("\n".join(flatten(item)), unit=i) for i, item in enumerate(data)]
    else:
        document.sections = [Section("\n".join(flatten(data)))]
    return document


def load_jsonl(file: SourceFile, max_bytes: int) -> LoadedDocument:
    text = read_text(file.path, max_bytes)
    document = LoadedDocument(file.source, file.path.name, "json", unit_name="line")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SkipFile(f"malformed JSON Lines (line {number}: {exc.msg})") from None
        document.sections.append(Section("\n".join(flatten(record)), unit=number))
    return document


def flatten(value: Any, path: str = "") -> Iterator[str]:
    """``{"a": {"b": [1, 2]}, "c": [{"d": true}]}`` -> ``a.b: 1, 2`` and ``c[0].d: true``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        if value and all(not isinstance(item, (dict, list)) for item in value):
            yield f"{path}: " + ", ".join(_scalar(item) for item in value) if path else ", ".join(map(_scalar, value))
        else:
            for i, item in enumerate(value):
                yield from flatten(item, f"{path}[{i}]")
    elif path:
        yield f"{path}: {_scalar(value)}"
    else:
        yield _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split()) if "\n" in value else value
    return json.dumps(value)
