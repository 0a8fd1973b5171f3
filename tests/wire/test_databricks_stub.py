"""Tests for the loopback Databricks Model Serving stub (tests/databricks_stub.py)."""

from __future__ import annotations

import json
import math
import socket
import threading
import time

import httpx
import openai
import pytest

from tests.databricks_stub import (
    CHAT_PATH,
    EMBEDDINGS_PATH,
    DatabricksStub,
    Embeddings,
    Error,
    Recorded,
    Reply,
    embed_text,
)

CHAT_MODEL = "test-chat"
EMB_MODEL = "databricks-gte-large-en"
MSGS = [{"role": "user", "content": "What is the answer?"}]


@pytest.fixture(scope="module")
def _server():
    with DatabricksStub() as s:
        yield s


@pytest.fixture
def stub(_server):
    """Module-wide server, reset per test (keeps the suite fast)."""
    _server.reset()
    responder = _server.default_responder
    yield _server
    _server.default_responder = responder
    _server.reset()


@pytest.fixture(scope="module")
def _client(_server):
    c = openai.OpenAI(base_url=_server.base_url, api_key=_server.token, max_retries=0, timeout=5)
    yield c
    c.close()


@pytest.fixture
def client(stub, _client):
    return _client


@pytest.fixture
def raw(stub):
    with httpx.Client(
        base_url=stub.base_url, headers={"Authorization": f"Bearer {stub.token}"}, timeout=5
    ) as c:
        yield c


def _stream(client, **kw):
    kw.setdefault("model", CHAT_MODEL)
    kw.setdefault("messages", MSGS)
    return list(client.chat.completions.create(stream=True, **kw))


# --------------------------------------------------------------------------- #
# lifecycle / basics
# --------------------------------------------------------------------------- #


def test_urls_and_defaults(stub):
    assert stub.host_url.startswith("http://127.0.0.1:")
    assert stub.base_url == stub.host_url + "/serving-endpoints"
    assert stub.token == "dapi-test-token"
    assert stub.endpoints == set(DatabricksStub.DEFAULT_ENDPOINTS)
    assert {"databricks-meta-llama-3-3-70b-instruct", "databricks-claude-sonnet-4-5", "databricks-gpt-oss-120b",
            "databricks-meta-llama-3-1-405b-instruct", "test-chat"} <= stub.endpoints
    assert stub.embedding_endpoints == {"databricks-gte-large-en"}


def test_start_stop_explicit_and_idle_keepalive_does_not_block_stop():
    s = DatabricksStub(token="t1").start()
    c = httpx.Client(headers={"Authorization": "Bearer t1"})
    r = c.post(s.base_url + "/chat/completions", json={"model": CHAT_MODEL, "messages": MSGS})
    assert r.status_code == 200
    stopper = threading.Thread(target=s.stop)  # a keep-alive connection is still open in the client pool
    stopper.start()
    stopper.join(timeout=30)
    assert not stopper.is_alive()  # stop() does not hang on the idle connection
    s.stop()  # idempotent
    c.close()


def test_plain_reply_default(client):
    r = client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    assert r.object == "chat.completion"
    assert r.model == CHAT_MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Stub answer."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 4  # words in "What is the answer?"
    assert r.usage.completion_tokens == 2
    assert r.usage.total_tokens == 6


def test_scripted_fifo_then_default(stub, client):
    stub.enqueue(Reply("first"), Reply("second", usage={"prompt_tokens": 7, "completion_tokens": 3}))
    assert stub.pending() == 2
    texts = [client.chat.completions.create(model=CHAT_MODEL, messages=MSGS) for _ in range(3)]
    assert [t.choices[0].message.content for t in texts] == ["first", "second", "Stub answer."]
    assert texts[1].usage.total_tokens == 10
    assert stub.pending() == 0


def test_default_responder_and_callable_in_queue(stub, client):
    stub.default_responder = lambda body: Reply("echo: " + body["messages"][-1]["content"])
    stub.enqueue(lambda body: Reply(f"n={len(body['messages'])}"))
    r1 = client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    r2 = client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    assert r1.choices[0].message.content == "n=1"
    assert r2.choices[0].message.content == "echo: What is the answer?"


# --------------------------------------------------------------------------- #
# streaming
# --------------------------------------------------------------------------- #


def test_stream_reply_assembles(stub, client):
    text = "The quick brown fox jumps over the lazy dog."
    stub.enqueue(Reply(text, chunk_size=5))
    chunks = _stream(client)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text
    assert all(len(p) <= 5 for p in pieces)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # no include_usage -> no usage at all
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_raw_wire_format(stub, raw):
    stub.enqueue(Reply("hi", chunk_size=8))
    with raw.stream(
        "POST", "/chat/completions", json={"model": CHAT_MODEL, "messages": MSGS, "stream": True}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert [p["choices"][0]["delta"] for p in payloads] == [
        {"role": "assistant", "content": ""},
        {"content": "hi"},
        {},
    ]
    # connection is reusable after a stream (chunked encoding, keep-alive)
    assert raw.post("/chat/completions", json={"model": CHAT_MODEL, "messages": MSGS}).status_code == 200


def test_stream_include_usage_chunk(stub, client):
    stub.enqueue(Reply("one two three", usage={"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}))
    chunks = _stream(client, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (11, 3, 14)
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_stream_cumulative_usage(stub, client):
    stub.enqueue(
        Reply(
            "a b c d e f g h",
            chunk_size=4,
            cumulative_usage=True,
            usage={"prompt_tokens": 5, "completion_tokens": 8},
        )
    )
    chunks = _stream(client)
    assert all(c.usage is not None for c in chunks)
    comp = [c.usage.completion_tokens for c in chunks]
    assert comp == sorted(comp) and comp[-1] == 8
    assert all(c.usage.prompt_tokens == 5 for c in chunks)
    assert all(c.usage.total_tokens == 5 + c.usage.completion_tokens for c in chunks)
    # naive summing over-counts -- that's the Databricks quirk this simulates
    assert sum(comp) > 8


# --------------------------------------------------------------------------- #
# tool calls / content blocks
# --------------------------------------------------------------------------- #

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the KB",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]


def test_tool_call_non_stream(stub, client):
    stub.enqueue(
        Reply(
            "",
            tool_calls=[
                {"name": "search", "arguments": {"query": "databricks"}, "id": "call_abc"},
                {"name": "search", "arguments": '{"query": "raw"}'},
            ],
        )
    )
    r = client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    tc = choice.message.tool_calls
    assert tc[0].id == "call_abc" and tc[0].type == "function"
    assert tc[0].function.name == "search"
    assert json.loads(tc[0].function.arguments) == {"query": "databricks"}
    assert tc[1].function.arguments == '{"query": "raw"}'
    assert tc[1].id
    assert stub.chat_requests()[0]["tools"] == TOOLS


def test_tool_call_stream(stub, client):
    stub.enqueue(
        Reply(
            "",
            tool_calls=[
                {"name": "search", "arguments": {"query": "a fairly long query string"}, "id": "c1"},
                {"name": "lookup", "arguments": {"id": 42}, "id": "c2"},
            ],
            chunk_size=4,
        )
    )
    chunks = _stream(client, tools=TOOLS)
    calls: dict = {}
    for c in chunks:
        for d in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": None, "name": "", "args": ""})
            if d.id:
                entry["id"] = d.id
            if d.function and d.function.name:
                entry["name"] += d.function.name
            if d.function and d.function.arguments:
                entry["args"] += d.function.arguments
    assert calls[0]["id"] == "c1" and calls[0]["name"] == "search"
    assert json.loads(calls[0]["args"]) == {"query": "a fairly long query string"}
    assert calls[1]["id"] == "c2" and json.loads(calls[1]["args"]) == {"id": 42}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    arg_deltas = [
        d for c in chunks for d in (c.choices[0].delta.tool_calls or []) if d.function.arguments
    ]
    assert len(arg_deltas) > 2  # arguments really are split


BLOCKS = [
    {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking hard..."}]},
    {"type": "text", "text": "final answer"},
]


def test_content_blocks_non_stream(stub, client):
    stub.enqueue(Reply(content_blocks=BLOCKS))
    r = client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    assert r.choices[0].message.content == BLOCKS  # a LIST, passed through by openai


def test_content_blocks_stream(stub, client):
    stub.enqueue(Reply(content_blocks=BLOCKS, chunk_size=6))
    chunks = _stream(client)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(isinstance(c, list) for c in contents)
    text = "".join(b["text"] for c in contents for b in c if b["type"] == "text")
    reasoning = "".join(
        s["text"] for c in contents for b in c if b["type"] == "reasoning" for s in b["summary"]
    )
    assert text == "final answer"
    assert reasoning == "thinking hard..."


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #


def test_bad_token_401(stub):
    c = openai.OpenAI(base_url=stub.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        c.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    assert ei.value.status_code == 401
    assert ei.value.body == {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."}
    assert "Invalid access token." in str(ei.value)


def test_missing_auth_header_raw(stub):
    r = httpx.post(stub.base_url + "/chat/completions", json={"model": CHAT_MODEL, "messages": MSGS})
    assert r.status_code == 401
    assert r.json()["error_code"] == "UNAUTHENTICATED"


def test_scripted_429_rate_limit(stub, client):
    stub.enqueue(Error(429, "REQUEST_LIMIT_EXCEEDED", "Exceeded workspace rate limit.", headers={"Retry-After": "0"}))
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    assert "Exceeded workspace rate limit." in str(ei.value)
    assert ei.value.body["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert ei.value.response.headers["retry-after"] == "0"
    # queue consumed; next call succeeds
    assert client.chat.completions.create(model=CHAT_MODEL, messages=MSGS).choices[0].message.content


def test_429_retried_by_client_with_retries(stub):
    # NB: openai ignores "Retry-After: 0" (only 0 < x <= 60 is honoured) and falls back to
    # ~0.4-0.5 s exponential backoff; a small float keeps retry tests fast.
    stub.enqueue(Error(429, "REQUEST_LIMIT_EXCEEDED", "slow down", headers={"Retry-After": "0.01"}), Reply("ok"))
    c = openai.OpenAI(base_url=stub.base_url, api_key=stub.token, max_retries=1)
    assert c.chat.completions.create(model=CHAT_MODEL, messages=MSGS).choices[0].message.content == "ok"
    assert len(stub.chat_requests()) == 2


@pytest.mark.parametrize(
    "status,code,exc",
    [
        (403, "PERMISSION_DENIED", openai.PermissionDeniedError),
        (500, "INTERNAL_ERROR", openai.InternalServerError),
        (503, "TEMPORARILY_UNAVAILABLE", openai.InternalServerError),
    ],
)
def test_scripted_errors(stub, client, status, code, exc):
    stub.enqueue(Error(status, code, f"msg for {code}"))
    with pytest.raises(exc) as ei:
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    assert ei.value.status_code == status
    assert f"msg for {code}" in str(ei.value)


def test_scripted_error_on_stream_request(stub, client):
    stub.enqueue(Error(503, "TEMPORARILY_UNAVAILABLE", "overloaded"))
    with pytest.raises(openai.InternalServerError):
        _stream(client)


def test_unknown_field_400(stub, client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, extra_body={"bogus": 1})
    assert ei.value.body == {"error_code": "BAD_REQUEST", "message": "Invalid request: unknown field 'bogus'"}


def test_max_completion_tokens_400(stub, client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, max_completion_tokens=10)
    assert "max_completion_tokens" in str(ei.value)
    # max_tokens is fine
    assert client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, max_tokens=10).choices


def test_scripted_response_not_consumed_by_rejected_request(stub, client):
    stub.enqueue(Reply("kept"))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, max_completion_tokens=10)
    assert stub.pending() == 1
    assert client.chat.completions.create(model=CHAT_MODEL, messages=MSGS).choices[0].message.content == "kept"


@pytest.mark.parametrize("uc", ["str", {"a": 1}, ["x"]])
def test_usage_context_must_be_string_map(client, uc):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, extra_body={"usage_context": uc})


def test_usage_context_ok(stub, client):
    client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, extra_body={"usage_context": {"app": "kb"}})
    assert stub.chat_requests()[0]["usage_context"] == {"app": "kb"}


def test_unknown_model_404(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="nope", messages=MSGS)
    assert ei.value.body == {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Endpoint 'nope' does not exist."}


def test_strict_in_tools_400(client):
    tools = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}]
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, tools=tools)
    assert "strict" in str(ei.value)


def test_property_named_strict_is_allowed(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {"type": "object", "properties": {"strict": {"type": "boolean"}}},
            },
        }
    ]
    assert client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, tools=tools).choices


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "retrieval"},
        {"type": "function", "function": {"parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "f"}},
    ],
)
def test_malformed_tools_400(client, tool):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, tools=[tool])


def test_unknown_route_404_and_bad_json(stub, raw):
    r = raw.post("/nope/invocations", json={})
    assert r.status_code == 404 and r.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    r = raw.get("/chat/completions")
    assert r.status_code == 404
    r = raw.post("/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error_code"] == "BAD_REQUEST"
    assert stub.requests[-1].body is None


# --------------------------------------------------------------------------- #
# dropped stream / delay
# --------------------------------------------------------------------------- #


def test_dropped_stream_raises_api_connection_error(stub, client):
    stub.enqueue(Reply("hello world, this is a long answer", chunk_size=4, drop_after_chunks=3))
    got = []
    with pytest.raises(openai.APIConnectionError) as ei:
        for chunk in client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, stream=True):
            got.append(chunk)
    # chunks sent before the cut are delivered first, then the error surfaces
    assert len(got) == 3
    assert "".join(c.choices[0].delta.content or "" for c in got) == "hello wo"
    assert "incomplete chunked read" in str(ei.value.__cause__)
    assert not isinstance(ei.value, openai.APITimeoutError)
    # the stub keeps serving afterwards
    assert client.chat.completions.create(model=CHAT_MODEL, messages=MSGS).choices


def test_dropped_stream_before_done_only(stub, client):
    # drop_after_chunks >= number of events: every chunk (incl. finish_reason) arrives, only [DONE] is missing
    stub.enqueue(Reply("hi", drop_after_chunks=100))
    got = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, stream=True):
            got.append(chunk)
    assert got[-1].choices[0].finish_reason == "stop"


def test_dropped_non_stream_request(stub, client):
    stub.enqueue(Reply("x", drop_after_chunks=0))
    with pytest.raises(openai.APIConnectionError) as ei:
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    assert "without sending a response" in str(ei.value.__cause__)


def test_dropped_stream_raw_httpx(stub, raw):
    stub.enqueue(Reply("abcdefgh" * 4, drop_after_chunks=2))
    lines = []
    with pytest.raises(httpx.RemoteProtocolError):
        with raw.stream(
            "POST", "/chat/completions", json={"model": CHAT_MODEL, "messages": MSGS, "stream": True}
        ) as r:
            for ln in r.iter_lines():
                lines.append(ln)
    assert "data: [DONE]" not in lines


def test_delay_and_client_timeout(stub, client):
    stub.enqueue(Reply("slow", delay=0.15))
    t0 = time.perf_counter()
    r = client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    assert time.perf_counter() - t0 >= 0.15
    assert r.choices[0].message.content == "slow"

    stub.enqueue(Reply("too slow", delay=1.0))
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, timeout=0.1)


# --------------------------------------------------------------------------- #
# embeddings
# --------------------------------------------------------------------------- #


def test_embeddings_shape_and_determinism(stub, client):
    inputs = ["the cat sat on the mat", "the cat sat on a mat", "quantum chromodynamics lecture"]
    r1 = client.embeddings.create(model=EMB_MODEL, input=inputs)  # openai sends encoding_format=base64
    r2 = client.embeddings.create(model=EMB_MODEL, input=inputs, encoding_format="float")
    v1 = [d.embedding for d in r1.data]
    v2 = [d.embedding for d in r2.data]
    assert [d.index for d in r1.data] == [0, 1, 2]
    assert all(len(v) == 16 for v in v1)
    for a, b in zip(v1, v2):
        assert a == pytest.approx(b, abs=1e-6)
        assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-5)
    assert v2[0] == pytest.approx(embed_text(inputs[0]))

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b))

    assert cos(v2[0], v2[1]) > cos(v2[0], v2[2])
    assert r1.usage.prompt_tokens == r1.usage.total_tokens == 6 + 6 + 3
    assert r1.model == EMB_MODEL
    assert stub.embedding_requests()[0]["encoding_format"] == "base64"


def test_embeddings_raw_float_format(raw):
    r = raw.post("/embeddings", json={"model": EMB_MODEL, "input": "hello"})
    body = r.json()
    assert body["object"] == "list"
    assert body["data"][0]["object"] == "embedding"
    assert isinstance(body["data"][0]["embedding"], list) and len(body["data"][0]["embedding"]) == 16


def test_embedding_dim_configurable():
    with DatabricksStub(embedding_dim=8) as s:
        c = openai.OpenAI(base_url=s.base_url, api_key=s.token, max_retries=0)
        assert len(c.embeddings.create(model=EMB_MODEL, input="x y").data[0].embedding) == 8


def test_embeddings_batch_limit(stub, client):
    client.embeddings.create(model=EMB_MODEL, input=["x"] * 150)
    with pytest.raises(openai.BadRequestError) as ei:
        client.embeddings.create(model=EMB_MODEL, input=["x"] * 151)
    assert "151" in str(ei.value)


def test_embeddings_validation(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.embeddings.create(model=EMB_MODEL, input=[[1, 2, 3]])
    assert "input must be strings" in str(ei.value)
    with pytest.raises(openai.BadRequestError) as ei:
        client.embeddings.create(model=EMB_MODEL, input="x", dimensions=8)
    assert "dimensions" in str(ei.value)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-embedder", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=CHAT_MODEL, input="x")  # chat endpoint can't embed


def test_embeddings_queue_separate_from_chat(stub, client):
    stub.enqueue(Reply("chat scripted"))
    stub.enqueue_embeddings(
        Error(429, "REQUEST_LIMIT_EXCEEDED", "embed limit"), Embeddings(vectors=[[1.0, 0.0]])
    )
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model=EMB_MODEL, input="a")
    assert client.embeddings.create(model=EMB_MODEL, input="a", encoding_format="float").data[0].embedding == [1.0, 0.0]
    assert stub.pending_embeddings() == 0 and stub.pending() == 1
    assert client.chat.completions.create(model=CHAT_MODEL, messages=MSGS).choices[0].message.content == "chat scripted"


# --------------------------------------------------------------------------- #
# recording / reset / perf
# --------------------------------------------------------------------------- #


def test_recorded_requests(stub, client):
    stub.enqueue(Error(500, "INTERNAL_ERROR", "boom"))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS, temperature=0.1)
    rec = stub.requests[0]
    assert isinstance(rec, Recorded)
    assert rec.path == CHAT_PATH and rec.method == "POST"
    assert rec.headers["authorization"] == f"Bearer {stub.token}"
    assert rec.headers["content-type"] == "application/json"
    assert all(k == k.lower() for k in rec.headers)
    assert rec.body == {"model": CHAT_MODEL, "messages": MSGS, "temperature": 0.1}
    assert stub.chat_requests() == [rec.body]

    bad = openai.OpenAI(base_url=stub.base_url, api_key="bad", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model=EMB_MODEL, input="q")
    assert stub.requests[-1].path == EMBEDDINGS_PATH  # recorded even when rejected
    assert stub.embedding_requests()[0]["input"] == "q"


def test_recorded_before_response(stub, client):
    seen = []
    stub.enqueue(lambda body: (seen.append(len(stub.requests)), Reply("x"))[1])
    client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    assert seen == [1]


def test_reset(stub, client):
    stub.enqueue(Reply("a"))
    stub.enqueue_embeddings(Embeddings())
    client.embeddings.create(model=EMB_MODEL, input="x")
    stub.enqueue_embeddings(Embeddings())
    stub.reset()
    assert stub.requests == [] and stub.pending() == 0 and stub.pending_embeddings() == 0
    assert client.chat.completions.create(model=CHAT_MODEL, messages=MSGS).choices[0].message.content == "Stub answer."


def test_concurrent_requests(stub):
    # All 8 handlers must be in flight at once to pass the barrier: proof of parallel serving
    # without a timing assert (a serial server would break the barrier after its timeout).
    barrier = threading.Barrier(8, timeout=20)

    def together(body):
        barrier.wait()
        return Reply("slowish")

    stub.default_responder = together
    results = []

    def call():
        c = openai.OpenAI(base_url=stub.base_url, api_key=stub.token, max_retries=0)
        results.append(c.chat.completions.create(model=CHAT_MODEL, messages=MSGS).choices[0].message.content)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["slowish"] * 8
    assert not barrier.broken
    assert len(stub.requests) == 8


def test_sequential_calls_fast_tcp_nodelay(stub, client):
    client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)  # warm up the connection
    for _ in range(3):
        client.chat.completions.create(model=CHAT_MODEL, messages=MSGS)
    _stream(client)
    # Without TCP_NODELAY every call would stall ~40 ms on delayed ACK: check the option itself
    # on the server side of the live keep-alive connection(s) instead of timing calls.
    with stub._lock:
        conns = list(stub._conns)
    assert conns
    assert all(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in conns)
