"""KB_RERANK=llm on the wire: the listwise rerank call through the loopback Databricks server (its
prompt, its usage in the question's usage and the ledger), the fallback to first-stage order on an
error, a timeout or a useless reply, and `kb eval` with the second stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.settings import load_settings
from agent.usage.ledger import Ledger, ledger_path
from tests.conftest import KbRunner
from tests.databricks_stub import DatabricksStub, Error, Reply, ranking_reply

QUESTION = "How many vacation days do I get?"


@pytest.fixture
def rerank_on(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> DatabricksStub:
    monkeypatch.setenv("KB_RERANK", "llm")
    monkeypatch.setenv("KB_RERANK_CANDIDATES", "6")
    return databricks


def _prompt(body: dict) -> str:
    return "\n".join(str(m["content"]) for m in body["messages"])


def test_rerank_orders_the_passages_and_its_usage_is_counted(rerank_on: DatabricksStub, kb: KbRunner) -> None:
    first = json.loads(kb("search", QUESTION, "-k", "6", "--json").stdout)["results"]
    rerank_on.enqueue(
        ranking_reply(usage={"prompt_tokens": 500, "completion_tokens": 9}),  # reversed: the last candidate first
        Reply("You get 23 days [1].", usage={"prompt_tokens": 300, "completion_tokens": 7}),
    )
    result = kb("ask", QUESTION, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    rerank_body, answer_body = rerank_on.chat_requests()
    prompt = _prompt(rerank_body)
    assert "Reply with the passage numbers only" in prompt and f"Question: {QUESTION}" in prompt
    assert prompt.count("<passage n=") == len(first) == 6 and rerank_body["max_tokens"] == 16 + 4 * 6
    assert rerank_body["usage_context"] == {"command": "ask", "project": "kb", "step": "rerank"}
    assert answer_body["usage_context"] == {"command": "ask", "project": "kb"}
    # the answer prompt has the top 5 of the reranked 6 (grouped by page): the first-stage top 1 was last
    sent = [p["source"] for p in data["passages"]]
    assert len(sent) == 5 and set(sent) <= {r["source"] for r in first}
    assert first[-1]["text"] in [p["text"] for p in data["passages"]]
    assert first[0]["text"] not in [p["text"] for p in data["passages"]]
    assert data["usage"]["prompt_tokens"] == 800 and data["usage"]["completion_tokens"] == 16
    rows = Ledger(ledger_path(load_settings())).rows()
    assert sorted(json.loads(r["usage_context"]).get("step", "") for r in rows) == ["", "rerank"]


@pytest.mark.parametrize("reply", [Error(500, "INTERNAL_ERROR", "boom"), Reply("I would rather not rank."),
                                   Reply("1, 2", delay=3.0)], ids=["error", "no-ranking", "timeout"])
def test_rerank_failure_keeps_the_first_stage_order(rerank_on: DatabricksStub, kb: KbRunner, monkeypatch, reply) -> None:
    monkeypatch.setenv("KB_RERANK_TIMEOUT", "0.5")
    first = json.loads(kb("search", QUESTION, "--json").stdout)["results"]
    rerank_on.enqueue(reply, Reply("You get 23 days [1]."))
    result = kb("ask", QUESTION, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["answer"] == "You get 23 days [1]."
    assert data["passages"][0]["text"] == first[0]["text"]  # the first stage's best is still passage 1
    assert data["sources"][0]["source"] == "hr/pto.md"


def test_eval_with_rerank_and_compare_against_it(rerank_on: DatabricksStub, kb: KbRunner, tmp_path: Path) -> None:
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"id": "pto", "question": QUESTION, "sources": ["hr/pto.md"], "kind": "lookup"}) + "\n",
                    encoding="utf-8")
    rerank_on.default_responder = ranking_reply()  # reversed: the gold page falls
    result = kb("eval", str(gold), "--baseline", "KB_RERANK=off", "--compare", "KB_RERANK=llm", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["baseline"]["settings"]["KB_RERANK"] == "off" and report["variant"]["settings"]["KB_RERANK"] == "llm"
    (changed,) = report["changed"]
    assert changed["id"] == "pto" and changed["before"] == 1 and changed["after"] > 1 and changed["better"] is False
    (request,) = rerank_on.chat_requests()  # only the variant reranks
    assert request["usage_context"]["command"] == "eval" and request["usage_context"]["step"] == "rerank"
