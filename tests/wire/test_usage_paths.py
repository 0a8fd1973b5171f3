"""Every path that calls Databricks (chat, agent, eval, serve) sends its usage_context and lands in
the usage ledger with the right command and caller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.usage.ledger import Ledger, ledger_path
from agent.settings import load_settings
from tests.conftest import CANARY, KbRunner
from tests.databricks_stub import DatabricksStub, Reply

QUESTION = "How many vacation days do I get?"
ANSWER = "Full-time employees get 23 vacation days per year [1]."


def _rows() -> list[dict]:
    return Ledger(ledger_path(load_settings())).rows()


def _check(databricks: DatabricksStub, command: str, **automatic: str) -> list[dict]:
    """All chat requests carried {command, **automatic} + the user's keys; one ledger row each."""
    bodies = databricks.chat_requests()
    assert bodies, "no chat request was made"
    for body in bodies:
        context = body["usage_context"]
        assert context["command"] == command and context["team"] == "kb-tests"
        for key, value in automatic.items():
            assert context[key] == value
        assert all(isinstance(v, str) for v in context.values())
    rows = [r for r in _rows() if r["kind"] == "chat"]
    assert len(rows) == len(bodies)
    assert {r["command"] for r in rows} == {command}
    assert sorted(json.loads(r["usage_context"])["command"] for r in rows) == [command] * len(rows)
    return rows


@pytest.fixture
def stub(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> DatabricksStub:
    monkeypatch.setenv("KB_USAGE_CONTEXT", json.dumps({"team": "kb-tests"}))
    databricks.default_responder = lambda body: Reply(ANSWER, usage={"prompt_tokens": 100, "completion_tokens": 10})
    return databricks


def test_chat(stub: DatabricksStub, kb: KbRunner) -> None:
    result = kb("chat", input=f"{QUESTION}\nand after five years?\n/exit\n")
    assert result.exit_code == 0, result.stderr
    rows = _check(stub, "chat")
    assert all((r["prompt_tokens"], r["completion_tokens"], r["status"]) == (100, 10, "ok") for r in rows)


def test_agent_steps(stub: DatabricksStub, kb: KbRunner) -> None:
    stub.enqueue(
        Reply("", tool_calls=[{"name": "search_knowledge", "arguments": {"query": "vacation days"}, "id": "call_1"}]),
        Reply(ANSWER),
    )
    result = kb("agent", QUESTION, "--json")
    assert result.exit_code == 0, result.stderr
    rows = _check(stub, "agent")
    assert len(rows) == 2  # the tool-calling step and the answer step


def test_eval_answers_and_judge(stub: DatabricksStub, tmp_path: Path, kb: KbRunner) -> None:
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"id": "q1", "question": QUESTION, "sources": ["hr/pto.md"], "answer": "23 days"}) + "\n")
    result = kb("eval", str(gold), "--mode", "dense", "--answers", "--json")
    assert result.exit_code in (0, 1), result.stderr
    rows = _check(stub, "eval")
    steps = sorted(json.loads(r["usage_context"]).get("eval_step", "") for r in rows)
    assert "answer" in steps and "judge" in steps


def test_serve_records_the_caller(stub: DatabricksStub, monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    from fastapi.testclient import TestClient

    from agent.api import create_app

    monkeypatch.setenv("KB_API_KEYS", "notebooks:nb-key-0123456789abcdef,slackbot:sb-key-fedcba9876543210")
    with TestClient(create_app(load_settings())) as client:
        for key in ("nb-key-0123456789abcdef", "sb-key-fedcba9876543210"):
            response = client.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                json={"model": "kb-rag", "messages": [{"role": "user", "content": QUESTION}]},
            )
            assert response.status_code == 200, response.text
    _check(stub, "serve")
    assert sorted(body["usage_context"]["caller"] for body in stub.chat_requests()) == ["notebooks", "slackbot"]
    rows = _rows()
    assert sorted(r["caller"] for r in rows) == ["notebooks", "slackbot"]
    assert all(r["status"] == "ok" and r["prompt_tokens"] == 100 for r in rows)
    by_caller = json.loads(kb("usage", "--by", "caller", "--json").stdout)
    assert {g["key"]: g["requests"] for g in by_caller["groups"]} == {"notebooks": 1, "slackbot": 1}
    stored = ledger_path(load_settings()).read_bytes()
    assert b"nb-key" not in stored and b"sb-key" not in stored and CANARY.encode() not in stored
