"""What page support costs per query: warm hybrid search with and without it, interleaved, per index.

    .venv/bin/python -m bench.page_support_bench                 # 10k and 50k synthetic indexes + the large corpus
    .venv/bin/python -m bench.page_support_bench --sizes 10000 --no-large

Not a test. For each index one retriever is warmed up, then every question is asked with page support
(the settings' ``KB_PAGE_SUPPORT``, default 0.05) and without (0), alternately (which side goes first
alternates too), so both see the same machine load. The query vector is computed before the clock
starts and shared by both sides: the embedding (~5 ms, the same either way) is left out, so the
difference is the ranking's own. Prints p50 / p95 of each side and their ratio, measured in this run. The synthetic
indexes come from ``bench.perf_corpus.build_index`` (cached in ``.bench/``); the large corpus is
``.bench/large/index`` (``make bench-corpus``) with the questions of ``eval/large-gold.jsonl``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.rag.retrieval import build_retriever  # noqa: E402
from agent.settings import load_settings  # noqa: E402
from bench.perf_corpus import build_index, questions  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(index_dir: Path, qs: list[str]) -> dict[str, float]:
    settings = load_settings(index_dir=index_dir, search_mode="hybrid")
    retriever = build_retriever(settings)
    weight = settings.page_support or 0.05
    for q in qs[:3]:
        retriever.invoke(q + " (warm-up)")
    on: list[float] = []
    off: list[float] = []
    for i, q in enumerate(qs[3:]):
        retriever._vectors.setdefault(q, list(retriever.store.embeddings.embed_query(q)))  # both sides: a cached vector
        for support in ((weight, 0.0) if i % 2 else (0.0, weight)):
            retriever.page_support = support
            start = time.perf_counter()
            retriever.invoke(q)
            (on if support else off).append((time.perf_counter() - start) * 1000)
    return {"chunks": retriever.store.count(), "weight": weight,
            "on_p50": statistics.median(on), "on_p95": percentile(on, 0.95),
            "off_p50": statistics.median(off), "off_p95": percentile(off, 0.95)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--no-large", action="store_true")
    args = parser.parse_args(argv)
    targets = [(f"synthetic {int(s) // 1000}k", build_index(ROOT / ".bench", int(s)), questions(args.queries + 3, seed=9))
               for s in args.sizes.split(",") if s.strip()]
    large = ROOT / ".bench/large/index"
    if not args.no_large and large.exists():
        from agent.evaluation.evaluate import load_gold

        targets.append(("large corpus", large, [q.question for q in load_gold(ROOT / "eval/large-gold.jsonl")]))
    print(f"{'index':16} {'chunks':>7} {'without p50/p95 ms':>19} {'with p50/p95 ms':>16} {'p50 ratio':>9} {'p50 +ms':>8}")
    for label, index_dir, qs in targets:
        r = measure(index_dir, qs)
        print(f"{label:16} {r['chunks']:7d} {r['off_p50']:9.1f} / {r['off_p95']:5.1f} {r['on_p50']:7.1f} / {r['on_p95']:5.1f}"
              f" {r['on_p50'] / r['off_p50']:9.2f} {r['on_p50'] - r['off_p50']:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
