"""all-MiniLM-L6-v2 on the CPU, offline: sentence-transformers for documents, NumPy for queries.

It is a LangChain ``Embeddings`` with a ``model_id`` that the index records, so a query with another
model is refused instead of returning nonsense.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from ingest.embeddings.fast_embed import load_encoder
from ingest.embeddings.weights import ensure_verified, minilm_path

LOCAL_MODEL_ID = "local:sentence-transformers/all-MiniLM-L6-v2"
_LOADED: dict[str, Any] = {}


class LocalMiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 on the CPU, fully offline.

    Documents (ingest, batches) go through sentence-transformers, loaded on first use (7 s with
    torch); a query goes through the same weights in NumPy (``ingest.embeddings.fast_embed``, ~0.1 s to load,
    equal vectors). Either way the weights' sha256 is checked first (once per file state).
    Vectors are L2-normalised, so cosine distance is the natural metric.
    """

    model_id = LOCAL_MODEL_ID
    batch_size = 32

    def __init__(self, model_dir: Path | None = None) -> None:
        self._model_dir = model_dir
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            model_dir = self._model_dir or minilm_path()
            key = str(model_dir)
            if key not in _LOADED:  # one load per process, however many instances
                ensure_verified(model_dir)  # sha256 once per file state, remembered in the user cache
                from sentence_transformers import SentenceTransformer

                _LOADED[key] = SentenceTransformer(key, device="cpu")
            self._model = _LOADED[key]
        return self._model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._load().encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return vectors.tolist()

    def embed_query(self, text: str) -> list[float]:
        # Queries run the same weights in NumPy (fast_embed): no torch, ~0.2 s to load
        # instead of ~7 s, and vectors equal to sentence-transformers' (cosine > 0.9999).
        return load_encoder(self._model_dir or minilm_path()).encode([text])[0].tolist()
