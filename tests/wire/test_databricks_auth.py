"""Unified authentication on the wire: OAuth M2M, profiles, `databricks auth login` (U2M), token
expiry under a running server, wrong credentials, and secrets that never show.

The loopback stub speaks the workspace's discovery (/.well-known/databricks-config), OIDC
(/oidc/.well-known/oauth-authorization-server, /oidc/v1/token) and REST APIs; the real databricks-sdk
does the OAuth. U2M goes through the SDK's `databricks-cli` method with a stand-in CLI script that
prints what `databricks auth token` prints (the real CLI reads the token cache of `databricks auth login`).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest

from agent.cli.app import app
from agent.settings import load_settings
from tests.conftest import CANARY, KbRunner
from tests.databricks_stub import DatabricksStub, Reply

SECRET = "sp-secret-CANARY-7c1e9d"
CLIENT = "5f0c1d2e-0000-4000-8000-00000000c11e"


@pytest.fixture(autouse=True)
def _plain_answers(stub_server: DatabricksStub) -> None:
    stub_server.default_responder = lambda body: Reply("Stub answer.")  # whatever an earlier test left


@pytest.fixture
def kb(kb: KbRunner) -> KbRunner:
    """The shared runner, also checking this file's secrets."""
    return kb.forbid(SECRET)


def _no_oauth_token_in(text: str, stub: DatabricksStub) -> None:
    for token in list(stub.issued_tokens):
        assert token not in text


@pytest.fixture
def m2m(env: Path, stub_server: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> DatabricksStub:
    """A service principal (what Databricks Apps inject): host + client id/secret, no token."""
    stub_server.reset()
    stub_server.default_responder = lambda body: Reply("Stub answer.")  # whatever an earlier test left
    stub_server.add_oauth_client(CLIENT, SECRET)
    monkeypatch.setenv("DATABRICKS_HOST", stub_server.host_url)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("KB_TIMEOUT", "10")
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    return stub_server


def test_service_principal_gets_answers_without_a_personal_token(m2m: DatabricksStub, indexed: Path, kb: KbRunner) -> None:
    result = kb("ask", "How many vacation days do I get?")
    assert result.exit_code == 0, result.stderr
    assert "Stub answer." in result.stdout
    paths = [r.path for r in m2m.requests]
    assert paths.index("/.well-known/databricks-config") < paths.index("/oidc/v1/token") < paths.index(
        "/serving-endpoints/chat/completions")
    chat = [r for r in m2m.requests if r.path.endswith("/chat/completions")][0]
    assert chat.headers["authorization"].startswith("Bearer oauth-")  # the OAuth token, not a placeholder
    assert chat.body["model"] == "databricks-meta-llama-3-3-70b-instruct"
    assert chat.body["usage_context"]["command"] == "ask"


def test_wrong_client_secret_is_one_clear_line(m2m: DatabricksStub, indexed: Path, monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", "not-the-secret")
    result = kb("ask", "How many vacation days do I get?")
    assert result.exit_code == 4
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Databricks rejected the OAuth client credentials")
    assert "DATABRICKS_CLIENT_SECRET" in lines[0] and "not-the-secret" not in result.stdout + result.stderr
    assert not [r for r in m2m.requests if r.path.endswith("/chat/completions")]


def test_a_profile_in_a_config_file(env: Path, stub_server: DatabricksStub, indexed: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    stub_server.reset()
    stub_server.add_oauth_client(CLIENT, SECRET)
    config = tmp_path / "databrickscfg"
    config.write_text(f"[DEFAULT]\nhost = http://127.0.0.1:9\n\n[team]\nhost = {stub_server.host_url}\n"
                      f"client_id = {CLIENT}\nclient_secret = {SECRET}\n")
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config))
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "placeholder")  # restored after the test; --profile overrides it
    result = kb("ask", "How many vacation days do I get?", "--profile", "team")
    assert result.exit_code == 0, result.stderr
    assert "Stub answer." in result.stdout
    assert any(r.path == "/oidc/v1/token" for r in stub_server.requests)
    _no_oauth_token_in(result.stdout + result.stderr, stub_server)


def _fake_cli(folder: Path, stub: DatabricksStub, *, expired: bool = False) -> Path:
    """A stand-in for the Databricks CLI's `auth token` (it prints the cached U2M token as JSON)."""
    token = "u2m-" + "9" * 24
    if not expired:
        stub.issued_tokens[token] = time.monotonic() + 3600
    expiry = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600))
    script = folder / "databricks"
    if expired:
        body = ('echo "Error: A new access token could not be retrieved because the refresh token is invalid. '
                'To reauthenticate, run: databricks auth login --profile u2m" >&2; exit 1')
    else:
        body = f"echo '{json.dumps({'access_token': token, 'token_type': 'Bearer', 'expiry': expiry})}'"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "version" ]; then echo \'{{"Version": "0.300.0", "Major": 0, "Minor": 300, "Patch": 0}}\'; exit 0; fi\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.parametrize("expired", [False, True])
def test_databricks_auth_login_profile(env: Path, stub_server: DatabricksStub, indexed: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, expired: bool, kb: KbRunner) -> None:
    stub_server.reset()
    cli = _fake_cli(tmp_path, stub_server, expired=expired)
    config = tmp_path / "databrickscfg"
    config.write_text(f"[u2m]\nhost = {stub_server.host_url}\nauth_type = databricks-cli\n")
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config))
    monkeypatch.setenv("DATABRICKS_CLI_PATH", str(cli))
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "u2m")
    result = kb("ask", "How many vacation days do I get?")
    if not expired:
        assert result.exit_code == 0, result.stderr
        assert "Stub answer." in result.stdout
        chat = [r for r in stub_server.requests if r.path.endswith("/chat/completions")][0]
        assert chat.headers["authorization"] == "Bearer u2m-" + "9" * 24
        assert "u2m-999" not in result.stdout + result.stderr
    else:
        assert result.exit_code == 4
        assert result.stderr.count("\n") == 1
        assert "sign-in has expired" in result.stderr and "databricks auth login --profile u2m" in result.stderr


def test_no_credentials_at_all_says_what_to_set(env: Path, indexed: Path, kb: KbRunner) -> None:
    result = kb("ask", "How many vacation days do I get?")
    assert result.exit_code == 0  # passages are still shown
    assert "DATABRICKS_TOKEN" in result.stderr and "DATABRICKS_HOST" in result.stderr


def test_serve_keeps_answering_across_token_expiries(m2m: DatabricksStub, indexed: Path) -> None:
    """Tokens live 2 s; requests for ~8 s through one `kb serve` app: none fails, several tokens issued."""
    from agent.api import create_app
    from tests.live_server import LiveServer

    m2m.token_lifetime = 2
    failures: list[str] = []
    answered = 0
    with LiveServer(create_app(load_settings())) as server:
        deadline = time.monotonic() + 8
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while time.monotonic() < deadline:
                for stream in (False, True):
                    response = client.post("/v1/chat/completions", json={
                        "model": "kb-rag", "stream": stream,
                        "messages": [{"role": "user", "content": "How many vacation days do I get?"}]})
                    complete = "data: [DONE]" in response.text if stream else "Stub answer." in response.text
                    if response.status_code != 200 or not complete or '"error"' in response.text:
                        failures.append(f"{response.status_code} {response.text[-600:]}")
                    answered += 1
                time.sleep(0.4)
    assert not failures
    assert answered >= 10
    assert m2m.tokens_issued() >= 4  # the first token and at least three refreshes after expiry
    expired_then_used = [r for r in m2m.requests if r.path.endswith("/chat/completions")]
    assert len({r.headers["authorization"] for r in expired_then_used}) >= 3


def test_streamed_questions_reuse_one_connection(databricks: DatabricksStub) -> None:
    from agent.databricks.llm import build_llm

    llm = build_llm(load_settings())
    databricks.connections_opened = 0
    for _ in range(3):
        assert "".join(chunk.content for chunk in llm.stream("hi")) == "Stub answer."
    assert databricks.connections_opened == 1


def test_async_streams_reuse_one_connection(databricks: DatabricksStub) -> None:
    import asyncio

    from agent.databricks.llm import build_llm

    llm = build_llm(load_settings())

    async def three() -> list[str]:
        answers = []
        for _ in range(3):
            answers.append("".join([chunk.content async for chunk in llm.astream("hi")]))
        return answers

    databricks.connections_opened = 0
    assert asyncio.run(three()) == ["Stub answer."] * 3
    assert databricks.connections_opened == 1


def test_a_stream_abandoned_before_its_end_is_not_drained(databricks: DatabricksStub) -> None:
    """Draining only happens after [DONE]: an answer the caller stops reading is not read to the end."""
    from agent.databricks.llm import build_llm

    databricks.enqueue(Reply("x" * 4000, chunk_size=4))
    llm = build_llm(load_settings())
    stream = llm.stream("hi")
    next(stream)
    started = time.perf_counter()
    stream.close()
    assert time.perf_counter() - started < 2


def test_secrets_stay_out_of_ledger_and_logs(m2m: DatabricksStub, indexed: Path, kb: KbRunner) -> None:
    result = kb("--verbose", "ask", "How many vacation days do I get?")
    assert result.exit_code == 0, result.stderr
    _no_oauth_token_in(result.stdout + result.stderr, m2m)
    ledger = Path(os.environ["KB_USAGE_LEDGER"]).read_bytes()
    assert SECRET.encode() not in ledger
    for token in m2m.issued_tokens:
        assert token.encode() not in ledger


def test_connection_is_resolved_once_per_process(m2m: DatabricksStub) -> None:
    from agent.databricks.auth import connect

    settings = load_settings()
    first = connect(settings)
    assert connect(load_settings()) is first
    assert first.auth_type == "oauth-m2m" and first.base_url == m2m.host_url + "/serving-endpoints"
    assert SECRET not in repr(first) and SECRET not in repr(settings)


def test_concurrent_requests_share_the_refresh(m2m: DatabricksStub) -> None:
    from agent.databricks.llm import build_llm

    m2m.token_lifetime = 1
    llm = build_llm(load_settings())
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(4):
                assert llm.invoke("hi").content == "Stub answer."
                time.sleep(0.35)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
