"""Retrieval over the local index as a LangChain retriever: ``KnowledgeRetriever``.

``build_retriever(settings)`` returns a ``KnowledgeRetriever`` (a LangChain ``BaseRetriever``, for
chains, the answer service, the assistant's tools and notebooks) in the configured mode
(``KB_SEARCH_MODE``, overridable per call with ``mode=``). Its ranking is
``agent.rag.search.Ranking``, the very code ``kb search`` runs without LangChain's runnable
machinery (``agent.rag.search.KnowledgeSearch``): the modes, fusion, de-duplication, per-source cap,
explain metadata and access control are described there. The helpers (fusion, relevance, building
the store, JSON shapes) are re-exported here for the callers that import them from this module.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, PrivateAttr

from agent.rag.search import (  # noqa: F401  (re-exported)
    DEFAULTS,
    EXPLAIN_KEYS,
    LOCAL_MIN_RELEVANCE,
    MODES,
    KnowledgeSearch,
    Ranking,
    best_relevance,
    build_embeddings,
    build_search,
    build_store,
    explain_json,
    fuse_convex,
    fuse_rrf,
    is_relevant,
    min_relevance,
    refusal,
    result_json,
    search_json,
    search_options,
)
from agent.settings import Settings


class KnowledgeRetriever(BaseRetriever, Ranking):
    """Top-k chunks from the kb index; ``mode`` and ``k`` can also be passed per call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any  # a ChunkStore (ingest.store.base); it also carries the query embedding model
    # The same options and defaults as agent.rag.search.DEFAULTS (tests/unit/test_search_split.py checks it).
    k: int = 5
    mode: str = "dense"
    candidates: int = 50  # depth of each ranking before fusion
    fusion: str = "convex"  # hybrid: "convex" (score fusion, measured best) or "rrf" (rank fusion)
    alpha: float = 0.8  # convex: weight of the dense score (BM25 gets 1 - alpha)
    rrf_k: int = 60  # rrf: the k of 1 / (k + rank)
    bm25_weight: float = 1.0  # rrf: weight of the BM25 ranking (dense is 1)
    max_per_source: int = 3  # 0 = no cap
    page_support: float = 0.05  # weight of a page's runner-up chunks in each of its chunks' score (0: off)
    support_chunks: int = 2  # how many runner-up chunks of a page count
    dedupe: bool = True
    groups: frozenset[str] | None = None  # the caller's groups (None: every chunk); per call: groups=

    _vectors: dict[str, list[float]] = PrivateAttr(default_factory=dict)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return self.rank(query, **kwargs)


def build_retriever(
    settings: Settings,
    *,
    k: int | None = None,
    command: str = "search",
    mode: str | None = None,
    usage_extra: dict[str, str] | None = None,
    groups: frozenset[str] | None = None,
) -> KnowledgeRetriever:
    """The retriever over the configured index; usable alone in a notebook or inside a chain.

    ``groups``: read only what they may (default ``KB_AS_GROUPS``/``--as-groups``; unset: everything)."""
    return retriever_for(build_search(settings, k=k, command=command, mode=mode, usage_extra=usage_extra,
                                      groups=groups))


def retriever_for(search: KnowledgeSearch) -> KnowledgeRetriever:
    """The LangChain retriever over ``search``'s store, options and query-vector cache (``kb ask``
    searches ahead without LangChain, then answers through this one, warm)."""
    retriever = KnowledgeRetriever(store=search.store, **{name: getattr(search, name) for name in DEFAULTS})
    retriever._vectors = search._vectors
    return retriever
