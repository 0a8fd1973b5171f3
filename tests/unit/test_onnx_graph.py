"""The ONNX graph of a BERT sentence encoder (ingest/embeddings/onnx_graph.py, onnx_encoder.py) on a tiny random
model written here, against a plain NumPy BERT: any shape, mean or CLS pooling, with or without
normalisation, a ``bert.`` name prefix, all read from the model's own config files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ingest.embeddings.onnx_encoder import OnnxEncoder, read_config, safetensors_index
from ingest.embeddings.onnx_graph import _varint
from ingest.errors import IngestError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"alpha beta gamma delta leave policy vpn deploy code the a".split()]


def _write_model(folder: Path, *, layers: int, hidden: int, heads: int, pooling: str, normalize: bool,
                 prefix: str = "", seed: int = 0) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    inner, positions = hidden * 2, 32
    t: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": rng.normal(0, 1, (len(VOCAB), hidden)),
        "embeddings.position_embeddings.weight": rng.normal(0, 0.5, (positions, hidden)),
        "embeddings.token_type_embeddings.weight": rng.normal(0, 0.5, (2, hidden)),
        "embeddings.LayerNorm.weight": rng.normal(1, 0.1, hidden), "embeddings.LayerNorm.bias": rng.normal(0, 0.1, hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (out, inp) in {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
                                 "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
                                 "intermediate.dense": (inner, hidden), "output.dense": (hidden, inner)}.items():
            t[p + name + ".weight"] = rng.normal(0, 1 / math.sqrt(inp), (out, inp))
            t[p + name + ".bias"] = rng.normal(0, 0.1, out)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + name + ".weight"] = rng.normal(1, 0.1, hidden)
            t[p + name + ".bias"] = rng.normal(0, 0.1, hidden)
    t = {k: v.astype(np.float32) for k, v in t.items()}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in t.items():
        blobs.append(array.tobytes())
        header[prefix + name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header["pooler.dense.weight"] = {"dtype": "F16", "shape": [1], "data_offsets": [offset, offset + 2]}  # skipped
    blobs.append(b"\0\0")
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_act": "gelu", "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "intermediate_size": inner, "layer_norm_eps": 1e-12,
        "max_position_embeddings": positions, "vocab_size": len(VOCAB)}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max"}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12}))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(folder / "tokenizer.json"))
    return t


def _numpy_bert(t: dict[str, np.ndarray], ids: list[int], *, layers: int, heads: int, pooling: str,
                normalize: bool) -> np.ndarray:
    """BERT's forward pass as transformers writes it, for one unpadded text."""
    def ln(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-12) * w + b

    def lin(x: np.ndarray, name: str) -> np.ndarray:
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    erf = np.vectorize(math.erf)
    x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][: len(ids)] \
        + t["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"]).astype(np.float64)
    hidden = x.shape[1]
    d = hidden // heads
    for i in range(layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").reshape(len(ids), heads, d).transpose(1, 0, 2)
                   for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        context = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(len(ids), hidden)
        x = ln(lin(context, p + "attention.output.dense") + x, t[p + "attention.output.LayerNorm.weight"],
               t[p + "attention.output.LayerNorm.bias"])
        up = lin(x, p + "intermediate.dense")
        up = 0.5 * up * (1 + erf(up / math.sqrt(2)))
        x = ln(lin(up, p + "output.dense") + x, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])
    pooled = x[0] if pooling == "cls" else x.mean(0)
    return pooled / np.linalg.norm(pooled) if normalize else pooled


TEXTS = ["alpha beta", "leave policy vpn deploy code", "the", "", "gamma delta unknownword a the alpha beta gamma",
         "alpha " * 20]


@pytest.mark.parametrize(("layers", "hidden", "heads", "pooling", "normalize", "prefix"), [
    (2, 16, 4, "cls", True, "bert."),  # bge-style: CLS pooling, normalised, prefixed checkpoint
    (3, 24, 2, "mean", False, ""),  # mean pooling without a Normalize module: vectors keep their length
])
def test_graph_matches_numpy_bert(tmp_path: Path, layers, hidden, heads, pooling, normalize, prefix) -> None:
    weights = _write_model(tmp_path / "m", layers=layers, hidden=hidden, heads=heads, pooling=pooling,
                           normalize=normalize, prefix=prefix)
    config = read_config(tmp_path / "m")
    assert (config.shape.layers, config.shape.hidden, config.shape.heads, config.shape.pooling,
            config.shape.normalize, config.max_tokens) == (layers, hidden, heads, pooling, normalize, 12)
    encoder = OnnxEncoder(tmp_path / "m", threads=1, prepack=False)
    ours = encoder.encode(TEXTS, batch_size=4)  # mixed lengths: padding inside batches
    ids = encoder.tokenize(TEXTS)
    assert max(map(len, ids)) == 12 and ids[3] == [2, 3]  # truncated to max_seq_length; empty text = [CLS] [SEP]
    expected = np.stack([_numpy_bert(weights, i, layers=layers, heads=heads, pooling=pooling, normalize=normalize)
                         for i in ids])
    assert ours.shape == (len(TEXTS), hidden)
    assert np.abs(ours - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) if normalize else not np.allclose(norms, 1.0, atol=1e-2)


def test_unsupported_models_are_refused(tmp_path: Path) -> None:
    _write_model(tmp_path / "max", layers=1, hidden=8, heads=2, pooling="max", normalize=True)
    with pytest.raises(IngestError, match="unsupported pooling"):
        read_config(tmp_path / "max")
    _write_model(tmp_path / "roberta", layers=1, hidden=8, heads=2, pooling="mean", normalize=True)
    config = json.loads((tmp_path / "roberta" / "config.json").read_text())
    (tmp_path / "roberta" / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(IngestError, match="unsupported local embedding model"):
        read_config(tmp_path / "roberta")


def test_malformed_weights_are_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(IngestError, match="cannot read the local embedding weights"):
        safetensors_index(path)
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)  # 8 bytes where 16 are promised
    with pytest.raises(IngestError, match="malformed"):
        safetensors_index(path)


def test_varint_is_protobufs() -> None:
    assert _varint(0) == b"\x00" and _varint(300) == b"\xac\x02"
    assert _varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1: ten bytes, two's complement
