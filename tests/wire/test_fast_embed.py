"""The torch-free MiniLM encoder (ingest/embeddings/fast_embed.py) against sentence-transformers, and the
cached sha256 check of the weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ingest.embeddings import fast_embed, weights
from ingest.embeddings.local import LocalMiniLMEmbeddings
from ingest.embeddings.weights import minilm_path
from ingest.errors import IngestError

TEXTS = [
    "How many vacation days do I get?",
    "vacation",
    "",
    "   ",
    "a",
    "VPN setup on macOS: install the client, then sign in with SSO.\n\nIf it fails, reset your token.",
    "The on-call engineer acknowledges pages within 15 minutes; escalate to the secondary after 30.",
    "SELECT cost_center, SUM(amount) FROM expenses WHERE status = 'approved' GROUP BY 1;",
    "def handler(event):\n    return {'statusCode': 200, 'body': json.dumps(event)}",
    "Ünïcödé façade naïve café — “quotes”, ‘apostrophes’ and emoji 🚀🔥",
    "中文文本测试：嵌入模型应该处理汉字。",
    "Привет, как дела? Это тест на кириллице.",
    "Expense reports over $5,000 need VP approval (policy FIN-204, rev. 2024-03).",
    "gw-lis dbx-prod-eu-west-1 s3://bucket/path/to/delta_table",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "the quick brown fox jumps over the lazy dog",
    "word " * 400,  # longer than 256 word pieces: truncated like sentence-transformers
    "Deploys roll back automatically when error rates exceed 2% for five minutes. " * 12,
    "<p>HTML &amp; entities &lt;b&gt; survive</p>",
    "\t tabs\tand\nnewlines\r\nmixed ",
    "1234567890 3.14159 2.71828 1e-9",
    "Parental leave: 16 weeks fully paid for the primary caregiver, 8 for the secondary.",
]


@pytest.fixture(scope="module")
def encoder() -> fast_embed.MiniLMEncoder:
    return fast_embed.load_encoder(minilm_path())


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers itself (the per-process instance the index fixtures also use)."""
    return LocalMiniLMEmbeddings()._load()


@pytest.mark.slow
def test_vectors_match_sentence_transformers(encoder, reference) -> None:
    ours = encoder.encode(TEXTS)
    theirs = reference.encode(TEXTS, normalize_embeddings=True, show_progress_bar=False)
    cosine = (ours * theirs).sum(axis=1)
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    assert cosine.min() >= 0.999, dict(zip(TEXTS, cosine.round(6)))
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.slow
def test_tokens_match_sentence_transformers(encoder, reference) -> None:
    theirs = reference.tokenizer(TEXTS, truncation=True, max_length=reference.max_seq_length)["input_ids"]
    assert reference.max_seq_length == fast_embed.MAX_TOKENS
    assert encoder.tokenize(TEXTS) == [list(ids) for ids in theirs]
    assert max(len(ids) for ids in encoder.tokenize(TEXTS)) == fast_embed.MAX_TOKENS


@pytest.mark.slow
def test_same_neighbours_as_reference_for_queries(encoder, reference) -> None:
    """What retrieval depends on: the nearest passages of each query are the same."""
    passages, queries = TEXTS[5:], ["how long is parental leave", "approve a large expense", "vpn on a mac",
                                    "what to do when paged", "roll back a deploy"]
    ref_passages = reference.encode(passages, normalize_embeddings=True, show_progress_bar=False)
    ref_ranks = np.argsort(-(reference.encode(queries, normalize_embeddings=True) @ ref_passages.T), axis=1)
    our_ranks = np.argsort(-(encoder.encode(queries) @ ref_passages.T), axis=1)
    assert (ref_ranks[:, :5] == our_ranks[:, :5]).all()


def test_batches_equal_single_texts(encoder) -> None:
    """Padding inside a batch changes nothing: each text gets the vector it gets alone."""
    together = encoder.encode(TEXTS, batch_size=7)
    alone = np.stack([encoder.encode([text])[0] for text in TEXTS])
    assert np.abs(together - alone).max() < 1e-5
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_embed_query_uses_the_numpy_encoder(encoder) -> None:
    embeddings = LocalMiniLMEmbeddings()
    vector = embeddings.embed_query("How many vacation days do I get?")
    assert isinstance(vector, list) and len(vector) == 384 and isinstance(vector[0], float)
    assert vector == encoder.encode(["How many vacation days do I get?"])[0].tolist()
    assert fast_embed.load_encoder(minilm_path()) is encoder  # one encoder per process


def test_erf_is_accurate() -> None:
    import math

    xs = np.linspace(-6, 6, 2001, dtype=np.float32)
    expected = np.array([math.erf(float(x)) for x in xs])
    assert np.abs(fast_embed._erf(xs) - expected).max() < 5e-7


# ---------------------------------------------------------------- cached weight verification


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A model folder with small 'weights', its sha256, a private cache dir and a hash counter."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights " * 1000)
    sha = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[Path] = []
    real = weights.verify_weights

    def counting(model_dir: Path, expected: str = weights.MINILM_SHA256) -> None:
        calls.append(model_dir)
        real(model_dir, expected)

    monkeypatch.setattr(weights, "verify_weights", counting)
    return model, sha, calls


def test_weights_hashed_once_then_trusted_by_stat(fake_model) -> None:
    model, sha, calls = fake_model
    fast_embed.ensure_verified(model, sha)
    fast_embed.ensure_verified(model, sha)
    fast_embed.ensure_verified(model, sha)
    assert len(calls) == 1
    stamp = json.loads(weights._stamp_path().read_text())
    assert list(stamp.values())[0]["sha256"] == sha


def test_tampered_weights_refused_even_with_mtime_put_back(fake_model) -> None:
    model, sha, calls = fake_model
    weights = model / "model.safetensors"
    fast_embed.ensure_verified(model, sha)
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[10] ^= 0xFF  # same size
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime restored; ctime cannot be
    with pytest.raises(IngestError, match="do not match all-MiniLM-L6-v2"):
        fast_embed.ensure_verified(model, sha)
    assert len(calls) == 2


def test_a_stamp_for_another_hash_is_not_trusted(fake_model) -> None:
    model, sha, calls = fake_model
    fast_embed.ensure_verified(model, sha)
    with pytest.raises(IngestError):
        fast_embed.ensure_verified(model, "0" * 64)
    assert len(calls) == 2


def test_garbage_stamp_file_means_hashing_again(fake_model) -> None:
    model, sha, calls = fake_model
    path = weights._stamp_path()
    path.parent.mkdir(parents=True)
    path.write_text("not json")
    fast_embed.ensure_verified(model, sha)
    fast_embed.ensure_verified(model, sha)
    assert len(calls) == 1  # rewritten after the first hash


def test_unwritable_cache_still_verifies(fake_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, sha, calls = fake_model
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # cache dir cannot be created
    fast_embed.ensure_verified(model, sha)
    fast_embed.ensure_verified(model, sha)
    assert len(calls) == 2


def test_missing_weights_are_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(IngestError, match="cannot read the local embedding weights"):
        fast_embed.ensure_verified(tmp_path / "nowhere", "0" * 64)
