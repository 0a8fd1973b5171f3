"""The ``ChunkStore`` contract (ingest/store/base.py), run against every adapter: the in-memory store,
embedded Chroma and the query snapshot (read side). Same chunks in, same answers out, filters included."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ingest.store.base import ChunkStore, Filter, ReadOnlyStoreError, all_ids, indexed_sources
from ingest.store.chroma import open_store, release_clients
from ingest.store.memory import MemoryChunkStore
from ingest.store.snapshot import SnapshotStore, open_snapshot_store, sync_snapshot
from ingest.store.stamp import read_stamp

DIM = 64


class WordHashEmbeddings:
    """Deterministic bag-of-words vectors: each word adds to a hashed coordinate (so shared words mean
    nearby vectors), plus a small per-text component so no two texts tie."""

    model_id = "test:word-hash-64"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        v = np.zeros(DIM, dtype=np.float64)
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            v[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIM] += 1.0
        v[int(hashlib.sha256(text.encode()).hexdigest(), 16) % DIM] += 0.01
        return (v / max(np.linalg.norm(v), 1e-12)).tolist()


CHUNKS = [  # id, source, text
    ("c01", "hr/pto.md", "Employees get 25 vacation days per year."),
    ("c02", "hr/pto.md", "Unused vacation days carry over until March."),
    ("c03", "hr/benefits.md", "The pension plan matches five percent."),
    ("c04", "hr/benefits.md", "Dental insurance covers two cleanings a year."),
    ("c05", "eng/oncall.md", "The pager rotation changes every Monday."),
    ("c06", "eng/oncall.md", "Acknowledge a page within five minutes."),
    ("c07", "eng/deploy/runbook.md", "Roll back a deploy with the release tool."),
    ("c08", "eng/deploy/runbook.md", "Deploys freeze on Fridays after noon."),
    ("c09", "handbook.md", "Expense reports need a manager's approval."),
    ("c10", "handbook.md", "The office opens at eight; zebra crossings at the car park."),
    ("c11", "hrx/notes.md", "Vacation requests go through the hrx portal."),
]


def metadata(cid: str, source: str, text: str) -> dict:
    return {"source": source, "root": "/docs", "title": source.rsplit("/", 1)[-1], "section": "",
            "chunk": int(cid[1:]), "text_sha": hashlib.sha256(text.encode()).hexdigest()[:32]}


def fill(store: ChunkStore, embeddings: WordHashEmbeddings) -> None:
    store.upsert([c for c, _, _ in CHUNKS], [t for _, _, t in CHUNKS], [metadata(*c) for c in CHUNKS],
                 embeddings.embed_documents([t for _, _, t in CHUNKS]))


@pytest.fixture(params=["memory", "chroma", "snapshot"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChunkStore]:
    embeddings = WordHashEmbeddings()
    if request.param == "memory":
        memory = MemoryChunkStore(embeddings)
        fill(memory, embeddings)
        yield memory
        return
    chroma = open_store(tmp_path / "index", embeddings, create=True)
    fill(chroma, embeddings)
    try:
        if request.param == "chroma":
            yield chroma
            return
        assert sync_snapshot(tmp_path / "index", chroma) is True
        snapshot = open_snapshot_store(tmp_path / "index", embeddings)
        assert isinstance(snapshot, SnapshotStore) and snapshot.serving_snapshot
        yield snapshot
        assert snapshot.serving_snapshot  # nothing in the test fell back to Chroma
    finally:
        release_clients()  # one Chroma system per test's folder would keep ~12 files open each


def brute_force(query: str, admitted: list[str] | None = None) -> list[tuple[str, float]]:
    embeddings = WordHashEmbeddings()
    q = np.asarray(embeddings.embed_query(query))
    scored = [(cid, 1.0 - float(np.dot(q, embeddings.embed_query(text)))) for cid, _, text in CHUNKS
              if admitted is None or cid in admitted]
    return sorted(scored, key=lambda pair: pair[1])


def test_it_is_a_chunk_store_with_the_model_and_dimension(store: ChunkStore) -> None:
    assert isinstance(store, ChunkStore)
    assert store.count() == len(CHUNKS)
    assert store.model_id == WordHashEmbeddings.model_id and store.dimension == DIM


def test_get_returns_what_was_asked_in_order(store: ChunkStore) -> None:
    got = store.get(["c05", "nope", "c01", "c05"], vectors=True)
    assert got.ids == ["c05", "c01"]
    assert got.texts == [CHUNKS[4][2], CHUNKS[0][2]]
    assert got.metadatas == [metadata(*CHUNKS[4]), metadata(*CHUNKS[0])]
    expected = WordHashEmbeddings().embed_documents([CHUNKS[4][2], CHUNKS[0][2]])
    assert np.allclose(np.asarray(got.vectors, dtype=np.float32), expected, atol=1e-6)
    bare = store.get(["c02"], texts=False, metadatas=False)
    assert bare.ids == ["c02"] and bare.texts is None and bare.metadatas is None and bare.vectors is None
    assert store.get([]).ids == []


@pytest.mark.parametrize("query", ["vacation days", "pager page rotation", "deploy release", "zebra"])
def test_nearest_is_the_exact_cosine_ranking(store: ChunkStore, query: str) -> None:
    expected = brute_force(query)
    exact = dict(expected)
    vector = WordHashEmbeddings().embed_query(query)
    hits = store.nearest(vector, 4)
    assert hits[0].id == expected[0][0]  # the query's words pick one chunk out
    # The distances are the exact ones, nearest first (chunks sharing no word tie: any order among them).
    assert np.allclose([h.distance for h in hits], [d for _, d in expected[:4]], atol=1e-5)
    assert np.allclose([h.distance for h in hits], [exact[h.id] for h in hits], atol=1e-5)
    first = next(c for c in CHUNKS if c[0] == hits[0].id)
    assert hits[0].text == first[2] and hits[0].metadata == metadata(*first)
    everything = store.nearest(vector, 50)  # k > count: all of them
    assert sorted(h.id for h in everything) == sorted(exact) and len(everything) == len(CHUNKS)
    assert store.nearest(vector, 0) == []


FILTERS = {
    "source": (Filter(equals={"source": "hr/pto.md"}), ["c01", "c02"]),
    "folder": (Filter(source_prefix="hr/"), ["c01", "c02", "c03", "c04"]),  # not hrx/
    "nested folder": (Filter(source_prefix="eng/deploy/"), ["c07", "c08"]),
    "any of": (Filter(any_of={"source": ["handbook.md", "eng/oncall.md"]}), ["c05", "c06", "c09", "c10"]),
    "both": (Filter(equals={"root": "/docs"}, source_prefix="hr/pto"), ["c01", "c02"]),
    "nothing": (Filter(equals={"source": "missing.md"}), []),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_filters_restrict_scan_nearest_and_lexical(store: ChunkStore, name: str) -> None:
    where, admitted = FILTERS[name]
    assert sorted(all_ids(store, where)) == admitted
    vector = WordHashEmbeddings().embed_query("vacation days")
    hits = store.nearest(vector, 3, filter=where)
    expected = brute_force("vacation days", admitted)[:3]
    assert {h.id for h in hits} <= set(admitted) and len(hits) == len(expected)
    assert np.allclose([h.distance for h in hits], [d for _, d in expected], atol=1e-5)
    lexical = store.lexical("vacation", filter=where)
    assert {cid for cid, _ in lexical.top(20)} == {"c01", "c02", "c11"} & set(admitted)


def test_lexical_finds_the_words(store: ChunkStore) -> None:
    hits = store.lexical("zebra crossings")
    assert [cid for cid, _ in hits.top(5)] == ["c10"]
    score, rank = hits.score_and_rank("c10")
    assert score > 0 and rank == 1
    assert hits.score_and_rank("c03") == (0.0, None)
    assert {cid for cid, _ in store.lexical("vacation").top(10)} == {"c01", "c02", "c11"}


def test_scan_pages_through_everything_once(store: ChunkStore) -> None:
    pages = list(store.scan(page_size=4, vectors=True))
    assert [len(p) for p in pages] == [4, 4, 3]
    ids = [cid for page in pages for cid in page.ids]
    assert sorted(ids) == sorted(c for c, _, _ in CHUNKS) and ids == all_ids(store)  # stable order
    for page in pages:
        assert len(page.texts) == len(page.metadatas) == len(page.vectors) == len(page.ids)
        for cid, text, meta in zip(page.ids, page.texts, page.metadatas):
            assert (meta["source"], text) == next((s, t) for c, s, t in CHUNKS if c == cid)
    assert indexed_sources(store) == {s for _, s, _ in CHUNKS}


def test_writes(store: ChunkStore) -> None:
    embeddings = WordHashEmbeddings()
    if store.read_only:
        with pytest.raises(ReadOnlyStoreError):
            store.upsert(["c99"], ["new"], [{"source": "new.md"}], [embeddings.embed_query("new")])
        with pytest.raises(ReadOnlyStoreError):
            store.delete(["c01"])
        assert store.count() == len(CHUNKS)
        return
    text = "Employees get 30 vacation days per year."
    store.upsert(["c01", "c99"], [text, "A brand new zebra chunk."],
                 [metadata("c01", "hr/pto.md", text), metadata("c99", "new/zebra.md", "A brand new zebra chunk.")],
                 embeddings.embed_documents([text, "A brand new zebra chunk."]))
    assert store.count() == len(CHUNKS) + 1 and store.get(["c01"]).texts == [text]
    assert store.nearest(embeddings.embed_query(text), 1)[0].id == "c01"
    assert {cid for cid, _ in store.lexical("zebra").top(5)} == {"c10", "c99"}
    store.delete(["c99", "c02", "never-there"])
    assert store.count() == len(CHUNKS) - 1 and store.get(["c99", "c02"]).ids == []
    assert "c02" not in [h.id for h in store.nearest(embeddings.embed_query("unused vacation days"), 20)]
    store.delete([])
    assert store.count() == len(CHUNKS) - 1


def test_a_write_to_chroma_makes_the_snapshot_step_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write through the Chroma adapter bumps kb's stamp first: an open snapshot reader stops
    serving the old copy (and answers from Chroma), a new reader does not use it at all."""
    from ingest.store import snapshot

    embeddings = WordHashEmbeddings()
    index_dir = tmp_path / "index"
    chroma = open_store(index_dir, embeddings, create=True)
    fill(chroma, embeddings)
    assert sync_snapshot(index_dir, chroma) is True and sync_snapshot(index_dir, chroma) is False
    reader = open_snapshot_store(index_dir, embeddings)
    before = read_stamp(index_dir)
    chroma.delete(["c10"])
    assert read_stamp(index_dir)["generation"] == before["generation"] + 1
    assert read_stamp(index_dir)["lineage"] == before["lineage"]
    assert open_snapshot_store(index_dir, embeddings) is None
    monkeypatch.setattr(snapshot, "RECHECK_SECONDS", 0.0)
    assert not reader.serving_snapshot and reader.count() == len(CHUNKS) - 1
    assert reader.lexical("zebra").top(5) == []
    assert sync_snapshot(index_dir, chroma) is True  # what the next kb ingest does
    assert reader.serving_snapshot and reader.count() == len(CHUNKS) - 1
