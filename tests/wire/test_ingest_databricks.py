"""``kb ingest`` with Databricks embeddings at volume, against the loopback serving server:
batching, bounded concurrency, 429 back-off, and a permanent failure that keeps what was done."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from ingest.embeddings.databricks import DatabricksEmbeddings
from ingest.errors import RemoteServerError
from ingest.sync.records import NoRecords
from ingest.sync.plan import make_plan
from tests.conftest import CANARY, KbRunner
from tests.databricks_stub import DatabricksStub, Embeddings, Error


def make_docs(root: Path, files: int = 10, poison: int | None = None) -> Path:
    for i in range(files):
        folder = root / f"area-{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        parts = [f"Area {i} part {p}: " + " ".join(f"w{i}x{p}x{w}" for w in range(90)) for p in range(3)]
        if i == poison:
            parts[1] = "POISON " + parts[1]
        (folder / f"doc-{i:02d}.md").write_text(f"# Doc {i}\n\n" + "\n\n".join(parts) + "\n", encoding="utf-8")
    return root


def index_ids(index_dir: Path) -> tuple[set[str], list[tuple]]:
    from ingest.store.chroma import connect

    got = connect(index_dir).get_collection("kb_chunks").get(include=["metadatas", "embeddings"])
    assert all(len(v) == 16 for v in got["embeddings"])  # the stub's dimension
    return set(got["ids"]), [(m["source"], m["chunk"]) for m in got["metadatas"]]


@pytest.fixture
def volume(databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> DatabricksStub:
    monkeypatch.setenv("KB_EMBEDDINGS", "databricks")
    monkeypatch.setenv("KB_EMBEDDING_BATCH", "4")
    monkeypatch.setenv("KB_EMBEDDING_CONCURRENCY", "3")
    return databricks


def test_429s_and_a_500_back_off_without_losing_or_duplicating(volume: DatabricksStub, tmp_path: Path, kb: KbRunner) -> None:
    docs = make_docs(tmp_path / "docs")
    lock = threading.Lock()
    flight = {"now": 0, "peak": 0}

    def slow_success(body: dict) -> Embeddings:
        with lock:
            flight["now"] += 1
            flight["peak"] = max(flight["peak"], flight["now"])
        time.sleep(0.05)
        with lock:
            flight["now"] -= 1
        return Embeddings()

    volume.default_embeddings_responder = slow_success
    volume.enqueue_embeddings(Error(500, "INTERNAL_ERROR", "hiccup"))
    volume.enqueue_embeddings(*[Error(429, "REQUEST_LIMIT_EXCEEDED", "Slow down", headers={"Retry-After": "0.01"})
                                for _ in range(9)])  # more than KB_MAX_RETRIES=2 lets the client absorb
    result = kb("ingest", str(docs), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = {i for entry in make_plan([docs], NoRecords()).added for i in entry.ids}
    ids, places = index_ids(Path(summary["index"]))
    assert ids == expected and len(places) == len(set(places)) == summary["chunks_total"]
    assert summary["chunks_embedded"] == len(expected) and volume.pending_embeddings() == 0
    requests = volume.embedding_requests()
    assert all(len(body["input"]) <= 4 for body in requests)
    assert 2 <= flight["peak"] <= 3  # concurrent, and bounded by KB_EMBEDDING_CONCURRENCY
    assert all(body["usage_context"]["command"] == "ingest" for body in requests)
    again = json.loads(kb("ingest", str(docs), "--json").stdout)
    assert again["chunks_embedded"] == 0 and len(volume.embedding_requests()) == len(requests)


def test_a_permanent_failure_stops_cleanly_and_the_rerun_finishes(volume: DatabricksStub, tmp_path: Path, kb: KbRunner) -> None:
    docs = make_docs(tmp_path / "docs", files=12, poison=7)

    def poisoned(body: dict):
        if any("POISON" in text for text in body["input"]):
            return Error(500, "INTERNAL_ERROR", "model crashed on this input")
        return Embeddings()

    volume.default_embeddings_responder = poisoned
    failed = kb("ingest", str(docs))
    assert failed.exit_code == 4
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Databricks server error from serving endpoint")
    assert "chunks were written" in lines[0] and "run 'kb ingest' again to finish" in lines[0]
    index_dir = tmp_path / "index"
    present_before, _ = index_ids(index_dir)
    assert present_before  # what succeeded before the failure was kept

    volume.default_embeddings_responder = lambda body: Embeddings()
    volume.reset()
    result = kb("ingest", str(docs), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = {i for entry in make_plan([docs], NoRecords()).added for i in entry.ids}
    ids, places = index_ids(index_dir)
    assert ids == expected and len(places) == len(set(places))
    assert summary["chunks_embedded"] + summary["chunks_reused"] == len(expected - present_before)
    sent = [text for body in volume.embedding_requests() for text in body["input"]]
    assert len(sent) == len(set(sent)) == summary["chunks_embedded"]  # nothing embedded twice


def test_a_batch_too_large_for_the_endpoint_is_split(stub_server: DatabricksStub) -> None:
    stub_server.reset()
    embeddings = DatabricksEmbeddings(base_url=stub_server.base_url, api_key=CANARY,
                                      endpoint="databricks-gte-large-en", max_retries=0, batch_size=400)
    vectors = embeddings.embed_documents([f"text {i}" for i in range(400)])
    assert len(vectors) == 400 and embeddings.batch_size == 150  # the maximum the 400 error named
    sizes = [len(body["input"]) for body in stub_server.embedding_requests()]
    assert max(sizes) == 400 and sorted(sizes[1:]) == [100, 150, 150]  # refused once, then within the limit
    assert vectors[7] == embeddings.embed_documents(["text 7"])[0]  # order kept


def test_wrong_number_of_vectors_is_an_error_not_a_silent_loss(stub_server: DatabricksStub) -> None:
    stub_server.reset()

    def short(body: dict) -> dict:
        return Embeddings(vectors=[[0.1] * 16])

    stub_server.enqueue_embeddings(short)
    embeddings = DatabricksEmbeddings(base_url=stub_server.base_url, api_key=CANARY,
                                      endpoint="databricks-gte-large-en", max_retries=0)
    with pytest.raises(RemoteServerError, match="returned 1 embeddings for 3 inputs"):
        embeddings.embed_documents(["a", "b", "c"])
