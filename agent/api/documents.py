"""Serving an ingested document by its ``source`` name, confined to what was ingested.

A name is served only if the ingest records (``ingest.sync.records``, under ``KB_INDEX_DIR``) list
exactly that source: ``..``, ``%2e%2e``, absolute paths, NUL bytes or any other name simply is not in the
list (404). The file found is then resolved (symlinks followed) and must still lie inside its
ingested root and be a regular file. Documents are untrusted: HTML is sent with a sandboxing
Content-Security-Policy (no scripts, no access to this origin), text as ``text/plain``.

Access control: only the documents the caller's groups may read (``ingest.access``; the labels the
records keep per document) are listed or served. A document the caller may not read is handled
exactly like a name that was never ingested: the same 404, the same words, after the same work.
"""

from __future__ import annotations

import mimetypes
from contextlib import closing
from pathlib import Path
from typing import Any

from agent.api.errors import ApiError

MAX_DOCUMENT_BYTES = 50 * 1024 * 1024
_TYPES = {
    ".md": "text/plain; charset=utf-8",
    ".markdown": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".pdf": "application/pdf",
}


def list_documents(settings: Any, groups: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """``[{"source", "title", "chunks"}]`` the caller may read (roots are server paths: not exposed)."""
    return [{"source": d["source"], "title": d["title"], "chunks": d["chunks"]} for d in _records(settings, groups)]


def _records(settings: Any, groups: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """The documents of the active collection ``groups`` may read (``None``: all), from the ingest
    records (opened read-only)."""
    from ingest.access import can_read
    from ingest.sync.records import Records, records_path

    if not records_path(settings.index_dir).is_file():
        return []  # never create an index folder from a read request
    with closing(Records(Path(settings.index_dir), read_only=True)) as records:
        found = records.documents()
    return [d for d in found if can_read(d.get("access"), groups)]


def resolve(settings: Any, source: str, groups: frozenset[str] | None = None) -> tuple[Path, str]:
    """(real path, content type) of an ingested document ``groups`` may read, or ApiError 400/404/409
    (a document they may not read is not found, like one never ingested)."""
    if not source or "\x00" in source or any(ord(c) < 32 for c in source):
        raise ApiError(400, "invalid document name", code="invalid_request", param="source")
    matches = [d for d in _records(settings, groups) if d["source"] == source]
    if not matches:
        raise ApiError(404, "no ingested document has this name; see GET /api/documents", code="document_not_found")
    if len(matches) > 1:
        raise ApiError(409, "several ingested folders have a document with this name", code="ambiguous_document")
    root = Path(matches[0]["root"])
    try:
        real_root = root.resolve(strict=True)
        real = (root / source).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ApiError(404, "the document was ingested but is no longer on disk", code="document_not_found") from None
    if not real.is_relative_to(real_root) or not real.is_file():
        raise ApiError(404, "the document is not inside its ingested folder", code="document_not_found")
    if real.stat().st_size > MAX_DOCUMENT_BYTES:
        raise ApiError(413, "the document is too large to serve", code="document_too_large")
    kind = _TYPES.get(real.suffix.lower()) or mimetypes.guess_type(real.name)[0] or "application/octet-stream"
    return real, kind


def headers_for(path: Path, kind: str) -> dict[str, str]:
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
    if kind.startswith("text/html"):
        headers["Content-Security-Policy"] = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    elif not kind.startswith(("text/plain", "application/pdf")):
        headers["Content-Disposition"] = "attachment"
    return headers
