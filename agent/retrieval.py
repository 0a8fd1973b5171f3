"""Retrieval over the local Chroma index: a LangChain retriever plus the JSON shape of results.

``build_retriever(settings)`` opens the index with the configured embedding model and returns a
``KnowledgeRetriever`` (a LangChain ``BaseRetriever``): documents carry ``rank`` and ``score``
(cosine similarity) in their metadata.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from agent.settings import Settings
from ingest.errors import IndexMissingError


class KnowledgeRetriever(BaseRetriever):
    """Top-k chunks by cosine similarity from the kb Chroma collection."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = 5

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k = int(kwargs.get("k", self.k))
        if self.store._collection.count() == 0:
            raise IndexMissingError("the index is empty", hint="run 'kb ingest' first")
        hits = self.store.similarity_search_with_score(query, k=k)
        documents = []
        for rank, (document, distance) in enumerate(hits, 1):
            metadata = dict(document.metadata)
            metadata["rank"] = rank
            metadata["score"] = round(1.0 - float(distance), 4)  # cosine similarity
            documents.append(Document(page_content=document.page_content, metadata=metadata, id=document.id))
        return documents


def build_embeddings(settings: Settings, *, command: str = "search") -> Any:
    """The embedding model the settings select (local MiniLM or a Databricks endpoint)."""
    if settings.embeddings == "databricks":
        from agent.errors import ConfigError
        from agent.llm import chat_usage_context
        from ingest.embeddings import DatabricksEmbeddings

        if not settings.llm_configured:
            missing = " and ".join(settings.missing_llm_settings())
            raise ConfigError(f"KB_EMBEDDINGS=databricks needs {missing}")
        return DatabricksEmbeddings(
            base_url=settings.serving_base_url,
            api_key=settings.databricks_token,
            endpoint=settings.embedding_endpoint,
            usage_context=chat_usage_context(settings, command),
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )
    from ingest.embeddings import LocalMiniLMEmbeddings

    return LocalMiniLMEmbeddings()


def build_store(settings: Settings, *, command: str = "search", create: bool = False) -> Any:
    from ingest.store import open_store

    return open_store(settings.index_dir, build_embeddings(settings, command=command), create=create)


def build_retriever(settings: Settings, *, k: int | None = None, command: str = "search") -> KnowledgeRetriever:
    """The retriever over the configured index; usable alone in a notebook or inside a chain."""
    return KnowledgeRetriever(store=build_store(settings, command=command), k=k or settings.top_k)


def result_json(rank: int, document: Document) -> dict[str, Any]:
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
    return item


def search_json(query: str, documents: list[Document]) -> dict[str, Any]:
    return {"query": query, "results": [result_json(i, d) for i, d in enumerate(documents, 1)]}
