"""The local embedding engine (ONNX Runtime, ingest/embeddings/onnx_encoder.py) on the real all-MiniLM-L6-v2
weights, against sentence-transformers' own vectors for the same weights (tests/assets/minilm-reference.json,
written by bench/minilm_reference.py), so no torch is needed here."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from ingest.embeddings import onnx_encoder
from ingest.embeddings.local import LOCAL_MODEL_ID, LocalEmbeddings, LocalMiniLMEmbeddings
from ingest.embeddings.weights import MINILM_SHA256, minilm_path
from ingest.errors import IngestError

FIXTURE = json.loads((Path(__file__).parent.parent / "assets" / "minilm-reference.json").read_text("utf-8"))
ITEMS = FIXTURE["items"]
TEXTS = [item["text"] for item in ITEMS]
REFERENCE = np.array([item["vector"] for item in ITEMS], dtype=np.float32)
N_QUERIES = FIXTURE["queries"]


@pytest.fixture(scope="module")
def encoder() -> onnx_encoder.OnnxEncoder:
    return onnx_encoder.load_encoder(minilm_path(), sha256=MINILM_SHA256, threads=2)


@pytest.fixture(scope="module")
def ours(encoder) -> np.ndarray:
    return encoder.encode(TEXTS)


def test_the_fixture_is_for_these_weights() -> None:
    assert FIXTURE["sha256"] == MINILM_SHA256 and FIXTURE["model"] in LOCAL_MODEL_ID
    assert len(ITEMS) >= 20 and max(len(item["ids"]) for item in ITEMS) == FIXTURE["max_seq_length"] == 256


def test_vectors_match_sentence_transformers(ours) -> None:
    cosine = (ours * REFERENCE).sum(axis=1) / np.linalg.norm(REFERENCE, axis=1)
    assert ours.shape == REFERENCE.shape == (len(TEXTS), 384)
    assert cosine.min() >= 0.999, dict(zip(TEXTS, cosine.round(6)))
    assert np.abs(ours - REFERENCE).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_token_ids_match_sentence_transformers_including_truncation(encoder) -> None:
    assert encoder.config.max_tokens == FIXTURE["max_seq_length"]
    assert encoder.tokenize(TEXTS) == [item["ids"] for item in ITEMS]


def test_same_nearest_neighbours_as_the_reference(ours) -> None:
    """What retrieval depends on: each query's nearest passage, and each text's nearest other text."""
    passages = slice(5, len(TEXTS) - N_QUERIES)  # the non-trivial texts, queries excluded
    queries = slice(len(TEXTS) - N_QUERIES, None)
    ref_top = np.argsort(-(REFERENCE[queries] @ REFERENCE[passages].T), axis=1)[:, :3]
    our_top = np.argsort(-(ours[queries] @ ours[passages].T), axis=1)[:, :3]
    assert (ref_top == our_top).all()
    ref_sim, our_sim = REFERENCE @ REFERENCE.T, ours @ ours.T
    np.fill_diagonal(ref_sim, -2)
    np.fill_diagonal(our_sim, -2)
    assert (ref_sim.argmax(axis=1) == our_sim.argmax(axis=1)).all()


def test_batches_equal_single_texts(encoder) -> None:
    """Padding inside a batch changes nothing: each text gets the vector it gets alone."""
    together = encoder.encode(TEXTS, batch_size=7)
    alone = np.stack([encoder.encode([text])[0] for text in TEXTS])
    assert np.abs(together - alone).max() < 1e-5
    assert encoder.encode([]).shape == (0, 384)


def test_text_past_the_token_limit_is_ignored(encoder) -> None:
    base = "Deploys roll back automatically when error rates exceed 2% for five minutes. " * 30
    assert len(encoder.tokenize([base])[0]) == 256
    a, b = encoder.encode([base, base + " and then something entirely different about parental leave"])
    assert np.abs(a - b).max() == 0.0
    c = encoder.encode([base[:200]])[0]
    assert float(a @ c) < 0.9999  # not all texts look alike: the first 256 tokens do count


def test_a_busy_process_swaps_in_prepacked_weights_with_equal_vectors() -> None:
    fresh = onnx_encoder.OnnxEncoder(minilm_path(), threads=1)
    first = fresh.encode(TEXTS[:3])
    assert not fresh._prepacked
    for _ in range(onnx_encoder.PREPACK_AFTER):
        fresh.encode([TEXTS[0]])
    assert fresh._prepacked
    assert np.abs(fresh.encode(TEXTS[:3]) - first).max() < 1e-5


def test_query_and_document_vectors_are_the_same() -> None:
    embeddings = LocalMiniLMEmbeddings()
    assert embeddings.model_id == LOCAL_MODEL_ID
    query = np.array(embeddings.embed_query(TEXTS[0]))
    document = np.array(embeddings.embed_documents([TEXTS[0], TEXTS[5]])[0])
    assert isinstance(embeddings.embed_query("x")[0], float)
    assert np.abs(query - document).max() < 1e-5
    assert np.abs(query - REFERENCE[0]).max() < 1e-4
    assert embeddings.embed_documents([]) == []


def test_threads_share_one_engine() -> None:
    """kb serve embeds questions from many threads at once: same results as one by one."""
    embeddings = LocalMiniLMEmbeddings()
    serial = [embeddings.embed_query(text) for text in TEXTS[:8]]
    results: dict[int, list[float]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = embeddings.embed_query(TEXTS[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert all(np.abs(np.array(results[i]) - np.array(serial[i])).max() < 1e-6 for i in range(8))


def test_unknown_model_is_refused() -> None:
    with pytest.raises(IngestError, match="unknown local embedding model"):
        LocalEmbeddings("sentence-transformers/not-registered")


def test_tampered_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the model with one byte of its weights flipped is refused before ONNX Runtime sees it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(minilm_path(), model)
    weights = model / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x01]))
    sessions: list[object] = []
    monkeypatch.setattr(onnx_encoder, "OnnxEncoder", lambda *a, **k: sessions.append(a))
    with pytest.raises(IngestError, match="do not match all-MiniLM-L6-v2"):
        LocalMiniLMEmbeddings(model_dir=model).embed_query("vacation")
    with pytest.raises(IngestError, match="do not match all-MiniLM-L6-v2"):
        LocalMiniLMEmbeddings(model_dir=model).embed_documents(["vacation"])
    assert sessions == []


def test_works_where_langchain_expects_embeddings() -> None:
    """LocalEmbeddings implements LangChain's Embeddings interface without subclassing it (so
    ``kb search`` never imports langchain_core): a LangChain vector store runs on it, sync and async."""
    import asyncio

    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(embedding=LocalMiniLMEmbeddings())
    store.add_texts(["Employees get 25 vacation days a year.", "The VPN needs a hardware token."])
    assert store.similarity_search("how much paid time off?", k=1)[0].page_content.startswith("Employees")
    found = asyncio.run(store.asimilarity_search("remote network access", k=1))
    assert "VPN" in found[0].page_content
