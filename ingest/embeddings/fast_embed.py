"""all-MiniLM-L6-v2 in plain NumPy: the same weights as sentence-transformers, without torch.

Loading torch + sentence-transformers costs ~7 s per process; this encoder starts in ~0.1 s, so a
``kb search`` or ``kb ask`` spends its time on the question, not on imports. It runs the exact
BERT graph (6 layers, 384 hidden, 12 heads, exact GELU, LayerNorm eps 1e-12, mean pooling over the
attention mask, L2 normalisation) on ``model.safetensors`` memory-mapped read-only, and tokenises
with the model's own ``tokenizer.json`` (``tokenizers``, the Rust library sentence-transformers
uses too), truncated to 256 tokens like sentence-transformers' ``max_seq_length``. Its vectors
match the reference model to cosine > 0.9999 (tests/test_fast_embed.py proves it).

The weights are sha256-checked before use (``ingest.embeddings.weights``, cached per file state).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ingest.embeddings.weights import ensure_verified

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model (sentence_bert_config.json)
HIDDEN = 384
HEADS = 12
LAYERS = 6
LN_EPS = 1e-12

# Below this many tokens in a batch one BLAS thread is faster: waking a second thread costs more
# than the matmuls (10x slower on a busy 2-core machine). Larger batches keep every thread.
SINGLE_THREAD_TOKENS = 4096

_ENCODERS: dict[str, MiniLMEncoder] = {}
_LOCK = threading.Lock()
_BLAS: list[Any] = []  # the threadpoolctl controller, made once


# ---------------------------------------------------------------- weights


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read-only zero-copy views of a safetensors file (the format: u64 header size, JSON, data).

    A memory map means only the pages a query touches are read: a query uses a few rows of the
    47 MB word-embedding table, not all of it.
    """
    with path.open("rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_len))
    data = np.asarray(np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len))
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[name] = data[start:end].view(dtypes[info["dtype"]]).reshape(info["shape"])
    return tensors


def _in_out(weight: np.ndarray) -> np.ndarray:
    """torch's (out, in) weight as a C-contiguous (in, out) copy: the fastest operand for x @ w."""
    return np.ascontiguousarray(weight.T, dtype=np.float32)


class _Layer:
    __slots__ = ("qkv_w", "qkv_b", "out_w", "out_b", "ln1_w", "ln1_b", "up_w", "up_b", "down_w", "down_b",
                 "ln2_w", "ln2_b")

    def __init__(self, t: dict[str, np.ndarray], i: int) -> None:
        p = f"encoder.layer.{i}."
        # One (384, 1152) matmul for query, key and value; weights stored (out, in) like torch.
        self.qkv_w = _in_out(np.concatenate([t[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]))
        self.qkv_b = np.concatenate([t[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
        self.out_w = _in_out(t[p + "attention.output.dense.weight"])
        self.out_b = np.asarray(t[p + "attention.output.dense.bias"])
        self.ln1_w = np.asarray(t[p + "attention.output.LayerNorm.weight"])
        self.ln1_b = np.asarray(t[p + "attention.output.LayerNorm.bias"])
        self.up_w = _in_out(t[p + "intermediate.dense.weight"])
        self.up_b = np.asarray(t[p + "intermediate.dense.bias"])
        self.down_w = _in_out(t[p + "output.dense.weight"])
        self.down_b = np.asarray(t[p + "output.dense.bias"])
        self.ln2_w = np.asarray(t[p + "output.LayerNorm.weight"])
        self.ln2_b = np.asarray(t[p + "output.LayerNorm.bias"])


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + LN_EPS) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26), below float32's resolution here."""
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    y = 1.0 - poly * np.exp(-a * a)
    return np.copysign(y, x)


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))


class MiniLMEncoder:
    """Sentence embeddings from all-MiniLM-L6-v2: ``encode(texts) -> (n, 384) float32``, unit length."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()  # tokenizer.json pads to 128; batches are padded here, per batch
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer = tokenizer
        t = _load_safetensors(model_dir / "model.safetensors")
        self.word = t["embeddings.word_embeddings.weight"]
        self.position = t["embeddings.position_embeddings.weight"]
        self.token_type0 = np.asarray(t["embeddings.token_type_embeddings.weight"][0])
        self.emb_ln_w = np.asarray(t["embeddings.LayerNorm.weight"])
        self.emb_ln_b = np.asarray(t["embeddings.LayerNorm.bias"])
        self.layers = [_Layer(t, i) for i in range(LAYERS)]

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        head = HIDDEN // HEADS
        x = self.word[ids] + self.position[:length] + self.token_type0
        x = _layer_norm(x, self.emb_ln_w, self.emb_ln_b).reshape(batch * length, HIDDEN)
        # Padding gets the most negative float32 like transformers, so it weighs exactly 0.
        bias = np.where(mask[:, None, None, :] > 0, np.float32(0), np.finfo(np.float32).min).astype(np.float32)
        scale = np.float32(1.0 / math.sqrt(head))
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b
            qkv = qkv.reshape(batch, length, 3, HEADS, head).transpose(2, 0, 3, 1, 4)  # 3, B, H, L, d
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, HIDDEN)
            x = _layer_norm(context @ layer.out_w + layer.out_b + x, layer.ln1_w, layer.ln1_b)
            hidden = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(hidden @ layer.down_w + layer.down_b + x, layer.ln2_w, layer.ln2_b)
        x = x.reshape(batch, length, HIDDEN)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (x * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, 1e-12)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in input order."""
        out = np.zeros((len(texts), HIDDEN), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenize(list(texts))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths: little padding
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            length = max(len(ids[i]) for i in chunk)
            batch_ids = np.zeros((len(chunk), length), dtype=np.int64)
            mask = np.zeros((len(chunk), length), dtype=np.int64)
            for row, i in enumerate(chunk):
                batch_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            small = batch_ids.size <= SINGLE_THREAD_TOKENS
            with one_blas_thread() if small else contextlib.nullcontext():
                out[chunk] = self._forward(batch_ids, mask)
        return out


def one_blas_thread() -> Any:
    """A context in which NumPy's BLAS uses one thread (a no-op without threadpoolctl)."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except Exception:  # noqa: BLE001 - only a speed-up
            _BLAS.append(None)
    controller = _BLAS[0]
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def load_encoder(model_dir: Path, *, verify: bool = True) -> MiniLMEncoder:
    """The process-wide encoder for ``model_dir``, its weights checked first (see ``ensure_verified``)."""
    key = str(Path(model_dir).resolve())
    with _LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            if verify:
                ensure_verified(Path(model_dir))
            encoder = _ENCODERS[key] = MiniLMEncoder(Path(model_dir))
        return encoder
