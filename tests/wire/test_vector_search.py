"""Databricks Vector Search as the index (ingest/store/vector_search.py), through the real databricks-sdk
client against the loopback server of tests/vector_search_stub.py (the documented REST API)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.rag.retrieval import KnowledgeRetriever
from ingest.errors import IndexUnusableError, KbError, UsageError
from ingest.store.base import Filter, ReadOnlyStoreError
from ingest.store.chroma import open_store, release_clients
from ingest.store.vector_search import (
    DELETE_KEYS,
    SCAN_PAGE,
    VectorSearchConfig,
    open_vector_store,
)
from ingest.sync.job import ingest
from ingest.sync.records import Records
from tests.corpus import write_corpus
from tests.vector_search_stub import VectorSearchStub
from tests.wire.test_sync import HashEmbeddings, vector

INDEX = "main.kb.chunks"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def vs():
    with VectorSearchStub() as stub:
        yield stub


def client(stub: VectorSearchStub):
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    return WorkspaceClient(config=Config(host=stub.host_url, token=stub.token, retry_timeout_seconds=30))


def config(**kw) -> VectorSearchConfig:
    return VectorSearchConfig(index=INDEX, endpoint="kb-endpoint", poll_seconds=0.01, backoff_seconds=0.01, **kw)


def run(paths, index_dir: Path, stub: VectorSearchStub, embeddings=None, **kw):
    notices: list[str] = []
    summary = ingest([Path(p) for p in paths], index_dir, embeddings or HashEmbeddings(), vector_search=config(),
                     workspace=lambda: client(stub), notice=notices.append, **kw)
    summary.notices = notices
    return summary


def expected_ids(index_dir: Path) -> set[str]:
    records = Records(index_dir, collection=f"databricks:{INDEX}")
    try:
        return {i for root in records.roots() for i in records.expected_ids(root)}
    finally:
        records.close()


def test_ingest_creates_the_endpoint_and_index_then_syncs_incrementally(vs, tmp_path):
    vs.endpoint_online_after = 2
    vs.index_ready_after = 2
    corpus = write_corpus(tmp_path / "docs")
    index_dir = tmp_path / "index"

    first = run([corpus], index_dir, vs)
    assert any("ONLINE" in line for line in first.notices), first.notices  # waited, with progress
    assert any("ready" in line for line in first.notices), first.notices
    created = vs.calls("/vector-search/indexes", "POST")[0][3]
    assert created["index_type"] == "DIRECT_ACCESS" and created["primary_key"] == "id"
    assert created["direct_access_index_spec"]["embedding_vector_columns"] == [{"name": "vector", "embedding_dimension": 32}]
    rows = vs.rows(INDEX)
    assert first.added == 5 and set(rows) == expected_ids(index_dir)
    row = next(r for r in rows.values() if r["source"] == "hr/pto.md")
    assert row["root"] == str(corpus.resolve()) and row["title"] and isinstance(row["chunk"], int)
    assert json.loads(row["metadata"])["text_sha"] == row["text_sha"]

    upserts = len(vs.calls("/upsert-data"))
    again = run([corpus], index_dir, vs)
    assert (again.unchanged, again.chunks_embedded) == (5, 0) and len(vs.calls("/upsert-data")) == upserts

    (corpus / "hr" / "pto.md").write_text("# PTO\n\nEveryone gets 40 days of paid time off.\n", encoding="utf-8")
    (corpus / "it" / "faq.txt").rename(corpus / "it" / "questions.txt")  # a rename reuses the stored vectors
    (corpus / "eng" / "oncall.md").unlink()
    embeddings = HashEmbeddings()
    third = run([corpus], index_dir, vs, embeddings)
    assert (third.changed, third.added, third.deleted) == (1, 1, 2)
    assert third.chunks_reused > 0 and all("VPN" not in t or "40 days" in t for call in embeddings.calls for t in call)
    rows = vs.rows(INDEX)
    assert set(rows) == expected_ids(index_dir)  # no stale rows, none missing
    assert not any(r["source"] in ("eng/oncall.md", "it/faq.txt") for r in rows.values())
    assert any("40 days" in r["text"] for r in rows.values())

    dry = ingest([corpus], index_dir, None, dry_run=True, vector_search=config(), workspace=lambda: client(vs))
    assert dry.dry_run and dry.added == dry.changed == dry.deleted == 0


def test_10k_chunks_are_written_in_batches_within_the_limits(vs, tmp_path):
    corpus = tmp_path / "big"
    corpus.mkdir()
    for f in range(20):  # 20 files x 500 one-line records = 10,000 chunks
        lines = [json.dumps({"id": f * 1000 + i, "text": f"record {f}-{i} " + "lorem ipsum " * 120}) for i in range(500)]
        (corpus / f"part{f:02}.jsonl").write_text("\n".join(lines), encoding="utf-8")
    vs.max_upsert_rows, vs.max_upsert_bytes = 1000, 10 * 1024 * 1024  # the service's limits (stub-enforced)
    index_dir = tmp_path / "index"
    started = time.perf_counter()
    summary = run([corpus], index_dir, vs, batch_size=2000)
    rows = vs.rows(INDEX)
    assert summary.chunks_embedded >= 10_000 and len(rows) == summary.chunks_total == summary.chunks_embedded
    upserts = vs.calls("/upsert-data")
    assert len(upserts) >= 10 and all(len(json.loads(c[3]["inputs_json"])) <= 500 and c[4] <= 10 * 1024 * 1024
                                      for c in upserts)
    for part in range(3):  # drop 3 files: their chunks are deleted within the key limit per request
        (corpus / f"part{part:02}.jsonl").unlink()
    after = run([corpus], index_dir, vs)
    deletes = vs.calls("/delete-data", "DELETE")
    assert after.deleted == 3 and deletes and all(len(c[2]["primary_keys"]) <= DELETE_KEYS for c in deletes)
    assert all(c[3]["num_results"] <= SCAN_PAGE for c in vs.calls("/scan"))
    assert set(vs.rows(INDEX)) == expected_ids(index_dir)
    assert time.perf_counter() - started < 120


def test_dense_top5_of_the_gold_questions_match_chroma(vs, tmp_path):
    knowledge = ROOT / "knowledge"
    questions = [json.loads(line)["question"] for line in (ROOT / "eval" / "knowledge-gold.jsonl").read_text().splitlines()
                 if line.strip()]
    chroma_dir, vs_dir = tmp_path / "chroma", tmp_path / "vs"
    ingest([knowledge], chroma_dir, HashEmbeddings())
    run([knowledge], vs_dir, vs)
    chroma = open_store(chroma_dir, HashEmbeddings())
    remote = open_vector_store(client(vs), config(), HashEmbeddings())
    try:
        assert remote.count() == chroma.count() > 50
        for question in questions:
            ours = KnowledgeRetriever(store=remote, k=5, mode="dense").invoke(question)
            theirs = KnowledgeRetriever(store=chroma, k=5, mode="dense").invoke(question)
            assert [d.id for d in ours] == [d.id for d in theirs], question
            assert [d.metadata["dense_score"] for d in ours] == pytest.approx([d.metadata["dense_score"] for d in theirs],
                                                                           abs=1e-3)
    finally:
        release_clients()
    queries = vs.calls("/query")
    assert queries and all(c[3]["query_type"] == "ANN" and len(c[3]["query_vector"]) == 32 for c in queries[-5:])


def test_modes_and_filters_map_to_query_types_and_filters_json(vs, tmp_path):
    run([write_corpus(tmp_path / "docs")], tmp_path / "index", vs)
    store = open_vector_store(client(vs), config(), HashEmbeddings())
    hybrid = KnowledgeRetriever(store=store, k=3, mode="hybrid").invoke("paid time off")
    assert hybrid and vs.calls("/query")[-1][3]["query_type"] == "HYBRID"
    assert all(d.metadata["fused_score"] is not None and d.metadata["dense_score"] is not None for d in hybrid)
    bm25 = KnowledgeRetriever(store=store, k=3, mode="bm25").invoke("VPN")
    assert vs.calls("/query")[-1][3]["query_type"] == "FULL_TEXT" and "vpn" in bm25[0].page_content.lower()

    hits = store.nearest(vector("vpn"), 50, filter=Filter(equals={"source": "it/vpn.html"}))
    assert hits and {h.metadata["source"] for h in hits} == {"it/vpn.html"}
    assert json.loads(vs.calls("/query")[-1][3]["filters_json"]) == {"source": "it/vpn.html"}
    prefixed = store.nearest(vector("x"), 50, filter=Filter(source_prefix="it/"))
    assert prefixed and all(h.metadata["source"].startswith("it/") for h in prefixed)
    readable = store.nearest(vector("x"), 50, filter=Filter(readable_by=frozenset({"nobody-group"})))
    assert all("nobody-group" in (h.metadata.get("access") or []) or "*" in (h.metadata.get("access") or [])
               for h in readable)  # never a chunk the caller may not read

    vs.full_text = False
    with pytest.raises(UsageError) as caught:
        KnowledgeRetriever(store=store, k=3, mode="bm25").invoke("VPN")
    assert "--mode bm25" in caught.value.message and "dense" in (caught.value.hint or "")


def test_429_with_retry_after_and_5xx_are_retried(vs, tmp_path):
    store = open_vector_store(client(vs), config(), HashEmbeddings(), create=True)
    vs.throttle("/upsert-data", 1, status=429, retry_after=1)
    vs.throttle("/upsert-data", 2, status=500, code="INTERNAL_ERROR")
    started = time.perf_counter()
    store.upsert(["a"], ["alpha"], [{"source": "a.md", "root": "/r", "text_sha": "x", "chunk": 0}], [vector("a")])
    assert time.perf_counter() - started >= 1.0  # Retry-After honoured
    assert len(vs.calls("/upsert-data")) == 4 and set(vs.rows(INDEX)) == {"a"}
    vs.throttle("/query", 10, status=500, code="INTERNAL_ERROR")
    with pytest.raises(IndexUnusableError) as caught:
        store.nearest(vector("a"), 3)
    assert "\n" not in caught.value.message and INDEX in caught.value.message


def test_read_only_delta_sync_index_with_its_own_column_names(vs, tmp_path):
    columns = {"chunk_id": "string", "content": "string", "url": "string", "doc_title": "string", "emb": "array<float>"}
    index = vs.add_delta_sync_index(INDEX, "kb-endpoint", columns=columns, dimension=32, vector_column="emb",
                                    primary_key="chunk_id")
    for i, text in enumerate(["The VPN needs a hardware token.", "Expenses are filed monthly.", "On-call rotates weekly."]):
        index.rows[f"c{i}"] = {"chunk_id": f"c{i}", "content": text, "url": f"https://wiki/{i}", "doc_title": f"Doc {i}",
                               "emb": vector(text)}
    names = {"id": "chunk_id", "text": "content", "source": "url", "title": "doc_title", "vector": "emb"}
    with pytest.raises(UsageError, match="KB_VS_READ_ONLY"):
        open_vector_store(client(vs), config(columns=names), HashEmbeddings(), create=True)
    store = open_vector_store(client(vs), config(columns=names, read_only=True), HashEmbeddings())
    found = KnowledgeRetriever(store=store, k=1, mode="dense").invoke("The VPN needs a hardware token.")
    assert found[0].id == "c0" and found[0].metadata["source"] == "https://wiki/0"
    assert found[0].metadata["title"] == "Doc 0" and found[0].metadata["dense_score"] == pytest.approx(1.0)
    with pytest.raises(ReadOnlyStoreError):
        store.upsert(["x"], ["x"], [{}], [vector("x")])
    assert not vs.calls("/upsert-data")


def test_missing_rights_say_what_to_create(vs, tmp_path):
    vs.forbid_create = True
    with pytest.raises(IndexUnusableError) as caught:
        open_vector_store(client(vs), config(), HashEmbeddings(), create=True)
    assert "KB_VS_ENDPOINT=kb-endpoint" in caught.value.message
    assert INDEX in caught.value.hint and "dimension 32" in caught.value.hint and "primary key id" in caught.value.hint


def test_settings_errors_are_one_line_naming_the_variable(env, kb, monkeypatch, vs, tmp_path):
    monkeypatch.setenv("KB_VECTOR_STORE", "databricks")
    result = kb("search", "vpn")
    assert result.exit_code != 0 and "KB_VS_INDEX" in result.output
    monkeypatch.setenv("KB_VS_INDEX", "not-a-full-name")
    result = kb("search", "vpn")
    assert result.exit_code != 0 and "KB_VS_INDEX" in result.output and len(result.output.strip().splitlines()) <= 2
    monkeypatch.setenv("KB_VS_INDEX", INDEX)
    monkeypatch.setenv("DATABRICKS_HOST", vs.host_url)
    monkeypatch.setenv("DATABRICKS_TOKEN", vs.token)
    corpus = write_corpus(tmp_path / "docs")
    result = kb("ingest", str(corpus))
    assert result.exit_code != 0 and "KB_VS_ENDPOINT" in result.output
    result = kb("search", "vpn")
    assert result.exit_code != 0 and "KB_VS_INDEX" in result.output and "kb ingest" in result.output


def test_kb_ingest_and_search_through_the_cli(env, kb, monkeypatch, vs, tmp_path):
    for name, value in {"KB_VECTOR_STORE": "databricks", "KB_VS_INDEX": INDEX, "KB_VS_ENDPOINT": "kb-endpoint",
                        "DATABRICKS_HOST": vs.host_url, "DATABRICKS_TOKEN": vs.token}.items():
        monkeypatch.setenv(name, value)
    corpus = write_corpus(tmp_path / "docs")
    result = kb("ingest", str(corpus), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["added"] == 5 and summary["index"] == f"Vector Search index {INDEX}"
    assert len(vs.rows(INDEX)) == summary["chunks_total"] > 0
    result = kb("search", "how do I connect to the VPN", "--mode", "dense", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["source"] == "it/vpn.html"
    assert vs.token not in result.output
