"""The API on a real socket (uvicorn in a thread): the concurrency cap, client disconnects, raw
request paths that try to leave the ingested folders, and the serve command's bind check."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from agent.api import create_app
from agent.api.server import check_bind, is_loopback
from agent.cli.app import app as cli_app
from agent.errors import UsageError
from agent.settings import load_settings
from tests.conftest import CANARY
from tests.databricks_stub import DatabricksStub, Reply
from tests.live_server import LiveServer
from tests.wire.test_api import AUTH, KEYS, FixedRetriever, chat


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def held_answers(databricks: DatabricksStub):
    """The stub holds every chat answer until ``release`` is set."""
    release = threading.Event()

    def respond(body: dict) -> Reply:
        release.wait(30)
        return Reply("Held answer [1].", chunk_size=4)

    databricks.default_responder = respond
    yield release
    release.set()


def test_concurrency_cap_answers_429_then_frees_the_slot(env: Path, databricks: DatabricksStub, held_answers,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_API_KEYS", KEYS)
    app = create_app(load_settings(api_max_concurrency=1), retriever=FixedRetriever())
    with LiveServer(app) as server:
        results: dict[str, Any] = {}

        def first() -> None:
            with httpx.Client(timeout=30) as client:
                response = client.post(server.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH)
                results["first"] = (response.status_code, response.text)

        thread = threading.Thread(target=first)
        thread.start()
        wait_for(lambda: len(databricks.chat_requests()) == 1, "the first request to reach Databricks")

        busy = httpx.post(server.url + "/v1/chat/completions", json=chat(), headers=AUTH, timeout=30)
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["code"] == "server_busy" and "KB_API_MAX_CONCURRENCY" in busy.json()["error"]["message"]
        assert httpx.post(server.url + "/api/search", json={"query": "x"}, headers=AUTH).status_code == 429
        # Cheap routes are not capped.
        assert httpx.get(server.url + "/v1/models", headers=AUTH).status_code == 200
        assert httpx.get(server.url + "/healthz").status_code == 200

        held_answers.set()
        thread.join(30)
        status, text = results["first"]
        assert status == 200 and text.rstrip().endswith("data: [DONE]")
        wait_for(lambda: app.state.gate.active == 0, "the slot to be released")
        assert httpx.post(server.url + "/v1/chat/completions", json=chat(), headers=AUTH, timeout=30).status_code == 200


def test_a_client_that_goes_away_mid_stream_frees_its_slot(env: Path, databricks: DatabricksStub,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_API_KEYS", KEYS)
    databricks.default_responder = lambda body: Reply("word " * 400, chunk_size=5)
    app = create_app(load_settings(api_max_concurrency=1), retriever=FixedRetriever())
    with LiveServer(app) as server:
        url = server.url + "/v1/chat/completions"
        with httpx.Client(timeout=30) as client, client.stream("POST", url, json=chat(stream=True), headers=AUTH) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # read a little, then hang up
        wait_for(lambda: app.state.gate.active == 0, "the slot of the abandoned stream to be released")
        assert httpx.post(server.url + "/v1/chat/completions", json=chat(), headers=AUTH, timeout=30).status_code == 200


ESCAPES = [
    "/api/documents/../../../../../../etc/passwd",
    "/api/documents/hr/../../../../../../etc/passwd",
    "/api/documents/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/api/documents/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/api/documents/..%2f..%2f..%2fetc%2fpasswd",
    "/api/documents/hr%2f..%2f..%2fcorpus.py",
    "/api/documents//etc/passwd",
    "/api/documents/%2Fetc%2Fpasswd",
    "/api/documents/hr/pto.md%00",
    "/api/documents/hr/pto.md%00.txt",
    "/api/documents/%00",
    "/api/documents/hr/./pto.md",
    "/api/documents/hr//pto.md",
    "/api/documents/HR/PTO.MD",
]


def test_documents_cannot_be_reached_outside_the_ingested_roots(indexed: Path, corpus: Path, databricks: DatabricksStub,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_API_KEYS", KEYS)
    secret = corpus.parent / "corpus.py"  # a file right next to the ingested folder
    secret.write_text("SECRET-NEXT-TO-ROOT", encoding="utf-8")
    with LiveServer(create_app(load_settings())) as server:
        for path in ESCAPES:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("GET", path, headers=AUTH)  # sent as is: no client-side normalisation
            response = connection.getresponse()
            body = response.read().decode("utf-8", "replace")
            connection.close()
            assert response.status in (400, 404), (path, response.status)
            assert "root:" not in body and "SECRET-NEXT-TO-ROOT" not in body and CANARY not in body
            assert set(json.loads(body)) == {"error"}
        ok = httpx.get(server.url + "/api/documents/hr/pto.md", headers=AUTH)
        assert ok.status_code == 200 and "23 vacation days" in ok.text


def test_serve_refuses_an_open_non_loopback_bind(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--port", "8999"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr and "--insecure" in result.stderr
    assert "Traceback" not in result.stderr
    settings = load_settings()
    assert check_bind(settings, "0.0.0.0", insecure=True)[0].startswith("no KB_API_KEYS")
    assert check_bind(settings, "127.0.0.1", insecure=False) == []
    monkeypatch.setenv("KB_API_KEYS", "notebooks:short")
    keyed = load_settings()
    assert "short API key" in check_bind(keyed, "0.0.0.0", insecure=False)[0]
    with pytest.raises(UsageError):
        check_bind(settings, "10.1.2.3", insecure=False)


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("192.168.1.20", False),
])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
