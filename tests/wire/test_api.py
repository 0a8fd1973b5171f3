"""The HTTP API in-process (FastAPI TestClient): auth, limits, errors, shapes, against the loopback
Databricks server and the shared test index."""

from __future__ import annotations

import hmac
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from typer.testing import CliRunner

from agent.api import create_app
from agent.cli.app import app as cli_app
from agent.errors import ConfigError
from agent.settings import load_settings
from tests.conftest import CANARY
from tests.databricks_stub import DatabricksStub, Error, Reply

KEY = "nb-key-0123456789abcdef"
OTHER_KEY = "sb-key-fedcba9876543210"
KEYS = f"notebooks:{KEY},slackbot:{OTHER_KEY}"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = "How many vacation days do I get?"
ANSWER = "Full-time employees get 23 vacation days per year [1]."


def chat(question: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": "kb-rag", "messages": [{"role": "user", "content": question}], **extra}


def check_clean(response: Any) -> None:
    """No response may leak the token or a stack trace."""
    text = response.text
    assert CANARY not in text and "Traceback" not in text
    assert CANARY not in json.dumps(dict(response.headers))


def error_of(response: Any, status: int) -> dict[str, Any]:
    check_clean(response)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def make_client(monkeypatch: pytest.MonkeyPatch):
    """make_client(**settings_overrides, llm=..., retriever=...) -> a started TestClient with the key."""
    monkeypatch.setenv("KB_API_KEYS", KEYS)
    with ExitStack() as stack:

        def make(*, llm: Any = None, retriever: Any = None, headers: dict | None = None, raise_server_exceptions: bool = True,
                 **overrides: Any) -> TestClient:
            app = create_app(load_settings(**overrides), llm=llm, retriever=retriever)
            client = TestClient(app, headers=AUTH if headers is None else headers, raise_server_exceptions=raise_server_exceptions)
            return stack.enter_context(client)

        yield make


@pytest.fixture
def client(indexed: Path, databricks: DatabricksStub, make_client) -> TestClient:
    databricks.default_responder = lambda body: Reply(ANSWER, usage={"prompt_tokens": 120, "completion_tokens": 12})
    return make_client()


class FixedRetriever(BaseRetriever):
    """Two passages, whatever the query (for tests that need no index)."""

    def _get_relevant_documents(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
        return [
            Document(page_content="Full-time employees get 23 vacation days.", metadata={"source": "hr/pto.md", "title": "PTO", "score": 0.9}),
            Document(page_content="Sick leave is unlimited.", metadata={"source": "hr/sick.md", "title": "Sick", "score": 0.8}),
        ]


class BrokenRetriever(BaseRetriever):
    def _get_relevant_documents(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
        raise RuntimeError("secret internal detail /srv/kb/private")


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ---------------------------------------------------------------- authentication


PROTECTED = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/kb-rag", None),
    ("POST", "/v1/chat/completions", chat()),
    ("POST", "/api/search", {"query": "vacation"}),
    ("POST", "/api/ask", {"question": QUESTION}),
    ("GET", "/api/documents", None),
    ("GET", "/api/documents/hr/pto.md", None),
]


@pytest.mark.parametrize("method,path,body", PROTECTED)
def test_every_route_but_health_and_the_page_needs_a_key(client: TestClient, databricks: DatabricksStub,
                                                         method: str, path: str, body: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        response = client.request(method, path, json=body, headers={"Authorization": ""} | headers)
        error = error_of(response, 401)
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert databricks.chat_requests() == []  # nothing reached Databricks
    assert client.request(method, path, json=body).status_code == 200  # with the key


def test_health_and_page_need_no_key(client: TestClient) -> None:
    anonymous = {"Authorization": ""}
    assert client.get("/healthz", headers=anonymous).json() == {"status": "ok"}
    ready = client.get("/readyz", headers=anonymous)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    page = client.get("/", headers=anonymous)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset, headers=anonymous).status_code == 200


def test_keys_are_all_compared_with_compare_digest(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.get("/v1/models").status_code == 200
    # The first key matched, and the second was still compared: which key matched does not show in the timing.
    assert len(calls) == 2 and calls[0][1] == KEY.encode()


def test_caller_name_is_sent_in_usage_context(indexed: Path, databricks: DatabricksStub, make_client,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_USAGE_CONTEXT", json.dumps({"team": "data-platform"}))
    databricks.default_responder = lambda body: Reply(ANSWER)
    client = make_client(headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200
    context = databricks.chat_requests()[-1]["usage_context"]
    assert context["caller"] == "slackbot" and context["team"] == "data-platform" and context["command"] == "serve"
    assert context["model"] == "kb-rag"


def test_without_keys_the_api_is_open_and_the_caller_anonymous(indexed: Path, databricks: DatabricksStub,
                                                                 make_client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KB_API_KEYS")
    databricks.default_responder = lambda body: Reply(ANSWER)
    client = make_client(headers={"Host": "localhost"})  # open mode answers loopback names only
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200
    assert databricks.chat_requests()[-1]["usage_context"]["caller"] == "anonymous"


def test_a_malformed_key_list_fails_without_echoing_a_key(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_API_KEYS", "notebooks:s3cret-value,orphan-s3cret")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "KB_API_KEYS" in str(raised.value) and "s3cret" not in str(raised.value)
    monkeypatch.setenv("KB_API_KEYS", "a:same-s3cret,b:same-s3cret")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "reuses" in str(raised.value) and "s3cret" not in str(raised.value)


# ---------------------------------------------------------------- limits


def test_body_size_limit_with_and_without_content_length(env: Path, make_client) -> None:
    client = make_client(retriever=FixedRetriever(), api_max_body_bytes=2048)
    big = chat("x" * 5000)
    error = error_of(client.post("/v1/chat/completions", json=big), 413)
    assert "2048" in error["message"] and error["code"] == "request_too_large"

    def chunks():  # no Content-Length: sent chunked
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 1000):
            yield payload[i:i + 1000]

    response = client.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert error_of(response, 413)["code"] == "request_too_large"


def test_question_length_message_count_and_max_tokens(indexed: Path, databricks: DatabricksStub, make_client) -> None:
    client = make_client(api_max_question_chars=100, api_max_messages=3, api_max_tokens=500)
    error = error_of(client.post("/v1/chat/completions", json=chat("why? " * 30)), 400)
    assert error["code"] == "question_too_long" and "100" in error["message"]
    assert error_of(client.post("/api/ask", json={"question": "why? " * 30}), 400)["code"] == "question_too_long"
    assert error_of(client.post("/api/search", json={"query": "why? " * 30}), 400)["code"] == "question_too_long"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] * 2
    error = error_of(client.post("/v1/chat/completions", json={"model": "kb-rag", "messages": messages + [{"role": "user", "content": "q"}]}), 400)
    assert error["code"] == "too_many_messages" and error["param"] == "messages"
    error = error_of(client.post("/v1/chat/completions", json=chat(max_tokens=501)), 400)
    assert error["code"] == "max_tokens_too_large" and error["param"] == "max_tokens"
    assert databricks.chat_requests() == []  # refused before any work

    databricks.enqueue(Reply(ANSWER))
    assert client.post("/v1/chat/completions", json=chat(max_tokens=77, temperature=0.5)).status_code == 200
    sent = databricks.chat_requests()[-1]
    assert sent["max_tokens"] == 77 and sent["temperature"] == 0.5
    databricks.enqueue(Reply(ANSWER))
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200
    assert databricks.chat_requests()[-1]["max_tokens"] == 500  # KB_MAX_TOKENS (1024) capped by the ceiling


def test_requests_the_server_cannot_honour_are_refused(env: Path, make_client) -> None:
    client = make_client(retriever=FixedRetriever())
    assert error_of(client.post("/v1/chat/completions", json=chat(n=2)), 400)["param"] == "n"
    image = {"model": "kb-rag", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]}
    assert error_of(client.post("/v1/chat/completions", json=image), 400)["code"] == "unsupported_content"
    last_not_user = {"model": "kb-rag", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert "last message" in error_of(client.post("/v1/chat/completions", json=last_not_user), 400)["message"]
    error = error_of(client.post("/v1/chat/completions", json={**chat(), "model": "gpt-4o"}), 404)
    assert error["code"] == "model_not_found" and "kb-rag" in error["message"]
    assert error_of(client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}), 400)
    error = error_of(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}]}), 400)
    assert error["param"] == "model" and "required" in error["message"]
    assert error_of(client.get("/v1/nothing-here"), 404)


def test_concurrency_gate_answers_429_with_retry_after() -> None:
    from agent.api.errors import ApiError
    from agent.api.limits import ConcurrencyGate

    gate = ConcurrencyGate(2)
    first, second = gate.acquire(), gate.acquire()
    with pytest.raises(ApiError) as raised:
        gate.acquire()
    assert raised.value.status == 429 and raised.value.headers["Retry-After"] == "1"
    first.release()
    first.release()  # idempotent: one slot back, not two
    third = gate.acquire()
    with pytest.raises(ApiError):
        gate.acquire()
    second.release(), third.release()
    assert gate.active == 0


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "failure,status,code",
    [
        (Error(401, "UNAUTHENTICATED", "Invalid access token."), 502, "upstream_auth"),
        (Error(404, "RESOURCE_DOES_NOT_EXIST", "Endpoint does not exist."), 502, "upstream_endpoint_not_found"),
        (Error(429, "REQUEST_LIMIT_EXCEEDED", "slow down", headers={"Retry-After": "0.01"}), 503, "upstream_rate_limited"),
        (Error(500, "INTERNAL_ERROR", "boom"), 502, "upstream_remote_server"),
        (Reply("late", delay=3), 504, "upstream_remote_timeout"),
    ],
)
def test_databricks_failures_map_to_502_503_504(indexed: Path, databricks: DatabricksStub, make_client,
                                                  failure: Any, status: int, code: str, stream: bool) -> None:
    client = make_client(max_retries=0, timeout=1)
    databricks.enqueue(failure)
    response = client.post("/v1/chat/completions", json=chat(stream=stream))
    error = error_of(response, status)
    assert error["code"] == code and error["type"] == "upstream_error"
    assert "Databricks" in error["message"] or "serving endpoint" in error["message"]
    if status == 503:
        assert response.headers["Retry-After"]


def test_a_stream_cut_midway_ends_with_an_error_event(indexed: Path, databricks: DatabricksStub, client: TestClient) -> None:
    databricks.enqueue(Reply("one two three four five six seven eight nine ten", chunk_size=4, drop_after_chunks=3))
    response = client.post("/v1/chat/completions", json=chat(stream=True))
    check_clean(response)
    assert response.status_code == 200  # the answer had started
    events = sse_events(response.text)
    assert events[-1] != "[DONE]" and "cut off" in events[-1]["error"]["message"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text.startswith("one two")


def test_unexpected_failures_are_a_generic_500(env: Path, databricks: DatabricksStub, make_client) -> None:
    client = make_client(retriever=BrokenRetriever(), raise_server_exceptions=False)  # as uvicorn: log, answer 500
    for response in (client.post("/v1/chat/completions", json=chat()), client.post("/api/search", json={"query": "x"})):
        error = error_of(response, 500)
        assert "secret internal detail" not in response.text and error["code"] == "internal_error"


def test_missing_index_is_503_and_readyz_says_why(env: Path, databricks: DatabricksStub, make_client) -> None:
    client = make_client()
    error = error_of(client.post("/v1/chat/completions", json=chat()), 503)
    assert "kb ingest" in error["message"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "kb ingest" in ready.json()["checks"]["index"]
    assert client.get("/healthz").status_code == 200


def test_without_a_databricks_model_chat_is_503_and_ask_shows_passages(indexed: Path, make_client) -> None:
    client = make_client()
    error = error_of(client.post("/v1/chat/completions", json=chat()), 503)
    assert "no Databricks model configured" in error["message"]
    data = client.post("/api/ask", json={"question": QUESTION}).json()
    assert data["answer"] is None and "DATABRICKS_TOKEN" in data["error"]
    assert data["passages"][0]["source"] == "hr/pto.md"
    assert client.get("/readyz").json()["checks"]["llm"].startswith("not configured")


# ---------------------------------------------------------------- answers


def test_completion_is_openai_shaped_with_sources_and_usage(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat())
    check_clean(response)
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "kb-rag" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": ANSWER} and choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132}
    [source] = body["sources"]
    assert source["n"] == 1 and source["source"] == "hr/pto.md" and "23 vacation days" in source["text"]


def test_stream_is_openai_sse_with_sources_in_the_last_chunk(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat(stream=True))
    check_clean(response)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == ANSWER
    assert len(chunks) > 3  # streamed in pieces, not in one block
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"]["total_tokens"] == 132 and last["sources"][0]["source"] == "hr/pto.md"
    assert all("sources" not in c for c in chunks[:-1])


def test_stream_with_include_usage_puts_usage_in_a_final_chunk_without_choices(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    chunks = sse_events(response.text)[:-1]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[-2]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 120
    assert chunks[-1]["sources"][0]["n"] == 1


def test_earlier_messages_are_condensed_into_the_question(indexed: Path, databricks: DatabricksStub, client: TestClient) -> None:
    def respond(body: dict) -> Reply:
        system = body["messages"][0]["content"]
        if "standalone" in system:
            return Reply("How many vacation days carry over to the next year?")
        return Reply("Up to 4 unused vacation days carry over [1].")

    databricks.default_responder = respond
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Full-time employees get 23 vacation days per year [1]."},
        {"role": "user", "content": "and how many carry over?"},
    ]
    body = client.post("/v1/chat/completions", json={"model": "kb-rag", "messages": messages}).json()
    assert body["choices"][0]["message"]["content"].startswith("Up to 4")
    condense, answer = databricks.chat_requests()
    transcript = condense["messages"][-1]["content"]
    assert "23 vacation days" in transcript and "and how many carry over?" in transcript
    prompt = answer["messages"][-1]["content"]
    assert "How many vacation days carry over to the next year?" in prompt and "carry over until April 30" in prompt
    assert body["usage"]["total_tokens"] > 0 and body["sources"][0]["source"] == "hr/pto.md"


def test_irrelevant_question_is_declined_without_calling_the_model(indexed: Path, databricks: DatabricksStub,
                                                                   client: TestClient) -> None:
    question = "Which grand prix did the 1971 Tyrrell car win?"
    body = client.post("/v1/chat/completions", json=chat(question)).json()
    assert "does not cover" in body["choices"][0]["message"]["content"] and body["sources"] == []
    assert databricks.chat_requests() == []
    ask = client.post("/api/ask", json={"question": question}).json()
    assert ask["refused"] is True and ask["sources"] == []


def test_models_are_listed(client: TestClient) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list" and [m["id"] for m in data["data"]] == ["kb-rag", "kb-agent"]
    assert client.get("/v1/models/kb-agent").json()["id"] == "kb-agent"
    assert error_of(client.get("/v1/models/gpt-4"), 404)["code"] == "model_not_found"


# ---------------------------------------------------------------- same JSON as the CLI


def test_api_search_returns_what_kb_search_json_prints(client: TestClient) -> None:
    cli = CliRunner().invoke(cli_app, ["search", "who approves expenses over 800 euros", "-k", "3", "--json"])
    assert cli.exit_code == 0, cli.stderr
    api = client.post("/api/search", json={"query": "who approves expenses over 800 euros", "k": 3})
    assert api.json() == json.loads(cli.stdout)
    explained = client.post("/api/search", json={"query": "vpn", "k": 2, "mode": "bm25", "explain": True}).json()
    assert explained["mode"] == "bm25" and "explain" in explained["results"][0]


def test_api_ask_returns_what_kb_ask_json_prints(client: TestClient, databricks: DatabricksStub) -> None:
    cli = CliRunner().invoke(cli_app, ["ask", QUESTION, "--json"])
    assert cli.exit_code == 0, cli.stderr
    api = client.post("/api/ask", json={"question": QUESTION})
    check_clean(api)
    assert api.json() == json.loads(cli.stdout)
    assert api.json()["sources"][0]["source"] == "hr/pto.md"


# ---------------------------------------------------------------- documents


def test_documents_are_listed_and_served_with_safe_types(client: TestClient) -> None:
    listed = client.get("/api/documents").json()["documents"]
    assert {d["source"] for d in listed} >= {"hr/pto.md", "it/vpn.html", "finance/expenses.pdf"}
    assert all(set(d) == {"source", "title", "chunks", "size", "indexed_at"} for d in listed)  # no server paths
    markdown = client.get("/api/documents/hr/pto.md")
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/plain")
    assert "23 vacation days" in markdown.text
    html = client.get("/api/documents/it/vpn.html")
    assert html.headers["content-type"].startswith("text/html")
    assert html.headers["Content-Security-Policy"].startswith("sandbox")  # its scripts never run on this origin
    pdf = client.get("/api/documents/finance/expenses.pdf")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    assert error_of(client.get("/api/documents/hr/missing.md"), 404)["code"] == "document_not_found"


def test_a_symlink_out_of_the_ingested_root_is_not_served(env: Path, tmp_path: Path, make_client,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest.sync.records import Records

    root = tmp_path / "docs"
    root.mkdir()
    (root / "ok.md").write_text("fine", encoding="utf-8")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET", encoding="utf-8")
    (root / "leak.md").symlink_to(secret)
    index = tmp_path / "index"
    records = Records(index, "collection-1")
    records.set_state("active", "collection-1")
    for source in ("ok.md", "leak.md"):
        records.put(root, source, "0" * 64, source, ["c"])
    records.close()
    monkeypatch.setenv("KB_INDEX_DIR", str(index))
    client = make_client(retriever=FixedRetriever())
    assert client.get("/api/documents/ok.md").text == "fine"
    response = client.get("/api/documents/leak.md")
    assert error_of(response, 404) and "TOP SECRET" not in response.text
