"""Search over the local index: dense, lexical (BM25) or hybrid, without LangChain's runnable machinery.

``build_search(settings)`` returns a ``KnowledgeSearch``: the ranking ``kb search`` runs, and the one
``agent.rag.retrieval.KnowledgeRetriever`` (the LangChain retriever every chain and the answer
service use) delegates to, so both give the same documents. This module imports no
``langchain_core.retrievers`` (callbacks, tracers, langsmith: ~0.6 s of a fresh process), only
``langchain_core.documents.Document``, the result type, which costs little once pydantic is loaded.

Modes (``KB_SEARCH_MODE``, overridable per call with ``mode=``):

- ``dense``: cosine similarity of embeddings (``ChunkStore.nearest``);
- ``bm25``: BM25 over the same chunks (``ChunkStore.lexical``; ``ingest.store.lexical`` for local stores);
- ``hybrid``: both fused: by default a convex combination of the min-max normalised scores
  (0.8 dense + 0.2 BM25), which measured better than reciprocal rank fusion (``fusion="rrf"``).

Pages, not chunks (hybrid): a page that several candidates come from is likelier the page the
question is about than one with a single lucky chunk. With ``page_support`` > 0 (``KB_PAGE_SUPPORT``,
default 0.05) every fused candidate's score gets ``page_support`` times the sum of the next
``support_chunks`` (``KB_PAGE_SUPPORT_CHUNKS``, default 2) best fused scores of its page, so pages rank
by "best chunk + a little of the runners-up" and chunks of one page keep their order (``support_pages``).
Measured (docs/retrieval.md): page MRR@10 on the 1,622-page corpus 0.767 -> 0.800, the small sets
equal or better. Only the fused ranking gets it: fused scores share one [0, 1] scale, and ``dense``
and ``bm25`` stay single-signal rankings (with support BM25 lost a hit@5 question on both small sets).

Both rankings are computed in every mode (the other one is the explain data), one after the other:
running the dense scan on a second thread while BM25 adds its columns was measured (50k chunks)
and did not pay (BM25 is ~1 ms of it; the hand-off costs as much, and the API's concurrent
questions already keep the cores busy).

In every mode the top-k avoids near-duplicate chunks and caps how many chunks one document may
take (``KB_MAX_PER_SOURCE``), backfilling from the capped ones only when nothing else is left.
Each returned document carries in its metadata ``rank``, ``score`` (what the mode ranked by:
cosine similarity, BM25 score, or in hybrid the fused score in [0, 1], 1.0 meaning best in both,
plus the page support, at most ``page_support * support_chunks``), and the explain data:
``dense_rank``, ``dense_score`` (cosine, for every hit), ``bm25_rank``, ``bm25_score``,
``fused_score``, ``page_support`` (hybrid; ``None`` when none). A rank is ``None`` when the chunk
is not among that ranking's candidates.

Access control: ``groups`` (the searcher's, or per call ``groups=...``) restricts every ranking to
the chunks those groups may read (``ingest.access``), inside the store query
(``Filter.readable_by``), so the top-k, the candidates fused and the explain ranks only ever hold
readable chunks. ``None`` (the CLI without ``--as-groups``) reads everything; the API always passes
the caller's groups.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from langchain_core.documents import Document

from agent.errors import ConfigError, UsageError
from agent.rag.pages import page_key
from agent.settings import Settings
from ingest.access import readable_by
from ingest.errors import IndexMissingError
from ingest.store.base import ChunkStore, Filter

MODES = ("dense", "bm25", "hybrid")
EXPLAIN_KEYS = ("dense_rank", "dense_score", "bm25_rank", "bm25_score", "fused_score", "page_support")

# Calibrated with all-MiniLM-L6-v2 on both gold sets (see README, "Refusing to guess"): below every
# answerable question's best cosine (lowest 0.288 knowledge, 0.357 handbook) with a margin, above
# off-topic questions (0.09-0.16). Near-miss questions still reach the model, which declines them.
LOCAL_MIN_RELEVANCE = 0.25

# The ranking's options and their defaults (KnowledgeRetriever declares the same fields).
DEFAULTS: dict[str, Any] = {
    "k": 5,
    "mode": "dense",
    "candidates": 50,  # depth of each ranking before fusion
    "fusion": "convex",  # hybrid: "convex" (score fusion, measured best) or "rrf" (rank fusion)
    "alpha": 0.8,  # convex: weight of the dense score (BM25 gets 1 - alpha)
    "rrf_k": 60,  # rrf: the k of 1 / (k + rank)
    "bm25_weight": 1.0,  # rrf: weight of the BM25 ranking (dense is 1)
    "max_per_source": 3,  # 0 = no cap; per call: max_per_source= (kb eval's page ranking: 1)
    "page_support": 0.05,  # weight of a page's runner-up chunks in each of its chunks' score (0: off)
    "support_chunks": 2,  # how many runner-up chunks of a page count
    "dedupe": True,
    "groups": None,  # the caller's groups (None: every chunk); per call: groups=
}


class Ranking:
    """The ranking itself, over the attributes of ``DEFAULTS`` plus ``store`` and a ``_vectors``
    dict (the query-vector cache): mixed into ``KnowledgeSearch`` and ``KnowledgeRetriever``. (No
    annotations here: pydantic would read them as fields of the retriever.)"""

    def rank(self, query: str, **kwargs: Any) -> list[Document]:
        """The top-k documents for ``query`` (``k``, ``mode``, ``groups``, ``max_per_source`` per call
        override the attributes)."""
        k = int(kwargs.get("k", self.k))
        cap = int(kwargs.get("max_per_source", self.max_per_source))
        mode = str(kwargs.get("mode", self.mode))
        if mode not in MODES:
            raise UsageError(f"unknown search mode '{mode}': use one of {', '.join(MODES)}")
        store: ChunkStore = self.store
        total = store.count()
        if total == 0:
            raise IndexMissingError("the index is empty", hint="run 'kb ingest' first")
        depth = min(total, max(self.candidates, k * 4))
        allowed = readable_by(kwargs["groups"] if "groups" in kwargs else self.groups)
        only = Filter(readable_by=allowed) if allowed is not None else None
        if callable(getattr(store, "search", None)):  # Vector Search ranks itself: ANN, HYBRID or FULL_TEXT
            return self._native(query, k, mode, depth, only, cap)

        # Both rankings are computed in every mode: the mode decides the order, and the other
        # ranking is the explain data (where would this chunk be in dense / BM25 alone?).
        vector = self._query_vector(query)
        dense, documents = self._dense(vector, depth, only)
        lexical = store.lexical(query, filter=only)
        bm25 = {cid: (rank, score) for rank, (cid, score) in enumerate(lexical.top(depth), 1)}

        if mode == "dense":
            order = [(cid, hit[1]) for cid, hit in dense.items()]
        elif mode == "bm25":
            order = [(cid, hit[1]) for cid, hit in bm25.items()]
        elif self.fusion == "rrf":
            order = fuse_rrf([list(dense), list(bm25)], k=self.rrf_k, weights=[1.0, self.bm25_weight])
        else:  # convex: exact scores of both kinds for every candidate of either ranking
            union = list(dict.fromkeys([*dense, *bm25]))
            cosine = self._dense_scores(query, [cid for cid in union if cid not in dense])
            cosine.update({cid: hit[1] for cid, hit in dense.items()})
            score = getattr(lexical, "score", None) or (lambda cid: lexical.score_and_rank(cid)[0])  # no rank needed
            lexical_scores = {cid: bm25[cid][1] if cid in bm25 else score(cid) for cid in union}
            order = fuse_convex(cosine, lexical_scores, alpha=self.alpha)

        support: dict[str, float] = {}
        if mode == "hybrid" and self.page_support > 0 and order:
            documents.update(self._fetch([cid for cid, _ in order if cid not in documents]))
            order, support = support_pages(order, lambda cid: _page_of(cid, documents),
                                           weight=self.page_support, runners_up=self.support_chunks)
        chosen = self._select(order, k, documents, cap)
        return self._finish(query, chosen, mode, dense, bm25, lexical, support)

    def _dense(self, vector: list[float], depth: int, only: Filter | None
               ) -> tuple[dict[str, tuple[int, float]], dict[str, Document]]:
        """The dense candidates ``{id: (rank, cosine)}`` and the documents that came with them: none
        from a store that ranks without reading the chunks (``nearest_ids``: the snapshot), whose
        chunks ``_select`` reads as its walk reaches them."""
        store = self.store
        nearest_ids = getattr(store, "nearest_ids", None)
        if callable(nearest_ids):
            ranked = nearest_ids(vector, depth, filter=only)
            return {cid: (rank, 1.0 - distance) for rank, (cid, distance) in enumerate(ranked, 1)}, {}
        hits = store.nearest(vector, depth, filter=only)
        return ({hit.id: (rank, 1.0 - hit.distance) for rank, hit in enumerate(hits, 1)},
                {hit.id: Document(page_content=hit.text, metadata=hit.metadata, id=hit.id) for hit in hits})

    def _native(self, query: str, k: int, mode: str, depth: int, only: Any, cap: int) -> list[Document]:
        """A store that ranks itself (``ingest.store.vector_search``: ``dense`` -> ANN, ``hybrid`` -> its own
        HYBRID, ``bm25`` -> FULL_TEXT): its order, then the same page support, de-duplication and
        per-source cap. ``dense_score`` is the cosine wherever the vectors are known (the refusal gate reads it)."""
        store = self.store
        wants_vector = mode != "bm25" and getattr(store, "needs_query_vector", True)
        hits = store.search(query, self._query_vector(query) if wants_vector else None, depth, mode=mode, filter=only)
        info = {hit.id: (rank, score, 1.0 - hit.distance) for rank, (hit, score) in enumerate(hits, 1)}
        found = {hit.id: Document(page_content=hit.text, metadata=hit.metadata, id=hit.id) for hit, _ in hits}
        order: list[tuple[str, float]] = [(hit.id, float(score)) for hit, score in hits]
        support: dict[str, float] = {}
        if mode == "hybrid" and self.page_support > 0 and order:
            order, support = support_pages(order, lambda cid: _page_of(cid, found),
                                           weight=self.page_support, runners_up=self.support_chunks)
        documents = []
        for rank, (cid, score, document) in enumerate(self._select(order, k, found, cap), 1):
            place, own, cosine = info[cid]  # own: the store's score, before page support
            metadata = dict(document.metadata)
            metadata.update(
                rank=rank, score=round(float(score), 4), mode=mode, page_support=_rounded(support.get(cid)),
                dense_rank=place if mode == "dense" else None, dense_score=round(cosine, 4),
                bm25_rank=place if mode == "bm25" else None, bm25_score=round(float(own), 4) if mode == "bm25" else None,
                fused_score=round(float(own), 4) if mode == "hybrid" else None,
            )
            documents.append(Document(page_content=document.page_content, metadata=metadata, id=cid))
        return documents

    # ------------------------------------------------------------ steps

    def _query_vector(self, query: str) -> list[float]:
        vector = self._vectors.get(query)
        if vector is None:
            if len(self._vectors) > 256:
                self._vectors.clear()
            vector = self._vectors[query] = list(self.store.embeddings.embed_query(query))
        return vector

    def _select(
        self, order: list[tuple[str, float]], k: int, documents: dict[str, Document], cap: int
    ) -> list[tuple[str, float, Document]]:
        """Walk the ranking: skip near-duplicates, cap chunks per source (``cap``; 0: none), backfill if
        short. Chunks not in ``documents`` are read as the walk reaches them, a batch at a time (most
        of a ranking is never looked at)."""
        chosen: list[tuple[str, float, Document]] = []
        overflow: list[tuple[str, float, Document]] = []
        shingles: list[frozenset[tuple[str, ...]]] = []
        per_source: Counter[tuple[str, str]] = Counter()
        tried: set[str] = set()
        batch = max(2 * k, 10)
        for i, (cid, score) in enumerate(order):
            if cid not in documents and cid not in tried:
                ahead = [c for c, _ in order[i : i + batch] if c not in documents and c not in tried]
                tried.update(ahead)
                documents.update(self._fetch(ahead))
            document = documents.get(cid)
            if document is None:  # the BM25 index is a step behind the collection
                continue
            if self.dedupe:
                mine = _shingles(document.page_content)
                if any(_jaccard(mine, other) >= 0.8 for other in shingles):
                    continue
            key = page_key(document)
            if cap and per_source[key] >= cap:
                overflow.append((cid, score, document))
                continue
            per_source[key] += 1
            chosen.append((cid, score, document))
            if self.dedupe:
                shingles.append(mine)
            if len(chosen) == k:
                return chosen
        return chosen + overflow[: k - len(chosen)]

    def _fetch(self, ids: list[str]) -> dict[str, Document]:
        if not ids:
            return {}
        got = self.store.get(ids)
        return {
            cid: Document(page_content=text, metadata=meta, id=cid)
            for cid, text, meta in zip(got.ids, got.texts, got.metadatas)
        }

    def _dense_scores(self, query: str, ids: list[str]) -> dict[str, float]:
        """Cosine similarity of the query with chunks that were not among the dense candidates."""
        if not ids:
            return {}
        import numpy as np

        query_vector = np.asarray(self._query_vector(query), dtype=np.float32)
        got = self.store.get(ids, texts=False, metadatas=False, vectors=True)
        if not got.ids:
            return {}
        matrix = np.asarray(got.vectors, dtype=np.float32).reshape(len(got.ids), -1)
        denominators = (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query_vector)).astype(np.float64)
        denominators[denominators == 0] = 1.0
        scores = (matrix @ query_vector).astype(np.float64) / denominators
        return dict(zip(got.ids, scores.tolist()))

    def _finish(
        self,
        query: str,
        chosen: list[tuple[str, float, Document]],
        mode: str,
        dense: dict[str, tuple[int, float]],
        bm25: dict[str, tuple[int, float]],
        lexical: Any,
        support: dict[str, float],
    ) -> list[Document]:
        extra_dense = self._dense_scores(query, [cid for cid, _, _ in chosen if cid not in dense])
        documents = []
        for rank, (cid, score, document) in enumerate(chosen, 1):
            metadata = dict(document.metadata)
            dense_hit = dense.get(cid)
            bm25_hit = bm25.get(cid)
            if bm25_hit:
                bm25_rank, bm25_score = bm25_hit
            else:
                bm25_score, bm25_rank = lexical.score_and_rank(cid)
            metadata.update(
                rank=rank,
                score=round(float(score), 4),
                mode=mode,
                dense_rank=dense_hit[0] if dense_hit else None,
                dense_score=round(dense_hit[1] if dense_hit else extra_dense.get(cid, 0.0), 4),
                bm25_rank=bm25_rank,
                bm25_score=round(bm25_score, 4) if bm25_rank else None,
                fused_score=round(float(score) - support.get(cid, 0.0), 4) if mode == "hybrid" else None,
                page_support=_rounded(support.get(cid)),
            )
            documents.append(Document(page_content=document.page_content, metadata=metadata, id=cid))
        return documents


class KnowledgeSearch(Ranking):
    """Top-k chunks from the kb index (``kb search``); ``mode``, ``k`` and ``groups`` also per call."""

    def __init__(self, store: Any, **options: Any) -> None:
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown search options: {', '.join(sorted(unknown))}")
        self.store = store
        for name, default in DEFAULTS.items():
            setattr(self, name, options.get(name, default))
        self._vectors = {}

    def invoke(self, query: str, **kwargs: Any) -> list[Document]:
        return self.rank(query, **kwargs)


def fuse_convex(dense: dict[str, float], bm25: dict[str, float], *, alpha: float = 0.8) -> list[tuple[str, float]]:
    """Convex combination of min-max normalised scores: ``alpha * dense + (1 - alpha) * bm25``.

    Both dicts hold a score for every candidate (cosine similarity, BM25 score; 0 when a chunk
    shares no word with the query). Scores are normalised over the candidates, so 1.0 means best
    in both. Measured better than RRF on both gold sets (see README); ties keep dense order."""
    def normalised(scores: dict[str, float]) -> dict[str, float]:
        if not scores:
            return {}
        low, high = min(scores.values()), max(scores.values())
        return {key: (value - low) / (high - low) if high > low else 0.0 for key, value in scores.items()}

    d, b = normalised(dense), normalised(bm25)
    fused = [(key, alpha * d.get(key, 0.0) + (1 - alpha) * b.get(key, 0.0)) for key in dict.fromkeys([*dense, *bm25])]
    return sorted(fused, key=lambda pair: -pair[1])


def fuse_rrf(
    rankings: list[list[str]], *, k: int = 60, weights: list[float] | None = None
) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: ``sum(weight / (k + rank))`` over the rankings that contain an item,
    scaled so that 1.0 means first in every ranking. Ties keep the order of first appearance."""
    weights = weights or [1.0] * len(rankings)
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    best = sum(weights) / (k + 1)
    ordered = sorted(scores.items(), key=lambda pair: -pair[1])
    return [(item, value / best) for item, value in ordered]


def support_pages(
    order: list[tuple[str, float]], page_of: Any, *, weight: float, runners_up: int = 2
) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """Page-level aggregation: each candidate's score plus ``weight`` times the sum of the next
    ``runners_up`` best scores of its page (``page_of(id)``; the page's own best chunk excluded, so
    every chunk of a page gets the same support). Pages then rank by ``best + weight * runners-up``
    and a page's chunks keep their order. Returns the new order (stable for ties) and each id's
    support (0.0 for a page with one candidate)."""
    by_page: dict[Any, list[float]] = {}
    for cid, score in order:
        by_page.setdefault(page_of(cid), []).append(score)
    page_support = {page: weight * sum(sorted(scores, reverse=True)[1 : 1 + runners_up])
                    for page, scores in by_page.items()}
    support = {cid: page_support[page_of(cid)] for cid, _ in order}
    boosted = [(cid, score + support[cid]) for cid, score in order]
    return sorted(boosted, key=lambda pair: -pair[1]), support


def _page_of(cid: str, documents: dict[str, Document]) -> tuple[str, str]:
    """``page_key`` of a candidate; one missing from ``documents`` (the BM25 index a step behind the
    collection) is a page of its own."""
    document = documents.get(cid)
    return page_key(document) if document is not None else ("\0missing", cid)


def _rounded(value: float | None) -> float | None:
    return round(value, 4) if value else None


_WORDS = re.compile(r"\w+")


def _shingles(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    """The text's word 3-grams (as tuples: cheaper than joined strings, the same sets)."""
    words = _WORDS.findall(text.lower())
    if len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(zip(*(words[i:] for i in range(n))))


def _jaccard(a: frozenset[Any], b: frozenset[Any]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


# ---------------------------------------------------------------- relevance


def min_relevance(settings: Settings) -> float:
    """The refusal floor: ``KB_MIN_RELEVANCE`` if set, else the value calibrated for the local
    model; 0 (never refuse) for other embedding models, whose similarities are on another scale."""
    if settings.min_relevance is not None:
        return settings.min_relevance
    return LOCAL_MIN_RELEVANCE if settings.embeddings == "local" else 0.0


def best_relevance(documents: list[Document]) -> float | None:
    """The best cosine similarity among the passages (``None`` when there are none)."""
    scores = [d.metadata.get("dense_score") for d in documents]
    scores = [s if s is not None else d.metadata.get("score") for s, d in zip(scores, documents)]
    values = [float(s) for s in scores if s is not None]
    return max(values) if values else None


def is_relevant(documents: list[Document], floor: float) -> bool:
    """Whether retrieval found anything relevant enough to answer from."""
    best = best_relevance(documents)
    if best is None:
        return False
    return floor <= 0 or best >= floor


def refusal(settings: Settings, documents: list[Document]) -> str | None:
    """The "not covered" answer when retrieval found nothing relevant enough, else ``None``."""
    from agent.rag.prompts import NOT_COVERED  # heavy: langchain_core.prompts + jinja2 (~0.1 s), which kb search never needs

    if not documents:
        return "The knowledge base does not cover this: no indexed passage matches the question."
    floor = min_relevance(settings)
    if is_relevant(documents, floor):
        return None
    return NOT_COVERED.format(best=best_relevance(documents) or 0.0, floor=floor)


# ---------------------------------------------------------------- building


def build_embeddings(settings: Settings, *, command: str = "search", usage_extra: dict[str, str] | None = None) -> Any:
    """The embedding model the settings select (local MiniLM or a Databricks endpoint).

    Databricks embeddings send the same ``usage_context`` as chat and record every request in the
    usage ledger (``agent.usage.ledger``); local embeddings cost nothing and are not recorded."""
    if settings.embeddings == "databricks":
        from agent.databricks.auth import connect  # heavy: httpx, only for Databricks embeddings
        from agent.databricks.llm import chat_usage_context  # heavy: langchain_openai + openai (~1.3 s)
        from agent.databricks.transport import clients
        from agent.usage.ledger import embeddings_recorder  # heavy: langsmith run trees (~20 ms), unused by local embeddings
        from ingest.embeddings.databricks import DatabricksEmbeddings  # heavy: langchain_core.embeddings

        if not settings.llm_configured:
            missing = " and ".join(settings.missing_llm_settings())
            raise ConfigError(f"KB_EMBEDDINGS=databricks needs {missing}")

        connection = connect(settings)
        context = chat_usage_context(settings, command, usage_extra)
        return DatabricksEmbeddings(
            base_url=connection.base_url,
            api_key=connection.api_key,
            http_client=clients(connection.base_url, auth=connection.auth, timeout=settings.timeout)[0],
            endpoint=settings.embedding_endpoint,
            usage_context=context,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            on_call=embeddings_recorder(
                settings, endpoint=settings.embedding_endpoint, command=command, usage_context=context
            ),
        )
    from ingest.embeddings.local import LocalMiniLMEmbeddings  # heavy: numpy, which kb serve must load after setting the BLAS thread count

    return LocalMiniLMEmbeddings()


def build_store(
    settings: Settings, *, command: str = "search", create: bool = False, usage_extra: dict[str, str] | None = None
) -> ChunkStore:
    """The configured index as a ``ChunkStore``, opened with the query embedding model."""
    if settings.vector_store == "databricks":  # Databricks Vector Search (KB_VS_INDEX) instead of Chroma
        # heavy: the Vector Search adapter (~25 ms; databricks-sdk when used), only for KB_VECTOR_STORE=databricks
        from agent.databricks.workspace import vector_search_config, workspace_client
        from ingest.store.vector_search import open_vector_store

        config = vector_search_config(settings)  # a missing or wrong KB_VS_* setting fails here, in one line
        embeddings = build_embeddings(settings, command=command, usage_extra=usage_extra)
        return open_vector_store(workspace_client(settings), config, embeddings, create=create)
    embeddings = build_embeddings(settings, command=command, usage_extra=usage_extra)
    if not create and not settings.chroma_url:
        # Fast path: the snapshot kb ingest keeps next to Chroma, read without importing chromadb
        # (~1 s per process); None when it does not match Chroma's current state.
        from ingest.store.snapshot import open_snapshot_store  # heavy: numpy, which kb serve must load after setting the BLAS thread count

        store = open_snapshot_store(settings.index_dir, embeddings)
        if store is not None:
            return store
    from ingest.store.chroma import open_store  # heavy: numpy, which kb serve must load after setting the BLAS thread count; chromadb when it connects

    return open_store(settings.index_dir, embeddings, create=create, chroma_url=settings.chroma_url)


def search_options(
    settings: Settings, *, k: int | None = None, mode: str | None = None, groups: frozenset[str] | None = None
) -> dict[str, Any]:
    """The ranking options the settings give (``k``, ``mode``, ``groups`` override them)."""
    mode = mode or settings.search_mode
    if mode not in MODES:
        raise UsageError(f"unknown search mode '{mode}': use one of {', '.join(MODES)}")
    return {
        "k": k or settings.top_k,
        "mode": mode,
        "max_per_source": settings.max_per_source,
        "fusion": settings.fusion,  # KB_FUSION, KB_FUSION_ALPHA, KB_RRF_K, KB_RRF_BM25_WEIGHT
        "alpha": settings.fusion_alpha,
        "rrf_k": settings.rrf_k,
        "bm25_weight": settings.rrf_bm25_weight,
        "page_support": settings.page_support,  # KB_PAGE_SUPPORT, KB_PAGE_SUPPORT_CHUNKS
        "support_chunks": settings.page_support_chunks,
        "groups": groups if groups is not None else getattr(settings, "as_groups", None),
    }


def build_search(
    settings: Settings,
    *,
    k: int | None = None,
    command: str = "search",
    mode: str | None = None,
    usage_extra: dict[str, str] | None = None,
    groups: frozenset[str] | None = None,
) -> KnowledgeSearch:
    """``kb search``'s searcher over the configured index (``build_retriever`` for LangChain)."""
    options = search_options(settings, k=k, mode=mode, groups=groups)
    return KnowledgeSearch(build_store(settings, command=command, usage_extra=usage_extra), **options)


# ---------------------------------------------------------------- JSON shapes


def explain_json(document: Document) -> dict[str, Any]:
    meta = document.metadata
    return {key: meta.get(key) for key in EXPLAIN_KEYS}


def result_json(rank: int, document: Document, *, explain: bool = False) -> dict[str, Any]:
    meta = document.metadata
    item: dict[str, Any] = {
        "rank": rank,
        "source": meta.get("source"),
        "score": meta.get("score"),
        "title": meta.get("title"),
        "section": meta.get("section") or None,
        "text": document.page_content,
    }
    if meta.get("page"):
        item["page"] = meta["page"]
    if explain:
        item["explain"] = explain_json(document)
    return item


def search_json(query: str, documents: list[Document], *, explain: bool = False, mode: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"query": query}
    if mode:
        data["mode"] = mode
    data["results"] = [result_json(i, d, explain=explain) for i, d in enumerate(documents, 1)]
    return data
