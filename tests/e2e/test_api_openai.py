"""``kb serve`` as a real process, driven by the official ``openai`` client (and LangChain's
ChatOpenAI), streaming and not, for both models, against the loopback Databricks server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import CANARY, kb_command
from tests.databricks_stub import DatabricksStub, Error, Reply
from tests.e2e.serving import free_port, wait_ready

pytestmark = pytest.mark.slow

KEY = "notebook-key-5b7e0c1d9a2f4e68"
QUESTION = "How many vacation days do I get?"
ANSWER = "Full-time employees get 23 vacation days per year [1]."


def _respond(body: dict) -> Reply:
    """Plain answers for kb-rag; for kb-agent (tools offered) first a search, then the answer."""
    if body.get("tools") and not any(m.get("role") == "tool" for m in body["messages"]):
        return Reply("", tool_calls=[{"name": "search_knowledge", "arguments": {"query": "vacation days per year"}}],
                     usage={"prompt_tokens": 200, "completion_tokens": 10})
    return Reply(ANSWER, usage={"prompt_tokens": 150, "completion_tokens": 12})


@pytest.fixture(scope="module")
def server(stub_server: DatabricksStub, built_index: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("DATABRICKS_", "KB_", "BASE_URL", "OPENAI_"))}
    env.update({
        "DATABRICKS_TOKEN": CANARY, "base_url": stub_server.base_url, "KB_INDEX_DIR": str(built_index),
        "KB_USAGE_LEDGER": str(work / "usage.sqlite"), "KB_API_KEYS": f"notebooks:{KEY}",
        "KB_MAX_RETRIES": "0", "KB_TIMEOUT": "10",
    })
    port = free_port()
    log = (work / "serve.log").open("w+")
    process = subprocess.Popen(
        kb_command("--verbose", "serve", "--port", str(port)),
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, log)
    yield url
    process.terminate()
    process.wait(timeout=20)
    log.seek(0)
    output = log.read()
    log.close()
    assert CANARY not in output  # the token is never logged
    assert "Traceback" not in output


@pytest.fixture
def stub(stub_server: DatabricksStub) -> DatabricksStub:
    stub_server.reset()
    saved, stub_server.default_responder = stub_server.default_responder, _respond
    yield stub_server
    stub_server.default_responder = saved


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=30)


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["kb-rag", "kb-agent"]


def test_kb_rag_answers_with_sources_and_usage(client: openai.OpenAI, stub: DatabricksStub) -> None:
    response = client.chat.completions.create(model="kb-rag", messages=[{"role": "user", "content": QUESTION}])
    assert response.choices[0].message.content == ANSWER
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (150, 12, 162)
    [source] = response.model_extra["sources"]
    assert source["n"] == 1 and source["source"] == "hr/pto.md" and "23 vacation days" in source["text"]
    context = stub.chat_requests()[-1]["usage_context"]
    assert context["caller"] == "notebooks" and context["command"] == "serve"


def test_kb_rag_streams(client: openai.OpenAI, stub: DatabricksStub) -> None:
    stream = client.chat.completions.create(
        model="kb-rag", messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens == 162
    assert last.model_extra["sources"][0]["source"] == "hr/pto.md"


def test_kb_agent_searches_then_answers(client: openai.OpenAI, stub: DatabricksStub) -> None:
    response = client.chat.completions.create(model="kb-agent", messages=[{"role": "user", "content": QUESTION}])
    assert response.choices[0].message.content == ANSWER
    assert response.model_extra["sources"][0]["source"] == "hr/pto.md"
    assert response.model_extra["steps"][0]["tool"] == "search_knowledge"
    assert response.usage.total_tokens == 200 + 10 + 150 + 12
    requests = stub.chat_requests()
    assert len(requests) == 2 and requests[0]["tools"] and requests[0]["usage_context"]["caller"] == "notebooks"


def test_kb_agent_streams(client: openai.OpenAI, stub: DatabricksStub) -> None:
    chunks = list(client.chat.completions.create(
        model="kb-agent", messages=[{"role": "user", "content": QUESTION}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["sources"][0]["n"] == 1
    assert chunks[-1].usage.total_tokens == 372
    # the tool call and its result stream as they happen, before any answer text, as extra chunks
    steps = [(i, c.model_extra["step"]) for i, c in enumerate(chunks) if c.model_extra.get("step")]
    assert [(s["type"], s["tool"]) for _, s in steps] == [("tool_call", "search_knowledge"), ("tool_result", "search_knowledge")]
    assert steps[0][1]["args"] and steps[1][1]["summary"] and steps[0][1]["id"] == steps[1][1]["id"]
    first_text = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert steps[-1][0] < first_text


def test_errors_arrive_as_the_openai_client_expects(server: str, client: openai.OpenAI, stub: DatabricksStub) -> None:
    wrong = openai.OpenAI(base_url=server + "/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    assert "kb-rag" in raised.value.message
    stub.enqueue(Error(503, "TEMPORARILY_UNAVAILABLE", "the endpoint is scaling up"))
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="kb-rag", messages=[{"role": "user", "content": QUESTION}], stream=True)
    assert raised.value.status_code == 502 and "Databricks server error" in raised.value.message
    assert CANARY not in str(raised.value.body)
    stub.enqueue(Reply("one two three four five six", chunk_size=3, drop_after_chunks=2))
    with pytest.raises(openai.APIError) as raised:
        for _ in client.chat.completions.create(model="kb-rag", messages=[{"role": "user", "content": QUESTION}], stream=True):
            pass
    assert "cut off" in raised.value.message


def test_langchain_chatopenai_works_unchanged(server: str, stub: DatabricksStub) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="kb-rag", base_url=server + "/v1", api_key=KEY, max_retries=0, stream_usage=True)
    assert llm.invoke(QUESTION).content == ANSWER
    chunks = list(llm.stream(QUESTION))
    assert "".join(c.content for c in chunks) == ANSWER
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.usage_metadata["total_tokens"] == 162  # counted once


def test_search_and_ask_over_http(server: str, stub: DatabricksStub) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    found = httpx.post(server + "/api/search", json={"query": "VPN gateway Berlin", "k": 2}, headers=headers).json()
    assert found["results"][0]["source"] == "it/vpn.html"
    answered: dict[str, Any] = httpx.post(server + "/api/ask", json={"question": QUESTION}, headers=headers, timeout=30).json()
    assert answered["answer"] == ANSWER and answered["sources"][0]["source"] == "hr/pto.md"
    assert answered["usage"]["total_tokens"] == 162
