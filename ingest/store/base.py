"""The chunk store: the one interface through which kb reads and writes its index.

A chunk is an id, a text, a metadata dict (``source``, ``root``, ``title``, ``section``, ``chunk``,
``text_sha``, ...) and a vector from the embedding model the store was built with (``model_id``).
Everything outside the adapters (the retriever, ``kb ingest``'s writer, the BM25 build, the snapshot
export, evaluation) goes through ``ChunkStore``; only the adapters know a storage library:

- ``ingest.store.chroma.ChromaChunkStore``: Chroma, embedded (``KB_INDEX_DIR/chroma``) or a server
  (``KB_CHROMA_URL``);
- ``ingest.store.snapshot.SnapshotStore``: the read-only copy queries use without importing chromadb
  (``upsert``/``delete`` raise ``ReadOnlyStoreError``);
- ``ingest.store.memory.MemoryChunkStore``: in memory, for tests.

The shape is the one a Databricks Vector Search index (the scale issue) offers, so a
``VectorSearchChunkStore`` can implement it without changing callers: ``nearest`` is an ANN query
(``query_vector``, ``num_results``), ``lexical`` a FULL_TEXT query (``query_text``) and a HYBRID query
is both fused by the retriever as today; a ``Filter`` maps to ``filters_json`` (``equals`` ->
``{"source": "a.md"}``, ``any_of`` -> ``{"text_sha": [...]}``; ``source_prefix`` -> ``"source LIKE
'hr/%'"`` on storage-optimized endpoints, whose filters are SQL-like, or a ``folder`` column on standard
ones, whose ``LIKE`` matches tokens; ``readable_by`` -> an ``access`` column of type ``ARRAY<STRING>``
holding the chunk's ``access`` list, filtered with "contains any of" on standard endpoints,
``{"access": ["*", "hr"]}``, and on storage-optimized ones with one ``array_contains(access, 'g')`` per
group joined by ``OR``, ANDed with the other conditions; every row there is labelled, so there is no
unlabelled case to admit); ``get`` is a lookup by primary key (``id``); ``upsert``/``delete`` are by primary key;
``scan`` pages through the index (``scan_index`` with ``last_primary_key``). ``count``, ``model_id``
and ``dimension`` come from the index's description.

Vectors are cosine-compared: ``Hit.distance`` is ``1 - cosine similarity``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ingest.errors import KbError

Scalar = str | int | float | bool
PAGE = 5000  # chunks per page when a caller scans the whole store


class ReadOnlyStoreError(KbError):
    """A write to a store that only reads (the query snapshot)."""


@dataclass(frozen=True)
class Filter:
    """Which chunks a query or a scan may return: every condition given must hold.

    ``equals``: metadata key == value; ``any_of``: metadata key in the values; ``source_prefix``: the
    ``source`` path starts with it (``"hr/"``: the documents of the hr folder); ``readable_by``: the
    chunk's ``access`` list (``ingest.access``: the groups that may read its document, ``["*"]`` for
    everyone) shares at least one group with it. A caller's filter is ``readable_by=`` its groups plus
    ``"*"`` (``ingest.access.readable_by``); a chunk with no ``access`` key (indexed before kb had access
    control) is everyone's. Adapters apply it inside the store query (Chroma: ``$contains`` on the list
    metadata, one per group, or ``access_labelled`` not true, under ``$or``; the snapshot and BM25:
    before taking the top k), so the top k is filled with readable chunks.
    """

    equals: Mapping[str, Scalar] = field(default_factory=dict)
    any_of: Mapping[str, Sequence[Scalar]] = field(default_factory=dict)
    source_prefix: str | None = None
    readable_by: frozenset[str] | None = None

    def matches(self, metadata: Mapping[str, Any] | None) -> bool:
        meta = metadata or {}
        if any(meta.get(key) != value for key, value in self.equals.items()):
            return False
        if any(meta.get(key) not in set(values) for key, values in self.any_of.items()):
            return False
        if self.readable_by is not None and "access" in meta and not _shares(meta["access"], self.readable_by):
            return False
        return self.source_prefix is None or str(meta.get("source") or "").startswith(self.source_prefix)

    @property
    def empty(self) -> bool:
        return not self.equals and not self.any_of and self.source_prefix is None and self.readable_by is None

    def key(self) -> tuple[Any, ...]:
        """A hashable identity of the filter (for caches of admitted chunks)."""
        return (tuple(sorted(self.equals.items())), tuple(sorted((k, tuple(v)) for k, v in self.any_of.items())),
                self.source_prefix, tuple(sorted(self.readable_by)) if self.readable_by is not None else None)


def _shares(labels: Any, groups: frozenset[str]) -> bool:
    if isinstance(labels, str):  # a single label stored as a scalar
        return labels in groups
    return isinstance(labels, (list, tuple)) and any(label in groups for label in labels)


@dataclass
class Chunks:
    """Chunks in a given order; a field the caller did not ask for is ``None``.

    ``vectors`` is array-like, one row per chunk (``numpy.asarray(chunks.vectors)`` is ``(n, dimension)``).
    """

    ids: list[str]
    texts: list[str] | None = None
    metadatas: list[dict[str, Any]] | None = None
    vectors: Any = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Hit:
    """A nearest chunk: its cosine distance to the query vector (0 = same direction), text and metadata."""

    id: str
    distance: float
    text: str
    metadata: dict[str, Any]


class LexicalHits(Protocol):
    """One query's BM25 scores (``ingest.store.lexical.LexicalHits`` for the local stores)."""

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` best chunks with a positive score, best first."""

    def score_and_rank(self, chunk_id: str) -> tuple[float, int | None]:
        """The chunk's score and rank (``None`` when it does not match the query)."""


@runtime_checkable
class ChunkStore(Protocol):
    """What kb needs from an index. See the module docstring for the adapters and Vector Search."""

    embeddings: Any  # the model that embeds queries for this store (its model_id is checked at open)
    read_only: bool

    @property
    def model_id(self) -> str:
        """The embedding model the stored vectors come from."""

    @property
    def dimension(self) -> int | None:
        """The vectors' dimension (``None`` while the store is empty)."""

    def count(self) -> int:
        """How many chunks the store holds."""

    def get(self, ids: Sequence[str], *, texts: bool = True, metadatas: bool = True,
            vectors: bool = False) -> Chunks:
        """The chunks with these ids, in the order asked, each once; unknown ids are left out."""

    def nearest(self, vector: Sequence[float], k: int, *, filter: Filter | None = None) -> list[Hit]:
        """The ``k`` chunks nearest ``vector`` (cosine) among those ``filter`` admits, nearest first."""

    def lexical(self, query: str, *, filter: Filter | None = None) -> LexicalHits:
        """BM25 scores of ``query`` over the chunks ``filter`` admits (the others score 0)."""

    def scan(self, *, filter: Filter | None = None, texts: bool = True, metadatas: bool = True,
             vectors: bool = False, page_size: int = PAGE) -> Iterator[Chunks]:
        """Every chunk ``filter`` admits, page by page, in a stable order."""

    def upsert(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
               vectors: Sequence[Sequence[float]]) -> None:
        """Insert or replace these chunks (ids are deterministic: a repeat is a no-op)."""

    def delete(self, ids: Sequence[str]) -> None:
        """Remove these chunks; unknown ids are ignored."""


def all_ids(store: ChunkStore, filter: Filter | None = None) -> list[str]:
    """The ids of every chunk ``filter`` admits, in the store's order."""
    return [cid for page in store.scan(filter=filter, texts=False, metadatas=False) for cid in page.ids]


def indexed_sources(store: ChunkStore, filter: Filter | None = None) -> set[str]:
    """The ``source`` of every chunk ``filter`` admits: which documents the store holds (for a caller)."""
    return {str((meta or {}).get("source")) for page in store.scan(filter=filter, texts=False)
            for meta in page.metadatas or []}


def in_order(ids: Sequence[str], found: Mapping[str, tuple[str | None, dict[str, Any] | None, Any]], *,
             texts: bool, metadatas: bool, vectors: bool) -> Chunks:
    """``Chunks`` of ``found`` (id -> (text, metadata, vector)) in the order of ``ids``, each once."""
    order = [cid for cid in dict.fromkeys(ids) if cid in found]
    return Chunks(
        ids=order,
        texts=[found[cid][0] or "" for cid in order] if texts else None,
        metadatas=[dict(found[cid][1] or {}) for cid in order] if metadatas else None,
        vectors=[found[cid][2] for cid in order] if vectors else None,
    )
