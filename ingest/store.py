"""The Chroma vector store: embedded (``PersistentClient`` under ``KB_INDEX_DIR/chroma``) or a Chroma
server (``KB_CHROMA_URL`` -> ``HttpClient``), same layout in both.

Layout. Chunks live in a collection stamped with the embedding model that built it
(``kb_embedding`` in its metadata); opening it with another model raises ``EmbeddingMismatchError``.
The first build is ``kb_chunks``. ``kb ingest --rebuild`` fills a new generation
(``kb_chunks_<time>``) while queries keep using the current one, then switches the tiny pointer
collection ``kb_index`` (metadata ``{"active": name}``) to it in one write: a query sees the old
index or the new one, never a half-built one. The replaced generation is dropped by the next
writer. ``KbChroma`` (the LangChain store readers get) re-reads the pointer at most once a second,
so a long-lived reader (the API) follows a rebuild without restarting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from langchain_chroma import Chroma
from langchain_core.embeddings import Embeddings

from ingest.errors import EmbeddingMismatchError, IndexError_, IndexMissingError

COLLECTION = "kb_chunks"
POINTER = "kb_index"
EMBEDDING_KEY = "kb_embedding"
HNSW = {"hnsw": {"space": "cosine"}}
RECHECK_SECONDS = 1.0


def chroma_dir(index_dir: Path) -> Path:
    return Path(index_dir) / "chroma"


def model_id_of(embeddings: Any) -> str:
    return getattr(embeddings, "model_id", type(embeddings).__name__)


def store_key(chroma_url: str | None) -> str:
    """Names the store in the records: ``local`` or the server URL."""
    return chroma_url.rstrip("/") if chroma_url else "local"


def connect(index_dir: Path, chroma_url: str | None = None, *, create: bool = False) -> Any:
    """A chromadb client for the embedded index or the server; ``IndexMissingError`` if there is none."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False, allow_reset=True)  # one settings object per path and process
    if chroma_url:
        parsed = urlparse(chroma_url)
        try:
            return chromadb.HttpClient(
                host=parsed.hostname or "localhost",
                port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                ssl=parsed.scheme == "https",
                settings=settings,
            )
        except Exception as exc:  # chromadb raises ValueError/ConnectionError when the server is not there
            raise IndexMissingError(
                f"cannot reach the Chroma server at {chroma_url} ({type(exc).__name__})",
                hint="start it, or fix or unset KB_CHROMA_URL",
            ) from None
    if not create and not chroma_dir(index_dir).exists():
        from ingest.records import check_index_dir

        check_index_dir(index_dir, create=False)  # a file, or under one: say so, not "no index"
        _still_building(index_dir, str(index_dir))
        raise IndexMissingError(f"no index at {index_dir}", hint="run 'kb ingest' first")
    try:
        return chromadb.PersistentClient(path=str(chroma_dir(index_dir)), settings=settings)
    except Exception as exc:  # a damaged or foreign folder: say so instead of a traceback
        raise unusable(str(index_dir), exc) from None


def _still_building(index_dir: Path, where: str) -> None:
    """Nothing to search yet because the first ``kb ingest`` is still writing: say that, not "empty"."""
    from ingest.records import ingest_running

    if ingest_running(index_dir):
        raise IndexMissingError(
            f"'kb ingest' is still building the index at {where}: nothing is searchable yet",
            hint="try again when it finishes",
        )


def unusable(where: str, exc: BaseException) -> IndexError_:
    detail = " ".join(str(exc).split())[:160]
    return IndexError_(
        f"the index at {where} is unusable ({type(exc).__name__}: {detail})",
        hint=f"move {where} away and run 'kb ingest' again to rebuild it",
    )


def _where(index_dir: Path, chroma_url: str | None) -> str:
    return f"the Chroma server at {chroma_url}" if chroma_url else str(index_dir)


def names(client: Any) -> set[str]:
    return {getattr(c, "name", c) for c in client.list_collections()}


def active_name(client: Any) -> str | None:
    """The collection queries should use: the pointer's, else the first build's, else None."""
    from chromadb.errors import NotFoundError

    try:
        active = (client.get_collection(POINTER).metadata or {}).get("active")
    except (NotFoundError, ValueError):
        active = None
    present = names(client)
    if active and active in present:
        return str(active)
    return COLLECTION if COLLECTION in present else None


def _check_model(collection: Any, model_id: str, where: str) -> None:
    built_with = (collection.metadata or {}).get(EMBEDDING_KEY)
    if built_with and built_with != model_id:
        raise EmbeddingMismatchError(
            f"the index at {where} was built with {built_with}, but KB_EMBEDDINGS selects {model_id}",
            hint="re-ingest with 'kb ingest --rebuild' or switch KB_EMBEDDINGS back",
        )


class KbChroma(Chroma):
    """``langchain_chroma.Chroma`` that follows the active generation after a rebuild."""

    def _follow(self) -> None:
        now = time.monotonic()
        last = self.__dict__.get("_kb_checked")
        if last is not None and now - last < RECHECK_SECONDS:
            return
        self._kb_checked = now
        try:
            name = active_name(self._client)
        except Exception:  # a hiccup reading the pointer keeps the current collection
            return
        if name and name != self._collection_name:
            collection = self._client.get_collection(name)
            _check_model(collection, model_id_of(self._embedding_function), name)
            self._collection_name, self._chroma_collection = name, collection

    @property
    def _collection(self) -> Any:
        self._follow()
        return super()._collection


def open_store(index_dir: Path, embeddings: Embeddings, *, create: bool = False, chroma_url: str | None = None) -> Any:
    """The index's LangChain vector store (``KbChroma``) over the active collection.

    ``create=False`` (queries): a missing index is an ``IndexMissingError``.
    ``create=True``: the first collection is created if there is none yet, stamped with the model.
    """
    client = connect(index_dir, chroma_url, create=create)
    where = _where(index_dir, chroma_url)
    name = active_name(client)
    if name is None:
        if not create:
            _still_building(index_dir, where)
            raise IndexMissingError(f"the index at {where} is empty", hint="run 'kb ingest' first")
        name = COLLECTION
        _create(client, name, embeddings)
    collection = client.get_collection(name)
    if not create and collection.count() == 0:  # the first ingest has not written its first batch yet
        _still_building(index_dir, where)
    _check_model(collection, model_id_of(embeddings), where)
    store = KbChroma(collection_name=name, embedding_function=embeddings, client=client,
                     create_collection_if_not_exists=False)
    store._kb_checked = time.monotonic()
    return store


def _create(client: Any, name: str, embeddings: Any) -> Any:
    return client.get_or_create_collection(
        name, embedding_function=None, metadata={EMBEDDING_KEY: model_id_of(embeddings)}, configuration=HNSW
    )


# ---------------------------------------------------------------- writing


@dataclass
class Target:
    """Where an ingest writes: the active collection, or a new generation when rebuilding."""

    client: Any
    name: str
    collection: Any
    activate: bool  # a new generation that becomes active when the run completes

    @property
    def id(self) -> str:
        return str(self.collection.id)


def open_target(client: Any, embeddings: Any, *, rebuild: bool, where: str) -> Target:
    """Pick (or create) the collection to write, and drop generations no one reads any more."""
    active = active_name(client)
    if active and not rebuild:
        collection = client.get_collection(active)
        _check_model(collection, model_id_of(embeddings), where)
        _drop_generations(client, keep={active})
        return Target(client, active, collection, activate=False)
    if not active:
        _drop_generations(client, keep=set())
        return Target(client, COLLECTION, _create(client, COLLECTION, embeddings), activate=False)
    _drop_generations(client, keep={active})
    name = f"{COLLECTION}_{time.strftime('%Y%m%d%H%M%S')}"
    while name in names(client):
        name += "x"
    return Target(client, name, _create(client, name, embeddings), activate=True)


def activate(target: Target) -> None:
    """Point readers at ``target`` (one metadata write); the old generation is dropped by the next writer."""
    pointer = target.client.get_or_create_collection(POINTER, embedding_function=None, metadata={"active": target.name})
    if (pointer.metadata or {}).get("active") != target.name:
        pointer.modify(metadata={"active": target.name})


def _drop_generations(client: Any, keep: set[str]) -> None:
    for name in names(client):
        if name.startswith(COLLECTION) and name not in keep:
            try:
                client.delete_collection(name)
            except Exception:  # already gone (another reader's view) is fine
                pass


def collection_ids(client: Any) -> set[str]:
    return {str(c.id) for c in client.list_collections() if getattr(c, "name", "").startswith(COLLECTION)}


def delete_collection(index_dir: Path, chroma_url: str | None = None) -> None:
    """Drop every chunk collection (kept for callers of the first API; ``--rebuild`` no longer uses it)."""
    try:
        client = connect(index_dir, chroma_url)
    except IndexMissingError:
        return
    _drop_generations(client, keep=set())
    try:
        client.delete_collection(POINTER)
    except Exception:
        pass
