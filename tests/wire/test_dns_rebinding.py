"""DNS rebinding (issue 18, item 7): a web page on ``evil.example`` whose name is re-pointed at
127.0.0.1 makes the user's browser talk to an open ``kb serve``, but the browser still sends
``Host: evil.example``. Without keys only loopback names (and IP literals, which no rebinding can
produce) are answered; ``KB_API_ALLOWED_HOSTS`` adds names, and with keys it is the whole list."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from agent.api import create_app
from agent.api.app import host_name
from agent.settings import load_settings
from tests.live_server import LiveServer

KEY = "rebinding-test-key-0123456789ab"
ATTACKER_HOSTS = ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io:8000",
                  "EVIL.example.", "localhost:80x", "::1", "[::1", "", "a" * 300]
LOOPBACK_HOSTS = ["localhost", "localhost:8000", "LOCALHOST:1", "localhost.", "127.0.0.1", "127.0.0.1:8000",
                  "[::1]", "[::1]:8000", "127.5.6.7:9"]


def _client(**settings) -> TestClient:
    return TestClient(create_app(load_settings(**settings), warm=False), base_url="http://localhost")


@pytest.mark.parametrize("host", ATTACKER_HOSTS)
def test_open_server_refuses_other_host_names(env: Path, host: str) -> None:
    with _client() as client:
        for method, path in [("GET", "/api/documents"), ("GET", "/v1/models"), ("GET", "/readyz"), ("GET", "/"),
                             ("POST", "/api/search"), ("GET", "/static/app.js")]:
            response = client.request(method, path, headers={"Host": host}, json={"query": "x"} if method == "POST" else None)
            assert response.status_code == 421, (host, path, response.status_code)
            error = response.json()["error"]
            assert error["code"] == "host_not_allowed" and "KB_API_ALLOWED_HOSTS" in error["message"]
            assert "documents" not in response.text


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_open_server_answers_loopback_names(env: Path, host: str) -> None:
    with _client() as client:
        response = client.get("/api/documents", headers={"Host": host})
        assert response.status_code == 200, (host, response.text)
        assert response.json()["documents"] == [] and response.json()["can_upload"] is False


def test_open_server_answers_ip_literals_and_allowed_names(env: Path) -> None:
    with _client(api_allowed_hosts=["kb.internal"]) as client:
        for host in ("192.168.1.20:8000", "[fe80::1]:8000", "kb.internal", "kb.internal:8000", "KB.Internal."):
            assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
        assert client.get("/v1/models", headers={"Host": "evil.example"}).status_code == 421


def test_healthz_answers_any_host(env: Path) -> None:
    with _client() as client:
        response = client.get("/healthz", headers={"Host": "evil.example"})
        assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_with_keys_any_host_unless_a_list_is_set(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_API_KEYS", f"tests:{KEY}")
    auth = {"Authorization": f"Bearer {KEY}"}
    with _client() as client:  # behind a proxy with keys: the proxy's name is whatever it is
        assert client.get("/v1/models", headers={**auth, "Host": "kb.corp.example"}).status_code == 200
    with _client(api_allowed_hosts=["kb.corp.example"]) as client:
        assert client.get("/v1/models", headers={**auth, "Host": "kb.corp.example:443"}).status_code == 200
        for host in ("evil.example", "localhost", "127.0.0.1"):  # the list is the whole list
            assert client.get("/v1/models", headers={**auth, "Host": host}).status_code == 421, host
    with _client(api_allowed_hosts=["*"]) as client:
        assert client.get("/v1/models", headers={**auth, "Host": "anything.example"}).status_code == 200


def test_a_real_server_refuses_a_forged_host_header(env: Path) -> None:
    with LiveServer(create_app(load_settings(), warm=False)) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            forged = client.get("/api/documents", headers={"Host": "evil.example:8000"})
            assert forged.status_code == 421 and forged.json()["error"]["code"] == "host_not_allowed"
            page = client.get("/", headers={"Host": "evil.example"})
            assert page.status_code == 421 and "<html" not in page.text.lower()
            assert client.get("/api/documents").status_code == 200  # Host: 127.0.0.1:<port>
            assert client.get("/api/documents", headers={"Host": f"localhost:{server.port}"}).status_code == 200


@pytest.mark.parametrize(("header", "name"), [
    ("localhost", "localhost"), ("LocalHost:8000", "localhost"), ("[::1]:8000", "::1"), ("[::1]", "::1"),
    ("localhost.", "localhost"), ("127.0.0.1:65535", "127.0.0.1"), ("::1", None), ("[::1", None),
    ("host:port", None), ("host:1234567", None), (":80", None), ("", None),
])
def test_host_header_parsing(header: str, name: str | None) -> None:
    assert host_name(header) == name
