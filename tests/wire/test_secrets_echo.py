"""The token never leaks, even when the upstream server echoes it back (issue 18, items 6 and 13).

A hostile or careless serving endpoint answers every request with the credential it received: in
error bodies (``{"error_code", "message": "... Bearer <token> ..."}``), in response headers, in a
redirect ``Location`` (so the token ends up in the URL the client fetches next and logs), and in a
streamed SSE error event. Every surface is driven against it: ``kb ask``, ``kb chat``, ``kb agent``,
``kb search`` and ``kb ingest`` with Databricks embeddings, and ``kb serve``'s API (both models,
streamed and not); stdout, stderr, ``--verbose`` / ``--log-json`` logs, API bodies and headers and
the usage ledger must never contain it.

The token here is not shaped like a Databricks token (``dapi...``), so only its registration when
settings load can mask it; a second, never-registered ``dapi...`` value checks the shape rule.

Also: unauthenticated ``/readyz`` and API errors must not reveal the index path or the Databricks
URL (item 13).
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent.api import create_app
from agent.observability.logs import MASK, configure_logging
from agent.settings import load_settings
from tests.conftest import KbRunner

TOKEN = "kbcanary-QX7Z-c4n4ry-91f2e8"  # registered when settings load; no pattern knows it
UNREGISTERED = "dapi0123456789abcdef0123456789ab"  # never configured: masked by its shape
KEY = "api-key-for-the-echo-tests-0123"
QUESTION = "How many vacation days do I get?"


# ---------------------------------------------------------------- the echoing endpoint


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        auth = self.headers.get("Authorization", "")
        token = auth.split(" ", 1)[-1]
        self.server.seen.append(auth)
        mode, status = self.server.mode, self.server.status
        if self.path.startswith("/moved/"):  # where the redirect sent the client: echo the URL
            return self._json(404, {"error_code": "NOT_FOUND", "message": f"nothing at {self.path}"})
        if self.path.endswith("/embeddings") and self.server.embeddings_ok:
            return self._embeddings(body)
        if mode == "redirect":
            location = f"http://127.0.0.1:{self.server.server_port}/moved/x?access_token={token}&t={token}"
            return self._send(307, b"", {"Location": location, "Content-Length": "0"})
        if mode == "headers":
            return self._json(status, {"error_code": "DENIED", "message": "see the headers"},
                              {"X-Echo-Authorization": auth, "WWW-Authenticate": f'Bearer token="{token}"'})
        if mode in ("sse", "sse-first") and body.get("stream"):
            return self._sse(token, auth, content=(mode == "sse"))
        message = (f"rejected Authorization: {auth}; you sent token {token} (also {UNREGISTERED}); "
                   f"retry at http://127.0.0.1/x?token={token}")
        return self._json(status, {"error_code": "ECHO", "message": message},
                          {"X-Echo-Authorization": auth, "Retry-After": "0"})

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send(status, data, {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})})

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _sse(self, token: str, auth: str, *, content: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
        if content:
            events.append({**base, "choices": [{"index": 0, "delta": {"content": "Partial answer "}, "finish_reason": None}]})
        events.append({"error": {"message": f"upstream failed for {auth} (token {token})", "type": "server_error",
                                 "code": "echo"}})
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

    def _embeddings(self, body: dict) -> None:
        inputs = body.get("input") or []
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = [{"object": "embedding", "index": i, "embedding": _vector(str(text))} for i, text in enumerate(inputs)]
        self._json(200, {"object": "list", "data": data, "model": body.get("model", "e"),
                         "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})


def _vector(text: str, dim: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    values = [b - 127.5 for b in digest[:dim]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode = "body"
    status = 500
    embeddings_ok = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[str] = []


@pytest.fixture(scope="module")
def echo_server():
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def echo(echo_server: _Server, env: Path, monkeypatch: pytest.MonkeyPatch) -> _Server:
    """The environment pointed at the echoing endpoint (no retries: each failure is final at once)."""
    echo_server.mode, echo_server.status, echo_server.embeddings_ok = "body", 500, False
    echo_server.seen.clear()
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("base_url", f"http://127.0.0.1:{echo_server.server_port}/serving-endpoints")
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    monkeypatch.setenv("KB_TIMEOUT", "5")
    monkeypatch.setenv("KB_USAGE_LEDGER", str(env.parent / "ledger" / "usage.sqlite"))
    return echo_server


def _ledger_bytes(env: Path) -> bytes:
    folder = env.parent / "ledger"
    return b"".join(p.read_bytes() for p in folder.glob("*")) if folder.exists() else b""


def _assert_clean(text: str, where: str) -> None:
    assert TOKEN not in text, f"the token leaked in {where}:\n{text[-3000:]}"
    assert UNREGISTERED not in text, f"a dapi token leaked in {where}:\n{text[-3000:]}"
    assert "Traceback" not in text, f"a traceback in {where}:\n{text[-3000:]}"


@pytest.fixture
def kb(kb: KbRunner) -> KbRunner:
    """The shared runner, also checking this file's secrets."""
    return kb.forbid(TOKEN, UNREGISTERED)


# (mode, status): error bodies for each class of failure, headers, a redirect, SSE error events
FAILURES = [("body", 400), ("body", 401), ("body", 403), ("body", 404), ("body", 429), ("body", 500),
            ("body", 503), ("headers", 401), ("redirect", 0), ("sse", 0), ("sse-first", 0)]
LOGGING = [[], ["--verbose"], ["--verbose", "--log-json"]]


@pytest.mark.parametrize(("mode", "status"), FAILURES)
def test_cli_never_prints_an_echoed_token(indexed: Path, echo: _Server, env: Path, mode: str, status: int, kb: KbRunner) -> None:
    echo.mode, echo.status = mode, status
    runs = [
        ("ask", QUESTION), ("ask", QUESTION, "--json"),
        ("agent", QUESTION), ("agent", QUESTION, "--json"),
    ]
    for n, args in enumerate(runs):
        result = kb(*LOGGING[n % len(LOGGING)], *args)
        assert result.exit_code == 4, (args, result.stdout, result.stderr)
        assert "error:" in result.stderr
    chat = kb("--verbose", "--log-json", "chat", input=f"{QUESTION}\n")
    assert chat.exit_code == 4 and "error:" in chat.stderr
    assert echo.seen and all(TOKEN in seen for seen in echo.seen)  # the token was sent, and echoed
    _assert_clean(_ledger_bytes(env).decode("latin-1"), "the usage ledger")


def test_the_error_still_says_what_happened(indexed: Path, echo: _Server, kb: KbRunner) -> None:
    """Redaction masks the secret, not the message: the upstream's words and the status remain."""
    echo.mode, echo.status = "body", 401
    result = kb("ask", QUESTION)
    line = [text for text in result.stderr.splitlines() if text.startswith("error:")][0]
    assert "Databricks rejected the token (401" in line and "rejected Authorization" in line
    assert MASK in line


def test_databricks_embeddings_search_and_ingest_never_print_an_echoed_token(
    echo: _Server, env: Path, monkeypatch: pytest.MonkeyPatch, kb: KbRunner
) -> None:
    monkeypatch.setenv("KB_EMBEDDINGS", "databricks")
    docs = env / "docs"
    docs.mkdir()
    (docs / "pto.md").write_text("# Time off\n\nFull-time employees get 23 vacation days per year.\n")
    echo.embeddings_ok = True
    built = kb("ingest", str(docs))
    assert built.exit_code == 0, built.stderr
    echo.embeddings_ok = False
    (docs / "new.md").write_text("# Sick leave\n\nTen days of sick leave.\n")
    for mode, status in [("body", 401), ("body", 500), ("headers", 403), ("redirect", 0)]:
        echo.mode, echo.status = mode, status
        for logging_flags in LOGGING:
            searched = kb(*logging_flags, "search", "vacation days")
            assert searched.exit_code == 4 and "error:" in searched.stderr, searched.stderr
        ingested = kb("--verbose", "ingest", str(docs))
        assert ingested.exit_code != 0 and "error:" in ingested.stderr, ingested.stderr
    _assert_clean(_ledger_bytes(env).decode("latin-1"), "the usage ledger")


@pytest.fixture
def api(indexed: Path, echo: _Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    monkeypatch.setenv("KB_API_KEYS", f"tests:{KEY}")
    configure_logging(verbose=True, json_format=False)
    with TestClient(create_app(load_settings()), headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client
    configure_logging()


@pytest.mark.parametrize(("mode", "status"), FAILURES)
def test_api_never_returns_or_logs_an_echoed_token(api: TestClient, echo: _Server, env: Path, capsys,
                                                  mode: str, status: int) -> None:
    echo.mode, echo.status = mode, status
    base_url = f"http://127.0.0.1:{echo.server_port}"
    for model in ("kb-rag", "kb-agent"):
        for stream in (False, True):
            response = api.post("/v1/chat/completions", json={
                "model": model, "stream": stream, "messages": [{"role": "user", "content": QUESTION}]})
            text = response.text + json.dumps(dict(response.headers))
            _assert_clean(text, f"the API response ({model}, stream={stream})")
            assert base_url not in text  # the server's Databricks URL is not the caller's business
            assert response.status_code >= 400 or '"error"' in response.text, response.text
    asked = api.post("/api/ask", json={"question": QUESTION})
    _assert_clean(asked.text + json.dumps(dict(asked.headers)), "/api/ask")
    assert asked.status_code >= 500 and asked.json()["error"]["message"]
    captured = capsys.readouterr()
    _assert_clean(captured.out + captured.err, "the server log")
    _assert_clean(_ledger_bytes(env).decode("latin-1"), "the usage ledger")


def test_readyz_and_errors_do_not_reveal_the_index_path_or_the_databricks_url(
    env: Path, echo: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    index = tmp_path / "very-private-index-location"
    monkeypatch.setenv("KB_INDEX_DIR", str(index))
    monkeypatch.setenv("KB_API_KEYS", f"tests:{KEY}")
    base_url = f"http://127.0.0.1:{echo.server_port}"
    with TestClient(create_app(load_settings(), warm=False)) as client:
        stranger = client.get("/readyz")
        assert stranger.status_code == 503 and stranger.json()["checks"]["index"] == "not ready"
        insider = client.get("/readyz", headers={"Authorization": f"Bearer {KEY}"})
        assert "kb ingest" in insider.json()["checks"]["index"]  # a key holder learns what to do
        responses = [stranger, insider, client.get("/no/such/route"), client.get("/v1/models/nope"),
                     client.post("/api/search", json={"query": "x"}, headers={"Authorization": f"Bearer {KEY}"})]
        for response in responses:
            assert str(index) not in response.text and "very-private" not in response.text, response.text
            assert base_url not in response.text and TOKEN not in response.text
        assert "KB_INDEX_DIR" in responses[-1].json()["error"]["message"]


# ---------------------------------------------------------------- the redaction itself


def test_redaction_masks_token_shapes_but_keeps_the_sentence() -> None:
    from agent.observability.logs import redact

    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJrYiIsImV4cCI6MX0.c2lnbmF0dXJlLXZhbHVl"
    assert redact(f"got {jwt} back") == f"got {MASK} back"
    assert redact("GET /x?access_token=abc123&page=2") == f"GET /x?access_token={MASK}&page=2"
    assert redact("(Authorization: Bearer abc123); next") == f"(Authorization: Bearer {MASK}); next"
    assert redact(f"Bearer {MASK} and token={MASK}") == f"Bearer {MASK} and token={MASK}"  # masked once


def test_registered_secrets_are_bounded_and_the_first_ones_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.observability.logs as logs

    monkeypatch.setattr(logs, "_pinned", {})
    monkeypatch.setattr(logs, "_recent", {})
    monkeypatch.setattr(logs, "_SNAPSHOT", ())
    values = [f"secret-value-{n:05d}-x" for n in range(logs._PINNED + logs._RECENT + 100)]
    threads = [threading.Thread(target=lambda chunk=values[i::4]: [logs.register_secret(v) for v in chunk])
               for i in range(4)]
    logs.register_secret(values[0])  # the settings' token comes first
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(logs._SNAPSHOT) == logs._PINNED + logs._RECENT
    assert logs.redact(f"a {values[0]} b") == f"a {MASK} b"  # pinned for the life of the process
    assert logs.redact(f"a {values[-1]} b") == f"a {MASK} b"  # the newest (an OAuth token just fetched)


def test_redaction_is_linear_on_adversarial_input() -> None:
    from agent.observability.logs import redact

    texts = ["bearer " * 100_000, "token=" * 100_000, "eyJ" * 100_000, "dapi" * 100_000,
             "Bearer " + " " * 500_000, "eyJaaaaaaaaaaa." * 50_000, "access_token=" + "a" * 500_000 + "\""]
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.extend(redact(t) for t in texts))
    worker.start()
    worker.join(timeout=60)  # a generous liveness bound: a backtracking pattern would take hours
    assert not worker.is_alive() and len(done) == len(texts)
