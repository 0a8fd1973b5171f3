"""PDFs: one section per page (pypdf). Broken, encrypted and image-only files become skips."""

from __future__ import annotations

import io
import logging
import re

from ingest.documents import LoadedDocument, Section, SkipFile, SourceFile
from ingest.formats.markup import title_from_name
from ingest.textio import read_bytes


def load_pdf(file: SourceFile, max_bytes: int) -> LoadedDocument:
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # broken xref tables are reported as skips, not noise
    data = read_bytes(file.path, max_bytes)
    if b"%PDF-" not in data[:1024]:
        raise SkipFile("not a PDF (no %PDF header)")
    if b"%%EOF" not in data[-2048:]:
        raise SkipFile("truncated PDF (no end-of-file marker)")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # "protected" PDFs with only an owner password open fine
            except Exception:
                opened = 0
            if not opened:
                raise SkipFile("encrypted PDF (password required)")
        pages, failed = [], 0
        for number, page in enumerate(reader.pages, 1):
            try:
                pages.append(Section(_clean(page.extract_text() or ""), page=number))
            except (FileNotDecryptedError, DependencyError):
                raise
            except Exception:  # one damaged page does not lose the others
                failed += 1
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except SkipFile:
        raise
    except (DependencyError, FileNotDecryptedError):
        raise SkipFile("encrypted PDF (password required)") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise SkipFile(f"malformed PDF ({type(exc).__name__}: {' '.join(str(exc).split())[:100]})") from None
    except Exception as exc:  # pypdf raises a wide range of errors on broken files
        raise SkipFile(f"malformed PDF ({type(exc).__name__})") from None
    if failed and not pages:
        raise SkipFile(f"malformed PDF (text extraction failed on all {failed} pages)")
    if not any(page.text.strip() for page in pages):
        raise SkipFile("no extractable text (scanned or image-only PDF; run OCR first)")
    first_line = next((line.strip() for page in pages for line in page.text.splitlines() if line.strip()), "")
    title = str(meta_title).strip() or (first_line if 0 < len(first_line) <= 80 else title_from_name(file.path))
    return LoadedDocument(file.source, title, "pdf", pages)


def _clean(text: str) -> str:
    text = re.sub(r"-\n(?=[a-z])", "", text)  # re-join hyphenated line breaks
    return re.sub(r"[ \t]+", " ", text).strip()
