"""The chromadb-free query snapshot (ingest/store/snapshot.py): same answers as Chroma, never stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.rag.retrieval import build_retriever
from agent.settings import load_settings
from ingest.embeddings.local import LocalMiniLMEmbeddings
from ingest.errors import EmbeddingMismatchError
from ingest.store import snapshot
from ingest.store.base import Filter, all_ids
from ingest.store.chroma import ChromaChunkStore, open_store

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
    store.upsert([f"new-{source}"], [text], [{"source": source, "title": "Zebra", "section": "", "chunk": 0,
                                              "root": "/elsewhere"}], [embeddings.embed_query(text)])


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
        assert isinstance(fast.store, snapshot.SnapshotStore) and isinstance(slow.store, ChromaChunkStore)
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
    total = slow.count()
    for question in QUESTIONS:
        vector = embeddings.embed_query(question)
        a = fast.nearest(vector, total)
        b = slow.nearest(vector, total)
        assert [h.id for h in a] == [h.id for h in b]
        assert np.allclose([h.distance for h in a], [h.distance for h in b], atol=1e-5)
        assert [(h.text, h.metadata) for h in a] == [(h.text, h.metadata) for h in b]


@pytest.mark.slow
def test_store_reads_match_chroma(indexed: Path, embeddings) -> None:
    fast = snapshot.open_snapshot_store(indexed, embeddings)
    slow = open_store(indexed, embeddings)
    assert fast.count() == slow.count() > 3
    assert fast.model_id == slow.model_id == embeddings.model_id and fast.dimension == slow.dimension == 384
    ids = all_ids(slow)
    assert [i for page in fast.scan(page_size=4, texts=False, metadatas=False) for i in page.ids] == ids
    some = ids[::3] + ["no-such-id"]
    a = fast.get(some, vectors=True)
    b = slow.get(some, vectors=True)
    assert a.ids == b.ids == ids[::3] and a.texts == b.texts and a.metadatas == b.metadatas
    assert np.allclose(np.asarray(a.vectors), np.asarray(b.vectors), atol=1e-6)
    # Filters are served by the snapshot itself, with Chroma's answers.
    source = b.metadatas[0]["source"]
    for where in (Filter(equals={"source": source}), Filter(source_prefix=source.split("/")[0] + "/")):
        assert all_ids(fast, where) == all_ids(slow, where) != []
        vector = embeddings.embed_query("vacation days")
        assert [h.id for h in fast.nearest(vector, 3, filter=where)] == [h.id for h in slow.nearest(vector, 3, filter=where)]


@pytest.mark.slow
def test_a_changed_index_is_never_served_stale(index_copy: Path, embeddings) -> None:
    assert snapshot.open_snapshot_store(index_copy, embeddings) is not None
    _add_chunk(index_copy, embeddings, "Zebra crossings: staff must use the zebra crossing at the car park.")
    assert snapshot.open_snapshot_store(index_copy, embeddings) is None  # Chroma moved on
    retriever = build_retriever(load_settings(), k=3, mode="dense")
    assert isinstance(retriever.store, ChromaChunkStore)
    assert retriever.invoke("zebra crossing at the car park")[0].metadata["source"] == "new/zebra.md"
    # The next ingest (here: its last step) publishes a snapshot matching Chroma again.
    assert snapshot.sync_snapshot(index_copy, open_store(index_copy, embeddings)) is True
    assert snapshot.sync_snapshot(index_copy, open_store(index_copy, embeddings)) is False  # up to date
    retriever = build_retriever(load_settings(), k=3, mode="dense")
    assert isinstance(retriever.store, snapshot.SnapshotStore)
    assert retriever.invoke("zebra crossing at the car park")[0].metadata["source"] == "new/zebra.md"


@pytest.mark.slow
def test_a_long_lived_reader_follows_changes(index_copy: Path, embeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    retriever = build_retriever(load_settings(), k=3, mode="dense")
    assert isinstance(retriever.store, snapshot.SnapshotStore)
    before = retriever.store.count()
    _add_chunk(index_copy, embeddings, "Zebra crossings: staff must use the zebra crossing at the car park.")
    monkeypatch.setattr(snapshot, "RECHECK_SECONDS", 0.0)
    assert retriever.store.count() == before + 1 and not retriever.store.serving_snapshot  # now answered by Chroma
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
        return fp if len(calls) == 1 else {**fp, "generation": fp["generation"] + 1}

    monkeypatch.setattr(snapshot, "fingerprint", moving)
    assert snapshot.sync_snapshot(index_copy, open_store(index_copy, embeddings)) is False
    assert snapshot.read_state(index_copy) is None
    monkeypatch.setattr(snapshot, "fingerprint", real)
    assert snapshot.open_snapshot_store(index_copy, embeddings) is None
    assert isinstance(build_retriever(load_settings()).store, ChromaChunkStore)  # the regular path still works


def test_no_index_means_no_fast_path(tmp_path: Path) -> None:
    assert snapshot.fingerprint(tmp_path) is None
    assert snapshot.open_snapshot_store(tmp_path, LocalMiniLMEmbeddings()) is None
    assert snapshot.open_snapshot_store(tmp_path, LocalMiniLMEmbeddings(), chroma_url="http://localhost:8000") is None
