"""The second stage (opt-in, ``KB_RERANK``): rerank the first stage's top candidates.

``retrieve(retriever, reranker, query, k=..., candidates=...)`` is the one way every pipeline
retrieves (``AnswerService`` for ``kb ask``/chat/API, ``kb eval``): without a reranker it is the
retriever's top k; with one, the retriever's top ``KB_RERANK_CANDIDATES`` (de-duplicated and capped per
source as always) are reordered by the reranker and the first k kept. Each kept passage's metadata
gets ``first_stage_rank`` (its rank before reranking) and ``rank`` (after).

Rerankers follow the ``Reranker`` protocol. ``LLMReranker`` is listwise: one prompt
(``agent.rag.prompts.RERANK_PROMPT``) with the numbered, escaped candidates asks the chat model for
their order. The reply is untrusted and parsed leniently (``parse_ranking``): numbers in the first
``MAX_REPLY_CHARS`` characters, invalid or repeated ones ignored, the candidates it leaves out kept
after the ranked ones in first-stage order. Any failure (an error, the ``KB_RERANK_TIMEOUT``, a reply
without a usable number) keeps the first-stage order: reranking may improve an answer, never
break one. The call is an ordinary chat call: it carries ``usage_context`` (``"step": "rerank"``), is
written to the usage ledger, and is counted in the question's usage (the ``config`` callbacks).

A local cross-encoder would be another ``Reranker``; none is bundled (no weights that can be
obtained and verified offline).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

from langchain_core.documents import Document

log = logging.getLogger(__name__)

MAX_REPLY_CHARS = 2000  # a ranking of 100 candidates is ~400 characters
RERANK_STEP = "rerank"
_NUMBER = re.compile(r"\d{1,6}")  # linear: a bounded run of digits


class Reranker(Protocol):
    """Reorders candidate passages for a query (best first); returns the same documents."""

    name: str

    def rerank(self, query: str, documents: list[Document], *, config: dict[str, Any] | None = None) -> list[Document]:
        ...


def parse_ranking(reply: Any, count: int) -> list[int] | None:
    """The 1-based candidate numbers of a ranking reply, best first, every candidate once (the
    unranked ones appended in their order); ``None`` when the reply names no valid candidate."""
    text = reply if isinstance(reply, str) else ""
    ranked: list[int] = []
    seen: set[int] = set()
    for match in _NUMBER.finditer(text[:MAX_REPLY_CHARS]):
        n = int(match.group())
        if 1 <= n <= count and n not in seen:
            seen.add(n)
            ranked.append(n)
    if not ranked:
        return None
    return ranked + [n for n in range(1, count + 1) if n not in seen]


class LLMReranker:
    """Listwise reranking by the chat model (``KB_RERANK=llm``)."""

    name = "llm"

    def __init__(self, llm: Any) -> None:
        from langchain_core.output_parsers import StrOutputParser

        from agent.rag.prompts import RERANK_PROMPT  # heavy: langchain_core.prompts, only when reranking

        self._chain = (RERANK_PROMPT | llm | StrOutputParser()).with_config(run_name="rerank")

    def rerank(self, query: str, documents: list[Document], *, config: dict[str, Any] | None = None) -> list[Document]:
        if len(documents) < 2:
            return list(documents)
        from agent.rag.prompts import escape_untrusted, format_rerank_passages

        try:
            reply = self._chain.invoke(
                {"question": escape_untrusted(query), "passages": format_rerank_passages(documents)}, config
            )
        except Exception as exc:  # any failure: keep the first stage's order
            log.warning("rerank failed, keeping the first-stage order: %s", type(exc).__name__)
            return list(documents)
        order = parse_ranking(reply, len(documents))
        if order is None:
            log.warning("rerank reply had no usable ranking, keeping the first-stage order")
            return list(documents)
        return [documents[n - 1] for n in order]


def build_reranker(settings: Any, *, command: str, usage_extra: dict[str, str] | None = None) -> Reranker | None:
    """The configured second stage, or ``None`` (``KB_RERANK=off``)."""
    if getattr(settings, "rerank", "off") == "off":
        return None
    from agent.databricks.llm import build_llm  # heavy: langchain_openai + openai, only with KB_RERANK=llm

    candidates = int(settings.rerank_candidates)
    llm = build_llm(
        settings,
        command=command,
        usage_extra={**(usage_extra or {}), "step": RERANK_STEP},
        max_tokens=16 + 4 * candidates,  # "12, 3, ..." for every candidate, with room to spare
        timeout=float(settings.rerank_timeout),
        max_retries=0,  # a late ranking is worth less than the first-stage order now
    )
    return LLMReranker(llm)


def top_k(retriever: Any, k: int | None) -> int:
    """How many passages the question gets: ``k``, else the retriever's own."""
    return int(k if k is not None else getattr(retriever, "k", 5))


def first_stage(
    retriever: Any, reranker: Reranker | None, query: str, *, k: int | None = None, candidates: int = 20, **kwargs: Any
) -> list[Document]:
    """The retriever's passages: the top ``k`` (``None``: its own k), or with a ``reranker`` the top
    ``max(k, candidates)`` for it to reorder. ``kwargs`` (``mode``, ``groups``) go to the retriever."""
    if reranker is None:
        if k is not None:
            kwargs["k"] = k
        return list(retriever.invoke(query, **kwargs))
    return list(retriever.invoke(query, k=max(top_k(retriever, k), candidates), **kwargs))


def second_stage(reranker: Reranker, query: str, pool: list[Document], *, top: int,
                 config: dict[str, Any] | None = None) -> list[Document]:
    """The first ``top`` of ``pool`` in the reranker's order, each with its ``first_stage_rank``."""
    out = []
    for rank, document in enumerate(reranker.rerank(query, pool, config=config)[:top], 1):
        metadata = dict(document.metadata)
        metadata["first_stage_rank"] = metadata.get("rank")
        metadata["rank"] = rank
        out.append(Document(page_content=document.page_content, metadata=metadata, id=document.id))
    return out


def retrieve(
    retriever: Any,
    reranker: Reranker | None,
    query: str,
    *,
    k: int | None = None,
    candidates: int = 20,
    config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> list[Document]:
    """Both stages in one call: the top ``k`` passages for ``query`` (``k=None``: the retriever's own
    k), reranked when there is a reranker. ``kwargs`` (``mode``, ``groups``) go to the retriever."""
    pool = first_stage(retriever, reranker, query, k=k, candidates=candidates, **kwargs)
    if reranker is None:
        return pool
    return second_stage(reranker, query, pool, top=top_k(retriever, k), config=config)
