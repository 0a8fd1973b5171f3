"""Retrieval benchmark (not a test): the small and large gold sets, per question kind, for one configuration.

    python bench/retrieval_bench.py                        # default settings, all gold sets, hybrid
    python bench/retrieval_bench.py --modes dense bm25 hybrid
    KB_SEARCH_MODE=bm25 python bench/retrieval_bench.py --sets large
    python bench/retrieval_bench.py --tag chunks1200 --json out.json   # a separate index for a variant

For each gold set it ingests the set's corpus into the set's index (incrementally: an unchanged corpus is
only checked), then runs ``kb eval``'s own code (``agent.evaluation.evaluate.run_eval``) and prints, per
mode, hit@5, MRR, nDCG@10 overall and per ``kind`` (lookup / paraphrase / multi; unanswerable questions
have no retrieval metric: their best top-k relevance is shown against the answerable ones'), the warm
per-query latency (p50, p95) of the retriever at that index size, and the ingest wall time and chunk count.

| set | gold | corpus | index |
|---|---|---|---|
| knowledge | eval/knowledge-gold.jsonl | knowledge/ | .bench/small/knowledge-<tag> |
| handbook | eval/handbook-gold.jsonl | ../shared/corpora/handbook (HANDBOOK=...) | .bench/small/handbook-<tag> |
| large | eval/large-gold.jsonl | .bench/large/corpus (``bench/large_corpus.py``) | .bench/large/index (tag default) or .bench/large/index-<tag> |
| large ``--dev`` | eval/large-gold.jsonl | .bench/large/corpus-dev (``large_corpus.py --dev``) | .bench/large/index-dev[-<tag>] |

Every ``KB_*`` setting in the environment applies to both ingest and search, as with ``kb``. A setting that
changes the chunks or their vectors (chunking, embedding model) needs its own index: pass ``--tag`` so the
variant does not overwrite the baseline index (an index made with another embedding model is refused,
but a chunking change would be applied in place, re-embedding the whole corpus). Embedding the large
corpus (~25,000 chunks) takes ~30 minutes on 2 free cores (12-16 chunks/s) and far longer on a busy machine.
``--no-ingest`` uses the indexes as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.large_corpus import build_corpus, build_dev, count_chunks, kb_ingest  # noqa: E402

KINDS = ("lookup", "paraphrase", "multi")
SHOWN = ("hit@5", "MRR", "nDCG@10")
WARMUP = ("warm up the encoder", "another query to warm the caches", "and a third one")


def gold_sets(tag: str, *, dev: bool = False) -> dict[str, dict[str, Path]]:
    suffix = "" if tag == "default" else f"-{tag}"
    large = "-dev" if dev else ""
    handbook = Path(os.environ.get("HANDBOOK") or ROOT.parent / "shared" / "corpora" / "handbook")
    return {
        "knowledge": {"gold": ROOT / "eval/knowledge-gold.jsonl", "corpus": ROOT / "knowledge",
                      "index": ROOT / ".bench/small" / f"knowledge-{tag}"},
        "handbook": {"gold": ROOT / "eval/handbook-gold.jsonl", "corpus": handbook,
                     "index": ROOT / ".bench/small" / f"handbook-{tag}"},
        "large": {"gold": ROOT / "eval/large-gold.jsonl", "corpus": ROOT / f".bench/large/corpus{large}",
                  "index": ROOT / ".bench/large" / f"index{large}{suffix}"},
    }


def ingest(corpus: Path, index: Path) -> dict[str, Any]:
    """``kb ingest`` in a child process, as a user runs it; wall time and whether the index existed."""
    existed = (index / "chroma").is_dir()
    return {"ingest_seconds": round(kb_ingest(corpus, index, quiet=True), 1), "index_existed": existed}


def by_kind(data: dict[str, Any]) -> dict[str, Any]:
    """Per kind: the report's ``by_kind`` (kb eval's own per-kind metrics, with ``refused``/``declined``),
    plus the median best relevance in the top k of the kind's questions (answerable vs unanswerable:
    how well the floor can separate them)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in data["per_question"]:
        groups.setdefault(row["kind"], []).append(row)
    reported = data.get("by_kind") or {}
    order = (*KINDS, "unanswerable")
    out: dict[str, Any] = {}
    for kind in sorted(groups, key=lambda k: order.index(k) if k in order else len(order)):
        mine = groups[kind]
        entry: dict[str, Any] = {"questions": len(mine)}
        if kind in reported:
            entry.update({name: round(value, 4) for name, value in (reported[kind].get("metrics") or {}).items()})
            entry.update({key: reported[kind].get(key) for key in ("refused", "declined")})
        relevance = [r.get("relevance") or 0.0 for r in mine]
        entry["relevance_median"] = round(statistics.median(relevance), 3)
        out[kind] = entry
    return out


def latency(settings: Any, questions: list[str], mode: str) -> dict[str, float]:
    """Warm per-query latency of the retriever (encoder loaded, index open; each question asked once)."""
    from agent.rag.retrieval import build_retriever

    retriever = build_retriever(settings, k=10, command="eval", mode=mode)
    for text in WARMUP:
        retriever.invoke(text, k=10, mode=mode)
    times = []
    for text in questions:
        start = time.perf_counter()
        retriever.invoke(text, k=10, mode=mode)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"p50_ms": round(1000 * statistics.median(times), 1),
            "p95_ms": round(1000 * times[min(len(times) - 1, int(0.95 * len(times)))], 1)}


def run_set(name: str, paths: dict[str, Path], modes: list[str], *, do_ingest: bool) -> dict[str, Any]:
    from agent.evaluation.evaluate import load_gold, run_eval
    from agent.settings import load_settings

    if not paths["corpus"].is_dir():
        return {"set": name, "skipped": f"no corpus at {paths['corpus']}"}
    out: dict[str, Any] = {"set": name, "index": str(paths["index"])}
    if do_ingest:
        out.update(ingest(paths["corpus"], paths["index"]))
    os.environ["KB_INDEX_DIR"] = str(paths["index"])
    settings = load_settings()
    out["chunks"] = count_chunks(paths["index"])
    report = run_eval(settings, paths["gold"], modes=modes)
    questions = [q.question for q in load_gold(paths["gold"])]
    out["unknown_sources"] = report["unknown_sources"]
    out["modes"] = {}
    for mode, data in report["modes"].items():
        out["modes"][mode] = {
            "overall": {name: data["metrics"][name] for name in ("hit@1", "hit@5", "hit@10", "MRR", "nDCG@10")},
            "by_kind": by_kind(data),
            "latency": latency(settings, questions, mode),
            "misses": [m["id"] for m in data["misses"]],
        }
    out["relevance"] = report["relevance"]
    return out


def print_set(result: dict[str, Any]) -> None:
    if "skipped" in result:
        print(f"\n{result['set']}: skipped ({result['skipped']})")
        return
    extra = ""
    if "ingest_seconds" in result:
        extra = f", ingest {result['ingest_seconds']} s ({'re-run on an existing index' if result['index_existed'] else 'from scratch'})"
    print(f"\n{result['set']}: {result['chunks']} chunks in {result['index']}{extra}")
    for source in result["unknown_sources"]:
        print(f"  warning: gold source not in the index: {source}")
    header = (f"  {'mode':7} {'kind':13} {'n':>3} " + " ".join(f"{m:>8}" for m in SHOWN)
              + f" {'rel.med':>8} {'declined':>8}")
    print(header)
    for mode, data in result["modes"].items():
        rows = [("overall", {**data["overall"], "questions": sum(e["questions"] for k, e in data["by_kind"].items()
                                                                 if k != "unanswerable")}, None)]
        rows += [(kind, entry, entry.get("relevance_median")) for kind, entry in data["by_kind"].items()]
        for kind, entry, rel in rows:
            cells = " ".join(f"{entry[m]:8.3f}" if m in entry else f"{'':>8}" for m in SHOWN)
            declined = entry.get("declined")
            print(f"  {mode:7} {kind:13} {entry['questions']:3} {cells} {rel if rel is not None else '':>8} "
                  f"{'' if declined is None else format(declined, '.2f'):>8}")
        lat = data["latency"]
        print(f"  {mode:7} latency p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms; hit@5 misses: "
              f"{', '.join(data['misses']) or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["knowledge", "handbook", "large"],
                        choices=["knowledge", "handbook", "large"])
    parser.add_argument("--modes", nargs="+", default=None, help="default: KB_SEARCH_MODE (hybrid)")
    parser.add_argument("--tag", default="default", help="index name suffix for a variant that changes chunks/vectors")
    parser.add_argument("--no-ingest", action="store_true", help="use the indexes as they are")
    parser.add_argument("--dev", action="store_true", help="large set: the dev slice (~360 pages) instead of the full corpus")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if "large" in args.sets and not args.no_ingest:  # the pages (cheap when present), the dev slice's gold pages

        build_corpus()
        if args.dev:
            build_dev()
    modes = args.modes or [os.environ.get("KB_SEARCH_MODE", "hybrid")]
    settings_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("KB_") and k != "KB_INDEX_DIR"}
    print(f"configuration: {settings_env or 'defaults'}; modes {', '.join(modes)}; tag {args.tag}")
    results = []
    for name in args.sets:
        result = run_set(name, gold_sets(args.tag, dev=args.dev)[name], modes, do_ingest=not args.no_ingest)
        print_set(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps({"configuration": settings_env, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
