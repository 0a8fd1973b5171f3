"""Retrieval metrics over a ranked list of documents (pages).

The input is the ``source`` of each retrieved chunk, in rank order (chunk 1 first), and the set
of gold sources. Ranks are **document ranks**: repeated sources are dropped first, so a document
is at rank r when r - 1 other documents come before its first chunk (three chunks of a wrong page
push the gold page down one place, not three). Relevance is binary; ``n`` counts documents.

- ``hit@n``: 1 if any gold source is among the first n documents, else 0.
- ``recall@n``: the fraction of gold sources among the first n documents.
- ``MRR``: 1 / document rank of the first gold source (0 when none is in the top 10): MRR@10.
- ``nDCG@n``: sum of 1/log2(rank+1) over the gold sources within n, divided by the best possible
  value (the gold sources at ranks 1..min(|gold|, n)).

All are averaged over the answerable questions (those with at least one gold source).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

METRICS = ("hit@1", "hit@3", "hit@5", "hit@10", "recall@10", "MRR", "nDCG@10")


def documents(ranked: Sequence[str | None]) -> list[str | None]:
    """The distinct sources of ``ranked``, in the order of their first chunk (``None``, a chunk
    without a source, never repeats a document: each counts once)."""
    seen: set[str] = set()
    out: list[str | None] = []
    for source in ranked:
        if source is None:
            out.append(None)
        elif source not in seen:
            seen.add(source)
            out.append(source)
    return out


def first_ranks(ranked: Sequence[str | None], gold: Iterable[str]) -> dict[str, int]:
    """The 1-based document rank of each gold source that was retrieved."""
    wanted = set(gold)
    return {source: rank for rank, source in enumerate(documents(ranked), 1) if source in wanted}


def hit_at(ranked: Sequence[str | None], gold: Iterable[str], n: int) -> float:
    return 1.0 if any(rank <= n for rank in first_ranks(ranked, gold).values()) else 0.0


def recall_at(ranked: Sequence[str | None], gold: Iterable[str], n: int) -> float:
    gold = set(gold)
    if not gold:
        return 0.0
    return sum(1 for rank in first_ranks(ranked, gold).values() if rank <= n) / len(gold)


def reciprocal_rank(ranked: Sequence[str | None], gold: Iterable[str]) -> float:
    ranks = first_ranks(ranked, gold).values()
    return 1.0 / min(ranks) if ranks else 0.0


def ndcg_at(ranked: Sequence[str | None], gold: Iterable[str], n: int) -> float:
    gold = set(gold)
    if not gold:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank in first_ranks(ranked, gold).values() if rank <= n)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), n) + 1))
    return dcg / ideal


def question_metrics(ranked: Sequence[str | None], gold: Iterable[str]) -> dict[str, float]:
    """Every metric of ``METRICS`` for one question (the top 10 documents of ``ranked`` are used)."""
    gold = set(gold)
    top = documents(ranked)[:10]
    return {
        "hit@1": hit_at(top, gold, 1),
        "hit@3": hit_at(top, gold, 3),
        "hit@5": hit_at(top, gold, 5),
        "hit@10": hit_at(top, gold, 10),
        "recall@10": recall_at(top, gold, 10),
        "MRR": reciprocal_rank(top, gold),
        "nDCG@10": ndcg_at(top, gold, 10),
    }


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over questions (0 for an empty list)."""
    if not rows:
        return {name: 0.0 for name in METRICS}
    return {name: sum(row[name] for row in rows) / len(rows) for name in METRICS}


def canonical_metric(name: str, known: Iterable[str] = METRICS) -> str | None:
    """``ndcg@10`` -> ``nDCG@10``; ``None`` if unknown."""
    lowered = {metric.lower(): metric for metric in known}
    return lowered.get(name.strip().lower())
