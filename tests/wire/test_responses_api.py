"""``POST /v1/responses`` used by the official ``openai`` client (``client.responses.create``, plain and
streaming) against the real app on a socket, with the loopback Databricks server behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from agent.api import create_app
from agent.rag.prompts import CALLER_INSTRUCTIONS
from agent.settings import load_settings
from tests.conftest import CANARY
from tests.databricks_stub import DatabricksStub, Error, Reply
from tests.live_server import LiveServer
from tests.wire.test_api import ANSWER, KEY, KEYS, QUESTION, FixedRetriever

USAGE = {"prompt_tokens": 120, "completion_tokens": 12}


@pytest.fixture
def server(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch):
    """The API over the shared test index, with keys."""
    monkeypatch.setenv("KB_API_KEYS", KEYS)
    databricks.default_responder = lambda body: Reply(ANSWER, usage=USAGE)
    with LiveServer(create_app(load_settings())) as live:
        yield live


def client_for(server: LiveServer, key: str = KEY, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60, **kwargs)


def test_kb_rag_answers_through_the_responses_api(server: LiveServer, databricks: DatabricksStub) -> None:
    response = client_for(server).responses.create(model="kb-rag", input=QUESTION)

    assert response.status == "completed" and response.model == "kb-rag" and response.id.startswith("resp_")
    assert response.output_text == ANSWER
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    assert response.usage.input_tokens == 120 and response.usage.output_tokens == 12 and response.usage.total_tokens == 132
    sources = response.model_extra["sources"]  # kb's extension, as in chat completions
    assert sources[0]["n"] == 1 and sources[0]["source"] == "hr/pto.md" and "23 vacation days" in sources[0]["text"]
    [request] = databricks.chat_requests()
    assert "23 vacation days" in request["messages"][-1]["content"]  # the real index was searched
    assert request["usage_context"]["caller"] == "notebooks" and request["usage_context"]["model"] == "kb-rag"


def test_kb_rag_streams_the_responses_events(server: LiveServer, databricks: DatabricksStub) -> None:
    databricks.default_responder = lambda body: Reply(ANSWER, usage=USAGE, chunk_size=4)
    events = list(client_for(server).responses.create(model="kb-rag", input=QUESTION, stream=True))

    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds[4:-4]) > 3
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert "".join(event.delta for event in deltas) == ANSWER
    assert {event.item_id for event in deltas} == {events[2].item.id}
    done = next(event for event in events if event.type == "response.output_item.done")
    assert done.item.status == "completed" and done.item.content[0].text == ANSWER
    completed = events[-1].response
    assert completed.status == "completed" and completed.output_text == ANSWER and completed.usage.total_tokens == 132
    assert completed.model_extra["sources"][0]["source"] == "hr/pto.md"


def test_a_conversation_in_input_is_condensed_like_in_chat(server: LiveServer, databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("How do I roll back a deploy?"), Reply("Run shipit rollback --to previous [1]."))
    response = client_for(server).responses.create(model="kb-rag", input=[
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [{"type": "output_text", "text": ANSWER}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and that other thing?"}]},
    ])
    assert response.output_text == "Run shipit rollback --to previous [1]."
    rewrite, answer = databricks.chat_requests()
    assert "Last message: and that other thing?" in rewrite["messages"][-1]["content"]
    assert "shipit rollback" in answer["messages"][-1]["content"]  # retrieved with the rewritten query


def test_kb_agent_runs_its_tools_and_streams_the_answer(env: Path, databricks: DatabricksStub,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_API_KEYS", KEYS)
    databricks.enqueue(
        Reply("", tool_calls=[{"name": "search_knowledge", "arguments": {"query": "vacation days"}, "id": "call_1"}]),
        Reply("Full-time employees get 23 vacation days [1].", chunk_size=5),
    )
    with LiveServer(create_app(load_settings(), retriever=FixedRetriever())) as live:
        events = list(client_for(live).responses.create(
            model="kb-agent", input=QUESTION, instructions="Answer in one sentence.", stream=True))
    completed = events[-1].response
    assert events[-1].type == "response.completed"
    assert completed.output_text == "Full-time employees get 23 vacation days [1]."
    [step] = completed.model_extra["steps"]
    assert step["tool"] == "search_knowledge" and step["error"] is False
    assert completed.model_extra["sources"][0]["source"] == "hr/pto.md"
    first, second = databricks.chat_requests()
    system = first["messages"][0]
    assert system["role"] == "system" and system["content"].endswith(CALLER_INSTRUCTIONS + "Answer in one sentence.")  # the instructions
    assert second["messages"][-1]["role"] == "tool" and first["usage_context"]["model"] == "kb-agent"


def test_errors_keep_the_chat_routes_auth_and_limits(server: LiveServer, databricks: DatabricksStub) -> None:
    client = client_for(server)
    with pytest.raises(openai.AuthenticationError):
        client_for(server, key="wrong-key").responses.create(model="kb-rag", input=QUESTION)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="gpt-4o", input=QUESTION)
    assert unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.responses.create(model="kb-rag", input="x" * 5000)
    assert too_long.value.body["code"] == "question_too_long" and too_long.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as ceiling:
        client.responses.create(model="kb-rag", input=QUESTION, max_output_tokens=100_000)
    assert ceiling.value.body["param"] == "max_output_tokens"
    with pytest.raises(openai.BadRequestError) as image:
        client.responses.create(model="kb-rag", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/x.png"}]}])
    assert image.value.body["code"] == "unsupported_content" and image.value.body["param"] == "input[0].content"
    with pytest.raises(openai.BadRequestError) as previous:
        client.responses.create(model="kb-rag", input=QUESTION, previous_response_id="resp_123")
    assert previous.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as no_user:
        client.responses.create(model="kb-rag", input=[{"role": "assistant", "content": "hi"}])
    assert no_user.value.body["param"] == "input"
    assert databricks.chat_requests() == []  # none of these reached Databricks


def test_upstream_failures_before_and_after_the_first_token(server: LiveServer, databricks: DatabricksStub) -> None:
    client = client_for(server)
    databricks.default_responder = lambda body: Error(403, "PERMISSION_DENIED", f"no access for {CANARY}")
    with pytest.raises(openai.APIStatusError) as early:  # before the first token: a real status code
        client.responses.create(model="kb-rag", input=QUESTION, stream=True)
    assert early.value.status_code >= 400 and CANARY not in str(early.value.body)

    databricks.default_responder = lambda body: Reply("word " * 50, chunk_size=5, drop_after_chunks=3)
    events = list(client.responses.create(model="kb-rag", input=QUESTION, stream=True))
    kinds = [event.type for event in events]
    assert "response.output_text.delta" in kinds and kinds[-2:] == ["error", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.message == events[-2].message and failed.error.message
    assert failed.output[0].status == "incomplete" and failed.output[0].content[0].text.startswith("word")


def test_behind_an_app_the_caller_is_the_forwarded_user(indexed: Path, databricks: DatabricksStub,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    databricks.default_responder = lambda body: Reply(ANSWER, usage=USAGE)
    headers = {"X-Forwarded-Email": "ada@example.com"}
    monkeypatch.setenv("KB_TRUST_FORWARDED_USER", "1")
    with LiveServer(create_app(load_settings())) as live:
        client_for(live, key="unused", default_headers=headers).responses.create(model="kb-rag", input=QUESTION)
    monkeypatch.delenv("KB_TRUST_FORWARDED_USER")
    with LiveServer(create_app(load_settings())) as live:  # not behind an App: the header is anyone's to send
        client_for(live, key="unused", default_headers=headers).responses.create(model="kb-rag", input=QUESTION)
    trusted, untrusted = databricks.chat_requests()
    assert trusted["usage_context"]["caller"] == "ada@example.com"
    assert untrusted["usage_context"]["caller"] == "anonymous"
