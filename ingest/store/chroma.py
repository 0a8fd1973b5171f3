"""The Chroma adapter: embedded (``PersistentClient`` under ``KB_INDEX_DIR/chroma``) or a Chroma server
(``KB_CHROMA_URL`` -> ``HttpClient``), same layout in both. The only module that imports chromadb.

Layout. Chunks live in a collection stamped with the embedding model that built it
(``kb_embedding`` in its metadata); opening it with another model raises ``EmbeddingMismatchError``.
The first build is ``kb_chunks``. ``kb ingest --rebuild`` fills a new generation
(``kb_chunks_<time>``) while queries keep using the current one, then switches the tiny pointer
collection ``kb_index`` (metadata ``{"active": name}``) to it in one write: a query sees the old
index or the new one, never a half-built one. The replaced generation is dropped by the next
writer. A reader's ``ChromaChunkStore`` re-reads the pointer at most once a second, so a long-lived
reader (the API) follows a rebuild without restarting.

Every write to the embedded index first bumps kb's write stamp (``ingest.store.stamp``), which is how
the query snapshot knows it is stale; nothing reads Chroma's own files.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ingest.errors import EmbeddingMismatchError, IndexMissingError, IndexUnusableError
from ingest.store import stamp
from ingest.store.base import PAGE, Chunks, Filter, Hit, LexicalHits, in_order
from ingest.store.folder import check_index_dir, ingest_running
from ingest.store.lexical import LexicalSide

COLLECTION = "kb_chunks"
POINTER = "kb_index"
EMBEDDING_KEY = "kb_embedding"
HNSW = {"hnsw": {"space": "cosine"}}
RECHECK_SECONDS = 1.0
_ID_PAGE = 500  # ids per get/delete call


def release_clients() -> None:
    """Stop every embedded Chroma system this process opened (chromadb keeps one per path, with its
    SQLite and HNSW files open, until the process ends): for tests and tools that open many indexes."""
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()


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
        check_index_dir(index_dir, create=False)  # a file, or under one: say so, not "no index"
        _still_building(index_dir, str(index_dir))
        raise IndexMissingError(f"no index at {index_dir}", hint="run 'kb ingest' first")
    try:
        return chromadb.PersistentClient(path=str(chroma_dir(index_dir)), settings=settings)
    except Exception as exc:  # a damaged or foreign folder: say so instead of a traceback
        raise unusable(str(index_dir), exc) from None


def _still_building(index_dir: Path, where: str) -> None:
    """Nothing to search yet because the first ``kb ingest`` is still writing: say that, not "empty"."""
    if ingest_running(index_dir):
        raise IndexMissingError(
            f"'kb ingest' is still building the index at {where}: nothing is searchable yet",
            hint="try again when it finishes",
        )


def unusable(where: str, exc: BaseException) -> IndexUnusableError:
    detail = " ".join(str(exc).split())[:160]
    return IndexUnusableError(
        f"the index at {where} is unusable ({type(exc).__name__}: {detail})",
        hint=f"move {where} away and run 'kb ingest' again to rebuild it",
    )


@contextmanager
def chroma_errors(where: str):
    """Chroma failing under a writer (disk full, damaged files, server errors) is one clear error."""
    from chromadb.errors import ChromaError

    try:
        yield
    except ChromaError as exc:
        raise unusable(where, exc) from None


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


def _where_clause(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


class ChromaChunkStore:
    """``ChunkStore`` over a Chroma collection (see ``ingest.store.base``).

    ``follow=True`` (readers): the collection is the pointer's active one, re-read at most once a
    second. ``follow=False`` (a writer's target, e.g. a rebuild not yet active): always ``name``.
    ``Filter.source_prefix`` has no Chroma ``where`` operator: the matching ids are found by a scan of
    the metadata first (linear in the index; fine at kb's scale).
    """

    read_only = False

    def __init__(self, client: Any, name: str, embeddings: Any, *, index_dir: Path | None, local: bool,
                 follow: bool = True, collection: Any = None) -> None:
        self.client = client
        self.embeddings = embeddings
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self.local = local  # embedded: writes bump the stamp the snapshot checks
        self.follow = follow
        self._name = name
        self._collection = collection if collection is not None else client.get_collection(name)
        self._checked = time.monotonic()
        self._lexical = LexicalSide(self.index_dir)

    # -- which collection

    def _current(self) -> Any:
        if not self.follow:
            return self._collection
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return self._collection
        self._checked = now
        try:
            name = active_name(self.client)
        except Exception:  # a hiccup reading the pointer keeps the current collection
            return self._collection
        if name and name != self._name:
            collection = self.client.get_collection(name)
            _check_model(collection, model_id_of(self.embeddings), name)
            self._name, self._collection = name, collection
        return self._collection

    @property
    def name(self) -> str:
        self._current()
        return self._name

    @property
    def collection_id(self) -> str:
        return str(self._current().id)

    @property
    def model_id(self) -> str:
        return str((self._current().metadata or {}).get(EMBEDDING_KEY) or model_id_of(self.embeddings))

    @property
    def dimension(self) -> int | None:
        got = self._current().get(limit=1, include=["embeddings"])
        vectors = got.get("embeddings")
        return len(vectors[0]) if vectors is not None and len(vectors) else None

    # -- reading

    def count(self) -> int:
        return self._current().count()

    def get(self, ids: Sequence[str], *, texts: bool = True, metadatas: bool = True,
            vectors: bool = False) -> Chunks:
        include = [name for name, wanted in (("documents", texts), ("metadatas", metadatas), ("embeddings", vectors))
                   if wanted]
        collection = self._current()
        unique = list(dict.fromkeys(ids))
        found: dict[str, tuple[Any, Any, Any]] = {}
        for start in range(0, len(unique), _ID_PAGE):
            got = collection.get(ids=unique[start : start + _ID_PAGE], include=include)
            found.update(zip(got["ids"], zip(*_columns(got, len(got["ids"])))))
        return in_order(unique, found, texts=texts, metadatas=metadatas, vectors=vectors)

    def nearest(self, vector: Sequence[float], k: int, *, filter: Filter | None = None) -> list[Hit]:
        collection = self._current()
        where, ids = self._resolve(filter)
        if k <= 0 or ids == []:
            return []
        result = collection.query(query_embeddings=[list(vector)], n_results=k, where=where, ids=ids,
                                  include=["documents", "metadatas", "distances"])
        return [Hit(cid, float(distance), text or "", dict(meta or {})) for cid, text, meta, distance in
                zip(result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0])]

    def lexical(self, query: str, *, filter: Filter | None = None) -> LexicalHits:
        return self._lexical.search(self, query, filter)

    def scan(self, *, filter: Filter | None = None, texts: bool = True, metadatas: bool = True,
             vectors: bool = False, page_size: int = PAGE) -> Iterator[Chunks]:
        include = [name for name, wanted in (("documents", texts), ("metadatas", metadatas or _needs_source(filter)),
                                             ("embeddings", vectors)) if wanted]
        where = _where_clause(_conditions(filter))
        collection = self._current()
        offset = 0
        while True:
            got = collection.get(where=where, include=include, limit=page_size, offset=offset)
            n = len(got["ids"])
            page_texts, page_metas, page_vectors = _columns(got, n)
            keep = [i for i in range(n) if filter is None or filter.source_prefix is None
                    or str((page_metas[i] or {}).get("source") or "").startswith(filter.source_prefix)]
            if keep:
                yield Chunks(
                    ids=[got["ids"][i] for i in keep],
                    texts=[page_texts[i] or "" for i in keep] if texts else None,
                    metadatas=[dict(page_metas[i] or {}) for i in keep] if metadatas else None,
                    vectors=[page_vectors[i] for i in keep] if vectors else None,
                )
            if n < page_size:
                return
            offset += page_size

    def _resolve(self, filter: Filter | None) -> tuple[dict[str, Any] | None, list[str] | None]:
        """A filter as Chroma's ``where``, plus the admitted ids when a source prefix needs them."""
        if filter is None or filter.empty:
            return None, None
        if filter.source_prefix is None:
            return _where_clause(_conditions(filter)), None
        return None, [cid for page in self.scan(filter=filter, texts=False, metadatas=False) for cid in page.ids]

    # -- writing

    def upsert(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
               vectors: Sequence[Sequence[float]]) -> None:
        if not ids:
            return
        self._stamp()
        self._current().upsert(ids=list(ids), documents=list(texts), metadatas=[dict(m) for m in metadatas],
                               embeddings=[_as_list(v) for v in vectors])

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._stamp()
        collection = self._current()
        for start in range(0, len(ids), _ID_PAGE):
            collection.delete(ids=list(ids[start : start + _ID_PAGE]))

    def _stamp(self) -> None:
        if self.local and self.index_dir is not None:
            stamp.bump(self.index_dir)


def _conditions(filter: Filter | None) -> list[dict[str, Any]]:
    """A filter's conditions as parts of a Chroma ``where`` (ANDed). ``readable_by``: the chunk's
    ``access`` list metadata contains one of the groups (``$contains`` on list metadata, chromadb >= 1.5),
    or the chunk is unlabelled (``access_labelled`` missing: ``$ne`` matches a missing key)."""
    if filter is None:
        return []
    parts: list[dict[str, Any]] = [{key: {"$eq": value}} for key, value in filter.equals.items()]
    parts.extend({key: {"$in": list(values)}} for key, values in filter.any_of.items())
    if filter.readable_by is not None:
        groups = sorted(filter.readable_by)
        if not groups:
            groups = ["!none-given"]  # admits nothing (an empty $or is not valid)
        either = [{"access": {"$contains": group}} for group in groups]
        either.append({"access_labelled": {"$ne": True}})  # unlabelled: indexed before access control
        parts.append({"$or": either})
    return parts


def _needs_source(filter: Filter | None) -> bool:
    return filter is not None and filter.source_prefix is not None


def _columns(got: Mapping[str, Any], n: int) -> tuple[list[Any], list[Any], list[Any]]:
    def column(key: str) -> list[Any]:
        values = got.get(key)
        return list(values) if values is not None else [None] * n

    return column("documents"), column("metadatas"), column("embeddings")


def _as_list(vector: Any) -> Any:
    return vector.tolist() if hasattr(vector, "tolist") else list(vector)


def open_store(index_dir: Path, embeddings: Any, *, create: bool = False, chroma_url: str | None = None,
               check_model: bool = True) -> ChromaChunkStore:
    """The index's chunk store over the active collection, following rebuilds.

    ``create=False`` (queries): a missing index is an ``IndexMissingError``.
    ``create=True``: the first collection is created if there is none yet, stamped with the model.
    ``check_model=False``: open whatever model built it (to describe it, not to query it).
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
    if check_model:
        _check_model(collection, model_id_of(embeddings), where)
    return ChromaChunkStore(client, name, embeddings, index_dir=index_dir, local=not chroma_url,
                            collection=collection)


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
    index_dir: Path
    local: bool

    @property
    def id(self) -> str:
        return str(self.collection.id)

    def store(self, embeddings: Any) -> ChromaChunkStore:
        """The target as a chunk store that stays on it (a rebuild writes a collection no one reads yet)."""
        return ChromaChunkStore(self.client, self.name, embeddings, index_dir=self.index_dir, local=self.local,
                                follow=False, collection=self.collection)


def open_target(client: Any, embeddings: Any, *, rebuild: bool, where: str, index_dir: Path,
                local: bool = True) -> Target:
    """Pick (or create) the collection to write, and drop generations no one reads any more."""
    active = active_name(client)
    if active and not rebuild:
        collection = client.get_collection(active)
        _check_model(collection, model_id_of(embeddings), where)
        _drop_generations(client, keep={active})
        return Target(client, active, collection, False, index_dir, local)
    if not active:
        _drop_generations(client, keep=set())
        return Target(client, COLLECTION, _create(client, COLLECTION, embeddings), False, index_dir, local)
    _drop_generations(client, keep={active})
    name = f"{COLLECTION}_{time.strftime('%Y%m%d%H%M%S')}"
    while name in names(client):
        name += "x"
    return Target(client, name, _create(client, name, embeddings), True, index_dir, local)


def activate(target: Target) -> None:
    """Point readers at ``target`` (one metadata write); the old generation is dropped by the next writer."""
    if target.local:
        stamp.bump(target.index_dir)
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
