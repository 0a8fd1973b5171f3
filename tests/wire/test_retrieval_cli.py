"""`kb search` / `kb ask` with --mode and --explain, and the relevance refusal, on the real index
of the test corpus (local MiniLM) and the loopback Databricks server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import KbRunner
from tests.databricks_stub import DatabricksStub, Reply


@pytest.fixture
def search(kb: KbRunner):
    """``search(*args)``: ``kb search ... --json``, checked to succeed, as parsed JSON."""

    def run(*args: str) -> dict:
        result = kb("search", *args, "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    return run


def test_each_mode_finds_the_right_document(indexed: Path, search) -> None:
    for mode in ("dense", "bm25", "hybrid"):
        data = search("Tunnelbear client for the VPN", "--mode", mode, "-k", "3")
        assert data["mode"] == mode
        assert data["results"][0]["source"] == "it/vpn.html", mode


def test_bm25_finds_exact_names_the_words_share(indexed: Path, search) -> None:
    data = search("Dana Whitfield", "--mode", "bm25", "-k", "2")
    assert data["results"][0]["source"] == "finance/expenses.pdf"
    assert data["results"][0]["score"] > 0  # BM25 score, not a cosine


def test_default_mode_comes_from_the_setting(indexed: Path, monkeypatch: pytest.MonkeyPatch, kb: KbRunner, search) -> None:
    assert search("vacation days")["mode"] == "hybrid"
    monkeypatch.setenv("KB_SEARCH_MODE", "bm25")
    assert search("vacation days")["mode"] == "bm25"
    monkeypatch.setenv("KB_SEARCH_MODE", "semantic")
    result = kb("search", "vacation days")
    assert result.exit_code == 2 and "invalid KB_SEARCH_MODE" in result.stderr


def test_unknown_mode_is_a_usage_error(indexed: Path, kb: KbRunner) -> None:
    result = kb("search", "vacation", "--mode", "fuzzy")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown search mode 'fuzzy'")


def test_explain_json_has_both_rankings_and_the_fused_score(indexed: Path, search) -> None:
    data = search("who approves expenses over 800 euros", "--mode", "hybrid", "--explain", "-k", "3")
    top = data["results"][0]
    assert top["source"] == "finance/expenses.pdf"
    explain = top["explain"]
    assert set(explain) == {"dense_rank", "dense_score", "bm25_rank", "bm25_score", "fused_score", "page_support"}
    assert explain["dense_rank"] >= 1 and 0 < explain["dense_score"] <= 1
    assert explain["bm25_rank"] >= 1 and explain["bm25_score"] > 0
    # hybrid ranks by the fused score plus the page support of the hit's page
    assert 0 < explain["fused_score"] <= 1
    assert top["score"] == pytest.approx(explain["fused_score"] + (explain["page_support"] or 0), abs=2e-4)
    assert "explain" not in search("who approves expenses", "-k", "1")["results"][0]


def test_explain_table(indexed: Path, kb: KbRunner) -> None:
    result = kb("search", "Tunnelbear", "--mode", "dense", "--explain", "-k", "2")
    assert result.exit_code == 0
    for column in ("dense rank", "cosine", "bm25 rank", "fused", "+page"):
        assert column in result.stdout
    assert "it/vpn.html" in result.stdout


# ---------------------------------------------------------------- refusal


def test_ask_refuses_when_nothing_is_relevant(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    result = kb("ask", "What is the capital of Australia?")
    assert result.exit_code == 0, result.stderr
    assert "The knowledge base does not cover this" in result.stdout
    assert "closest passages:" in result.stdout
    assert databricks.chat_requests() == []  # the model is not asked to guess


def test_refusal_json_and_the_floor_setting(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_MIN_RELEVANCE", "0.99")
    data = json.loads(kb("ask", "How many vacation days do I get?", "--json").stdout)
    assert data["refused"] is True and data["sources"] == []
    assert "below the relevance floor 0.99" in data["answer"]
    assert data["passages"][0]["source"] == "hr/pto.md"
    assert databricks.chat_requests() == []


def test_relevant_questions_still_reach_the_model(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.enqueue(Reply("You get 23 vacation days per year [1]."))
    result = kb("ask", "How many vacation days do I get?", "--mode", "bm25", "--explain", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["answer"] == "You get 23 vacation days per year [1]."
    assert data["sources"][0]["source"] == "hr/pto.md"
    assert data["passages"][0]["explain"]["bm25_rank"] == 1
    assert len(databricks.chat_requests()) == 1


def test_refusal_floor_out_of_range_is_a_config_error(indexed: Path, monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_MIN_RELEVANCE", "1.5")
    result = kb("search", "vacation")
    assert result.exit_code == 2 and result.stderr.startswith("error: invalid KB_MIN_RELEVANCE")
