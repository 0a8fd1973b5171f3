"""The Chroma vector store under the index folder (embedded ``PersistentClient``).

The collection records which embedding model built it (``kb_embedding`` in its metadata); opening
it with another model raises ``EmbeddingMismatchError`` telling the user to re-ingest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from ingest.errors import EmbeddingMismatchError, IndexMissingError

COLLECTION = "kb_chunks"
EMBEDDING_KEY = "kb_embedding"


def chroma_dir(index_dir: Path) -> Path:
    return Path(index_dir) / "chroma"


def _client(index_dir: Path) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    return chromadb.PersistentClient(
        path=str(chroma_dir(index_dir)),
        settings=ChromaSettings(anonymized_telemetry=False, allow_reset=True),
    )


def open_store(index_dir: Path, embeddings: Embeddings, *, create: bool = False) -> Any:
    """Open the index's ``langchain_chroma.Chroma`` vector store.

    ``create=False`` (queries): a missing index is an ``IndexMissingError``.
    ``create=True`` (ingest): the collection is created, stamped with the embedding model.
    """
    from langchain_chroma import Chroma

    model_id = getattr(embeddings, "model_id", type(embeddings).__name__)
    if not create and not chroma_dir(index_dir).exists():
        raise IndexMissingError(f"no index at {index_dir}", hint="run 'kb ingest' first")
    client = _client(index_dir)
    existing = {c.name if hasattr(c, "name") else str(c) for c in client.list_collections()}
    if COLLECTION in existing:
        collection = client.get_collection(COLLECTION)
        built_with = (collection.metadata or {}).get(EMBEDDING_KEY)
        if built_with and built_with != model_id:
            raise EmbeddingMismatchError(
                f"the index at {index_dir} was built with {built_with}, but KB_EMBEDDINGS selects {model_id}",
                hint="re-ingest with 'kb ingest --rebuild' or switch KB_EMBEDDINGS back",
            )
    elif not create:
        raise IndexMissingError(f"the index at {index_dir} is empty", hint="run 'kb ingest' first")
    return Chroma(
        collection_name=COLLECTION,
        embedding_function=embeddings,
        client=client,
        collection_metadata={EMBEDDING_KEY: model_id},
        collection_configuration={"hnsw": {"space": "cosine"}},
    )


def delete_collection(index_dir: Path) -> None:
    if not chroma_dir(index_dir).exists():
        return
    client = _client(index_dir)
    try:
        client.delete_collection(COLLECTION)
    except Exception:  # chromadb raises NotFoundError/ValueError by version when it is absent
        pass
