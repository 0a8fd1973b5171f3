"""The lexical (BM25) index, kept in step with the chunk store.

BM25 finds chunks that share the query's words, which embeddings often miss: exact names
(``cost_center``, ``gw-lis``), numbers, rare terms. The index is built with ``bm25s`` from the
store's own chunks (ids, texts, titles, sections), so both indexes always hold the same
chunks; ``kb ingest`` calls ``sync_lexical`` at the end of every run, which rebuilds it only when
the store's set of chunk ids changed (or the tokenizer did). The local stores (Chroma, the
snapshot) answer ``ChunkStore.lexical`` through ``LexicalSide``.

Layout under ``KB_INDEX_DIR/bm25/``: ``current.json`` names the live build folder ``v-<hash>``
(bm25s arrays + ``ids.json``). A new build is written to its own folder and ``current.json`` is
replaced atomically, so a reader never sees a half-written index.

Queries are scored here, not by bm25s: bm25s precomputes every (term, chunk) BM25 score into a
CSC matrix (``data``/``indices``/``indptr``), and a query's scores are the sum of its terms'
columns. Importing bm25s imports SciPy (~0.3 s of every fresh ``kb search``/``kb ask``) for
nothing a query uses, so ``kb ingest`` builds and saves with bm25s, and queries memory-map the
saved arrays and add the columns with NumPy (``_column_sum``, as fast as bm25s's own NumPy
scorer): the same float32 additions in the same order as bm25s's "lucene" BM25, hence the same
scores (tests/unit/test_lexical_scores.py checks it against bm25s).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.store.base import ChunkStore, Filter, all_ids

LEXICAL_VERSION = 2  # bump when tokenization or indexed text changes: forces a rebuild
_WORD = re.compile(r"[a-z0-9]+")

# Function words and conversational fillers that carry no meaning for retrieval (questions are
# full of them; dropping the fillers raised BM25 nDCG@10 on both gold sets).
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself nor of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves get got
    also anyone anything let like many might much need needs ok okay please somebody someone something
    supposed tell us want way""".split()
)


def _stemmer() -> Any:
    try:
        import Stemmer  # PyStemmer: Snowball stemmers in C

        return Stemmer.Stemmer("english")
    except ImportError:  # pragma: no cover - PyStemmer is a dependency; degrade to no stemming
        return None


_STEMMER = _stemmer()
_STEM_CACHE: dict[str, str] = {}


def tokenize(text: str) -> list[str]:
    """Lower-cased, stop-word-free, stemmed word tokens: ``"Rolling back deploys"`` -> ``["roll", "back", "deploy"]``."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    if _STEMMER is None:
        return words
    out = []
    for word in words:
        stem = _STEM_CACHE.get(word)
        if stem is None:
            stem = _STEM_CACHE.setdefault(word, _STEMMER.stemWord(word))
        out.append(stem)
    return out


def indexed_text(text: str, metadata: dict[str, Any] | None) -> str:
    """What BM25 sees for a chunk: its source path, title and section path, then its text."""
    meta = metadata or {}
    source = str(meta.get("source") or "")
    context = " ".join(
        part for part in (source.rsplit(".", 1)[0].replace("/", " "), meta.get("title"), meta.get("section")) if part
    )
    return f"{context}\n{text}" if context else text


def ids_digest(ids: Iterable[str]) -> str:
    digest = hashlib.sha256(f"v{LEXICAL_VERSION}".encode())
    for chunk_id in sorted(ids):
        digest.update(chunk_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def lexical_dir(index_dir: Path) -> Path:
    return Path(index_dir) / "bm25"


@dataclass
class LexicalHits:
    """BM25 scores of one query over every chunk, with ranks on demand."""

    ids: list[str]
    scores: np.ndarray

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` best chunks with a positive score, best first."""
        if not self.ids or n <= 0:
            return []
        n = min(n, len(self.ids))
        best = np.argpartition(-self.scores, n - 1)[:n]
        best = best[np.argsort(-self.scores[best], kind="stable")]
        return [(self.ids[i], float(self.scores[i])) for i in best if self.scores[i] > 0]

    def score(self, chunk_id: str) -> float:
        """The chunk's score (0 when it shares no word with the query, or is not in the index)."""
        position = self._positions().get(chunk_id)
        return max(float(self.scores[position]), 0.0) if position is not None else 0.0

    def score_and_rank(self, chunk_id: str) -> tuple[float, int | None]:
        """The chunk's score and its rank among all chunks (``None`` when it shares no word with the query)."""
        position = self._positions().get(chunk_id)
        if position is None:
            return 0.0, None
        score = float(self.scores[position])
        if score <= 0:
            return 0.0, None
        return score, int(np.count_nonzero(self.scores > score)) + 1

    def only(self, allowed: set[str] | frozenset[str]) -> LexicalHits:
        """The same hits with every chunk outside ``allowed`` scored 0 (a filtered search)."""
        return self.masked(np.fromiter((cid in allowed for cid in self.ids), dtype=bool, count=len(self.ids)))

    def masked(self, mask: np.ndarray) -> LexicalHits:
        """The same hits with every chunk where ``mask`` is False scored 0: ``top`` then holds admitted
        chunks only, and ``score_and_rank`` ranks among them."""
        hits = LexicalHits(self.ids, np.where(mask, self.scores, np.float32(0.0)).astype(np.float32, copy=False))
        hits.__dict__["_pos"] = self._positions()
        return hits

    def _positions(self) -> dict[str, int]:
        cache = self.__dict__.get("_pos")
        if cache is None:
            cache = self.__dict__["_pos"] = {cid: i for i, cid in enumerate(self.ids)}
        return cache


_SCORE_FILES = {"data": "data.csc.index.npy", "indices": "indices.csc.index.npy", "indptr": "indptr.csc.index.npy"}
_METHODS = ("lucene", "robertson", "atire")  # BM25 variants whose scores are the column sums alone


def _column_sum(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, num_docs: int,
                token_ids: Sequence[int]) -> np.ndarray:
    """A query's BM25 score of every chunk: the sum of its terms' columns (a repeated term counts
    again, as in bm25s). Each column holds a chunk at most once, so the fancy-indexed add is exact."""
    scores = np.zeros(num_docs, dtype=np.float32)
    for token in token_ids:
        start, end = int(indptr[token]), int(indptr[token + 1])
        if end > start:
            scores[indices[start:end]] += data[start:end]
    return scores


class LexicalIndex:
    """A BM25 index over chunk ids: bm25s's precomputed score matrix, scored with NumPy."""

    def __init__(self, ids: list[str], model: Any = None, *, arrays: dict[str, Any] | None = None,
                 vocab: dict[str, int] | None = None) -> None:
        self.ids = ids
        self._model = model  # a bm25s.BM25 when built in this process (it saves the index)
        if model is not None and arrays is None:
            arrays, vocab = model.scores, model.vocab_dict
        self._arrays = arrays  # data, indices, indptr (memory-mapped when loaded), num_docs
        self._vocab = vocab or {}
        self._positions: dict[str, int] | None = None  # chunk id -> position, shared by every query's hits

    def _hits(self, scores: np.ndarray) -> LexicalHits:
        if self._positions is None:
            self._positions = {cid: i for i, cid in enumerate(self.ids)}
        hits = LexicalHits(self.ids, scores)
        hits.__dict__["_pos"] = self._positions  # built once per index, not once per query
        return hits

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[dict[str, Any] | None]) -> LexicalIndex:
        import bm25s

        if not ids:
            return cls([], None)
        model = bm25s.BM25()
        corpus = [tokenize(indexed_text(t or "", m)) for t, m in zip(texts, metadatas)]
        model.index(corpus, show_progress=False)
        return cls(list(ids), model)

    def search(self, query: str) -> LexicalHits:
        arrays = self._arrays
        if arrays is None:
            return LexicalHits([], np.zeros(0, dtype=np.float32))
        vocab, columns = self._vocab, len(arrays["indptr"]) - 1  # bm25s's vocabulary ends with "", no column
        token_ids = [vocab[token] for token in tokenize(query) if vocab.get(token, columns) < columns]
        num_docs = int(arrays["num_docs"])
        if not token_ids:
            return self._hits(np.zeros(num_docs, dtype=np.float32))
        return self._hits(_column_sum(arrays["data"], arrays["indices"], arrays["indptr"], num_docs, token_ids))

    # ------------------------------------------------------------ persistence

    def save(self, index_dir: Path, digest: str) -> None:
        """Write this build next to the live one, then switch ``current.json`` to it atomically."""
        root = lexical_dir(index_dir)
        root.mkdir(parents=True, exist_ok=True)
        name = f"v-{digest[:16]}"
        staging = root / f"tmp-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            if self._model is not None:
                self._model.save(str(staging), show_progress=False)
            (staging / "ids.json").write_text(json.dumps(self.ids), encoding="utf-8")
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        state = {"version": LEXICAL_VERSION, "dir": name, "ids_digest": digest, "count": len(self.ids)}
        tmp = root / f"current.json.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, root / "current.json")
        for old in root.iterdir():  # previous builds and leftovers of interrupted ones
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, index_dir: Path) -> tuple[LexicalIndex, dict[str, Any]] | None:
        """The persisted index and its state, or ``None`` if missing, unreadable or of another version.

        Reads bm25s's saved files itself (no bm25s, no SciPy): the score arrays memory-mapped."""
        state = read_state(index_dir)
        if state is None:
            return None
        folder = lexical_dir(index_dir) / state["dir"]
        try:
            ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
            if not ids:
                return cls([]), state
            params = json.loads((folder / "params.index.json").read_text(encoding="utf-8"))
            vocab = json.loads((folder / "vocab.index.json").read_text(encoding="utf-8"))
            arrays: dict[str, Any] = {name: np.asarray(np.load(folder / file, mmap_mode="r", allow_pickle=False))
                                      for name, file in _SCORE_FILES.items()}
        except (OSError, ValueError):
            return None
        arrays["num_docs"] = params.get("num_docs")
        if (params.get("method") not in _METHODS or params.get("dtype") != "float32" or arrays["num_docs"] != len(ids)
                or not isinstance(vocab, dict) or not 0 < len(arrays["indptr"]) <= len(vocab) + 1
                or len(arrays["data"]) != len(arrays["indices"])):
            return None  # another bm25s variant or layout: rebuilt in memory (open_lexical)
        return cls(ids, arrays=arrays, vocab=vocab), state


def read_state(index_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((lexical_dir(index_dir) / "current.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != LEXICAL_VERSION or not state.get("dir"):
        return None
    return state


# ---------------------------------------------------------------- the store side


def build_from_store(store: ChunkStore) -> LexicalIndex:
    ids: list[str] = []
    texts: list[str] = []
    metadatas: list[dict[str, Any] | None] = []
    for page in store.scan():
        ids.extend(page.ids)
        texts.extend(page.texts or [""] * len(page.ids))
        metadatas.extend(page.metadatas or [None] * len(page.ids))
    return LexicalIndex.build(ids, texts, metadatas)


def sync_lexical(index_dir: Path, store: ChunkStore) -> bool:
    """Rebuild the persisted BM25 index if it is missing or does not hold the store's chunks.

    Returns whether it was rebuilt. Called by ``kb ingest`` (under the writer lock) after every run.
    """
    digest = ids_digest(all_ids(store))
    state = read_state(index_dir)
    if state is not None and state.get("ids_digest") == digest and (lexical_dir(index_dir) / state["dir"]).is_dir():
        return False
    build_from_store(store).save(index_dir, digest)
    return True


def open_lexical(index_dir: Path, store: ChunkStore) -> LexicalIndex:
    """The BM25 index for queries: the persisted one when it matches the store, else one built
    in memory from the store (an index from before BM25 existed, or an interrupted ingest).
    Queries never write to the index folder."""
    loaded = LexicalIndex.load(index_dir)
    if loaded is not None:
        index, state = loaded
        if state.get("count") == store.count() == len(index):
            return index
    return build_from_store(store)


class LexicalSide:
    """A local store's BM25 search: the index ``kb ingest`` persisted under ``index_dir`` (or, without
    one, built in memory), reloaded when ``kb ingest`` published a new one or the store changed size,
    so a long-lived process (the API) follows re-ingests without restarting."""

    def __init__(self, index_dir: Path | None) -> None:
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self._current: tuple[Any, LexicalIndex] | None = None
        self._state: tuple[Any, str | None] | None = None  # (current.json's stat, its build folder)
        self._masks: dict[tuple[int, int], tuple[Any, Any, np.ndarray]] = {}  # (index, admitted ids) -> mask

    def _published(self) -> str | None:
        """The live build's folder name; ``current.json`` is read again only when the file changed
        (a stat per query instead of a read: ``kb ingest`` replaces the file, never edits it)."""
        path = lexical_dir(self.index_dir) / "current.json"
        try:
            info = os.stat(path)
            stamp: Any = (info.st_ino, info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
        if self._state is None or self._state[0] != stamp:
            self._state = (stamp, (read_state(self.index_dir) or {}).get("dir"))
        return self._state[1]

    def index(self, store: ChunkStore) -> LexicalIndex:
        total = store.count()
        key = (self._published() if self.index_dir else None, total)
        current = self._current
        if current is None or current[0] != key:
            index = open_lexical(self.index_dir, store) if self.index_dir else build_from_store(store)
            current = self._current = (key, index)
        return current[1]

    def search(self, store: ChunkStore, query: str, filter: Filter | None = None) -> LexicalHits:
        """BM25 over the chunks ``filter`` admits: the others score 0 before any top-k is taken."""
        index = self.index(store)
        hits = index.search(query)
        if filter is None or filter.empty:
            return hits
        admitted = getattr(store, "admitted_ids", None)
        allowed = admitted(filter) if callable(admitted) else set(all_ids(store, filter))
        if not isinstance(allowed, frozenset):  # computed for this call: nothing to reuse
            return hits.only(allowed)
        key = (id(index), id(allowed))
        cached = self._masks.get(key)
        if cached is None or cached[0] is not index or cached[1] is not allowed:
            if len(self._masks) >= 64:
                self._masks.clear()
            mask = np.fromiter((cid in allowed for cid in index.ids), dtype=bool, count=len(index.ids))
            cached = self._masks[key] = (index, allowed, mask)
        return hits.masked(cached[2])
