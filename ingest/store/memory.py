"""An in-memory ``ChunkStore`` (see ``ingest.store.base``): for unit tests and notebooks, no files.

Exact cosine search in NumPy, BM25 built in memory from its own chunks; ``model_id`` is the model
it was created with.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ingest.store.base import PAGE, Chunks, Filter, Hit, LexicalHits, in_order
from ingest.store.lexical import LexicalSide


class MemoryChunkStore:
    read_only = False

    def __init__(self, embeddings: Any, model_id: str | None = None) -> None:
        self.embeddings = embeddings
        self._model_id = model_id or getattr(embeddings, "model_id", type(embeddings).__name__)
        self._chunks: dict[str, tuple[str, dict[str, Any], np.ndarray]] = {}  # insertion order = scan order
        self._lexical = LexicalSide(None)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int | None:
        for _, _, vector in self._chunks.values():
            return len(vector)
        return None

    def count(self) -> int:
        return len(self._chunks)

    def get(self, ids: Sequence[str], *, texts: bool = True, metadatas: bool = True,
            vectors: bool = False) -> Chunks:
        return in_order(ids, self._chunks, texts=texts, metadatas=metadatas, vectors=vectors)

    def nearest(self, vector: Sequence[float], k: int, *, filter: Filter | None = None) -> list[Hit]:
        rows = [(cid, chunk) for cid, chunk in self._chunks.items() if filter is None or filter.matches(chunk[1])]
        if not rows or k <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32)
        matrix = np.stack([chunk[2] for _, chunk in rows])
        norms = np.maximum(np.linalg.norm(matrix, axis=1) * max(float(np.linalg.norm(query)), 1e-12), 1e-12)
        similarity = (matrix @ query) / norms
        best = sorted(range(len(rows)), key=lambda i: (-similarity[i], i))[:k]  # ties: insertion order
        return [Hit(rows[i][0], float(1.0 - similarity[i]), rows[i][1][0], dict(rows[i][1][1])) for i in best]

    def lexical(self, query: str, *, filter: Filter | None = None) -> LexicalHits:
        return self._lexical.search(self, query, filter)

    def scan(self, *, filter: Filter | None = None, texts: bool = True, metadatas: bool = True,
             vectors: bool = False, page_size: int = PAGE) -> Iterator[Chunks]:
        ids = [cid for cid, chunk in self._chunks.items() if filter is None or filter.matches(chunk[1])]
        for start in range(0, len(ids), page_size):
            yield in_order(ids[start : start + page_size], self._chunks, texts=texts, metadatas=metadatas,
                           vectors=vectors)

    def upsert(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
               vectors: Sequence[Sequence[float]]) -> None:
        for cid, text, meta, vector in zip(ids, texts, metadatas, vectors, strict=True):
            self._chunks[cid] = (text, dict(meta), np.asarray(vector, dtype=np.float32))
        self._lexical = LexicalSide(None)  # BM25 is rebuilt on the next lexical search

    def delete(self, ids: Sequence[str]) -> None:
        for cid in ids:
            self._chunks.pop(cid, None)
        self._lexical = LexicalSide(None)
