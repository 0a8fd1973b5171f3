"""The query snapshot: a read-only copy of the active Chroma collection that queries use without chromadb.

Importing chromadb and opening its client costs ~1 s per process, more than everything else a
``kb search`` does. ``kb ingest`` therefore also writes, under ``KB_INDEX_DIR/snapshot/``, the
collection's vectors (``vectors.npy``, float32) and its chunks (``chunks.sqlite``: id, text,
metadata), tagged with kb's write stamp (``ingest.store.stamp``) read before the export.

``open_snapshot_store(index_dir, embeddings)`` returns a ``SnapshotStore`` only while the stamp
still matches, i.e. no write reached Chroma since; otherwise ``None`` and the caller opens Chroma.
Dense search over the snapshot is exact (one matrix product; Chroma's HNSW is approximate, and on
small indexes exact too, so the results are the same). A long-lived reader re-checks the stamp at
most once a second and, once Chroma has changed, hands every call to the real Chroma store (or to
a newer snapshot if ``kb ingest`` published one).

A snapshot is only ever published when the stamp did not move while it was exported, so a
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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ingest.errors import EmbeddingMismatchError, KbError
from ingest.store.base import PAGE, ChunkStore, Chunks, Filter, Hit, LexicalHits, ReadOnlyStoreError, in_order
from ingest.store.blas import one_blas_thread
from ingest.store.chroma import open_store  # chromadb itself is imported only when it connects
from ingest.store.lexical import LexicalSide
from ingest.store.stamp import bump, read_stamp

SNAPSHOT_VERSION = 2  # 2: tagged with kb's write stamp (1 read Chroma's SQLite tables)
RECHECK_SECONDS = 1.0
MAX_CACHED_FILTERS = 64  # admitted chunks per filter (the callers' group sets), per open snapshot


def snapshot_dir(index_dir: Path) -> Path:
    return Path(index_dir) / "snapshot"


def fingerprint(index_dir: Path) -> dict[str, Any] | None:
    """The embedded index's current write stamp (``None``: no local index kb has written)."""
    return read_stamp(index_dir)


# ---------------------------------------------------------------- writing (kb ingest)


def read_state(index_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((snapshot_dir(index_dir) / "current.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION or not state.get("dir"):
        return None
    return state


def sync_snapshot(index_dir: Path, store: ChunkStore) -> bool:
    """Export ``store`` (the active Chroma collection) unless the snapshot already matches it; returns
    whether a new snapshot was published. Called by ``kb ingest`` under the writer lock."""
    before = fingerprint(index_dir)
    if before is None:  # an index written before kb stamped its writes: stamp it now
        before = bump(index_dir)
    state = read_state(index_dir)
    if state and state.get("fingerprint") == before and (snapshot_dir(index_dir) / state["dir"]).is_dir():
        return False
    ids: list[str] = []
    texts: list[str] = []
    metadatas: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    for page in store.scan(vectors=True):
        ids.extend(page.ids)
        texts.extend(page.texts or [""] * len(page.ids))
        metadatas.extend(page.metadatas or [{}] * len(page.ids))
        vectors.append(np.asarray(page.vectors, dtype=np.float32).reshape(len(page.ids), -1))
    if fingerprint(index_dir) != before:
        return False  # Chroma changed while exporting: publish nothing rather than something stale
    dimension = vectors[0].shape[1] if vectors else 0
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
    identity = {"model_id": store.model_id, "dimension": dimension or None}
    _publish(index_dir, before, identity, ids, texts, metadatas, matrix)
    return True


def _publish(index_dir: Path, fp: dict[str, Any], identity: dict[str, Any], ids: list[str], texts: list[str],
             metadatas: list[dict[str, Any]], matrix: np.ndarray) -> None:
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
    state = {"version": SNAPSHOT_VERSION, "dir": name, "fingerprint": fp, "count": len(ids), **identity}
    tmp = root / f"current.json.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(state), "utf-8")
    os.replace(tmp, root / "current.json")
    for old in root.iterdir():  # earlier snapshots; a reader that has one open keeps its open files
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- reading (queries)


class _Snapshot:
    """One published snapshot, opened: vectors memory-mapped, chunks in a read-only SQLite file."""

    def __init__(self, folder: Path, state: dict[str, Any]) -> None:
        self.fingerprint = state["fingerprint"]
        self.model_id = state.get("model_id")
        self.dimension = state.get("dimension")
        # Memory-mapped, seen as a plain ndarray: a row of an np.memmap is another memmap object (slower to make).
        self.vectors = np.asarray(np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False))
        self.norms = np.load(folder / "norms.npy", allow_pickle=False)
        self._db = sqlite3.connect(f"{(folder / 'chunks.sqlite').resolve().as_uri()}?mode=ro", uri=True,
                                   check_same_thread=False)
        self._lock = threading.Lock()
        self.count = int(state["count"])
        self._admitted: dict[tuple[Any, ...], tuple[np.ndarray, frozenset[str]]] = {}  # filter key -> admitted


    def rows(self, column: str, keys: Sequence[Any]) -> list[tuple[int, str, str, dict[str, Any]]]:
        """(pos, id, text, metadata) of the rows whose ``column`` is in ``keys``, in the order of ``keys``."""
        return [(pos, cid, text or "", json.loads(meta) if meta else {})
                for pos, cid, text, meta in self._lookup("pos, id, document, metadata", column, keys)]

    def ids(self, column: str, keys: Sequence[Any]) -> list[tuple[int, str]]:
        """(pos, id) of the rows whose ``column`` is in ``keys``, in the order of ``keys``: no text, no
        metadata read (ranking needs neither)."""
        return [(pos, cid) for pos, cid in self._lookup("pos, id", column, keys)]

    def _lookup(self, fields: str, column: str, keys: Sequence[Any]) -> list[tuple[Any, ...]]:
        """``fields`` (starting with pos, id) of the rows whose ``column`` (``pos`` or ``id``) is in
        ``keys``, in the order of ``keys`` (repeats and misses dropped), 500 keys per query."""
        found: dict[Any, tuple[Any, ...]] = {}
        keys = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                for row in self._db.execute(f"SELECT {fields} FROM chunks WHERE {column} IN ({marks})", part):
                    found[row[0] if column == "pos" else row[1]] = row
        return [found[key] for key in keys if key in found]

    def page(self, start: int, stop: int) -> list[tuple[int, str, str, dict[str, Any]]]:
        with self._lock:
            return [(pos, cid, text or "", json.loads(meta) if meta else {}) for pos, cid, text, meta in self._db.execute(
                "SELECT pos, id, document, metadata FROM chunks WHERE pos >= ? AND pos < ? ORDER BY pos", (start, stop))]

    def admitted(self, filter: Filter) -> np.ndarray:
        """Positions of the chunks ``filter`` admits (the snapshot never changes: computed once per filter)."""
        return self._admitted_entry(filter)[0]

    def admitted_ids(self, filter: Filter) -> frozenset[str]:
        """Ids of the chunks ``filter`` admits (the same object on every call for one filter)."""
        return self._admitted_entry(filter)[1]

    def _admitted_entry(self, filter: Filter) -> tuple[np.ndarray, frozenset[str]]:
        key = filter.key()
        entry = self._admitted.get(key)
        if entry is None:
            with self._lock:
                rows = self._db.execute("SELECT pos, id, metadata FROM chunks ORDER BY pos").fetchall()
            kept = [(pos, cid) for pos, cid, meta in rows if filter.matches(json.loads(meta) if meta else {})]
            entry = (np.asarray([pos for pos, _ in kept], dtype=np.int64), frozenset(cid for _, cid in kept))
            if len(self._admitted) >= MAX_CACHED_FILTERS:  # callers' group sets: few in practice
                self._admitted.clear()
            self._admitted[key] = entry
        return entry

    def nearest(self, vector: Sequence[float], k: int, positions: np.ndarray | None) -> list[tuple[int, float]]:
        """(position, cosine distance) of the ``k`` nearest chunks, nearest first: exact search."""
        query = np.asarray(vector, dtype=np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        with one_blas_thread():  # one memory-bound product: a second thread only adds wake-up latency
            if positions is None:
                similarity = (self.vectors @ query) / self.norms
            elif len(positions) * 4 >= len(self.norms):  # most chunks admitted: score all, keep the admitted
                similarity = ((self.vectors @ query) / self.norms)[positions]
            else:
                similarity = (np.asarray(self.vectors[positions]) @ query) / self.norms[positions]
        n = len(similarity)
        k = min(k, n)
        if k <= 0:
            return []
        best = np.argpartition(-similarity, k - 1)[:k] if k < n else np.arange(n)
        best = best[np.lexsort((best, -similarity[best]))]  # ties: insertion order
        where = positions if positions is not None else np.arange(n)
        return [(int(where[p]), float(1.0 - similarity[p])) for p in best]


class SnapshotStore:
    """The read-only ``ChunkStore`` over the snapshot (see ``ingest.store.base``): the same results as
    the Chroma store. While the snapshot matches Chroma (checked at most once a second) it answers
    from the snapshot; after Chroma changed, from a newer snapshot or the real store, opened then.
    ``upsert``/``delete`` raise ``ReadOnlyStoreError``: ``kb ingest`` writes through Chroma."""

    read_only = True

    def __init__(self, index_dir: Path, embeddings: Any, snapshot: _Snapshot) -> None:
        self.index_dir = Path(index_dir)
        self.embeddings = embeddings
        self._snapshot: _Snapshot | None = snapshot
        self._checked = time.monotonic()
        self._real: ChunkStore | None = None
        self._lexical = LexicalSide(self.index_dir)

    # -- staying current

    def _fresh(self) -> _Snapshot | None:
        """The snapshot to answer from, or ``None``: ask the real store (re-checked at most once a second)."""
        snapshot = self._snapshot
        now = time.monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            if snapshot is None or fingerprint(self.index_dir) != snapshot.fingerprint:
                # Chroma moved on: a newer snapshot once kb ingest published one, the real store until then.
                self._snapshot = snapshot = _open_snapshot(self.index_dir, self.embeddings)
        return snapshot

    def real_store(self) -> ChunkStore:
        """The Chroma store behind the snapshot (connecting imports chromadb: only once the snapshot is stale)."""
        if self._real is None:
            self._real = open_store(self.index_dir, self.embeddings)
        return self._real

    @property
    def serving_snapshot(self) -> bool:
        """Whether calls are answered from the snapshot (not from Chroma) right now."""
        return self._fresh() is not None

    # -- ChunkStore

    @property
    def model_id(self) -> str:
        snapshot = self._fresh()
        if snapshot is None:
            return self.real_store().model_id
        return str(snapshot.model_id or getattr(self.embeddings, "model_id", type(self.embeddings).__name__))

    @property
    def dimension(self) -> int | None:
        snapshot = self._fresh()
        return snapshot.dimension if snapshot is not None else self.real_store().dimension

    def count(self) -> int:
        snapshot = self._fresh()
        return snapshot.count if snapshot is not None else self.real_store().count()

    def get(self, ids: Sequence[str], *, texts: bool = True, metadatas: bool = True,
            vectors: bool = False) -> Chunks:
        snapshot = self._fresh()
        if snapshot is None:
            return self.real_store().get(ids, texts=texts, metadatas=metadatas, vectors=vectors)
        if not texts and not metadatas:  # vectors (or ids) only: the rows' text and metadata are not read
            rows = [(pos, cid, None, None) for pos, cid in snapshot.ids("id", list(ids))]
        else:
            rows = snapshot.rows("id", list(ids))
        found = {cid: (text, meta, snapshot.vectors[pos] if vectors else None) for pos, cid, text, meta in rows}
        chunks = in_order(list(ids), found, texts=texts, metadatas=metadatas, vectors=vectors)
        if vectors:
            chunks.vectors = np.asarray(chunks.vectors, dtype=np.float32).reshape(len(chunks.ids), -1)
        return chunks

    def nearest(self, vector: Sequence[float], k: int, *, filter: Filter | None = None) -> list[Hit]:
        snapshot = self._fresh()
        if snapshot is None:
            return self.real_store().nearest(vector, k, filter=filter)
        hits = snapshot.nearest(vector, k, _positions(snapshot, filter))
        rows = {row[0]: row for row in snapshot.rows("pos", [p for p, _ in hits])}
        return [Hit(rows[p][1], distance, rows[p][2], rows[p][3]) for p, distance in hits]

    def nearest_ids(self, vector: Sequence[float], k: int, *, filter: Filter | None = None) -> list[tuple[str, float]]:
        """``nearest`` without the chunks: (id, cosine distance), nearest first (the retriever reads
        only the chunks it keeps)."""
        snapshot = self._fresh()
        if snapshot is None:
            return [(hit.id, hit.distance) for hit in self.real_store().nearest(vector, k, filter=filter)]
        hits = snapshot.nearest(vector, k, _positions(snapshot, filter))
        ids = dict(snapshot.ids("pos", [p for p, _ in hits]))
        return [(ids[p], distance) for p, distance in hits if p in ids]

    def lexical(self, query: str, *, filter: Filter | None = None) -> LexicalHits:
        if self._fresh() is None:
            return self.real_store().lexical(query, filter=filter)
        return self._lexical.search(self, query, filter)

    def admitted_ids(self, filter: Filter) -> frozenset[str] | set[str]:
        """The ids ``filter`` admits: cached per filter while the snapshot serves (BM25 filters with it)."""
        snapshot = self._fresh()
        if snapshot is None:
            return {cid for page in self.real_store().scan(filter=filter, texts=False, metadatas=False) for cid in page.ids}
        return snapshot.admitted_ids(filter)

    def scan(self, *, filter: Filter | None = None, texts: bool = True, metadatas: bool = True,
             vectors: bool = False, page_size: int = PAGE) -> Iterator[Chunks]:
        snapshot = self._fresh()
        if snapshot is None:
            yield from self.real_store().scan(filter=filter, texts=texts, metadatas=metadatas, vectors=vectors,
                                              page_size=page_size)
            return
        for start in range(0, snapshot.count, page_size):
            rows = [row for row in snapshot.page(start, start + page_size) if filter is None or filter.matches(row[3])]
            if rows:
                yield Chunks(
                    ids=[row[1] for row in rows],
                    texts=[row[2] for row in rows] if texts else None,
                    metadatas=[row[3] for row in rows] if metadatas else None,
                    vectors=np.asarray(snapshot.vectors[[row[0] for row in rows]], dtype=np.float32)
                    if vectors else None,
                )

    def upsert(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
               vectors: Sequence[Sequence[float]]) -> None:
        raise ReadOnlyStoreError("the query snapshot is read-only", hint="'kb ingest' writes the index")

    def delete(self, ids: Sequence[str]) -> None:
        raise ReadOnlyStoreError("the query snapshot is read-only", hint="'kb ingest' writes the index")


def _positions(snapshot: _Snapshot, filter: Filter | None) -> np.ndarray | None:
    """The positions ``filter`` admits (``None``: every chunk)."""
    return snapshot.admitted(filter) if filter is not None and not filter.empty else None


def open_snapshot_store(index_dir: Path, embeddings: Any, *, chroma_url: str | None = None) -> SnapshotStore | None:
    """The fast read-only store when the index has a snapshot matching Chroma's state, else ``None``.

    Raises ``EmbeddingMismatchError`` like ``open_store`` when the index was built with another model.
    """
    if chroma_url:
        return None
    snapshot = _open_snapshot(index_dir, embeddings)
    return SnapshotStore(index_dir, embeddings, snapshot) if snapshot is not None else None


def _open_snapshot(index_dir: Path, embeddings: Any) -> _Snapshot | None:
    state = read_state(index_dir)
    if state is None:
        return None
    fp = fingerprint(index_dir)
    if fp is None or fp != state.get("fingerprint"):
        return None
    model_id = getattr(embeddings, "model_id", type(embeddings).__name__)
    if state.get("model_id") and state["model_id"] != model_id:
        raise EmbeddingMismatchError(
            f"the index at {index_dir} was built with {state['model_id']}, but KB_EMBEDDINGS selects {model_id}",
            hint="re-ingest with 'kb ingest --rebuild' or switch KB_EMBEDDINGS back",
        )
    try:
        snapshot = _Snapshot(snapshot_dir(index_dir) / state["dir"], state)
    except (OSError, ValueError, KeyError, sqlite3.Error):
        return None
    if len(snapshot.vectors) != snapshot.count or len(snapshot.norms) != snapshot.count:
        return None
    return snapshot


def index_summary(index_dir: Path) -> dict[str, Any] | None:
    """What ``kb doctor`` reports about the embedded index: ``{"count", "model_id", "dimension",
    "snapshot_fresh"}``, from the snapshot while it is fresh, else from Chroma (opened then);
    ``None`` when there is no usable index with chunks."""
    state, current = read_state(index_dir), fingerprint(index_dir)
    if state is not None and current is not None and state.get("fingerprint") == current:
        return {"count": state["count"], "model_id": state.get("model_id"), "dimension": state.get("dimension"),
                "snapshot_fresh": True}
    try:
        store = open_store(index_dir, None, check_model=False)
    except KbError:  # none, or unusable: there is no index to describe (kb search says why)
        return None
    return {"count": store.count(), "model_id": store.model_id, "dimension": store.dimension, "snapshot_fresh": False}
