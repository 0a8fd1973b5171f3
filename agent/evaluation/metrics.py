"""Retrieval metrics over a ranked list of sources, at document level.

The input is the ``source`` of each retrieved chunk, in rank order (chunk 1 first), and the set
of gold sources. A document counts at the rank of its first chunk; later chunks of the same
document add nothing (repeating a document is not finding more). Relevance is binary.

- ``hit@n``: 1 if any gold source is among the first n chunks, else 0.
- ``recall@n``: the fraction of gold sources among the first n chunks.
- ``MRR``: 1 / rank of the first chunk from a gold source (0 when none is retrieved).
- ``nDCG@n``: sum of 1/log2(rank+1) over the first chunk of each gold source within n, divided by
  the best possible value (the gold sources at ranks 1..min(|gold|, n)).

All are averaged over the answerable questions (those with at least one gold source).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

METRICS = ("hit@1", "hit@3", "hit@5", "hit@10", "recall@10", "MRR", "nDCG@10")


def first_ranks(ranked: Sequence[str | None], gold: Iterable[str]) -> dict[str, int]:
    """The 1-based rank of the first chunk of each gold source that was retrieved."""
    wanted = set(gold)
    ranks: dict[str, int] = {}
    for rank, source in enumerate(ranked, 1):
        if source in wanted and source not in ranks:
            ranks[source] = rank
    return ranks


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
    """Every metric of ``METRICS`` for one question (top 10 of ``ranked`` are used)."""
    gold = set(gold)
    top = list(ranked)[:10]
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
