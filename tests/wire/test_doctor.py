"""`kb doctor` against the loopback workspace: all green, then each misconfiguration a newcomer makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.app import app
from tests.conftest import CANARY
from tests.databricks_stub import DatabricksStub, Reply
from tests.wire.test_databricks_auth import _fake_cli

runner = CliRunner()


@pytest.fixture(autouse=True)
def _plain_answers(stub_server: DatabricksStub) -> None:
    stub_server.default_responder = lambda body: Reply("Stub answer.")  # whatever an earlier test left


def doctor(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["doctor", "--json", *args], catch_exceptions=False)
    assert "Traceback" not in result.stdout + result.stderr and CANARY not in result.stdout + result.stderr
    return result.exit_code, json.loads(result.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def test_all_green(indexed: Path, databricks: DatabricksStub) -> None:
    code, report = doctor()
    checks = by_name(report)
    assert code == 0 and report["ok"] is True, report
    assert list(checks)[:4] == ["settings", "authentication", "workspace", "chat endpoint"]
    assert checks["authentication"]["detail"].startswith("pat")
    assert "kb-tester@example.com" in checks["workspace"]["detail"]
    assert checks["chat call"]["status"] == "ok" and checks["chat call"]["data"]["latency_ms"] >= 0
    assert databricks.chat_requests()[-1]["usage_context"]["command"] == "doctor"
    assert checks["index"]["status"] == "ok" and checks["index"]["data"]["chunks"] > 0
    assert checks["usage ledger"]["status"] == "ok"
    assert checks["MLflow tracing"]["status"] == "skip"


def test_human_output_has_a_line_per_check(indexed: Path, databricks: DatabricksStub) -> None:
    result = runner.invoke(app, ["doctor"], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.stdout.count("\n") >= 9 and "chat endpoint" in result.stdout


def test_base_url_without_serving_endpoints(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("base_url", databricks.host_url)
    code, report = doctor()
    settings = by_name(report)["settings"]
    assert code == 1 and settings["status"] == "fail"
    assert "does not end with /serving-endpoints" in settings["detail"]
    assert settings["fix"].startswith(f"set base_url={databricks.host_url}/serving-endpoints")


def test_a_typo_in_the_endpoint_name(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_CHAT_ENDPOINT", "databricks-meta-llama-3-3-70b-instruc")
    code, report = doctor()
    check = by_name(report)["chat endpoint"]
    assert code == 1 and check["status"] == "fail"
    assert "does not exist" in check["detail"]
    assert "did you mean 'databricks-meta-llama-3-3-70b-instruct'" in check["fix"]
    assert "databricks-claude-sonnet-4-5" in check["fix"]  # the READY chat endpoints are listed
    assert "databricks-gte-large-en" not in check["fix"]  # not an embeddings endpoint
    assert by_name(report)["chat call"]["status"] == "skip"


def test_an_endpoint_that_is_not_ready_or_not_chat(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> None:
    databricks.endpoint_states["databricks-llama-4-maverick"] = {"ready": "NOT_READY", "task": "llm/v1/chat"}
    monkeypatch.setenv("KB_CHAT_ENDPOINT", "databricks-llama-4-maverick")
    code, report = doctor()
    assert code == 1 and "NOT_READY" in by_name(report)["chat endpoint"]["detail"]
    monkeypatch.setenv("KB_CHAT_ENDPOINT", "databricks-gte-large-en")
    code, report = doctor()
    assert code == 1 and "llm/v1/embeddings endpoint, not llm/v1/chat" in by_name(report)["chat endpoint"]["detail"]


def test_a_wrong_token(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-wrong-wrong-wrong")
    code, report = doctor()
    check = by_name(report)["workspace"]
    assert code == 1 and check["status"] == "fail"
    assert "rejected the credentials" in check["detail"] and "personal access token" in check["fix"]
    assert "dapi-wrong-wrong-wrong" not in json.dumps(report)
    assert by_name(report)["chat endpoint"]["status"] == "skip"


def test_a_wrong_client_secret(env: Path, stub_server: DatabricksStub, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_server.reset()
    stub_server.add_oauth_client("sp", "right-secret")
    monkeypatch.setenv("DATABRICKS_HOST", stub_server.host_url)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", "sp")
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", "wrong-secret-xyz")
    code, report = doctor()
    check = by_name(report)["authentication"]
    assert code == 1 and check["status"] == "fail" and "invalid_client" in check["detail"]
    assert "DATABRICKS_CLIENT_SECRET" in check["fix"] and "wrong-secret-xyz" not in json.dumps(report)


def test_an_expired_profile(env: Path, stub_server: DatabricksStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_server.reset()
    config = tmp_path / "databrickscfg"
    config.write_text(f"[u2m]\nhost = {stub_server.host_url}\nauth_type = databricks-cli\n")
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config))
    monkeypatch.setenv("DATABRICKS_CLI_PATH", str(_fake_cli(tmp_path, stub_server, expired=True)))
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "placeholder")
    code, report = doctor("--profile", "u2m")
    check = by_name(report)["authentication"]
    assert code == 1 and check["status"] == "fail"
    assert "expired" in check["detail"] and check["fix"] == "run `databricks auth login --profile u2m`"


def test_no_credentials(env: Path) -> None:
    code, report = doctor()
    check = by_name(report)["authentication"]
    assert code == 1 and check["status"] == "fail" and "DATABRICKS_CLIENT_ID" in check["fix"]
    assert by_name(report)["index"]["status"] == "fail" and "kb ingest" in by_name(report)["index"]["fix"]
