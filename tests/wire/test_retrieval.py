"""Hybrid retrieval: fusion, BM25 tokenization, the BM25 index kept in sync by ingest, per-source
cap and near-duplicate removal. Fast: a fake embedding model, corpora written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from agent.rag.retrieval import KnowledgeRetriever, fuse_convex, fuse_rrf, is_relevant, best_relevance
from ingest.store.chroma import open_store
from ingest.store.lexical import LexicalIndex, lexical_dir, read_state, sync_lexical, tokenize
from ingest.sync.job import ingest


def fake_embeddings() -> DeterministicFakeEmbedding:
    fake = DeterministicFakeEmbedding(size=64)
    fake.__dict__["model_id"] = "fake:deterministic"
    return fake


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def sections(title: str, bodies: list[str]) -> str:
    return f"# {title}\n\n" + "\n\n".join(f"## Part {i}\n\n{body}" for i, body in enumerate(bodies, 1)) + "\n"


def retriever(index_dir: Path, **params) -> KnowledgeRetriever:
    return KnowledgeRetriever(store=open_store(index_dir, fake_embeddings()), **params)


# ---------------------------------------------------------------- pure functions


def test_rrf_fuses_ranks_by_hand() -> None:
    fused = fuse_rrf([["a", "b", "c"], ["b", "c", "d"]], k=60)
    assert [item for item, _ in fused] == ["b", "c", "a", "d"]
    scores = dict(fused)
    assert scores["b"] == pytest.approx((1 / 62 + 1 / 61) / (2 / 61))  # 0.99194
    assert scores["a"] == pytest.approx((1 / 61) / (2 / 61))  # 0.5: first in one ranking only
    weighted = dict(fuse_rrf([["a"], ["b"]], k=0, weights=[1.0, 0.5]))
    assert weighted == {"a": pytest.approx(1 / 1.5), "b": pytest.approx(0.5 / 1.5)}


def test_convex_fusion_by_hand() -> None:
    fused = fuse_convex({"a": 0.8, "b": 0.6, "c": 0.4}, {"a": 0.0, "b": 10.0, "c": 5.0}, alpha=0.75)
    # dense normalised a=1, b=.5, c=0; bm25 normalised a=0, b=1, c=.5
    assert fused == [("a", pytest.approx(0.75)), ("b", pytest.approx(0.625)), ("c", pytest.approx(0.125))]
    only_bm25 = fuse_convex({"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 3.0}, alpha=0.75)
    assert [item for item, _ in only_bm25] == ["b", "a"]  # equal cosines: BM25 decides


def test_tokenize_lowercases_stems_and_drops_fillers() -> None:
    assert tokenize("Rolling back the deploys, cost_center CC-4120") == ["roll", "back", "deploy", "cost", "center", "cc", "4120"]
    assert tokenize("What do I need to do?") == []


def test_lexical_index_scores_and_ranks() -> None:
    index = LexicalIndex.build(
        ["c1", "c2", "c3"],
        ["zebras graze", "the VPN gateway", "zebras and zebras again"],
        [{"source": "a.md", "title": "Animals"}, {"source": "it/vpn.md", "title": "VPN"}, None],
    )
    hits = index.search("zebra")
    assert [cid for cid, _ in hits.top(5)] == ["c3", "c1"]  # c2 shares no word: left out
    assert hits.score_and_rank("c3")[1] == 1 and hits.score_and_rank("c2") == (0.0, None)
    # the source path and title are indexed with the text
    assert [cid for cid, _ in index.search("animals").top(5)] == ["c1"]
    assert [cid for cid, _ in index.search("vpn").top(5)] == ["c2"]


def test_relevance_uses_the_best_cosine() -> None:
    from langchain_core.documents import Document

    docs = [Document("x", metadata={"dense_score": 0.2}), Document("y", metadata={"dense_score": 0.4})]
    assert best_relevance(docs) == 0.4
    assert is_relevant(docs, 0.3) and not is_relevant(docs, 0.5)
    assert is_relevant(docs, 0.0)  # no floor
    assert not is_relevant([], 0.0) and best_relevance([]) is None


# ---------------------------------------------------------------- the BM25 index follows ingest


def test_ingest_keeps_the_bm25_index_in_step(tmp_path: Path) -> None:
    docs = write(tmp_path / "docs", {
        "hr/leave.md": sections("Leave", ["Vacation is 20 days.", "Sick leave is unlimited."]),
        "it/vpn.md": sections("VPN", ["Use the gateway gw.example."]),
    })
    index_dir = tmp_path / "index"
    ingest([docs], index_dir, fake_embeddings())
    state = read_state(index_dir)
    assert state is not None and state["count"] == 3
    live = lexical_dir(index_dir) / state["dir"]
    assert live.is_dir() and len(json.loads((live / "ids.json").read_text())) == 3

    ingest([docs], index_dir, fake_embeddings())  # nothing changed: the index is not rebuilt
    assert read_state(index_dir) == state

    (docs / "it/vpn.md").write_text(sections("VPN", ["Use the gateway gw.example.", "Quokkas need the VPN too."]))
    ingest([docs], index_dir, fake_embeddings())
    changed = read_state(index_dir)
    assert changed["dir"] != state["dir"] and changed["count"] == 4
    assert not live.exists()  # the replaced build is removed
    found = retriever(index_dir, mode="bm25").invoke("quokkas")
    assert [d.metadata["source"] for d in found] == ["it/vpn.md"]

    (docs / "hr/leave.md").unlink()
    ingest([docs], index_dir, fake_embeddings())
    assert read_state(index_dir)["count"] == 2
    assert retriever(index_dir, mode="bm25").invoke("vacation sick leave") == []


def test_queries_work_without_a_bm25_index_and_ingest_restores_it(tmp_path: Path) -> None:
    import shutil

    docs = write(tmp_path / "docs", {"a.md": sections("Alpha", ["Wombats dig burrows."])})
    index_dir = tmp_path / "index"
    ingest([docs], index_dir, fake_embeddings())
    shutil.rmtree(lexical_dir(index_dir))  # an index built before BM25 existed
    found = retriever(index_dir, mode="hybrid").invoke("wombats")
    assert found and found[0].metadata["bm25_rank"] == 1
    assert not lexical_dir(index_dir).exists()  # queries never write
    ingest([docs], index_dir, fake_embeddings())
    assert read_state(index_dir)["count"] == 1


def test_sync_lexical_reports_whether_it_rebuilt(tmp_path: Path) -> None:
    docs = write(tmp_path / "docs", {"a.md": sections("Alpha", ["Wombats dig burrows."])})
    index_dir = tmp_path / "index"
    ingest([docs], index_dir, fake_embeddings())
    store = open_store(index_dir, fake_embeddings())
    assert sync_lexical(index_dir, store) is False
    (lexical_dir(index_dir) / "current.json").write_text("{not json")
    assert sync_lexical(index_dir, store) is True and read_state(index_dir)["count"] == 1


def test_a_long_lived_retriever_follows_a_reingest(tmp_path: Path) -> None:
    docs = write(tmp_path / "docs", {"a.md": sections("Alpha", ["Wombats dig burrows."])})
    index_dir = tmp_path / "index"
    ingest([docs], index_dir, fake_embeddings())
    reader = retriever(index_dir, mode="bm25")
    assert reader.invoke("platypus") == []
    write(docs, {"b.md": sections("Beta", ["A platypus lays eggs."])})
    ingest([docs], index_dir, fake_embeddings())
    assert [d.metadata["source"] for d in reader.invoke("platypus")] == ["b.md"]


# ---------------------------------------------------------------- selection


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One document that matches 'zebra' everywhere, two that mention it once, and an exact copy."""
    root = tmp_path_factory.mktemp("crowded")
    big = sections("Zebra handbook", [f"Zebra fact {i}: zebras zebras zebra stripes number {i}." for i in range(6)])
    write(root / "docs", {
        "big.md": big,
        "small.md": sections("Savanna", ["Lions, giraffes and one zebra share the savanna with many other animals."]),
        "third.md": sections("Zoo", ["The zoo keeps a zebra next to the elephants, the tigers and the bears."]),
        "copy/small.md": sections("Savanna", ["Lions, giraffes and one zebra share the savanna with many other animals."]),
    })
    index_dir = root / "index"
    ingest([root / "docs"], index_dir, fake_embeddings())
    return index_dir


def test_one_document_cannot_take_the_whole_top_k(crowded: Path) -> None:
    capped = retriever(crowded, mode="bm25", k=5, max_per_source=3).invoke("zebra")
    sources = [d.metadata["source"] for d in capped]
    assert sources.count("big.md") == 3
    assert {"small.md", "third.md"} <= set(sources) or {"copy/small.md", "third.md"} <= set(sources)
    uncapped = retriever(crowded, mode="bm25", k=5, max_per_source=0).invoke("zebra")
    assert [d.metadata["source"] for d in uncapped].count("big.md") == 5


def test_backfills_from_capped_documents_when_nothing_else_matches(crowded: Path) -> None:
    found = retriever(crowded, mode="bm25", k=8, max_per_source=1).invoke("zebra stripes number")
    assert len(found) == 8  # 3 distinct documents, then the capped chunks of big.md
    assert [d.metadata["rank"] for d in found] == list(range(1, 9))


def test_near_duplicate_chunks_are_dropped(crowded: Path) -> None:
    found = retriever(crowded, mode="bm25", k=10, max_per_source=0).invoke("lions giraffes savanna")
    texts = [d.page_content for d in found]
    assert sum("Lions, giraffes" in t for t in texts) == 1
    kept = retriever(crowded, mode="bm25", k=10, max_per_source=0, dedupe=False).invoke("lions giraffes savanna")
    assert sum("Lions, giraffes" in d.page_content for d in kept) == 2


def test_explain_data_on_every_hit(crowded: Path) -> None:
    for mode in ("dense", "bm25", "hybrid"):
        found = retriever(crowded, mode=mode, k=4).invoke("zebra stripes")
        assert found, mode
        for document in found:
            meta = document.metadata
            assert meta["mode"] == mode
            assert isinstance(meta["dense_score"], float) and -1 <= meta["dense_score"] <= 1
            assert meta["fused_score"] is None if mode != "hybrid" else 0 <= meta["fused_score"] <= 1
        scores = [d.metadata["score"] for d in found]
        assert scores == sorted(scores, reverse=True), mode
    bm25_first = retriever(crowded, mode="bm25", k=1).invoke("zebra stripes")[0].metadata
    assert bm25_first["bm25_rank"] == 1 and bm25_first["score"] == bm25_first["bm25_score"]
    assert bm25_first["page_support"] is None  # page support is the fused ranking's
    hybrid = retriever(crowded, mode="hybrid", k=4).invoke("zebra stripes")
    for document in hybrid:  # hybrid ranks by fused score + its page's support
        meta = document.metadata
        assert meta["score"] == pytest.approx(meta["fused_score"] + (meta["page_support"] or 0), abs=2e-4)


def test_mode_per_call_and_unknown_mode(crowded: Path) -> None:
    from agent.errors import UsageError

    shared = retriever(crowded, mode="dense", k=2)
    assert shared.invoke("zebra", mode="bm25")[0].metadata["mode"] == "bm25"
    with pytest.raises(UsageError, match="unknown search mode 'fuzzy'"):
        shared.invoke("zebra", mode="fuzzy")
