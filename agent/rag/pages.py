"""Document-level passages: the answer prompt reads the best chunks of the best pages, page by page.

The retriever's top k already caps how many chunks one page may take (``KB_MAX_PER_SOURCE``) and
drops near-duplicates; ``by_page`` only regroups them: pages in the order of their best chunk, the
chunks of one page together, best first. So when several chunks of one page match, the model reads
them side by side under the same source, and passage 1 is still the best chunk. A page is the
``(root, source)`` pair, the key of the per-source cap. Citations (``agent.rag.chain.cited_sources``)
name the page (``source``) and the section heading the chunk was cut from (``section``).
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.documents import Document


def page_key(document: Document) -> tuple[str, str]:
    """The page a chunk comes from, ``(root, source)``: also the key of the ranking's per-source cap
    and page support (``agent.rag.search``)."""
    meta = document.metadata
    return (str(meta.get("root", "")), str(meta.get("source", "")))


def by_page(documents: Sequence[Document]) -> list[Document]:
    """``documents`` (best first) regrouped: each page's chunks together, pages ordered by their best
    chunk, chunks within a page in their original (rank) order. Nothing is added or dropped."""
    pages: dict[tuple[str, str], list[Document]] = {}
    for document in documents:
        pages.setdefault(page_key(document), []).append(document)
    return [document for chunks in pages.values() for document in chunks]
