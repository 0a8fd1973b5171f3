"""Cost of the LLM rerank (KB_RERANK=llm) against the loopback Databricks stub: what kb adds per question.

    KB_INDEX_DIR=.kb .venv/bin/python -m bench.rerank_bench eval/knowledge-gold.jsonl [--repeat 3] [--candidates 20]

For every gold question, interleaved in one run: first-stage retrieval of the top 5 alone, and
first stage (top ``--candidates``) + the rerank call + parsing, the stub answering at once with a
ranking (``tests.databricks_stub.ranking_reply``). The difference is kb's own overhead of the
second stage (a deeper first stage, prompt building, one HTTP round trip on loopback, parsing); a real
model adds its time to first token for a prompt of ~``candidates`` x 300 tokens plus ~4 output tokens
per candidate, which only a live endpoint can measure. Quality cannot be measured offline either: the
stub's ranking is scripted. Prints medians (ms) and the prompt size; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.databricks_stub import DatabricksStub, ranking_reply  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gold", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=20)
    args = parser.parse_args(argv)
    with DatabricksStub(default_responder=ranking_reply(usage={"prompt_tokens": 1, "completion_tokens": 1})) as stub:
        os.environ.update(DATABRICKS_TOKEN=stub.token, base_url=stub.base_url, KB_USAGE_LEDGER="off")
        from agent.evaluation.evaluate import load_gold
        from agent.rag.rerank import build_reranker, retrieve
        from agent.rag.retrieval import build_retriever
        from agent.settings import load_settings

        settings = load_settings(rerank="llm", rerank_candidates=args.candidates)
        retriever = build_retriever(settings, command="bench")
        reranker = build_reranker(settings, command="bench")
        questions = [q.question for q in load_gold(args.gold)]
        for q in questions[:3]:  # warm: encoder, index, HTTP connection
            retrieve(retriever, reranker, q, k=5, candidates=args.candidates)
        plain, reranked = [], []
        for _ in range(args.repeat):
            for q in questions:
                retriever._vectors.clear()  # the query embedding is paid in both arms
                t = time.perf_counter()
                retrieve(retriever, None, q, k=5)
                plain.append(time.perf_counter() - t)
                retriever._vectors.clear()
                t = time.perf_counter()
                retrieve(retriever, reranker, q, k=5, candidates=args.candidates)
                reranked.append(time.perf_counter() - t)
        sizes = [len("".join(str(m.get("content")) for m in body["messages"])) for body in stub.chat_requests()]
    p, r = statistics.median(plain) * 1000, statistics.median(reranked) * 1000
    print(f"{len(questions)} questions x {args.repeat}, candidates {args.candidates}, index {settings.index_dir}")
    print(f"first stage only (top 5):           median {p:7.1f} ms")
    print(f"first stage + LLM rerank (stub):    median {r:7.1f} ms   (+{r - p:.1f} ms, x{r / p:.2f})")
    print(f"rerank prompt: median {statistics.median(sizes):.0f} characters (~{statistics.median(sizes) / 4:.0f} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
