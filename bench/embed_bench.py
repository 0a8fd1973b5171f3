"""Local embedding engine benchmark (not a test): ONNX Runtime against the references, in one run.

    python -m bench.embed_bench                 # 2,000 chunk texts, 60 queries
    python -m bench.embed_bench --chunks 500 --json out.json

Prints, measured in this one process so that other load on the machine hits every side alike:

1. Ingest throughput (chunks/s) of the ONNX Runtime engine (``LocalMiniLMEmbeddings``' engine, 2
   threads, batches of 32 sorted by length) against sentence-transformers' raw ``encode`` of the same
   texts with the same weights (torch, 2 threads, batch 32, normalised) when the ``bench`` extra is
   installed (``pip install -e '.[bench]'``); the two alternate over slices of the texts. Target >= 1.0x.
2. Single-query latency p50 of the engine with 1 and 2 intra-op threads (prepacked weights) and 2
   threads without prepacking (a fresh process's first queries), taking turns query by query. (The
   NumPy encoder this replaced, ``ingest/embeddings/fast_embed.py``, measured 2.4-2.5x slower per
   query than ORT in the same run, and was retired.)
3. The engine's load time (config, tokenizer, graph, ONNX Runtime session; 2 threads) and first
   query, after imports, without and with prepacked weights.
4. A fresh process's cost of its first query embedding (what ``kb search`` pays): imports of the
   engine's modules + load + one query, median of 5 fresh Python processes.

The chunk texts are windows of 300-1,000 characters over the repository's own Markdown (knowledge/,
docs/, README.md): English prose, lists, tables and code, like real chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "How many vacation days do I get?", "how do I reset my VPN token", "who approves expenses over 5000",
    "parental leave policy", "what to do when paged at night", "roll back a bad deploy",
    "Databricks cluster policy for notebooks", "where is the on-call runbook", "expense receipts for travel",
    "can I work from another country", "laptop replacement", "SSO login fails with MFA error",
]


def chunk_texts(count: int = 2000, seed: int = 7) -> list[str]:
    """``count`` windows of 300-1,000 characters over the repository's Markdown."""
    files = sorted([*ROOT.glob("knowledge/**/*.md"), *ROOT.glob("docs/*.md"), ROOT / "README.md"])
    text = "\n\n".join(p.read_text("utf-8", errors="replace") for p in files if p.is_file())
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        size = rng.randint(300, 1000)
        start = rng.randrange(0, max(1, len(text) - size))
        out.append(text[start:start + size].strip() or "empty")
    return out


def _reference() -> Any:
    """sentence-transformers on the same weights, or None without the ``bench`` extra."""
    try:
        import torch  # heavy: the reference only
        from sentence_transformers import SentenceTransformer  # heavy: the reference only
    except ImportError:
        return None
    from ingest.embeddings.weights import minilm_path

    torch.set_num_threads(2)
    return SentenceTransformer(str(minilm_path()), device="cpu")


_FRESH = """
import time
started = time.perf_counter()
from ingest.embeddings.onnx_encoder import load_encoder
from ingest.embeddings.weights import MINILM_SHA256, minilm_path
encoder = load_encoder(minilm_path(), sha256=MINILM_SHA256)
loaded = time.perf_counter()
encoder.encode(["How many vacation days do I get?"])
print(loaded - started, time.perf_counter() - loaded)
"""


def fresh_process(runs: int = 5) -> dict[str, float]:
    """Median seconds of imports + load, and of the first query, in fresh processes (the engine: ort)."""
    import subprocess
    import sys

    times = [tuple(map(float, subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True,
                                             cwd=ROOT, check=True).stdout.split())) for _ in range(runs)]
    return {"fresh_load_s_ort": statistics.median(load for load, _ in times),
            "fresh_first_query_s_ort": statistics.median(query for _, query in times),
            "fresh_total_s_ort": statistics.median(load + query for load, query in times)}


def measure(texts: list[str], queries: list[str] | None = None, *, slices: int = 4, log=print) -> dict:
    """The figures above as a dict (see the module docstring)."""
    import numpy as np  # heavy: after argument parsing

    from ingest.embeddings import onnx_encoder
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.embeddings.weights import MINILM_SHA256, ensure_verified, minilm_path

    model_dir = minilm_path()
    ensure_verified(model_dir, MINILM_SHA256)
    figures: dict[str, Any] = {"chunks": len(texts)}

    loads: dict[bool, list[float]] = {True: [], False: []}
    firsts: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(5):
        for prepack in (False, True):
            started = time.perf_counter()
            encoder = onnx_encoder.OnnxEncoder(model_dir, threads=2, prepack=prepack)
            loaded = time.perf_counter()
            encoder.encode([QUESTIONS[0]])
            loads[prepack].append(loaded - started)
            firsts[prepack].append(time.perf_counter() - loaded)
            del encoder
    for prepack, suffix in ((False, ""), (True, "_prepacked")):
        figures[f"load_s{suffix}"] = statistics.median(loads[prepack])
        figures[f"first_query_s{suffix}"] = statistics.median(firsts[prepack])
        log(f"engine load{suffix.replace('_', ' ')} {figures[f'load_s{suffix}'] * 1000:.0f} ms (median of 5), "
            f"first query {figures[f'first_query_s{suffix}'] * 1000:.1f} ms")

    embeddings = LocalMiniLMEmbeddings()
    engine = embeddings.encoder()
    reference = _reference()
    engine.encode(texts[:32])
    if reference is not None:
        reference.encode(texts[:32], batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    else:
        log("sentence-transformers is not installed (pip install -e '.[bench]'): no throughput reference")
    ours_s = theirs_s = 0.0
    ours, theirs = [], []
    for number in range(slices):
        part = texts[number * len(texts) // slices:(number + 1) * len(texts) // slices]
        started = time.perf_counter()
        ours.append(engine.encode(part, batch_size=embeddings.batch_size))
        ours_s += time.perf_counter() - started
        if reference is not None:
            started = time.perf_counter()
            theirs.append(reference.encode(part, batch_size=embeddings.batch_size, normalize_embeddings=True,
                                           show_progress_bar=False))
            theirs_s += time.perf_counter() - started
        log(f"slice {number + 1}/{slices}: engine {ours_s:.1f} s" + (f", sentence-transformers {theirs_s:.1f} s"
                                                                      if reference is not None else ""))
    figures["engine_chunks_per_s"] = len(texts) / ours_s
    if reference is not None:
        figures["reference_chunks_per_s"] = len(texts) / theirs_s
        figures["throughput_ratio"] = theirs_s / ours_s
        cosine = (np.concatenate(ours) * np.concatenate(theirs)).sum(axis=1)
        figures["min_cosine_to_reference"] = float(cosine.min())

    queries = queries or QUESTIONS * 8
    engines = {"ort_1_thread": onnx_encoder.OnnxEncoder(model_dir, threads=1, prepack=True),
               "ort_2_threads": onnx_encoder.OnnxEncoder(model_dir, threads=2, prepack=True),
               "ort_2_threads_unpacked": onnx_encoder.OnnxEncoder(model_dir, threads=2, prepack=False)}
    for encoder in engines.values():
        for query in queries[:5]:
            encoder.encode([query])
    times: dict[str, list[float]] = {name: [] for name in engines}
    for query in queries:  # the engines take turns, query by query
        for name, encoder in engines.items():
            started = time.perf_counter()
            encoder.encode([query])
            times[name].append(time.perf_counter() - started)
    for name, values in times.items():
        figures[f"query_p50_ms_{name}"] = statistics.median(values) * 1000
    figures.update(fresh_process())
    return figures


def _print(f: dict) -> None:
    print()
    print(f"engine (ONNX Runtime) load: {f['load_s'] * 1000:.0f} ms, first query {f['first_query_s'] * 1000:.1f} ms; "
          f"with prepacked weights {f['load_s_prepacked'] * 1000:.0f} ms, first query {f['first_query_s_prepacked'] * 1000:.1f} ms")
    print(f"ingest throughput: engine {f['engine_chunks_per_s']:.1f} chunks/s over {f['chunks']} chunks", end="")
    if "reference_chunks_per_s" in f:
        print(f"; sentence-transformers {f['reference_chunks_per_s']:.1f} chunks/s; ratio {f['throughput_ratio']:.2f}x "
              f"(target >= 1.0x); min cosine {f['min_cosine_to_reference']:.6f}")
    else:
        print("; sentence-transformers not installed: no ratio")
    line = ", ".join(f"{k.removeprefix('query_p50_ms_')} {v:.2f} ms" for k, v in f.items() if k.startswith("query_p50_ms_"))
    print(f"single-query p50: {line}")
    print(f"  prepacked / unpacked (2 threads): "
          f"{f['query_p50_ms_ort_2_threads'] / f['query_p50_ms_ort_2_threads_unpacked']:.2f}x the time")
    print(f"  ORT 2 threads / 1 thread: {f['query_p50_ms_ort_2_threads'] / f['query_p50_ms_ort_1_thread']:.2f}x the time")
    if "fresh_total_s_ort" in f:
        print(f"fresh process: imports + load {f['fresh_load_s_ort'] * 1000:.0f} ms, first query "
              f"{f['fresh_first_query_s_ort'] * 1000:.1f} ms, total {f['fresh_total_s_ort'] * 1000:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    figures = measure(chunk_texts(args.chunks), slices=args.slices)
    _print(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
