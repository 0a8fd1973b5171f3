"""``--explain``: why each hit is where it is, as a Rich table.

For every hit: its rank in the dense ranking and its cosine similarity, its rank in the BM25
ranking and its BM25 score, and (hybrid) the fused score and the page support its page's other
candidates added (``KB_PAGE_SUPPORT``; the hit ranks by fused + page). A ``-`` rank means the chunk is
not among that ranking's candidates (no shared word for BM25, beyond the candidate depth for dense).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from agent.terminal import markup


def _rank(value: Any) -> str:
    return "-" if value is None else str(value)


def _score(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def explain_table(documents: list[Any], *, mode: str | None = None) -> Table:
    mode = mode or (documents[0].metadata.get("mode") if documents else None) or "?"
    table = Table(title=f"retrieval ({mode})", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("source · section", overflow="fold")
    table.add_column("dense rank", justify="right")
    table.add_column("cosine", justify="right")
    table.add_column("bm25 rank", justify="right")
    table.add_column("bm25", justify="right")
    table.add_column("fused", justify="right")
    table.add_column("+page", justify="right")
    for rank, document in enumerate(documents, 1):
        meta = document.metadata
        where = meta.get("section") or (f"page {meta['page']}" if meta.get("page") else "")
        label = str(meta.get("source") or "?") + (f" · {where}" if where else "")
        table.add_row(
            str(rank),
            markup(label, line=True),
            _rank(meta.get("dense_rank")),
            _score(meta.get("dense_score")),
            _rank(meta.get("bm25_rank")),
            _score(meta.get("bm25_score"), 2),
            _score(meta.get("fused_score")),
            _score(meta.get("page_support") or 0.0) if meta.get("mode") == "hybrid" else "-",
        )
    return table
