"""kb eval per question kind and the --compare diff (agent.evaluation), on hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ConfigError, UsageError
from agent.evaluation.compare import compare_runs, first_gold_rank
from agent.evaluation.evaluate import load_gold, metrics_by_kind, question_kind
from agent.evaluation.metrics import question_metrics
from agent.settings import load_settings, parse_overrides, settings_with


def test_kind_from_the_record_the_id_prefix_or_the_sources() -> None:
    assert question_kind("Paraphrase", "x-1", ["a.md"]) == "paraphrase"
    assert question_kind(None, "direct-01", ["a.md"]) == "lookup"
    assert question_kind(None, "h-para-03", ["a.md"]) == "paraphrase"
    assert question_kind(None, "h-multi-1", ["a.md", "b.md"]) == "multi"
    assert question_kind(None, "offtopic-1", []) == "unanswerable"
    assert question_kind("lookup", "q", []) == "unanswerable"  # no sources: nothing to look up
    assert question_kind(None, "q7", ["a.md"]) == "unspecified"


def test_gold_kind_is_read_and_checked(tmp_path: Path) -> None:
    gold = tmp_path / "g.jsonl"
    gold.write_text(json.dumps({"id": "1", "question": "q", "sources": ["a.md"], "kind": "multi"}) + "\n"
                    + json.dumps({"id": "direct-2", "question": "q", "sources": ["a.md"]}) + "\n", encoding="utf-8")
    assert [q.kind for q in load_gold(gold)] == ["multi", "lookup"]
    for row, message in (({"question": "q", "kind": 3}, "'kind' must be a string"),
                         ({"question": "q", "sources": ["a.md"], "kind": "unanswerable"}, "not empty")):
        gold.write_text(json.dumps(row), encoding="utf-8")
        with pytest.raises(UsageError, match=message):
            load_gold(gold)


def row(qid: str, kind: str, sources: list[str], retrieved: list[str], relevance: float | None = 0.5) -> dict:
    from agent.evaluation.metrics import first_ranks

    return {"id": qid, "kind": kind, "question": f"question {qid}", "sources": sources, "retrieved": retrieved,
            "found_at": first_ranks(retrieved, sources),
            "metrics": question_metrics(retrieved, sources) if sources else None, "relevance": relevance}


def test_metrics_by_kind_and_overall() -> None:
    rows = [row("a", "lookup", ["x.md"], ["x.md", "y.md"]),
            row("b", "lookup", ["x.md"], ["y.md", "x.md"], relevance=0.1),
            row("c", "paraphrase", ["z.md"], ["y.md"] * 10),
            row("d", "unanswerable", [], ["y.md"], relevance=0.1),
            row("e", "unanswerable", [], ["y.md"], relevance=0.9)]
    kinds = metrics_by_kind(rows, 0.25)
    assert list(kinds) == ["lookup", "paraphrase", "unanswerable", "overall"]
    assert kinds["lookup"]["metrics"]["hit@5"] == 1.0 and kinds["lookup"]["metrics"]["MRR"] == 0.75
    assert kinds["lookup"]["refused"] == 0.5  # b is below the floor
    assert kinds["paraphrase"]["metrics"]["hit@5"] == 0.0
    assert kinds["unanswerable"]["metrics"] is None and kinds["unanswerable"]["declined"] == 0.5
    assert kinds["overall"]["metrics"]["MRR"] == pytest.approx(0.5) and kinds["overall"]["questions"] == 5
    assert metrics_by_kind(rows, 0.0)["unanswerable"]["declined"] == 0.0  # no floor: never declines


def test_compare_diff_per_metric_per_kind_and_changed_questions() -> None:
    before = [row("a", "lookup", ["x.md"], ["x.md"]), row("b", "paraphrase", ["x.md"], ["y.md", "x.md"]),
              row("c", "paraphrase", ["x.md"], ["y.md"]), row("d", "unanswerable", [], ["y.md"], relevance=0.9)]
    after = [row("a", "lookup", ["x.md"], ["x.md"]), row("b", "paraphrase", ["x.md"], ["x.md"]),
             row("c", "paraphrase", ["x.md"], ["y.md", "y.md", "x.md"]), row("d", "unanswerable", [], ["y.md"], relevance=0.1)]
    diff = compare_runs(before, after, floors=(0.25, 0.25))
    assert diff["metrics"]["hit@1"] == {"baseline": pytest.approx(1 / 3, abs=1e-4), "variant": pytest.approx(2 / 3, abs=1e-4),
                                        "delta": pytest.approx(1 / 3, abs=1e-3)}
    assert diff["by_kind"]["lookup"]["MRR"]["delta"] == 0
    assert diff["by_kind"]["paraphrase"]["hit@5"] == {"baseline": 0.5, "variant": 1.0, "delta": 0.5}
    assert diff["by_kind"]["unanswerable"]["declined"]["delta"] == 1.0
    changed = {c["id"]: (c["before"], c["after"], c["better"]) for c in diff["changed"]}
    # c: the repeated y.md is one document, so x.md is at document rank 2
    assert changed == {"b": (2, 1, True), "c": (None, 2, True), "d": ("answered", "declined", True)}
    worse = compare_runs(after, before, floors=(0.25, 0.25))["changed"]
    assert [c["better"] for c in worse] == [False, False, False]
    assert first_gold_rank({"found_at": {}}) is None


def test_compare_overrides_are_validated_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KB_SEARCH_MODE", raising=False)
    base = load_settings()
    variant = settings_with(base, parse_overrides(["KB_SEARCH_MODE=bm25", "kb_fusion_alpha = 0.5"], option="--compare"))
    assert (variant.search_mode, variant.fusion_alpha, base.search_mode) == ("bm25", 0.5, "hybrid")
    for spec, message in (("KB_NOPE=1", "unknown setting 'KB_NOPE'"), ("KB_SEARCH_MODE", "expected KEY=VALUE"),
                          ("DATABRICKS_TOKEN=x", "is a secret"), ("KB_FUSION=best", "invalid KB_FUSION"),
                          ("kb_api_keys=alice:sk-live-123", "is a secret")):  # also feeds a non-secret field
        with pytest.raises(ConfigError, match=message) as caught:
            settings_with(base, parse_overrides([spec], option="--compare"))
        assert "sk-live" not in str(caught.value)


def test_a_compare_override_of_the_groups_wins_over_as_groups() -> None:
    base = load_settings(as_groups=frozenset({"hr"}))
    assert settings_with(base, parse_overrides(["KB_AS_GROUPS=eng"], option="--compare")).as_groups == frozenset({"eng"})
    assert settings_with(base, parse_overrides(["KB_TOP_K=3"], option="--compare")).as_groups == frozenset({"hr"})


def test_fusion_settings_reach_the_ranking(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.rag.search import search_options

    assert {k: v for k, v in search_options(load_settings()).items() if k in ("fusion", "alpha")} == {
        "fusion": "convex", "alpha": 0.8}  # the measured default
    monkeypatch.setenv("KB_FUSION", "rrf")
    monkeypatch.setenv("KB_RRF_K", "20")
    monkeypatch.setenv("KB_RRF_BM25_WEIGHT", "0.5")
    monkeypatch.setenv("KB_FUSION_ALPHA", "0.6")
    options = search_options(load_settings())
    assert (options["fusion"], options["rrf_k"], options["bm25_weight"], options["alpha"]) == ("rrf", 20, 0.5, 0.6)
