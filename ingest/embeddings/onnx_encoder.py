"""A sentence-transformers BERT model on ONNX Runtime: one engine for ingest batches and single queries.

The model folder is a sentence-transformers checkpoint (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``modules.json`` with its Pooling folder, ``sentence_bert_config.json``). Its BERT
graph is written by ``ingest.embeddings.onnx_graph`` with the weights left in ``model.safetensors``
(ONNX external data), after the file's sha256 was checked (``ingest.embeddings.weights``). Text is
tokenised by the model's own ``tokenizer.json`` (``tokenizers``, the Rust library sentence-transformers
uses too), truncated to the model's ``max_seq_length``. Batches are sorted by length and padded per
batch; padding is masked, so a text gets the same vector alone or in a batch.

Shape, pooling (mean or CLS) and normalisation come from the model's own config files, so another
BERT-class model (e.g. bge-small-en-v1.5: 12 layers, CLS pooling) needs only a registry entry with
its sha256 (``ingest.embeddings.weights.LOCAL_MODELS``).

Why ONNX Runtime: it is already installed (chromadb depends on it), starts in ~0.2 s, and runs the
graph with fused multi-head attention and prepacked GEMM weights, which is faster than torch for
ingest and than NumPy for a query, without torch's ~2 GB.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ingest.embeddings.onnx_graph import BertShape, TensorRef, build_bert
from ingest.embeddings.weights import ensure_verified
from ingest.errors import IngestError

WEIGHTS = "model.safetensors"
BATCH_SIZE = 32  # texts per ingest batch (sorted by length, padded per batch)
PREPACK_AFTER = 3  # single-text runs before a process swaps in prepacked weights (see OnnxEncoder._session)
_DTYPES = {"F32": np.dtype(np.float32)}
_PREFIXES = ("bert.", "model.")  # BertModel checkpoints saved from a wrapper carry a prefix

_ENCODERS: dict[tuple[str, int], OnnxEncoder] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelConfig:
    shape: BertShape
    max_tokens: int


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise IngestError(f"cannot read the local embedding model's {path.name} at {path}: {exc}") from None


def read_config(model_dir: Path) -> ModelConfig:
    """The encoder's shape, pooling and length limit from the sentence-transformers model folder."""
    config = _read_json(model_dir / "config.json")
    if config.get("model_type") not in {"bert"} or config.get("hidden_act", "gelu") != "gelu" \
            or config.get("position_embedding_type", "absolute") != "absolute":
        raise IngestError(f"unsupported local embedding model at {model_dir}: only BERT with GELU and "
                          "absolute positions runs on the built-in engine")
    modules = _read_json(model_dir / "modules.json") if (model_dir / "modules.json").exists() else []
    types = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    pooling_dir = model_dir / types.get("Pooling", {}).get("path", "1_Pooling")
    pooling_config = _read_json(pooling_dir / "config.json") if (pooling_dir / "config.json").exists() \
        else {"pooling_mode_mean_tokens": True}
    modes = [name for name in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
                               "weightedmean_tokens", "lasttoken")
             if pooling_config.get(f"pooling_mode_{name}")]
    if modes not in (["cls_token"], ["mean_tokens"]):
        raise IngestError(f"unsupported pooling {modes} in {pooling_dir}: the built-in engine does mean or CLS")
    bert_config = model_dir / "sentence_bert_config.json"
    max_tokens = _read_json(bert_config).get("max_seq_length") if bert_config.exists() else None
    max_tokens = int(min(max_tokens or 512, config.get("max_position_embeddings", 512)))
    shape = BertShape(
        layers=int(config["num_hidden_layers"]),
        hidden=int(config["hidden_size"]),
        heads=int(config["num_attention_heads"]),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        pooling="cls" if modes == ["cls_token"] else "mean",
        normalize="Normalize" in types,
    )
    return ModelConfig(shape=shape, max_tokens=max_tokens)


def safetensors_index(path: Path) -> dict[str, TensorRef]:
    """Each tensor's dtype, shape and absolute byte range in a safetensors file (header only).

    The format: a little-endian u64 header length, a JSON header of ``name: {dtype, shape,
    data_offsets}`` (offsets relative to the end of the header), then the raw tensors.
    """
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            header_len = int.from_bytes(handle.read(8), "little")
            if not 2 <= header_len <= min(size - 8, 100 << 20):
                raise ValueError("bad header length")
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError) as exc:
        raise IngestError(f"cannot read the local embedding weights at {path}: {exc}") from None
    base = 8 + header_len
    tensors: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__" or info.get("dtype") not in _DTYPES:
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        shape = tuple(int(d) for d in info["shape"])
        if not 0 <= start <= end <= size - base or end - start != int(np.prod(shape)) * dtype.itemsize:
            raise IngestError(f"the local embedding weights at {path} are malformed ({name})")
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        tensors[name] = TensorRef(dtype=dtype, shape=shape, offset=base + start, length=end - start)
    return tensors


class OnnxEncoder:
    """Sentence embeddings: ``encode(texts) -> (n, dim) float32`` (unit length if the model normalises).

    Thread-safe: ONNX Runtime sessions and ``tokenizers`` tokenizers may be called from many threads.
    """

    def __init__(self, model_dir: Path, *, threads: int = 2, prepack: bool | None = None) -> None:
        """``prepack``: True or False fixes it; None (default) starts without and prepacks on the
        ``PREPACK_AFTER``-th run (see ``_session``)."""
        self.model_dir = model_dir = Path(model_dir)
        self.config = read_config(model_dir)
        self.dim = self.config.shape.hidden
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()  # tokenizer.json may pad to a fixed length; batches are padded here, per batch
        tokenizer.enable_truncation(max_length=self.config.max_tokens)
        self.tokenizer = tokenizer
        self._model = build_bert(safetensors_index(model_dir / WEIGHTS), self.config.shape, WEIGHTS)
        self._threads = max(1, threads)
        self._prepacked = bool(prepack)
        self._upgrade = prepack is None
        self._runs = 0
        self._lock = threading.Lock()
        self.session = self._new_session(prepack=self._prepacked)

    def _new_session(self, *, prepack: bool) -> Any:
        import onnxruntime as ort  # heavy: ~0.15 s to import, only when a local model is used

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
        # Threads sleep between runs instead of spinning: the CPU is shared with the rest of kb.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        # The external data (the weights) is read from the model folder, where the sha256 was checked.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.model_dir))
        try:
            return ort.InferenceSession(self._model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise IngestError(f"cannot load the local embedding model at {self.model_dir}: {exc}") from None

    def _session(self, rows: int) -> Any:
        """The session for the next run of ``rows`` texts. Prepacking the GEMM weights (ORT's layout
        for its matrix kernels) makes a short query ~20-35% faster but session creation ~2x slower
        (~0.15 s more) and does nothing for batches (bench/embed_bench.py). So a one-shot ``kb search``
        and ``kb ingest`` never pay for it, while a process that embeds queries one after another
        (``kb serve``, ``kb chat``) swaps in a prepacked session at its ``PREPACK_AFTER``-th single-text
        run, once. Threads running meanwhile finish on the session they started with."""
        if self._upgrade and rows == 1:
            self._runs += 1
            if self._runs >= PREPACK_AFTER:
                with self._lock:
                    if self._upgrade:
                        self.session = self._new_session(prepack=True)
                        self._prepacked, self._upgrade = True, False
        return self.session

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """One vector per text, in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths: little padding
        for start in range(0, len(order), max(1, batch_size)):
            chunk = order[start:start + batch_size]
            length = max(len(ids[i]) for i in chunk)
            batch_ids = np.zeros((len(chunk), length), dtype=np.int64)
            mask = np.zeros((len(chunk), length), dtype=np.int64)
            for row, i in enumerate(chunk):
                batch_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            out[chunk] = self._session(len(chunk)).run(None, {"input_ids": batch_ids, "attention_mask": mask})[0]
        return out


def load_encoder(model_dir: Path, *, sha256: str, label: str = "", threads: int = 2) -> OnnxEncoder:
    """The process-wide encoder for ``model_dir`` and thread count, its weights' sha256 checked first."""
    key = (str(Path(model_dir).resolve()), threads)
    with _LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            ensure_verified(Path(model_dir), sha256, label=label)  # once per file state, remembered in the user cache
            encoder = _ENCODERS[key] = OnnxEncoder(Path(model_dir), threads=threads)
        return encoder
