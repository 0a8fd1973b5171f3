"""Retrieval metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from agent.evaluation.metrics import (
    METRICS,
    canonical_metric,
    first_ranks,
    hit_at,
    mean_metrics,
    ndcg_at,
    question_metrics,
    recall_at,
    reciprocal_rank,
)

LOG3 = math.log2(3)


def test_two_gold_sources_found_at_ranks_one_and_three() -> None:
    ranked = ["a", "x", "b", "a", "y"]
    gold = {"a", "b"}
    assert first_ranks(ranked, gold) == {"a": 1, "b": 3}
    assert hit_at(ranked, gold, 1) == 1.0
    assert recall_at(ranked, gold, 1) == 0.5
    assert recall_at(ranked, gold, 3) == 1.0
    assert reciprocal_rank(ranked, gold) == 1.0
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3) = 1.6309
    assert ndcg_at(ranked, gold, 10) == pytest.approx(1.5 / (1 + 1 / LOG3))
    assert ndcg_at(ranked, gold, 10) == pytest.approx(0.919721, abs=1e-6)
    # cut at 2: only "a" counts; the ideal still has two relevant documents
    assert ndcg_at(ranked, gold, 2) == pytest.approx(1 / (1 + 1 / LOG3))


def test_one_gold_source_at_rank_three() -> None:
    ranked = ["x", "y", "b", "z"]
    metrics = question_metrics(ranked, ["b"])
    assert metrics == {
        "hit@1": 0.0,
        "hit@3": 1.0,
        "hit@5": 1.0,
        "hit@10": 1.0,
        "recall@10": 1.0,
        "MRR": pytest.approx(1 / 3),
        "nDCG@10": pytest.approx(0.5),  # 1/log2(4) over an ideal of 1
    }


def test_nothing_found_scores_zero() -> None:
    metrics = question_metrics(["x", "y", None], ["b"])
    assert all(value == 0.0 for value in metrics.values())
    assert set(metrics) == set(METRICS)


def test_repeated_chunks_of_one_document_count_once() -> None:
    ranked = ["a", "a", "a"]
    gold = {"a", "b"}
    assert recall_at(ranked, gold, 10) == 0.5
    assert ndcg_at(ranked, gold, 10) == pytest.approx(1 / (1 + 1 / LOG3))  # 0.6131
    assert ndcg_at(ranked, gold, 10) == pytest.approx(0.613147, abs=1e-6)


def test_only_the_top_ten_count() -> None:
    ranked = [f"x{i}" for i in range(10)] + ["b"]
    assert question_metrics(ranked, ["b"])["hit@10"] == 0.0
    assert question_metrics(ranked[-10:], ["b"])["hit@10"] == 1.0


def test_empty_gold_is_not_scored_as_found() -> None:
    assert recall_at(["a"], [], 10) == 0.0
    assert ndcg_at(["a"], [], 10) == 0.0
    assert reciprocal_rank(["a"], []) == 0.0


def test_mean_over_questions() -> None:
    rows = [question_metrics(["a"], ["a"]), question_metrics(["x", "a"], ["a"])]
    means = mean_metrics(rows)
    assert means["hit@1"] == 0.5
    assert means["MRR"] == pytest.approx(0.75)
    assert means["nDCG@10"] == pytest.approx((1 + 1 / LOG3) / 2)  # (1 + 0.6309) / 2
    assert mean_metrics([]) == {name: 0.0 for name in METRICS}


def test_metric_names_are_case_insensitive() -> None:
    assert canonical_metric("ndcg@10") == "nDCG@10"
    assert canonical_metric(" mrr ") == "MRR"
    assert canonical_metric("HIT@5") == "hit@5"
    assert canonical_metric("precision@5") is None
