"""Page support (``agent.rag.search.support_pages``) and page-level evaluation (``kb eval``'s document ranks)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.documents import Document

from agent.evaluation.evaluate import GoldQuestion, evaluate_retrieval
from agent.evaluation.metrics import documents, question_metrics
from agent.rag.search import support_pages


def page_of(cid: str) -> str:
    return cid.split("#")[0]


def test_a_page_with_several_good_chunks_overtakes_one_lucky_chunk() -> None:
    order = [("a#1", 0.90), ("b#1", 0.85), ("b#2", 0.80), ("b#3", 0.80), ("a#2", 0.10)]
    unchanged, support = support_pages(order, page_of, weight=0.0)
    assert [cid for cid, _ in unchanged] == [cid for cid, _ in order] and set(support.values()) == {0.0}
    boosted, support = support_pages(order, page_of, weight=0.1, runners_up=2)
    assert [cid for cid, _ in boosted][:2] == ["b#1", "b#2"]  # 0.85 + 0.1 * (0.8 + 0.8) = 1.01 > 0.9 + 0.01
    assert support["b#3"] == pytest.approx(0.16) and support["a#1"] == pytest.approx(0.01)
    only_one_runner_up, _ = support_pages(order, page_of, weight=0.05, runners_up=1)
    assert [cid for cid, _ in only_one_runner_up][0] == "a#1"  # 0.85 + 0.04 < 0.9 + 0.005


scores = st.floats(min_value=0, max_value=1, allow_nan=False)
candidates = st.lists(st.tuples(st.sampled_from("abcd"), scores), min_size=1, max_size=30)


@given(candidates, st.floats(min_value=0, max_value=1), st.integers(min_value=1, max_value=5))
def test_pages_rank_by_best_plus_runners_up_and_keep_their_chunk_order(pairs: list[tuple[str, float]],
                                                                       weight: float, runners_up: int) -> None:
    order = sorted(((f"{page}#{i}", score) for i, (page, score) in enumerate(pairs)), key=lambda p: -p[1])
    boosted, support = support_pages(order, page_of, weight=weight, runners_up=runners_up)
    assert sorted(cid for cid, _ in boosted) == sorted(cid for cid, _ in order)
    for page in "abcd":  # a page's chunks keep their order
        assert [c for c, _ in boosted if page_of(c) == page] == [c for c, _ in order if page_of(c) == page]
    expected: dict[str, float] = {}
    for page in {page_of(c) for c, _ in order}:
        mine = sorted((s for c, s in order if page_of(c) == page), reverse=True)
        expected[page] = mine[0] + weight * sum(mine[1 : 1 + runners_up])
    first_seen = list(dict.fromkeys(page_of(c) for c, _ in boosted))
    assert [expected[p] for p in first_seen] == pytest.approx(sorted(expected.values(), reverse=True))


def test_ranks_are_document_ranks() -> None:
    ranked = ["x", "x", "x", "gold", "y"]
    assert documents(ranked) == ["x", "gold", "y"]
    metrics = question_metrics(ranked, ["gold"])
    assert metrics["MRR"] == 0.5 and metrics["hit@1"] == 0.0 and metrics["hit@3"] == 1.0


class PagesRetriever:
    """Chunks of pages x (three strong chunks), then gold, as a retriever honouring max_per_source."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def invoke(self, query: str, **kwargs: Any) -> list[Document]:
        self.calls.append(kwargs)
        chunks = [("x.md", 0.9), ("x.md", 0.8), ("x.md", 0.7), ("gold.md", 0.6)] + [(f"o{i}.md", 0.1) for i in range(20)]
        cap = kwargs.get("max_per_source", 3)
        out, per = [], {}
        for source, score in chunks:
            if cap and per.get(source, 0) >= cap:
                continue
            per[source] = per.get(source, 0) + 1
            out.append(Document(page_content="t", metadata={"source": source, "dense_score": score}))
        return out[: kwargs.get("k", 5)]


def test_eval_ranks_the_retrievers_pages_and_gates_on_the_top_k_kb_ask_gets() -> None:
    retriever = PagesRetriever()
    question = GoldQuestion("q1", "where is it?", ("gold.md",), kind="lookup")
    row = evaluate_retrieval(retriever, [question], ["hybrid"], top_k=5)["hybrid"].rows[0]
    assert row["retrieved"][:3] == ["x.md", "gold.md", "o0.md"] and len(row["retrieved"]) == 10
    assert row["found_at"] == {"gold.md": 2} and row["metrics"]["MRR"] == 0.5
    assert {"k": 10, "mode": "hybrid", "max_per_source": 1} in retriever.calls  # the page ranking
    assert {"k": 5, "mode": "hybrid"} in retriever.calls  # what kb ask's refusal gate reads
    assert row["relevance"] == 0.9


def test_with_a_reranker_eval_ranks_the_reranked_pages_then_fills_from_the_first_stage() -> None:
    class Reverse:
        name = "reverse"

        def rerank(self, query: str, documents: list[Document], *, config: Any = None) -> list[Document]:
            return list(reversed(documents))

    question = GoldQuestion("q1", "where is it?", ("o7.md",), kind="lookup")
    row = evaluate_retrieval(PagesRetriever(), [question], ["hybrid"], top_k=5, reranker=Reverse(),
                             candidates=4)["hybrid"].rows[0]
    # the reranked pool (10 chunks at 3 per page) holds 8 pages, reversed; then the first stage's next ones
    assert row["retrieved"] == ["o5.md", "o4.md", "o3.md", "o2.md", "o1.md", "o0.md", "gold.md", "x.md",
                                "o6.md", "o7.md"]
    assert row["found_at"] == {"o7.md": 10}
