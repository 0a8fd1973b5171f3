"""The chat model on the wire, against the loopback Databricks serving server."""

from __future__ import annotations

import json

import pytest

from agent.rag.service import AnswerService
from agent.errors import (
    AuthError,
    BadRequestError,
    EndpointNotFoundError,
    RateLimitedError,
    RemoteServerError,
    RemoteTimeoutError,
    StreamInterruptedError,
)
from agent.databricks.llm import build_llm, flatten_content
from agent.settings import load_settings
from tests.conftest import CANARY
from tests.databricks_stub import DatabricksStub, Error, Reply


def _llm(**overrides):
    return build_llm(load_settings(), command="ask", **overrides)


def test_request_is_what_databricks_expects(databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("Hello there."))
    message = _llm().invoke("hi")
    assert message.content == "Hello there."
    [recorded] = databricks.requests
    assert recorded.path == "/serving-endpoints/chat/completions"
    assert recorded.headers["authorization"] == f"Bearer {CANARY}"
    body = recorded.body
    assert body["model"] == "databricks-meta-llama-3-3-70b-instruct"
    assert body["temperature"] == 0
    assert body["max_tokens"] == 1024 and "max_completion_tokens" not in body
    assert body["usage_context"] == {"command": "ask", "project": "kb"}


def test_configured_usage_context_wins_and_is_sent_exactly(databricks: DatabricksStub, monkeypatch) -> None:
    monkeypatch.setenv("KB_USAGE_CONTEXT", json.dumps({"team": "fraud", "command": "nightly-batch"}))
    monkeypatch.setenv("KB_CHAT_ENDPOINT", "test-chat")
    databricks.enqueue(Reply("ok"))
    _llm().invoke("hi")
    body = databricks.chat_requests()[0]
    assert body["model"] == "test-chat"
    assert body["usage_context"] == {"team": "fraud", "command": "nightly-batch"}


def test_streaming_assembles_text_and_counts_usage_once(databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("one two three four five six", chunk_size=4, cumulative_usage=True,
                             usage={"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}))
    chunks = list(_llm().stream("count"))
    text = "".join(c.content for c in chunks)
    assert text == "one two three four five six"
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.usage_metadata["input_tokens"] == 30
    assert total.usage_metadata["output_tokens"] == 6
    assert databricks.chat_requests()[0]["stream"] is True


REASONING_BLOCKS = [
    {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Let me think."}]},
    {"type": "text", "text": "Final answer [1]."},
]


def test_reasoning_content_blocks_become_text(databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply(content_blocks=REASONING_BLOCKS))
    message = _llm().invoke("q")
    assert message.content == "Final answer [1]."
    assert message.additional_kwargs["reasoning"] == "Let me think."


def test_reasoning_content_blocks_streamed(databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply(content_blocks=REASONING_BLOCKS))
    text = "".join(chunk.content for chunk in _llm().stream("q"))
    assert text == "Final answer [1]."


def test_flatten_content_variants() -> None:
    assert flatten_content("plain") == ("plain", "")
    assert flatten_content([{"type": "text", "text": "a"}, "b", {"type": "image"}]) == ("ab", "")


@pytest.mark.parametrize(
    ("error", "expected", "fragment"),
    [
        (Error(401, "UNAUTHENTICATED", "Invalid access token."), AuthError, "DATABRICKS_TOKEN"),
        (Error(403, "PERMISSION_DENIED", "No access to endpoint."), AuthError, "403"),
        (Error(400, "BAD_REQUEST", "Invalid request"), BadRequestError, "BAD_REQUEST"),
        (Error(500, "INTERNAL_ERROR", "boom"), RemoteServerError, "500"),
    ],
)
def test_remote_failures_become_clear_errors(databricks: DatabricksStub, monkeypatch, error, expected, fragment) -> None:
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    databricks.enqueue(error)
    with pytest.raises(expected) as info:
        _ask_with_fake_retriever()
    assert fragment in str(info.value)
    assert CANARY not in str(info.value)


def test_unknown_endpoint_is_404(databricks: DatabricksStub, monkeypatch) -> None:
    monkeypatch.setenv("KB_CHAT_ENDPOINT", "no-such-endpoint")
    with pytest.raises(EndpointNotFoundError) as info:
        _ask_with_fake_retriever()
    assert "no-such-endpoint" in str(info.value) and "KB_CHAT_ENDPOINT" in str(info.value)


def test_rate_limit_is_retried_honouring_retry_after(databricks: DatabricksStub) -> None:
    limited = Error(429, "REQUEST_LIMIT_EXCEEDED", "Exceeded 2 requests per minute", headers={"Retry-After": "0.01"})
    databricks.enqueue(limited, limited, Reply("finally [1]"))
    result = _ask_with_fake_retriever()
    assert result.text == "finally [1]"
    assert len(databricks.chat_requests()) == 3


def test_rate_limit_after_retries_fails_clearly(databricks: DatabricksStub) -> None:
    limited = Error(429, "REQUEST_LIMIT_EXCEEDED", "Exceeded 2 requests per minute", headers={"Retry-After": "0.01"})
    databricks.enqueue(limited, limited, limited)
    with pytest.raises(RateLimitedError) as info:
        _ask_with_fake_retriever()
    assert "REQUEST_LIMIT_EXCEEDED" in str(info.value)
    assert len(databricks.chat_requests()) == 3  # first try + KB_MAX_RETRIES=2


def test_timeout(databricks: DatabricksStub, monkeypatch) -> None:
    monkeypatch.setenv("KB_TIMEOUT", "0.3")
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    databricks.enqueue(Reply("late", delay=1.5))
    with pytest.raises(RemoteTimeoutError) as info:
        _ask_with_fake_retriever()
    assert "timed out" in str(info.value)


def test_stream_cut_mid_answer_keeps_partial(databricks: DatabricksStub, monkeypatch) -> None:
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    databricks.enqueue(Reply("The answer is twenty three days [1] and more text", chunk_size=5, drop_after_chunks=4))
    with pytest.raises(StreamInterruptedError) as info:
        _ask_with_fake_retriever()
    assert info.value.partial.startswith("The answer")
    assert "cut off" in str(info.value)


def _ask_with_fake_retriever():
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda

    settings = load_settings()
    passages = [Document(page_content="Employees get 23 vacation days.",
                         metadata={"source": "hr/pto.md", "title": "PTO", "score": 0.9})]
    service = AnswerService.from_settings(settings, command="ask", retriever=RunnableLambda(lambda q: passages))
    return service.run("how many days?")


def test_usage_is_reported_from_the_stream(databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("Twenty three [1].", usage={"prompt_tokens": 120, "completion_tokens": 5, "total_tokens": 125}))
    result = _ask_with_fake_retriever()
    assert result.usage["prompt_tokens"] == 120 and result.usage["completion_tokens"] == 5
    assert result.sources == [{"n": 1, "source": "hr/pto.md", "title": "PTO"}]
    body = databricks.chat_requests()[0]
    assert body["stream_options"] == {"include_usage": True}


def test_token_never_in_debug_logs_reprs_or_errors(databricks: DatabricksStub, caplog) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    databricks.enqueue(Reply("fine [1]"), Error(401, "UNAUTHENTICATED", "Invalid access token."))
    llm = _llm(max_retries=0)
    _ask_with_fake_retriever()
    with pytest.raises(AuthError) as info:
        _ask_with_fake_retriever()
    assert "openai" in caplog.text or "httpx" in caplog.text  # debug logging really was on
    for text in (caplog.text, repr(llm), str(llm.model_dump()), repr(load_settings()), str(info.value)):
        assert CANARY not in text
