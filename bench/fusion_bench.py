"""Hybrid fusion sweep: convex (several alpha) vs reciprocal rank fusion (several k and BM25 weights),
and with ``--pages`` the page support grid (alpha x ``KB_PAGE_SUPPORT`` x ``KB_PAGE_SUPPORT_CHUNKS``).

    .venv/bin/python -m bench.fusion_bench eval/knowledge-gold.jsonl            # KB_INDEX_DIR's index
    KB_INDEX_DIR=.kb-handbook .venv/bin/python -m bench.fusion_bench eval/handbook-gold.jsonl --json
    KB_INDEX_DIR=.bench/large/index .venv/bin/python -m bench.fusion_bench eval/large-gold.jsonl --pages

The fusion rows run without page support (``page_support=0``: fusion alone); the page rows name theirs.

One retriever (one index, one embedding model, the query vectors cached), its fusion parameters
changed between runs, every run through ``kb eval``'s own ``evaluate_retrieval``: the numbers are
the ones ``kb eval`` would print for each setting. Prints hit@1, hit@5, MRR@10, nDCG@10 overall
and nDCG@10 per question kind. Not a test: it reads whatever index the settings name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.evaluation.evaluate import EVAL_K, evaluate_retrieval, load_gold, metrics_by_kind
from agent.rag.retrieval import build_retriever, min_relevance
from agent.settings import load_settings

CONVEX_ALPHAS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
RRF = ((10, 1.0), (30, 1.0), (60, 1.0), (60, 0.5), (30, 0.5), (60, 1.5))
PAGE_ALPHAS = (0.75, 0.8, 0.9)
PAGE_SUPPORT = ((0.0, 2), (0.05, 2), (0.05, 4), (0.1, 2), (0.1, 4), (0.15, 2))


def configurations(pages: bool = False) -> list[tuple[str, str, dict]]:
    off = {"page_support": 0.0}
    if pages:
        out = [("dense", "dense", off), ("bm25", "bm25", off)]  # for reference: page support is hybrid's
        out += [(f"convex a={a} support={w} n={n}", "hybrid",
                 {"fusion": "convex", "alpha": a, "page_support": w, "support_chunks": n})
                for a in PAGE_ALPHAS for w, n in PAGE_SUPPORT]
        return out
    out = [("dense", "dense", off), ("bm25", "bm25", off)]
    out += [(f"convex a={a}", "hybrid", {"fusion": "convex", "alpha": a, **off}) for a in CONVEX_ALPHAS]
    out += [(f"rrf k={k} w_bm25={w}", "hybrid", {"fusion": "rrf", "rrf_k": k, "bm25_weight": w, **off}) for k, w in RRF]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gold", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="7 configurations instead of 14 (a big index on a busy machine)")
    parser.add_argument("--pages", action="store_true", help="the page support grid instead of the fusion sweep")
    args = parser.parse_args(argv)
    settings = load_settings()
    questions = load_gold(args.gold)
    retriever = build_retriever(settings, k=EVAL_K, command="eval")
    floor = min_relevance(settings)
    rows = []
    quick = ("dense", "bm25", "convex a=0.6", "convex a=0.75", "convex a=0.9", "rrf k=10 w_bm25=1.0", "rrf k=60 w_bm25=1.0")
    for label, mode, params in [c for c in configurations(args.pages) if args.pages or not args.quick or c[0] in quick]:
        for name, value in params.items():
            setattr(retriever, name, value)
        result = evaluate_retrieval(retriever, questions, [mode], top_k=settings.top_k)[mode]
        kinds = metrics_by_kind(result.rows, floor)
        overall = kinds["overall"]["metrics"]
        rows.append({"config": label, **{m: overall[m] for m in ("hit@1", "hit@5", "MRR", "nDCG@10")},
                     "nDCG@10 by kind": {k: (v["metrics"] or {}).get("nDCG@10") for k, v in kinds.items()
                                         if v["metrics"] and k != "overall"}})
        print(f"  {label} done", file=sys.stderr)
    if args.json:
        print(json.dumps({"gold": str(args.gold), "index": str(settings.index_dir), "rows": rows}, indent=2))
        return 0
    kinds = list(dict.fromkeys(k for r in rows for k in r["nDCG@10 by kind"]))
    print(f"gold {args.gold} ({len(questions)} questions), index {settings.index_dir}")
    header = f"{'config':32} {'hit@1':>6} {'hit@5':>6} {'MRR@10':>7} {'nDCG@10':>8} " + " ".join(f"{k[:10]:>10}" for k in kinds)
    print(header)
    for r in rows:
        per = " ".join(f"{r['nDCG@10 by kind'].get(k, float('nan')):>10.3f}" for k in kinds)
        print(f"{r['config']:32} {r['hit@1']:6.3f} {r['hit@5']:6.3f} {r['MRR']:7.3f} {r['nDCG@10']:8.3f} {per}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
