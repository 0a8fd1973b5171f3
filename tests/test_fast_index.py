"""The chromadb-free query snapshot (ingest/snapshot.py): same answers as Chroma, never stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.retrieval import build_retriever
from agent.settings import load_settings
from ingest import snapshot
from ingest.embeddings import LocalMiniLMEmbeddings
from ingest.errors import EmbeddingMismatchError
from ingest.store import KbChroma, open_store

QUESTIONS = [
    "How many vacation days do I get?",
    "Who is on call and how fast must pages be acknowledged?",
    "How do I connect to the VPN?",
    "expense reports approval limit",
    "carry over unused days",
    "password reset",
    "zebra unicorn spaceship",  # nothing relevant: still the same ranking
]


@pytest.fixture(scope="module")
def embeddings() -> LocalMiniLMEmbeddings:
    return LocalMiniLMEmbeddings()


@pytest.fixture
def index_copy(built_index: Path, tmp_path: Path, env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the test index that a test may change."""
    target = tmp_path / "index-copy"
    shutil.copytree(built_index, target)
    monkeypatch.setenv("KB_INDEX_DIR", str(target))
    return target


def _retrievers(index_dir: Path, embeddings, **kwargs):
    settings = load_settings(index_dir=index_dir)
    fast = build_retriever(settings, **kwargs)
    slow = build_retriever(settings, **kwargs)
    slow.store = open_store(index_dir, embeddings)
    return fast, slow


def _add_chunk(index_dir: Path, embeddings, text: str, source: str = "new/zebra.md") -> None:
    store = open_store(index_dir, embeddings)
    store._collection.add(
        ids=[f"new-{source}"], embeddings=[embeddings.embed_query(text)], documents=[text],
        metadatas=[{"source": source, "title": "Zebra", "section": "", "chunk": 0, "root": "/elsewhere"}],
    )


@pytest.mark.slow
def test_ingest_writes_a_snapshot_that_queries_use(indexed: Path, embeddings) -> None:
    state = snapshot.read_state(indexed)
    assert state is not None and state["fingerprint"] == snapshot.fingerprint(indexed)
    store = snapshot.open_snapshot_store(indexed, embeddings)
    assert isinstance(store, snapshot.SnapshotStore)
    assert type(build_retriever(load_settings()).store) is snapshot.SnapshotStore


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_same_results_as_chroma(indexed: Path, embeddings, mode: str) -> None:
    for k in (1, 3, 8):
        fast, slow = _retrievers(indexed, embeddings, k=k, mode=mode)
        assert isinstance(fast.store, snapshot.SnapshotStore) and isinstance(slow.store, KbChroma)
        for question in QUESTIONS:
            a, b = fast.invoke(question), slow.invoke(question)
            assert [(d.id, d.page_content) for d in a] == [(d.id, d.page_content) for d in b], question
            for x, y in zip(a, b):
                assert set(x.metadata) == set(y.metadata)
                for key, value in y.metadata.items():
                    if isinstance(value, float):
                        assert x.metadata[key] == pytest.approx(value, abs=2e-4), key
                    else:
                        assert x.metadata[key] == value, key


@pytest.mark.slow
def test_dense_neighbours_and_distances_match(indexed: Path, embeddings) -> None:
    fast = snapshot.open_snapshot_store(indexed, embeddings)
    slow = open_store(indexed, embeddings)
    total = slow._collection.count()
    for question in QUESTIONS:
        vector = embeddings.embed_query(question)
        a = fast.similarity_search_by_vector_with_relevance_scores(vector, k=total)
        b = slow.similarity_search_by_vector_with_relevance_scores(vector, k=total)
        assert [d.id for d, _ in a] == [d.id for d, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
        assert [d.metadata for d, _ in a] == [d.metadata for d, _ in b]


@pytest.mark.slow
def test_collection_reads_match_chroma(indexed: Path, embeddings) -> None:
    fast = snapshot.open_snapshot_store(indexed, embeddings)._collection
    slow = open_store(indexed, embeddings)._collection
    assert fast.count() == slow.count() > 3
    assert fast.metadata["kb_embedding"] == slow.metadata["kb_embedding"]
    everything = slow.get(include=["documents", "metadatas"])
    ids = everything["ids"]
    paged = []
    for offset in range(0, len(ids), 4):
        paged.extend(fast.get(include=[], limit=4, offset=offset)["ids"])
    assert paged == ids
    some = ids[::3] + ["no-such-id"]
    a = fast.get(ids=some, include=["documents", "metadatas", "embeddings"])
    b = slow.get(ids=some, include=["documents", "metadatas", "embeddings"])
    mine = dict(zip(a["ids"], zip(a["documents"], a["metadatas"], a["embeddings"])))
    theirs = dict(zip(b["ids"], zip(b["documents"], b["metadatas"], b["embeddings"])))
    assert mine.keys() == theirs.keys() == set(ids[::3])
    for cid, (text, meta, vector) in theirs.items():
        assert mine[cid][0] == text and mine[cid][1] == meta
        assert np.allclose(mine[cid][2], vector, atol=1e-6)
    # A filter the snapshot does not serve is answered by Chroma itself.
    source = everything["metadatas"][0]["source"]
    assert sorted(fast.get(where={"source": source})["ids"]) == sorted(slow.get(where={"source": source})["ids"])


@pytest.mark.slow
def test_a_changed_index_is_never_served_stale(index_copy: Path, embeddings) -> None:
    assert snapshot.open_snapshot_store(index_copy, embeddings) is not None
    _add_chunk(index_copy, embeddings, "Zebra crossings: staff must use the zebra crossing at the car park.")
    assert snapshot.open_snapshot_store(index_copy, embeddings) is None  # Chroma moved on
    retriever = build_retriever(load_settings(), k=3, mode="dense")
    assert isinstance(retriever.store, KbChroma)
    assert retriever.invoke("zebra crossing at the car park")[0].metadata["source"] == "new/zebra.md"
    # The next ingest (here: its last step) publishes a snapshot matching Chroma again.
    assert snapshot.sync_snapshot(index_copy, open_store(index_copy, embeddings)._collection) is True
    assert snapshot.sync_snapshot(index_copy, open_store(index_copy, embeddings)._collection) is False  # up to date
    retriever = build_retriever(load_settings(), k=3, mode="dense")
    assert isinstance(retriever.store, snapshot.SnapshotStore)
    assert retriever.invoke("zebra crossing at the car park")[0].metadata["source"] == "new/zebra.md"


@pytest.mark.slow
def test_a_long_lived_reader_follows_changes(index_copy: Path, embeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    retriever = build_retriever(load_settings(), k=3, mode="dense")
    assert isinstance(retriever.store, snapshot.SnapshotStore)
    before = retriever.store._collection.count()
    _add_chunk(index_copy, embeddings, "Zebra crossings: staff must use the zebra crossing at the car park.")
    monkeypatch.setattr(snapshot, "RECHECK_SECONDS", 0.0)
    assert retriever.store._collection.count() == before + 1  # now answered by Chroma
    assert retriever.invoke("zebra crossing at the car park")[0].metadata["source"] == "new/zebra.md"


@pytest.mark.slow
def test_another_embedding_model_is_refused(indexed: Path) -> None:
    class Other(LocalMiniLMEmbeddings):
        model_id = "databricks:some-other-model"

    with pytest.raises(EmbeddingMismatchError, match="was built with local:sentence-transformers"):
        snapshot.open_snapshot_store(indexed, Other())


@pytest.mark.slow
def test_no_snapshot_published_if_chroma_changes_during_export(index_copy: Path, embeddings,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(snapshot.snapshot_dir(index_copy))
    real = snapshot.fingerprint
    calls = []

    def moving(index_dir: Path):
        calls.append(1)
        fp = real(index_dir)
        return fp if len(calls) == 1 else {**fp, "log_seq": (fp["log_seq"] or 0) + 1}

    monkeypatch.setattr(snapshot, "fingerprint", moving)
    assert snapshot.sync_snapshot(index_copy, open_store(index_copy, embeddings)._collection) is False
    assert snapshot.read_state(index_copy) is None
    monkeypatch.setattr(snapshot, "fingerprint", real)
    assert snapshot.open_snapshot_store(index_copy, embeddings) is None
    assert isinstance(build_retriever(load_settings()).store, KbChroma)  # the regular path still works


def test_no_index_means_no_fast_path(tmp_path: Path) -> None:
    assert snapshot.fingerprint(tmp_path) is None
    assert snapshot.open_snapshot_store(tmp_path, LocalMiniLMEmbeddings()) is None
    assert snapshot.open_snapshot_store(tmp_path, LocalMiniLMEmbeddings(), chroma_url="http://localhost:8000") is None
