"""Structure-aware splitting: markdown (and HTML rendered as markdown) by headings, PDFs by page,
then by size with overlap. Chunks are sized for all-MiniLM-L6-v2, which reads 256 word pieces:
about 1,000 characters of English, so 800 characters keep the end of a chunk inside the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest.loaders import LoadedDocument

CHUNK_SIZE = 800
CHUNK_OVERLAP = 120
_HEADERS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]


@dataclass(frozen=True)
class Chunk:
    text: str
    metadata: dict[str, Any]  # source, title, section, page, chunk


def split_document(document: LoadedDocument, *, chunk_size: int = CHUNK_SIZE, overlap: int = CHUNK_OVERLAP) -> list[Chunk]:
    from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

    by_size = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size,
        chunk_overlap=overlap,
        separators=["\n\n", "\n", ". ", "; ", ", ", " ", ""],
        keep_separator="end",
    )
    pieces: list[tuple[str, str, int | None]] = []  # (text, section, page)
    if document.kind in ("markdown", "html"):
        by_heading = MarkdownHeaderTextSplitter(headers_to_split_on=_HEADERS, strip_headers=False)
        for section in document.sections:
            for part in by_heading.split_text(section.text):
                heading_path = " > ".join(part.metadata[key] for _, key in _HEADERS if key in part.metadata)
                for text in by_size.split_text(part.page_content):
                    pieces.append((text, heading_path, None))
    else:
        for section in document.sections:
            for text in by_size.split_text(section.text):
                pieces.append((text, "", section.page))

    chunks = []
    for text in (p for p in pieces if p[0].strip()):
        body, section, page = text
        metadata: dict[str, Any] = {
            "source": document.source,
            "title": document.title,
            "section": section,
            "chunk": len(chunks),
        }
        if page is not None:
            metadata["page"] = page
        chunks.append(Chunk(body.strip(), metadata))
    return chunks
