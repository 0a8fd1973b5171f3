"""A read-only copy of the active Chroma collection that queries can use without importing chromadb.

Importing chromadb and opening its client costs ~1 s per process, more than everything else a
``kb search`` does. ``kb ingest`` therefore also writes, under ``KB_INDEX_DIR/snapshot/``, the
collection's vectors (``vectors.npy``, float32) and its chunks (``chunks.sqlite``: id, text,
metadata), tagged with a *fingerprint* of Chroma's state read straight from ``chroma.sqlite3`` with
the standard library: the active collection's id and model, its number of chunks and the highest
sequence number of Chroma's write log (every add, update or delete appends to it).

``open_snapshot_store(index_dir, embeddings)`` returns a ``SnapshotStore`` only when the
fingerprint still matches, i.e. the snapshot holds exactly what Chroma holds; otherwise ``None`` and
the caller opens Chroma as before. Dense search over the snapshot is exact (one matrix product;
Chroma's HNSW is approximate, and on small indexes exact too, so the results are the same). A
long-lived reader re-checks the fingerprint at most once a second and, once Chroma has changed,
hands every call to the real Chroma store. Anything the snapshot does not implement is delegated
to the real store too, so it can stand in wherever ``open_store`` is used for reading.

A snapshot is only ever published when the fingerprint did not move while it was exported, so a
concurrent write can make it unusable, never wrong. Chroma servers (``KB_CHROMA_URL``) have none.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from ingest.errors import EmbeddingMismatchError

SNAPSHOT_VERSION = 1
RECHECK_SECONDS = 1.0
_PAGE = 5000
# Mirrors ingest/store.py (not imported: that module imports chromadb).
COLLECTION = "kb_chunks"
POINTER = "kb_index"
EMBEDDING_KEY = "kb_embedding"


def snapshot_dir(index_dir: Path) -> Path:
    return Path(index_dir) / "snapshot"


# ---------------------------------------------------------------- Chroma's state, without chromadb


def fingerprint(index_dir: Path) -> dict[str, Any] | None:
    """What identifies the active collection's content, read from ``chroma.sqlite3`` (~1 ms).

    ``None`` when there is no local index or its layout is not the one this reads (another Chroma
    version): then there is no fast path, only the regular one.
    """
    path = Path(index_dir) / "chroma" / "chroma.sqlite3"
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        with db:
            collections = {name: (cid, dim) for cid, name, dim in db.execute("SELECT id, name, dimension FROM collections")}
            active = None
            if POINTER in collections:
                row = db.execute("SELECT str_value FROM collection_metadata WHERE collection_id = ? AND key = 'active'",
                                 (collections[POINTER][0],)).fetchone()
                active = row[0] if row and row[0] in collections else None
            if active is None:
                active = COLLECTION if COLLECTION in collections else None
            if active is None:
                return None
            cid, dim = collections[active]
            model = db.execute("SELECT str_value FROM collection_metadata WHERE collection_id = ? AND key = ?",
                               (cid, EMBEDDING_KEY)).fetchone()
            segment = db.execute("SELECT id FROM segments WHERE collection = ? AND scope = 'METADATA'", (cid,)).fetchone()
            if segment is None:
                return None
            count, last_row = db.execute("SELECT count(*), max(id) FROM embeddings WHERE segment_id = ?",
                                         (segment[0],)).fetchone()
            (log_seq,) = db.execute("SELECT max(seq_id) FROM embeddings_queue").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return {"collection": active, "collection_id": cid, "dimension": dim, "model_id": model[0] if model else None,
            "count": count, "last_row": last_row, "log_seq": log_seq}


# ---------------------------------------------------------------- writing (kb ingest)


def read_state(index_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((snapshot_dir(index_dir) / "current.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION or not state.get("dir"):
        return None
    return state


def sync_snapshot(index_dir: Path, collection: Any) -> bool:
    """Export ``collection`` (the active one) unless the snapshot already matches Chroma; returns
    whether a new snapshot was published. Called by ``kb ingest`` under the writer lock."""
    before = fingerprint(index_dir)
    if before is None or before["collection_id"] != str(collection.id):
        return False
    state = read_state(index_dir)
    if state and state.get("fingerprint") == before and (snapshot_dir(index_dir) / state["dir"]).is_dir():
        return False
    ids: list[str] = []
    texts: list[str | None] = []
    metadatas: list[Any] = []
    vectors: list[np.ndarray] = []
    offset = 0
    while True:
        page = collection.get(include=["embeddings", "documents", "metadatas"], limit=_PAGE, offset=offset)
        ids.extend(page["ids"])
        texts.extend(page["documents"] if page["documents"] is not None else [None] * len(page["ids"]))
        metadatas.extend(page["metadatas"] if page["metadatas"] is not None else [None] * len(page["ids"]))
        if len(page["ids"]):
            vectors.append(np.asarray(page["embeddings"], dtype=np.float32))
        if len(page["ids"]) < _PAGE:
            break
        offset += _PAGE
    if fingerprint(index_dir) != before or len(ids) != before["count"]:
        return False  # Chroma changed while exporting: publish nothing rather than something stale
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, before["dimension"] or 0), dtype=np.float32)
    _publish(index_dir, before, ids, texts, metadatas, matrix)
    return True


def _publish(index_dir: Path, fp: dict[str, Any], ids: list[str], texts: list[str | None], metadatas: list[Any],
             matrix: np.ndarray) -> None:
    root = snapshot_dir(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"v-{uuid.uuid4().hex[:12]}"
    staging = root / f"tmp-{name}"
    staging.mkdir()
    try:
        np.save(staging / "vectors.npy", matrix, allow_pickle=False)
        norms = np.linalg.norm(matrix, axis=1) if len(matrix) else np.zeros(0, dtype=np.float32)
        np.save(staging / "norms.npy", np.maximum(norms, 1e-12).astype(np.float32), allow_pickle=False)
        db = sqlite3.connect(staging / "chunks.sqlite")
        with db:
            db.execute("CREATE TABLE chunks (pos INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, document TEXT, metadata TEXT)")
            db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?)",
                           ((i, cid, text, json.dumps(meta) if meta is not None else None)
                            for i, (cid, text, meta) in enumerate(zip(ids, texts, metadatas))))
        db.close()
        os.replace(staging, root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    state = {"version": SNAPSHOT_VERSION, "dir": name, "fingerprint": fp, "count": len(ids)}
    tmp = root / f"current.json.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(state), "utf-8")
    os.replace(tmp, root / "current.json")
    for old in root.iterdir():  # earlier snapshots; a reader that has one open keeps its open files
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- reading (queries)


class SnapshotCollection:
    """The parts of a chromadb ``Collection`` that kb's readers use, served from the snapshot."""

    def __init__(self, folder: Path, state: dict[str, Any]) -> None:
        self.fingerprint = state["fingerprint"]
        self.name = self.fingerprint["collection"]
        self.id = self.fingerprint["collection_id"]
        model_id = self.fingerprint.get("model_id")
        self.metadata = {EMBEDDING_KEY: model_id} if model_id else {}
        self.vectors = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
        self.norms = np.load(folder / "norms.npy", allow_pickle=False)
        self._db = sqlite3.connect(f"{(folder / 'chunks.sqlite').resolve().as_uri()}?mode=ro", uri=True,
                                   check_same_thread=False)
        self._lock = threading.Lock()
        self._count = int(state["count"])

    def count(self) -> int:
        return self._count

    def _select(self, column: str, keys: list[Any]) -> list[tuple[int, str, str | None, dict[str, Any] | None]]:
        """(pos, id, text, metadata) of the rows whose ``column`` is in ``keys``, in the order of ``keys``."""
        found: dict[Any, tuple[int, str, str | None, dict[str, Any] | None]] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                for pos, cid, text, meta in self._db.execute(
                    f"SELECT pos, id, document, metadata FROM chunks WHERE {column} IN ({marks})", part
                ):
                    found[pos if column == "pos" else cid] = (pos, cid, text, json.loads(meta) if meta is not None else None)
        return [found[key] for key in dict.fromkeys(keys) if key in found]

    def by_position(self, positions: list[int]) -> list[tuple[int, str, str | None, dict[str, Any] | None]]:
        return self._select("pos", positions)

    def get(self, ids: str | list[str] | None = None, *, include: Iterable[str] = ("metadatas", "documents"),
            limit: int | None = None, offset: int | None = None, **unsupported: Any) -> dict[str, Any]:
        """``Collection.get`` by ids or by page (``limit``/``offset``); filters are not served here."""
        if any(v is not None for v in unsupported.values()):
            raise _Unsupported
        include = list(include)
        if ids is not None:
            rows = self._select("id", [ids] if isinstance(ids, str) else list(ids))
        else:
            start = offset or 0
            stop = self._count if limit is None else min(self._count, start + limit)
            rows = self.by_position(list(range(start, stop))) if stop > start else []
        return {
            "ids": [row[1] for row in rows],
            "included": include,
            "documents": [row[2] for row in rows] if "documents" in include else None,
            "metadatas": [row[3] for row in rows] if "metadatas" in include else None,
            "embeddings": np.asarray(self.vectors[[row[0] for row in rows]], dtype=np.float32).reshape(
                len(rows), -1) if "embeddings" in include else None,
        }

    def nearest(self, vector: list[float], k: int) -> list[tuple[int, float]]:
        """(position, cosine distance) of the ``k`` nearest chunks, nearest first: exact search."""
        if self._count == 0 or k <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        from ingest.fast_embed import one_blas_thread

        with one_blas_thread():  # one memory-bound product: a second thread only adds wake-up latency
            similarity = (self.vectors @ query) / self.norms
        k = min(k, self._count)
        best = np.argpartition(-similarity, k - 1)[:k] if k < self._count else np.arange(self._count)
        best = best[np.lexsort((best, -similarity[best]))]  # ties: insertion order
        return [(int(p), float(1.0 - similarity[p])) for p in best]


class _Unsupported(Exception):
    """A call the snapshot cannot answer: the real Chroma store answers it."""


class SnapshotStore(VectorStore):
    """A read-only LangChain vector store over the snapshot, the same results as ``KbChroma``.

    ``_collection`` is a ``SnapshotCollection`` while the snapshot matches Chroma; after Chroma
    changes (checked at most once a second) every call goes to the real store, opened then.
    """

    def __init__(self, index_dir: Path, embeddings: Embeddings, collection: SnapshotCollection) -> None:
        self.index_dir = Path(index_dir)
        self._embedding_function = embeddings
        self._snapshot: SnapshotCollection | None = collection
        self._checked = time.monotonic()
        self._real: Any = None

    # -- staying current

    def _fresh(self) -> SnapshotCollection | None:
        snapshot = self._snapshot
        if snapshot is None:
            return None
        now = time.monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            if fingerprint(self.index_dir) != snapshot.fingerprint:
                # Chroma moved on: a newer snapshot if kb ingest published one, else the real store.
                self._snapshot = _open_collection(self.index_dir, self._embedding_function)
                return self._snapshot
        return snapshot

    def real_store(self) -> Any:
        if self._real is None:
            from ingest.store import open_store

            self._real = open_store(self.index_dir, self._embedding_function)
        return self._real

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding_function

    @property
    def _collection(self) -> Any:
        snapshot = self._fresh()
        return _Collection(self, snapshot) if snapshot is not None else self.real_store()._collection

    # -- searching

    def similarity_search_by_vector_with_relevance_scores(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
        where_document: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        snapshot = self._fresh()
        if snapshot is None or filter or where_document or kwargs:
            return self.real_store().similarity_search_by_vector_with_relevance_scores(
                embedding, k=k, filter=filter, where_document=where_document, **kwargs)
        hits = snapshot.nearest(embedding, k)
        rows = {row[0]: row for row in snapshot.by_position([p for p, _ in hits])}
        return [(Document(page_content=rows[p][2] or "", metadata=rows[p][3] or {}, id=rows[p][1]), distance)
                for p, distance in hits]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return self.similarity_search_by_vector_with_relevance_scores(self.embeddings.embed_query(query), k=k, **kwargs)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_by_vector_with_relevance_scores(embedding, k=k, **kwargs)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k=k, **kwargs)]

    def _select_relevance_score_fn(self):  # cosine distance -> similarity, like langchain_chroma
        return lambda distance: 1.0 - distance

    # -- writing and everything else: the real store

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, **kwargs: Any) -> list[str]:
        return self.real_store().add_texts(texts, metadatas=metadatas, **kwargs)

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None,
                   **kwargs: Any) -> SnapshotStore:
        raise NotImplementedError("a snapshot is written by 'kb ingest', not built from texts")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_real", "_snapshot", "index_dir", "_embedding_function", "_checked"):
            raise AttributeError(name)
        return getattr(self.real_store(), name)


class _Collection:
    """What ``store._collection`` returns on the fast path: the snapshot, with the real chromadb
    collection behind it for any call or argument the snapshot does not serve."""

    def __init__(self, store: SnapshotStore, snapshot: SnapshotCollection) -> None:
        self._store = store
        self._snapshot = snapshot
        self.name, self.id, self.metadata = snapshot.name, snapshot.id, snapshot.metadata

    def count(self) -> int:
        return self._snapshot.count()

    def get(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return self._snapshot.get(*args, **kwargs)
        except (_Unsupported, TypeError):
            return self._store.real_store()._collection.get(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._store.real_store()._collection, name)


def open_snapshot_store(index_dir: Path, embeddings: Embeddings, *, chroma_url: str | None = None) -> SnapshotStore | None:
    """The fast read-only store when the index has a snapshot matching Chroma's state, else ``None``.

    Raises ``EmbeddingMismatchError`` like ``open_store`` when the index was built with another model.
    """
    if chroma_url:
        return None
    collection = _open_collection(index_dir, embeddings)
    return SnapshotStore(index_dir, embeddings, collection) if collection is not None else None


def _open_collection(index_dir: Path, embeddings: Embeddings) -> SnapshotCollection | None:
    state = read_state(index_dir)
    if state is None:
        return None
    fp = fingerprint(index_dir)
    if fp is None or fp != state.get("fingerprint"):
        return None
    model_id = getattr(embeddings, "model_id", type(embeddings).__name__)
    if fp.get("model_id") and fp["model_id"] != model_id:
        raise EmbeddingMismatchError(
            f"the index at {index_dir} was built with {fp['model_id']}, but KB_EMBEDDINGS selects {model_id}",
            hint="re-ingest with 'kb ingest --rebuild' or switch KB_EMBEDDINGS back",
        )
    try:
        collection = SnapshotCollection(snapshot_dir(index_dir) / state["dir"], state)
    except (OSError, ValueError, KeyError, sqlite3.Error):
        return None
    if len(collection.vectors) != collection.count() or len(collection.norms) != collection.count():
        return None
    return collection
