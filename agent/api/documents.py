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

import json
import logging
import mimetypes
import os
import re
import subprocess
import sys
import threading
import unicodedata
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.api.errors import ApiError
from ingest.access import can_read
from ingest.errors import IndexBusyError
from ingest.loaders import LOADERS
from ingest.store.folder import writer_lock
from ingest.sync.records import Records, records_path

log = logging.getLogger("kb.api")
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
    """``[{"source", "title", "chunks", "size", "indexed_at"}]`` the caller may read (roots are server
    paths: not exposed); ``indexed_at``: when ``kb ingest`` last indexed or confirmed it (UTC, ISO 8601)."""
    return [{"source": d["source"], "title": d["title"], "chunks": d["chunks"], "size": d.get("size"),
             "indexed_at": _iso(d.get("checked_ns"))} for d in _records(settings, groups)]


def _iso(ns: int | None) -> str | None:
    if not ns:
        return None
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _records(settings: Any, groups: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """The documents of the active collection ``groups`` may read (``None``: all), from the ingest
    records (opened read-only)."""
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


# ---------------------------------------------------------------- uploads (writers)
#
# ``POST /api/documents`` (multipart, one ``file`` part): a caller with the ``writer`` group
# (``agent.api.auth.is_writer``) adds or replaces one file in the upload folder (``KB_UPLOAD_DIR``,
# default ``<KB_KNOWLEDGE_DIR>/uploads``), which must lie inside a folder already ingested; then the
# same ``kb ingest`` job indexes that folder incrementally, in a child ``kb ingest --json`` process
# (its parse worker, limits and single-writer lock; the server keeps no embedding model of its own).
# One upload at a time per server (409 while one runs), and 409 while another ``kb ingest`` holds
# the index. A file the ingest skips (unreadable, too large, hostile) is removed again and refused
# (422) with the ingest's reason.

UPLOAD_INGEST_TIMEOUT = 600.0  # seconds for the child `kb ingest` of one upload
MAX_NAME_CHARS = 120
_upload_lock = threading.Lock()


def upload_limit(settings: Any) -> int:
    """The largest file accepted: KB_MAX_FILE_MB, and what fits in KB_API_MAX_BODY_BYTES with the
    multipart envelope (a few hundred bytes; 4 KiB kept for it)."""
    return max(0, min(int(settings.max_file_mb * 1024 * 1024), settings.api_max_body_bytes - 4096))


def upload_dir(settings: Any) -> Path:
    return Path(settings.upload_dir or Path(settings.knowledge_dir) / "uploads").absolute()


def clean_name(name: str) -> str:
    """A safe file name from a client's: the last path part, letters, digits, space, ``._-`` (others
    become ``_``), no leading dot, at most MAX_NAME_CHARS, with a suffix ``kb ingest`` reads; or ApiError 400."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(c if (c.isalnum() and c.isascii()) or c in " ._-" else "_" for c in base).strip(" .")
    stem, dot, suffix = base.rpartition(".")
    if not dot or not stem.strip("_ ") or f".{suffix.lower()}" not in LOADERS:
        kinds = "Markdown, text, HTML, PDF, Word, CSV, JSON"
        raise ApiError(400, f"cannot add '{_shown(name)}': only files named like 'notes.md' of a kind kb reads "
                       f"({kinds}, notebooks, source code)", code="unsupported_file", param="file")
    if len(base) > MAX_NAME_CHARS:
        base = stem[: MAX_NAME_CHARS - len(suffix) - 1] + "." + suffix
    return base


def _shown(name: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in (name or ""))
    return text if len(text) <= 80 else text[:79] + "…"


def _ingested_root(settings: Any, folder: Path) -> Path | None:
    """The ingested folder ``folder`` lies in (``None``: none)."""
    real = folder.resolve()
    for root in {Path(d["root"]) for d in _records(settings)}:
        try:
            if real.is_relative_to(root.resolve(strict=True)):
                return root
        except (OSError, RuntimeError):
            continue
    return None


def save_upload(settings: Any, name: str, data: bytes) -> dict[str, Any]:
    """Store one uploaded file and index it (blocking: run it in a thread). Returns
    ``{"source", "title", "chunks", "status"}`` or raises ApiError."""
    filename = clean_name(name)
    limit = upload_limit(settings)
    if len(data) > limit:
        raise ApiError(413, f"'{filename}' is too large: {len(data)} bytes, the limit is {limit} bytes "
                       "(KB_MAX_FILE_MB and KB_API_MAX_BODY_BYTES)", code="file_too_large", param="file")
    if not data.strip():
        raise ApiError(400, f"'{filename}' is empty", code="empty_file", param="file")
    if not _upload_lock.acquire(blocking=False):
        raise ApiError(409, "another upload is being indexed: try again when it has finished", code="writer_busy")
    try:
        folder = upload_dir(settings)
        root = _ingested_root(settings, folder)
        if root is None:
            raise ApiError(503, "uploads are not set up: KB_UPLOAD_DIR (default <KB_KNOWLEDGE_DIR>/uploads) must be "
                           "inside a folder that 'kb ingest' has indexed", code="uploads_unavailable")
        try:  # fail early, before touching the folder, while a `kb ingest` runs
            with writer_lock(Path(settings.index_dir)):
                pass
        except IndexBusyError:
            raise _busy() from None
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / filename
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise ApiError(409, f"'{filename}' exists in the upload folder and is not a plain file", code="name_taken")
        previous = target.read_bytes() if target.is_file() else None
        temporary = folder / f".{filename}.{os.getpid()}.upload"  # a dot file: `kb ingest` ignores it
        temporary.write_bytes(data)
        os.replace(temporary, target)
        try:
            summary = _run_ingest(settings, folder)
        except BaseException:
            _restore(target, previous)
            raise
        source = target.resolve().relative_to(root.resolve()).as_posix()
        skipped = [s for s in summary.get("skipped") or [] if str(s.get("source", "")).endswith(filename)]
        if skipped:
            _restore(target, previous)
            _reindex(settings, folder)
            raise ApiError(422, f"'{filename}' was not added: {skipped[0].get('reason') or 'kb ingest skipped it'}",
                           code="file_refused", param="file")
        found = [d for d in list_documents(settings) if d["source"] == source]
        if not found:
            _restore(target, previous)
            _reindex(settings, folder)
            raise ApiError(422, f"'{filename}' was not added: kb ingest found no text in it", code="file_refused",
                           param="file")
        return {**found[0], "status": "replaced" if previous is not None else "added"}
    finally:
        _upload_lock.release()


def _restore(target: Path, previous: bytes | None) -> None:
    if previous is None:
        target.unlink(missing_ok=True)
    else:
        target.write_bytes(previous)


def _reindex(settings: Any, folder: Path) -> None:
    """After a refused file is removed: bring the index back in line (best effort; the next upload or
    ``kb ingest`` does it otherwise)."""
    try:
        _run_ingest(settings, folder)
    except ApiError as exc:
        log.info("re-indexing the upload folder after a refused file: %s", exc.message)


def _busy() -> ApiError:
    return ApiError(409, "the index is being updated by another 'kb ingest': try again when it has finished",
                    code="writer_busy", headers={"Retry-After": "30"})


def _run_ingest(settings: Any, folder: Path) -> dict[str, Any]:
    """``kb ingest --json <folder>`` in a child process with this server's settings (environment)."""
    env = {**os.environ, "KB_INDEX_DIR": str(settings.index_dir)}
    try:
        done = subprocess.run([sys.executable, "-m", "agent.cli", "ingest", str(folder), "--json"],
                              capture_output=True, text=True, timeout=UPLOAD_INGEST_TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ApiError(504, f"indexing the upload took longer than {int(UPLOAD_INGEST_TIMEOUT)} s",
                       code="ingest_timeout") from None
    if done.returncode != 0 and "another 'kb ingest'" in done.stderr:
        raise _busy()
    try:
        summary = json.loads(done.stdout) if done.stdout.strip() else {}
    except ValueError:
        summary = {}
    if done.returncode != 0 and not summary.get("skipped"):
        line = next((l for l in done.stderr.splitlines() if l.startswith("error:")), "error: kb ingest failed")
        log.warning("kb ingest of the upload folder failed: %s", line)
        raise ApiError(502, f"indexing the upload failed ({line[len('error:'):].strip()[:300]})", code="ingest_failed")
    return summary
