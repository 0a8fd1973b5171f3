"""A Databricks embeddings endpoint, via its OpenAI-compatible API, built for volume.

It is a LangChain ``Embeddings`` with a ``model_id`` (``databricks:<endpoint>``) that the index records.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.embeddings import Embeddings

from ingest.embeddings.backoff import SharedPause, status_of
from ingest.errors import RemoteServerError, describe_remote_failure


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
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batches)), thread_name_prefix="kb-dbx") as pool:
            results = list(pool.map(self._embed_batch, batches))  # input order; the first failure is raised
        return [vector for result in results for vector in result]

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
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
                raise RemoteServerError(
                    f"serving endpoint '{self.endpoint}' returned {len(vectors)} embeddings for {len(texts)} inputs"
                )
            return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def _smaller_batch(exc: BaseException, size: int) -> int | None:
    """The batch size to retry with when a 400 says the batch was too large, else None."""
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
