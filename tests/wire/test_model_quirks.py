"""Each model family Databricks serves, as the loopback stub emulates it (README, Model quirks), and
answer streams cut without their end, on every surface."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.databricks.llm import one_tool_call_per_turn
from agent.settings import load_settings
from tests.conftest import CANARY, KbRunner
from tests.databricks_stub import DatabricksStub, Reply

SEARCH = {"name": "search_knowledge", "arguments": {"query": "vacation days", "k": 2}, "id": "call_s"}
CALC = {"name": "calculate", "arguments": {"expression": "23 * 8"}, "id": "call_c"}


@pytest.fixture(autouse=True)
def _plain_answers(stub_server: DatabricksStub) -> None:
    stub_server.default_responder = lambda body: Reply("Stub answer.")  # whatever an earlier test left


def _agent(databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch, endpoint: str):
    from agent.assistant.service import build_assistant, run_assistant

    monkeypatch.setenv("KB_CHAT_ENDPOINT", endpoint)
    events: list[dict] = []
    result = run_assistant(build_assistant(load_settings()), "How many hours are my vacation days?", events.append)
    return result, events


@pytest.mark.parametrize("endpoint", [
    "databricks-meta-llama-3-3-70b-instruct", "databricks-llama-4-maverick",
    "databricks-claude-sonnet-4-5", "databricks-gpt-oss-120b",
])
def test_the_agent_finishes_with_parallel_tool_calls_on_every_family(
        endpoint: str, indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tool calls in one turn, no text: Claude refuses empty text, GPT OSS refuses two calls in one
    assistant message; kb sends what each accepts and the task finishes."""
    databricks.enqueue(Reply("", tool_calls=[SEARCH, CALC]), Reply("23 days are 184 hours [1]."))
    result, events = _agent(databricks, monkeypatch, endpoint)
    answer = result.text
    assert answer.startswith("23 days are 184 hours")
    requests = databricks.chat_requests()
    assert len(requests) == 2  # no refused request, no retry
    history = requests[1]["messages"]
    turns = [m for m in history if m["role"] == "assistant" and m.get("tool_calls")]
    assert [len(t["tool_calls"]) for t in turns] == [1, 1]
    assert all(isinstance(t["content"], str) and t["content"].strip() for t in turns)
    # each call is followed by its own result
    for turn in turns:
        after = history[history.index(turn) + 1]
        assert after["role"] == "tool" and after["tool_call_id"] == turn["tool_calls"][0]["id"]


def test_the_stub_really_refuses_what_the_families_refuse(databricks: DatabricksStub) -> None:
    """Guard for the test above: without kb's rewrite, the stub answers 400 like the real endpoints."""
    import openai

    client = openai.OpenAI(base_url=databricks.base_url, api_key=CANARY, max_retries=0)
    history = [{"role": "user", "content": "q"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                   {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "a", "content": "1"},
               {"role": "tool", "tool_call_id": "b", "content": "2"}]
    for model, words in (("databricks-gpt-oss-120b", "Multiple tool calls are not supported"),
                         ("databricks-claude-sonnet-4-5", "text content blocks must be non-empty")):
        with pytest.raises(openai.BadRequestError, match=words):
            client.chat.completions.create(model=model, messages=history)
        client.chat.completions.create(model=model, messages=one_tool_call_per_turn(history))  # accepted


def test_claude_streamed_usage_with_null_completion_tokens(indexed: Path, databricks: DatabricksStub,
                                                           monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_CHAT_ENDPOINT", "databricks-claude-sonnet-4-5")
    databricks.enqueue(Reply("Full-time employees get 23 vacation days [1].", usage={"prompt_tokens": 300, "completion_tokens": 11}))
    result = kb("ask", "How many vacation days do I get?", "--json")
    assert result.exit_code == 0, result.stderr
    import json

    usage = json.loads(result.stdout)["usage"]
    assert usage["prompt_tokens"] == 300 and usage["completion_tokens"] == 11  # counted once, not 0 nor summed


@pytest.mark.parametrize("endpoint", ["databricks-gpt-oss-120b", "databricks-claude-sonnet-4-5"])
def test_reasoning_and_thinking_blocks_stay_out_of_the_answer(endpoint: str, indexed: Path, databricks: DatabricksStub,
                                                              monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_CHAT_ENDPOINT", endpoint)
    blocks = [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "SECRET-THOUGHTS weigh the passages"}]},
              {"type": "text", "text": "You get 23 days [1]."}]
    databricks.enqueue(Reply(content_blocks=blocks), Reply(content_blocks=blocks))
    streamed = kb("ask", "How many vacation days do I get?")
    assert streamed.exit_code == 0, streamed.stderr
    assert "You get 23 days [1]." in streamed.stdout and "SECRET-THOUGHTS" not in streamed.stdout
    whole = kb("ask", "How many vacation days do I get?", "--json")
    assert "You get 23 days" in whole.stdout and "SECRET-THOUGHTS" not in whole.stdout


# ---------------------------------------------------------------- cut streams (issue 18, item 3)


def test_kb_ask_marks_a_stream_that_ends_without_its_end(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.enqueue(Reply("Full-time employees get twenty three days of paid leave", end_after_chunks=3))
    result = kb("ask", "How many vacation days do I get?")
    assert result.exit_code == 4
    assert "Full-time" in result.stdout
    assert "incomplete" in result.stderr and "cut off" in result.stderr


def test_kb_agent_marks_a_cut_stream(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.enqueue(Reply("Full-time employees get twenty three days of paid leave", end_after_chunks=3))
    result = kb("agent", "How many vacation days do I get?")
    assert result.exit_code == 4, result.stdout + result.stderr


def test_the_api_does_not_report_a_cut_stream_as_stopped(indexed: Path, databricks: DatabricksStub) -> None:
    from fastapi.testclient import TestClient

    from agent.api import create_app

    body = {"model": "kb-rag", "messages": [{"role": "user", "content": "How many vacation days do I get?"}]}
    with TestClient(create_app(load_settings()), base_url="http://127.0.0.1") as client:
        databricks.enqueue(Reply("Full-time employees get twenty three days of paid leave", end_after_chunks=3))
        streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
        assert '"finish_reason": "stop"' not in streamed.text
        assert "error" in streamed.text
        databricks.enqueue(Reply("Full-time employees get twenty three days of paid leave", end_after_chunks=3))
        whole = client.post("/v1/chat/completions", json=body)
        assert whole.status_code >= 500 or whole.json()["choices"][0]["finish_reason"] != "stop"
